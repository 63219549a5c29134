# -*- test-case-name: tests.protocol.test_catalog -*-
"""
Model metadata: what C{/api/show} and C{/api/ps} report for each model the
backend serves, and where it comes from.

Clients gate features on this metadata (Copilot reads C{capabilities} and
C{model_info["<arch>.context_length"]}, Continue parses C{parameters}, the
C{llm} CLI keeps only models with C{completion}), so it should be right
without hand configuration.  Sources, in increasing precedence:

  1. built-in defaults (L{DEFAULT_CONTEXT_LENGTH}, L{DEFAULT_CAPABILITIES});
  2. the C{"*"} entry of the override file (site-wide defaults);
  3. what the backend says about itself:
     - fields of its C{/v1/models} entries: vLLM's C{max_model_len},
       OpenRouter's C{context_length}, C{supported_parameters} and
       C{architecture.input_modalities}, Groq's C{context_window},
       llama.cpp's C{meta.n_ctx_train}/C{meta.n_embd};
     - LiteLLM's C{GET /v1/model/info} (C{max_input_tokens},
       C{supports_function_calling}, C{supports_vision},
       C{supports_reasoning}, C{mode: "embedding"}, C{output_vector_size}),
       which wins over the C{/v1/models} fields because it is explicit;
  4. the per-model entries of the override file (C{--model-info FILE}): an
     operator who writes a value for a model means it, so it wins.

Everything here is pure (dicts in, dicts out); the C{/api/tags},
C{/api/show} and C{/api/ps} answers built from it are in
L{ollama_proxy.protocol.listing}.  The fetching and the one TTL cache live
in L{ollama_proxy.upstream.directory}; the override file is read by
L{ollama_proxy.service.overrides}.
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from ollama_proxy.protocol.names import DEFAULT_TAG, backendModel, modelIds

DEFAULT_CONTEXT_LENGTH = 32768
"""
The context length reported when no source knows better: what Copilot
assumes when C{model_info} says nothing (since 2026-01), and Ollama's own
default on a machine with a mid-sized GPU.  Smaller would make clients trim
prompts that the backend would accept; larger would make them send prompts
that it refuses.
"""


DEFAULT_CAPABILITIES = ("completion", "tools")
"""
The capabilities of a chat model when no source knows better.  C{tools} is
on by default because nearly every OpenAI-compatible chat backend supports
function calling and Copilot hides models without it from agent mode; a
backend that says otherwise (C{supports_function_calling: false}, an
OpenRouter entry without C{tools}) turns it off.  C{vision}, C{thinking} and
C{insert} are only claimed when a source says so: claiming C{thinking} makes
clients send C{think}, claiming C{insert} makes Continue send C{suffix}.
"""


ARCHITECTURE = "openai"
"""C{general.architecture} and C{details.family} when no source names one."""


_CAPABILITY_FLAGS = ("tools", "vision", "thinking", "embedding", "insert")


_FACT_TYPES: dict[str, type] = {
    "context_length": int,
    "embedding_length": int,
    "max_output_tokens": int,
    "family": str,
    "parameter_size": str,
    "license": str,
}


Facts = dict[str, Any]
"""
What one source knows about one model: any of C{context_length},
C{embedding_length}, C{max_input_tokens}, C{max_output_tokens}, C{family},
C{parameter_size}, C{license}, C{created} and the boolean capability flags C{tools}, C{vision}, C{thinking},
C{embedding}, C{insert}.  A missing key means "this source does not know".
"""


def _positiveInt(value: object) -> int | None:
    """
    @param value: a decoded JSON value.
    @return: C{value} if it is a positive integer (bools excluded), else
        C{None}.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return None


def factsFromModelEntry(entry: Mapping[str, Any]) -> Facts:
    """
    Read the metadata some backends put in their C{/v1/models} entries.

    @param entry: one element of the C{data} list.
    @return: the facts found (often none: OpenAI itself says nothing).
    """
    facts: Facts = {}
    for key in ("max_model_len", "context_length", "context_window"):
        length = _positiveInt(entry.get(key))
        if length is not None:
            facts["context_length"] = length
            break
    meta = entry.get("meta")
    if isinstance(meta, dict):  # llama.cpp server
        length = _positiveInt(meta.get("n_ctx_train"))
        if length is not None and "context_length" not in facts:
            facts["context_length"] = length
        width = _positiveInt(meta.get("n_embd"))
        if width is not None:
            facts["embedding_length"] = width
    created = _positiveInt(entry.get("created"))
    if created is not None:
        facts["created"] = created
    parameters = entry.get("supported_parameters")
    if isinstance(parameters, list):  # OpenRouter
        facts["tools"] = "tools" in parameters
        facts["thinking"] = "reasoning" in parameters or "include_reasoning" in parameters
    architecture = entry.get("architecture")
    if isinstance(architecture, dict):
        modalities = architecture.get("input_modalities")
        if isinstance(modalities, list):
            facts["vision"] = "image" in modalities
    provider = entry.get("top_provider")
    if isinstance(provider, dict):  # OpenRouter
        limit = _positiveInt(provider.get("max_completion_tokens"))
        if limit is not None:
            facts["max_output_tokens"] = limit
    return facts


