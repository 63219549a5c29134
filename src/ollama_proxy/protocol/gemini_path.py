# -*- test-case-name: tests.protocol.test_gemini_path -*-
"""
The Gemini API's paths: C{models}, C{models/{model}} and
C{models/{model}:<method>} below the version (C{/v1beta}, C{/v1}), read
into what they ask for, and their route templates for logs and metrics.
The model is in the path, so this is the dialect's routing hook.
"""

from __future__ import annotations

from typing import Sequence

import attrs

GENERATE = "generateContent"
STREAM = "streamGenerateContent"
COUNT = "countTokens"
ACTIONS = (GENERATE, STREAM, COUNT)
"""The model methods served (C{models/{model}:<action>})."""


@attrs.frozen
class GeminiCall:
    """
    What a path below C{/v1beta} asks for.

    @ivar model: the model named in the path (C{None}: the model list).
    @ivar action: one of L{ACTIONS}, or C{None} for the model itself.
    """

    model: str | None
    action: str | None = None

    def template(self, version: str = "v1beta") -> str:
        """
        The route for logs and metrics: the path with the model replaced
        by C{{model}}, so that clients cannot create label values.

        @param version: the API version the path began with (C{v1beta},
            C{v1}).
        """
        if self.model is None:
            return f"/{version}/models"
        return f"/{version}/models/{{model}}" + (f":{self.action}" if self.action else "")


def parsePath(segments: Sequence[str]) -> GeminiCall | None:
    """
    Read the path segments after C{/v1beta}.

    The model may contain C{:} (C{qwen3:8b}, C{fake-model:proxy}) and C{/}
    (C{hf.co/org/model}): the action is what follows the last C{:}, when
    it is one of L{ACTIONS}.

    @param segments: the decoded segments after the version
        (C{["models", "m:generateContent"]}).
    @return: the call, or C{None} for a path the API does not have.
    """
    if not segments or segments[0] != "models":
        return None
    rest = list(segments[1:])
    if rest and rest[-1] == "":
        rest.pop()  # a trailing slash
    if not rest:
        return GeminiCall(None)
    name = "/".join(rest)
    base, colon, action = name.rpartition(":")
    if colon and action in ACTIONS:
        name, found = base, action
    else:
        found = None
    if not name or any(part in ("", ".", "..") for part in name.split("/")):
        return None
    return GeminiCall(name, found)


class GeminiTemplate:
    """
    One generation method's route under one API version, read by
    L{parsePath} (the model may hold C{/} and C{:}, which no one-segment
    template parameter can): the L{ollama_proxy.protocol.dialect.Template}
    of a Gemini generation route.

    @ivar prefix: C{(version, "models")}.
    @ivar label: the path's template (C{/v1beta/models/{model}:generateContent}).
    @ivar action: the method (L{GENERATE} or L{STREAM}).
    """

    def __init__(self, version: str, action: str) -> None:
        self.prefix = (version, "models")
        self.action = action
        self.label = GeminiCall("", action).template(version)

    def match(self, rest: Sequence[str]) -> dict[str, str] | None:
        """
        @param rest: the segments after C{models}.
        @return: C{model} and C{method}, when the path asks this route's
            method of a model.
        """
        call = parsePath(["models", *rest])
        if call is None or call.model is None or call.action != self.action:
            return None
        return {"model": call.model, "method": self.action}
