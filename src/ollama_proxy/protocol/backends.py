# -*- test-case-name: tests.protocol.test_backends -*-
"""
The configuration's value types, frozen and pure: one backend
(L{BackendConfig}) and one model's settings (L{ModelOverride}).

They are what the TOML file (L{ollama_proxy.service.config}) is parsed
into and what the backend side (C{upstream/}) reads; defined here, below
both, so that C{upstream/} imports no module of C{service/}.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Mapping

import attrs

CAPABILITIES = frozenset({"completion", "tools", "vision", "thinking", "embedding", "insert"})
"""The capability names Ollama's C{/api/show} knows."""


@attrs.frozen
class ModelOverride:
    """
    Settings for one backend model.

    @ivar contextLength: reported by C{/api/tags}, C{/api/show}, C{/api/ps}.
    @ivar maxOutputTokens: reported as C{max_output_tokens} (tags, show).
    @ivar capabilities: reported by C{/api/show}; C{None} leaves the
        proxy's guess.
    @ivar extra: fields merged into every upstream request body for the
        model (they win over the translated fields), e.g. a provider's own
        C{reasoning_effort} or C{user}.
    @ivar options: default Ollama C{options} (C{temperature}, C{num_ctx}...);
        a client's own options win.
    """

    contextLength: int | None = None
    maxOutputTokens: int | None = None
    capabilities: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)
    options: Mapping[str, Any] = attrs.field(factory=dict)


NO_OVERRIDE = ModelOverride()


@attrs.frozen
class BackendConfig:
    """
    One OpenAI-compatible server as configured.

    @ivar name: unique, used in logs and metrics.
    @ivar url: the base URL (with or without C{/v1}).
    @ivar apiKey: the resolved key; never logged.
    @ivar discover: whether to list models with C{GET /v1/models}.
    @ivar allow: globs a discovered id must match (any of); empty allows all.
    @ivar deny: globs that hide a discovered id.
    @ivar models: ids always offered, listed or not.
    @ivar aliases: client-visible alias to backend model id.
    @ivar overrides: backend model id to its L{ModelOverride}.
    @ivar native: the agent APIs (L{NATIVE_APIS}) relayed to the backend as
        they are, model name mapped, instead of translated.
    @ivar flavor: which non-OpenAI request fields it takes (a name of
        L{ollama_proxy.protocol.flavors.FLAVOR_NAMES}); C{None} for the
        C{--backend-flavor} option's choice.
    @ivar priority: pools try higher tiers first.
    @ivar weight: its share of its tier.
    """

    name: str
    url: str
    apiKey: str | None = attrs.field(default=None, repr=False)
    discover: bool = True
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    aliases: Mapping[str, str] = attrs.field(factory=dict)
    overrides: Mapping[str, ModelOverride] = attrs.field(factory=dict)
    flavor: str | None = None
    native: tuple[str, ...] = ()
    priority: int = 0
    weight: float = 1.0

    def offers(self, modelId: str) -> bool:
        """
        Whether a discovered id passes the allow and deny globs.

        @param modelId: an id from C{/v1/models}.
        @return: C{True} if it should be offered.
        """
        if self.allow and not any(fnmatch.fnmatchcase(modelId, g) for g in self.allow):
            return False
        return not any(fnmatch.fnmatchcase(modelId, g) for g in self.deny)

    def override(self, modelId: str) -> ModelOverride:
        """
        @param modelId: a backend model id.
        @return: its settings, or the empty L{NO_OVERRIDE}.
        """
        return self.overrides.get(modelId, NO_OVERRIDE)