def factsFromLiteLLM(info: object) -> dict[str, Facts]:
    """
    Read LiteLLM's C{GET /v1/model/info} listing.

    LiteLLM lists one entry per deployment, so a model name can appear more
    than once; the first entry that states a value wins.  C{null} means
    "unknown" (LiteLLM's answer for models missing from its cost map).

    @param info: the decoded body, C{{"data": [{"model_name": ...,
        "model_info": {...}}, ...]}}.
    @return: facts per model name; empty if the body has another shape.
    """
    data = info.get("data") if isinstance(info, dict) else None
    result: dict[str, Facts] = {}
    if not isinstance(data, list):
        return result
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("model_name"), str):
            continue
        details = entry.get("model_info")
        if not isinstance(details, dict):
            continue
        facts: Facts = {}
        length = _positiveInt(details.get("max_input_tokens"))
        if length is not None:
            facts["context_length"] = length
            facts["max_input_tokens"] = length
        limit = _positiveInt(details.get("max_output_tokens"))
        if limit is not None:
            facts["max_output_tokens"] = limit
        for flag, key in (
            ("tools", "supports_function_calling"),
            ("vision", "supports_vision"),
            ("thinking", "supports_reasoning"),
        ):
            if isinstance(details.get(key), bool):
                facts[flag] = details[key]
        mode = details.get("mode")
        if isinstance(mode, str):
            facts["embedding"] = mode == "embedding"
        width = _positiveInt(details.get("output_vector_size"))
        if width is not None:
            facts["embedding_length"] = width
        known = result.setdefault(entry["model_name"], {})
        for key, value in facts.items():
            known.setdefault(key, value)
    return result


