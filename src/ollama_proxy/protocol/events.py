# -*- test-case-name: tests.protocol.test_events -*-
"""
The events of a generated reply, whatever dialect the client speaks.

The OpenAI reader (L{ollama_proxy.protocol.backend_reader}) turns a backend's
stream into these; each client dialect's encoder turns them into its own
wire format (L{ollama_proxy.protocol.ollama} for Ollama NDJSON), with the
lifecycle L{ollama_proxy.protocol.dialect} defines.  A
non-streamed answer is one L{Reply}, the same content aggregated.

Events are C{NamedTuple}s: typed, immutable, and as cheap to build as a
tuple, because a stream makes one L{Delta} per token.  A consumer tells them
apart with C{type(event) is Delta} (the common case) or C{isinstance}.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence, Union

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import UpstreamError


class Delta(NamedTuple):
    """
    Generated text: one backend delta's content and reasoning.

    @ivar content: answer text (may be empty).
    @ivar thinking: reasoning text (may be empty).
    @ivar logprobs: token log-probabilities in Ollama's shape, riding on
        this text, if the client asked for them.
    """

    content: str
    thinking: str = ""
    logprobs: list[JSON] | None = None


class ToolCall(NamedTuple):
    """
    One complete tool call.

    @ivar id: the call's id (the backend's, or a stable derived one).
    @ivar name: the function name.
    @ivar arguments: the arguments, a JSON object.
    @ivar position: the call's index in the reply.
    """

    id: str
    name: str
    arguments: JSON
    position: int


class ToolCalls(NamedTuple):
    """
    The reply's tool calls, complete, released together at the end of the
    stream (fragments are accumulated by the reader).

    @ivar calls: in the order they began.
    """

    calls: tuple[ToolCall, ...]


class Usage(NamedTuple):
    """
    Token counts as the backend reported them (C{None}: not reported).
    """

    promptTokens: int | None = None
    completionTokens: int | None = None


class Finish(NamedTuple):
    """
    The reply is complete.

    @ivar reason: the backend's C{finish_reason} (C{stop}, C{length},
        C{tool_calls}, C{content_filter}, ...), or C{None}.
    @ivar usage: the token counts.
    @ivar firstToken: when the first generated token arrived (ns), if any.
    @ivar end: when the reply ended (ns).
    @ivar logprobs: log-probabilities that arrived without text of their own.
    """

    reason: str | None
    usage: Usage
    firstToken: int | None
    end: int
    logprobs: list[JSON] | None = None


Event = Union[Delta, ToolCalls, Finish]
"""Anything a reader yields."""


class Reply(NamedTuple):
    """
    A whole non-streamed answer.

    @ivar content: the answer text.
    @ivar thinking: the reasoning text.
    @ivar toolCalls: the tool calls.
    @ivar reason: the backend's C{finish_reason}.
    @ivar usage: the token counts.
    @ivar logprobs: token log-probabilities in Ollama's shape.
    """

    content: str
    thinking: str
    toolCalls: tuple[ToolCall, ...]
    reason: str | None
    usage: Usage
    logprobs: list[JSON]


def replyEvents(reply: Reply, end: int) -> list[Event]:
    """
    A whole answer as the events a stream of it would have carried, for
    dialects that write a non-streamed backend answer as their own stream.

    @param reply: the answer.
    @param end: now (ns).
    @return: its reasoning and text, tool calls, and finish.
    """
    events: list[Event] = []
    if reply.content or reply.thinking:
        events.append(Delta(reply.content, reply.thinking))
    if reply.toolCalls:
        events.append(ToolCalls(reply.toolCalls))
    events.append(Finish(reply.reason, reply.usage, None, end))
    return events


class StreamFailed(UpstreamError):
    """
    The upstream stream failed part-way through one read.

    The relay joins the reads of one reactor turn, so a read can hold good
    events before the failing one; what they encode to still belongs to the
    client, before the error.

    @ivar events: the events read before the failing one.
    @ivar output: the same, encoded for the client (filled in by the
        pipeline, L{ollama_proxy.protocol.stream.TranslatedStream}).
    """

    def __init__(self, message: str, events: Sequence[Event] = (), output: bytes = b"") -> None:
        super().__init__(message)
        self.events = list(events)
        self.output = output
