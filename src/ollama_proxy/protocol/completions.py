# -*- test-case-name: tests.test_surface -*-
"""
Pure translation of C{/api/generate} with C{raw} or C{suffix} to OpenAI's
legacy C{POST /v1/completions}.

A raw prompt must reach the model untemplated, and a C{suffix}
(fill-in-the-middle, what Continue sends for autocomplete) has no chat
equivalent, so both go to the text-completion endpoint where the backend
has one.  The replies (C{choices[0].text}) are rewritten into the chat shape
(C{delta.content} / C{message.content}) so the existing
L{ollama_proxy.translate.StreamTranslator} and
L{ollama_proxy.translate.responseFromOpenAI} produce Ollama's generate
objects unchanged.
"""

from __future__ import annotations

from typing import Any

import attrs

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.chatbody import optionsToOpenAI
from ollama_proxy.protocol.clock import Clock, wallClock
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.flavors import GENERIC, Flavor
from ollama_proxy.protocol.openai import StreamTranslator
from ollama_proxy.protocol.requests import JSON, optionalString


def wantsCompletion(body: JSON) -> bool:
    """
    @param body: a C{/api/generate} request object.
    @return: whether it needs C{/v1/completions} (C{raw: true} or a
        non-empty C{suffix}).
    """
    return body.get("raw") is True or bool(body.get("suffix"))


def completionRequestToOpenAI(
    body: JSON, backendId: str, stream: bool, flavor: Flavor = GENERIC
) -> JSON:
    """
    Translate a raw or fill-in-the-middle C{/api/generate} body.

    @param body: the validated request object.
    @param backendId: the upstream model id.
    @param stream: whether to stream.
    @param flavor: the backend's flavor (sampling extras); the legacy route
        only knows C{max_tokens}, whatever the flavor uses for chat.
    @return: the C{/v1/completions} body.
    @raise BadRequest: for malformed fields, and Ollama's C{raw mode does not
        support template, system, or context}.
    """
    prompt = optionalString(body, "prompt")
    suffix = optionalString(body, "suffix")
    if body.get("raw") is True and (
        body.get("template") or body.get("system") or body.get("context")
    ):
        raise BadRequest("raw mode does not support template, system, or context")
    request: JSON = {"model": backendId, "prompt": prompt or "", "stream": stream}
    if suffix:
        request["suffix"] = suffix
    if stream:
        request["stream_options"] = {"include_usage": True}
    optionsToOpenAI(body.get("options"), request, attrs.evolve(flavor, maxTokensKey="max_tokens"))
    return request


def _asChatChoice(choice: Any, streaming: bool) -> Any:
    """
    @param choice: a text-completion choice.
    @param streaming: whether to build a C{delta} (stream) or a C{message}.
    @return: the equivalent chat choice.
    """
    if not isinstance(choice, dict) or "text" not in choice:
        return choice  # already chat-shaped (or garbage for the translator)
    text = choice.get("text")
    content = text if isinstance(text, str) else ""
    key = "delta" if streaming else "message"
    return {
        "index": choice.get("index", 0),
        key: {"content": content} if streaming else {"role": "assistant", "content": content},
        "finish_reason": choice.get("finish_reason"),
    }


def completionAsChat(completion: Any, streaming: bool = False) -> Any:
    """
    Rewrite a C{/v1/completions} body or stream event into the chat shape.

    @param completion: the decoded object.
    @param streaming: whether it is a stream event.
    @return: the chat-shaped object (anything unexpected passes through for
        the translator to reject or ignore).
    """
    if not isinstance(completion, dict) or completion.get("error") is not None:
        return completion
    choices = completion.get("choices")
    if not isinstance(choices, list):
        return completion
    return {**completion, "choices": [_asChatChoice(c, streaming) for c in choices]}


class CompletionStreamTranslator(StreamTranslator):
    """
    A L{StreamTranslator} for C{/v1/completions} streams: each event is
    rewritten into the chat-chunk shape first.
    """

    def __init__(
        self, model: str, startNs: int | None = None, clock: Clock = wallClock
    ) -> None:
        super().__init__(model, "generate", startNs, clock, thinkTags=False)

    def feed(self, payloads: list[bytes], createdAt: str | None = None) -> list[JSON]:
        """
        @param payloads: SSE data payloads of one read.
        @param createdAt: see L{StreamTranslator.feed}.
        @return: the Ollama generate chunks.
        """
        rewritten = []
        for payload in payloads:
            if payload == b"[DONE]":
                rewritten.append(payload)
                continue
            try:
                event = codec.loads(payload)
            except codec.JSONDecodeError:
                rewritten.append(payload)  # the base class reports it
                continue
            rewritten.append(codec.dumps(completionAsChat(event, streaming=True)))
        return super().feed(rewritten, createdAt)