def factsFromOverride(entry: object, where: str) -> Facts:
    """
    Validate one entry of the override file.

    @param entry: e.g. C{{"context_length": 128000, "capabilities":
        ["completion", "tools", "vision"]}}.
    @param where: the entry's key, for messages.
    @return: the facts; a C{capabilities} list sets every flag (present or
        not), so an override can also take a capability away.
    @raise ValueError: for unknown keys or values of the wrong type.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"model-info entry {where!r} must be a table/object")
    facts: Facts = {}
    for key, value in entry.items():
        if key == "capabilities":
            known = {"completion", *_CAPABILITY_FLAGS}
            if not isinstance(value, list) or not all(
                isinstance(c, str) and c in known for c in value
            ):
                raise ValueError(
                    f"model-info {where!r}: capabilities must be a list of "
                    f"{', '.join(sorted(known))}"
                )
            for flag in _CAPABILITY_FLAGS:
                facts[flag] = flag in value
        elif key in _FACT_TYPES:
            kind = _FACT_TYPES[key]
            if kind is int:
                number = _positiveInt(value)
                if number is None:
                    raise ValueError(f"model-info {where!r}: {key} must be a positive integer")
                facts[key] = number
            elif not isinstance(value, kind):
                raise ValueError(f"model-info {where!r}: {key} must be a string")
            else:
                facts[key] = value
        else:
            raise ValueError(
                f"model-info {where!r}: unknown key {key!r} (known: capabilities, "
                f"{', '.join(sorted(_FACT_TYPES))})"
            )
    return facts


def parseOverrides(document: object) -> dict[str, Facts]:
    """
    Validate a whole override document.

    @param document: the decoded file, a mapping from backend model id (or
        C{"*"} for all models) to an entry.
    @return: facts per key.
    @raise ValueError: for a malformed document.
    """
    if not isinstance(document, dict):
        raise ValueError("model-info file must contain a table/object of models")
    return {str(key): factsFromOverride(value, str(key)) for key, value in document.items()}


@attrs.frozen
class ModelMeta:
    """
    Everything known about one served model, after merging the sources.

    @ivar id: the backend model id.
    @ivar facts: the merged L{Facts}.
    @ivar remoteHost: what C{remote_host} says about where the model runs
        (see L{ollama_proxy.protocol.listing.remoteHost}); empty for none.
    @ivar seenNs: when the proxy first saw the model as it is now (its
        C{modified_at} when the backend gives no C{created}), or C{None}.
    """

    id: str
    facts: Facts = attrs.field(factory=dict)
    remoteHost: str = ""
    seenNs: int | None = None

    @property
    def isEmbedding(self) -> bool:
        """
        Whether this is an embedding model: said by a source, or guessed from
        an id containing C{embed} (C{text-embedding-3-small},
        C{nomic-embed-text}) when no source says.
        """
        flag = self.facts.get("embedding")
        if isinstance(flag, bool):
            return flag
        return "embed" in self.id.lower()

    @property
    def contextLength(self) -> int:
        """
        The context window in tokens.
        """
        value: int = self.facts.get("context_length", DEFAULT_CONTEXT_LENGTH)
        return value

    @property
    def maxOutputTokens(self) -> int | None:
        """
        The most tokens one reply may have, when a source says so and it
        is at most half the context window.  The VS Code extension
        subtracts this from the window to get the prompt budget, so a
        backend that states its whole window here (LiteLLM does for some
        models) would leave clients no room for a prompt: such a value is
        not reported, and clients use their own default.
        """
        value = self.facts.get("max_output_tokens")
        if isinstance(value, int) and value * 2 <= self.contextLength:
            return value
        return None

    @property
    def maxInputTokens(self) -> int | None:
        """
        The longest prompt, when a source says so and it fits the context
        window (an override may have made the window smaller).
        """
        value = self.facts.get("max_input_tokens")
        if isinstance(value, int) and value <= self.contextLength:
            return value
        return None

    @property
    def family(self) -> str:
        """
        The architecture / family name.
        """
        value: str = self.facts.get("family", ARCHITECTURE)
        return value

    def capabilities(self) -> list[str]:
        """
        Ollama's capability list (C{types/model/capability.go} vocabulary).

        @return: C{["embedding"]} for embedding models, otherwise
            C{completion} plus what is known or defaulted.
        """
        if self.isEmbedding:
            return ["embedding"]
        result = ["completion"]
        for flag in ("tools", "insert", "vision", "thinking"):
            default = flag in DEFAULT_CAPABILITIES
            if self.facts.get(flag, default):
                result.append(flag)
        return result


def mergeFacts(*sources: Mapping[str, Any] | None) -> Facts:
    """
    @param sources: fact sets, lowest precedence first.
    @return: one fact set where later sources win key by key.
    """
    merged: Facts = {}
    for source in sources:
        if source:
            merged.update(source)
    return merged


def buildCatalog(
    models: object, liteLLM: object, overrides: Mapping[str, Facts] | None = None
) -> dict[str, ModelMeta]:
    """
    Merge every source into one entry per served model.

    @param models: the decoded C{/v1/models} body.
    @param liteLLM: the decoded C{/v1/model/info} body, or C{None} when the
        backend has none.
    @param overrides: the validated override file.
    @return: metadata per backend id, in listing order.
    @raise ollama_proxy.protocol.errors.UpstreamError: if C{models} is not a model
        list.
    """
    overrides = overrides or {}
    entries: dict[str, Mapping[str, Any]] = {}
    data = models.get("data") if isinstance(models, dict) else None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            entries.setdefault(entry["id"], entry)
    explicit = factsFromLiteLLM(liteLLM) if liteLLM is not None else {}
    return {
        modelId: ModelMeta(
            modelId,
            mergeFacts(
                overrides.get("*"),
                factsFromModelEntry(entries.get(modelId, {})),
                explicit.get(modelId),
                overrides.get(modelId),
            ),
        )
        for modelId in modelIds(models)
    }


def findModel(
    catalog: Mapping[str, ModelMeta], name: str, tag: str = DEFAULT_TAG
) -> ModelMeta | None:
    """
    Look a client's model name up: C{x}, C{x:latest} and C{x:<tag>} all find
    backend id C{x}; ids containing C{:} or C{/} match verbatim.

    @param catalog: from L{buildCatalog}.
    @param name: the client's name.
    @param tag: the proxy's tag.
    @return: the entry, or C{None} if the backend does not serve it.
    """
    found = catalog.get(name)
    if found is not None:
        return found
    return catalog.get(backendModel(name, catalog, tag))
