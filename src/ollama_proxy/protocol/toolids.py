# -*- test-case-name: tests.protocol.test_toolids -*-
"""
Tool-call ids unique within the conversation they are returned to.

Backends number tool calls per request (C{call_0}, C{call_fake_0}, ids
derived from the call itself), so the id of a new call can equal one the
client already holds in its history.  Agents key their bookkeeping by that
id: Claude Code, answered a C{tool_use} whose id it has seen, rewrites the
earlier turn as interrupted and asks again, forever.  The proxy is the one
place that sees both the conversation and the reply, so it makes the ids it
returns unique: an id already in the request's history, or given earlier in
the same reply, is replaced by a fresh one; every other id is kept as the
backend sent it.

Every dialect gets this from one hook: L{uniqueToolIds} wraps the
dialect's reply side (L{ollama_proxy.protocol.dialect.Dialect}): its
encoders get the request's L{ToolIds} as their filter, which rewrites the
L{ToolCalls} events and L{Reply} tool calls before the dialect encodes
them.  A dialect writes each call (its id included) from that one event, so
the id is the same in every stream event that names it.
"""

from __future__ import annotations

import secrets
from typing import Callable, Iterable, Sequence

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.dialect import Dialect, Encoder, ErrorShape
from ollama_proxy.protocol.events import Event, Reply, ToolCall, ToolCalls
from ollama_proxy.protocol.requests import ChatRequest, Message


def freshId() -> str:
    """
    @return: C{call_} and 24 random hex digits, the shape of OpenAI's ids
        (Anthropic's clients accept any string).
    """
    return "call_" + secrets.token_hex(12)


def historyIds(messages: Sequence[Message]) -> set[str]:
    """
    @param messages: a request's conversation.
    @return: every tool-call id in it: the assistant turns' calls and the
        tool results' references.
    """
    taken: set[str] = set()
    for message in messages:
        for call in message.toolCalls:
            if call.id:
                taken.add(call.id)
        if message.toolCallId:
            taken.add(message.toolCallId)
    return taken


class ToolIds:
    """
    The ids of one reply's tool calls, made unique against the
    conversation and each other.

    @ivar taken: the ids the client holds or was given in this reply.
    """

    def __init__(self, taken: Iterable[str], newId: Callable[[], str] = freshId) -> None:
        """
        @param taken: the ids already in the conversation.
        @param newId: makes a fresh id (random by default; tests pass a
            counter).
        """
        self.taken = set(taken)
        self._newId = newId

    def call(self, call: ToolCall) -> ToolCall:
        """
        @return: C{call}, with a fresh id if its own is taken.
        """
        callId = call.id
        while callId in self.taken:
            callId = self._newId()
        self.taken.add(callId)
        return call if callId == call.id else call._replace(id=callId)

    def calls(self, calls: tuple[ToolCall, ...]) -> tuple[ToolCall, ...]:
        """
        @return: C{calls} with unique ids, in order.
        """
        return tuple(self.call(call) for call in calls)

    def events(self, events: Sequence[Event]) -> Sequence[Event]:
        """
        @return: C{events} with every L{ToolCalls} event's ids made unique
            (the same sequence when there is none, which is every token's
            case).
        """
        for event in events:
            if type(event) is ToolCalls:
                break
        else:
            return events
        return [ToolCalls(self.calls(e.calls)) if type(e) is ToolCalls else e for e in events]

    def reply(self, reply: Reply) -> Reply:
        """
        @return: C{reply} with unique tool-call ids.
        """
        if not reply.toolCalls:
            return reply
        return reply._replace(toolCalls=self.calls(reply.toolCalls))


class UniqueToolIds:
    """
    A dialect's reply side (L{Dialect}), with the tool-call ids of the
    reply made unique before it encodes them.
    """

    def __init__(self, dialect: Dialect, ids: ToolIds) -> None:
        """
        @param dialect: the client's dialect.
        @param ids: the request's ids (one L{ToolIds} per reply).
        """
        self.dialect = dialect
        self.ids = ids
        self.errors: ErrorShape = dialect.errors
        """The dialect's own errors."""

    def streamEncoder(self, model: str, start: int) -> Encoder:
        """
        @return: a fresh encoder of the dialect, rewriting this reply's ids.
        """
        return self.adopt(self.dialect.streamEncoder(model, start))

    def adopt(self, encoder: Encoder) -> Encoder:
        """
        Have an encoder made before this wrapper (the one the keep-alives
        already write to) rewrite this reply's ids.

        @return: C{encoder}.
        """
        encoder.filter = self.ids
        return encoder

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        """
        @return: the dialect's answer object, with unique ids.
        """
        return self.dialect.reply(self.ids.reply(reply), model, start, end)


def uniqueToolIds(
    dialect: Dialect,
    request: ChatRequest,
    newId: Callable[[], str] = freshId,
    encoder: Encoder | None = None,
) -> UniqueToolIds:
    """
    The hook every dialect's generation goes through: one call, the
    encoder made before it included, so the walk of a request enters this
    module once before the stream (and then only from the encoder).

    @param dialect: the client's dialect for this request.
    @param request: the parsed request, whose history holds the taken ids.
    @param newId: makes a fresh id.
    @param encoder: the stream's encoder, if it was made already (the
        keep-alives write to it): it rewrites this reply's ids too
        (L{UniqueToolIds.adopt}).
    @return: C{dialect}, returning ids unique within the conversation.
    """
    unique = UniqueToolIds(dialect, ToolIds(historyIds(request.messages), newId))
    if encoder is not None:
        unique.adopt(encoder)
    return unique
