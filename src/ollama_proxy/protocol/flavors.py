# -*- test-case-name: tests.protocol.test_flavors -*-
"""
Backend flavors: what one kind of OpenAI-compatible server accepts beyond
the plain OpenAI chat API (sampling extras, how thinking is switched, where
earlier reasoning goes back), chosen per backend with C{--backend-flavor}.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import attrs

from ollama_proxy.protocol.codec import JSON

ThinkStyle = Literal["effort", "vllm", "openrouter", "deepseek"]


@attrs.frozen
class Flavor:
    """
    What one kind of OpenAI-compatible backend accepts beyond the plain
    OpenAI chat API, so that requests use every knob the backend has without
    sending a field it rejects.

    OpenAI proper answers 400 to unknown fields (C{top_k}); vLLM, LiteLLM
    and OpenRouter take the sampling extras.  Turning thinking off has no
    portable spelling: vLLM reads C{chat_template_kwargs.enable_thinking},
    OpenRouter C{reasoning.enabled}, and C{reasoning_effort: "none"} is
    rejected by most non-reasoning models, so the generic flavor sends
    nothing for C{think: false} and drops any reasoning from the reply.

    @ivar name: the name used on the command line.
    @ivar samplingExtras: whether C{top_k}, C{min_p} and
        C{repetition_penalty} are sent.
    @ivar thinkStyle: how C{think} is spelled: C{"effort"} (only
        C{reasoning_effort}), C{"vllm"} (C{chat_template_kwargs}),
        C{"openrouter"} (the C{reasoning} object) or C{"deepseek"} (the
        C{thinking: {type}} switch, on by default there).
    @ivar historyThinking: the assistant-message field that carries earlier
        C{thinking} back to the backend (DeepSeek's C{reasoning_content},
        which its thinking mode requires), or C{None} to drop it.
    @ivar maxTokensKey: C{max_tokens}, or C{max_completion_tokens} for
        OpenAI, whose reasoning models reject C{max_tokens}.
    """

    name: str
    samplingExtras: bool = True
    thinkStyle: ThinkStyle = "effort"
    historyThinking: Literal["reasoning_content"] | None = None
    maxTokensKey: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"


FLAVORS: dict[str, Flavor] = {
    flavor.name: flavor
    for flavor in (
        Flavor("generic"),
        Flavor("openai", samplingExtras=False, maxTokensKey="max_completion_tokens"),
        Flavor("vllm", thinkStyle="vllm"),
        Flavor("litellm"),
        Flavor("openrouter", thinkStyle="openrouter"),
        Flavor(
            "deepseek",
            samplingExtras=False,
            thinkStyle="deepseek",
            historyThinking="reasoning_content",
        ),
    )
}
"""The known flavors by name."""


GENERIC = FLAVORS["generic"]
"""For unknown backends: sampling extras on (withdrawn by
L{withoutRejectedExtras} if the backend refuses them), thinking as
C{reasoning_effort}."""


FLAVOR_NAMES = ("auto", *FLAVORS)
"""What C{--backend-flavor} accepts."""


_AUTO_HOSTS = (
    ("api.openai.com", "openai"),
    ("openrouter.ai", "openrouter"),
    ("api.deepseek.com", "deepseek"),
)


SAMPLING_EXTRAS: tuple[tuple[str, str, type | tuple[type, ...]], ...] = (
    ("top_k", "top_k", int),
    ("min_p", "min_p", (int, float)),
    ("repeat_penalty", "repetition_penalty", (int, float)),
)
"""C{(Ollama option, backend field, type)} for the non-OpenAI sampling
parameters."""


_EXTRA_FIELDS = frozenset(field for _, field, _ in SAMPLING_EXTRAS)


def flavorFor(name: str, target: str) -> Flavor:
    """
    Resolve a C{--backend-flavor} value.

    @param name: a key of L{FLAVORS}, or C{"auto"} to guess from the host of
        C{target} (OpenAI, OpenRouter and DeepSeek have well-known hosts;
        anything else, including local vLLM and LiteLLM, is generic).
    @param target: the backend base URL.
    @return: the flavor.
    @raise ValueError: for an unknown name.
    """
    if name == "auto":
        host = (urlsplit(target).hostname or "").lower()
        for domain, flavorName in _AUTO_HOSTS:
            if host == domain or host.endswith("." + domain):
                return FLAVORS[flavorName]
        return GENERIC
    try:
        return FLAVORS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend flavor {name!r}; choose one of {', '.join(FLAVOR_NAMES)}"
        ) from None


def withoutRejectedExtras(request: JSON, status: int, message: str) -> JSON | None:
    """
    Decide whether a failed request is worth one retry without the sampling
    extras.

    Backends that do not know C{top_k} and friends say so by name in a 400
    (OpenAI: C{Unrecognized request argument supplied: top_k}; pydantic
    servers: C{extra_forbidden ... min_p}).  Then the request is repeated
    without them rather than failing a client that only set C{top_k}.

    @param request: the OpenAI request that failed.
    @param status: the backend's status.
    @param message: the backend's error text.
    @return: a copy of C{request} without the extras, or C{None} when the
        error is about something else.
    """
    if status not in (400, 422):
        return None
    sent = _EXTRA_FIELDS.intersection(request)
    lowered = message.lower()
    if not any(field in lowered for field in sent):
        return None
    return {key: value for key, value in request.items() if key not in _EXTRA_FIELDS}
