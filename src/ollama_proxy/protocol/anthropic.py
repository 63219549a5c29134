# -*- test-case-name: tests.protocol.test_anthropic -*-
"""
The Anthropic Messages dialect's reply side: events to the SSE event
sequence of C{/v1/messages}, a whole reply to the message object, and the
error objects, before and during a stream.

The sequence is what Anthropic's SDKs accumulate: C{message_start}, then
per content block (indexed from 0, one open at a time)
C{content_block_start} / C{content_block_delta} / C{content_block_stop},
then C{message_delta} (stop reason and cumulative usage) and
C{message_stop}.  Thinking, text and tool calls are separate blocks, in the
order they arrive.  A failure after the stream began is an C{event: error},
never a C{message_stop}.
"""

from __future__ import annotations

import os
from typing import Callable, Mapping

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.anthropic_request import parseMessagesRequest
from ollama_proxy.protocol.blocks import TEXT, THINKING, BlockEncoder
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.protocol.dialect import EncodedErrors, Generation
from ollama_proxy.protocol.events import Finish, Reply, ToolCall, Usage
from ollama_proxy.protocol.requests import estimateTokens

IdMaker = Callable[[str], str]
"""Makes an id from a prefix (C{msg_}, C{resp_}, ...)."""


class RandomHex:
    """
    Hex digits from the operating system's random source (C{os.urandom},
    as C{secrets} draws them), drawn 4 KiB at a time and each digit handed
    out once: a stream's ids (and the Responses stream's nonce) cost a
    slice, not a C{getrandom} system call each (three per Responses
    stream).  The digits are as unpredictable as C{secrets.token_hex}'s;
    one id shown to a client says nothing of the next.  A forked child
    draws afresh (it must not hand out its parent's digits again).

    Not for threads: the reactor's thread is the one caller.
    """

    size = 4096

    def __init__(self) -> None:
        self._digits = ""
        self._at = 0
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.forget)

    def forget(self) -> None:
        """Drop what is left: the next ask draws anew."""
        self._digits, self._at = "", 0

    def take(self, n: int) -> str:
        """
        @param n: how many digits (at most L{size} * 2).
        @return: C{n} random hex digits never handed out before.
        """
        at = self._at
        end = at + n
        if end > len(self._digits):
            self._digits, at, end = os.urandom(self.size).hex(), 0, n
        self._at = end
        return self._digits[at:end]


randomHex = RandomHex().take
"""C{n} random hex digits (L{RandomHex})."""


def randomId(prefix: str) -> str:
    """
    @return: C{prefix} and 24 random hex digits, as Anthropic's and OpenAI's
        ids.
    """
    return prefix + randomHex(24)


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
"""HTTP statuses as Anthropic's error types (anything else: C{api_error})."""


def errorObject(status: int, message: str) -> JSON:
    """
    @return: Anthropic's error body for C{status}.
    """
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
    }


def stopReason(reason: str | None, toolUse: bool) -> str:
    """
    An OpenAI C{finish_reason} as Anthropic's C{stop_reason}.

    @param reason: the backend's finish reason.
    @param toolUse: whether the reply called tools (which wins, as with
        Ollama: some backends say C{stop} after tool calls).
    """
    if toolUse or reason in ("tool_calls", "function_call"):
        return "tool_use"
    if reason == "length":
        return "max_tokens"
    if reason == "content_filter":
        return "refusal"
    return "end_turn"


def usageObject(usage: Usage, inputEstimate: int) -> JSON:
    """
    @return: Anthropic's C{usage}: the backend's counts, the estimate for
        input tokens it did not report.
    """
    return {
        "input_tokens": usage.promptTokens if usage.promptTokens is not None else inputEstimate,
        "output_tokens": usage.completionTokens if usage.completionTokens is not None else 0,
    }


def _event(kind: bytes, obj: JSON) -> bytes:
    """
    @return: one named event (Anthropic's SDKs dispatch on the C{event:}
        line): C{event: <kind>}, C{data: <obj>}, a blank line.
    """
    return b"event: " + kind + b"\ndata: " + codec.dumps(obj) + b"\n\n"


PING = _event(b"ping", {"type": "ping"})
_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_END = b"}}\n\n"
_QUOTED_END = b'"' + _TEXT_END


class AnthropicEncoder(BlockEncoder):
    """
    Events to Anthropic's SSE sequence: the shared block lifecycle
    (L{ollama_proxy.protocol.blocks.BlockEncoder}) with Anthropic's events.

    C{message_start} is written before anything else: with the first
    events, or with the first L{ping} when the backend is slow to start.
    """

    def __init__(self, model: str, messageId: str, inputEstimate: int) -> None:
        """
        @param model: the client's model name, echoed.
        @param messageId: the C{msg_} id.
        @param inputEstimate: input tokens until the backend reports them.
        """
        self.model = model
        self.messageId = messageId
        self.inputEstimate = inputEstimate
        self._index = -1
        self._toolUse = False
        self._textPrefix = b""
        self._textJoin = b""
        self._textFraming = b""

    def _opening(self) -> bytes:
        return _event(b"message_start", {
            "type": "message_start",
            "message": {
                "id": self.messageId, "type": "message", "role": "assistant",
                "model": self.model, "content": [], "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": self.inputEstimate, "output_tokens": 0},
            },
        })

    def _firstPing(self) -> bytes:
        return PING

    def _ping(self) -> bytes:
        return PING

    def _blockStart(self, block: JSON) -> bytes:
        self._index += 1
        return _event(b"content_block_start", {
            "type": "content_block_start", "index": self._index, "content_block": block,
        })

    def _startBlock(self, kind: str) -> bytes:
        if kind == THINKING:
            return self._blockStart({"type": "thinking", "thinking": "", "signature": ""})
        out = self._blockStart({"type": "text", "text": ""})
        # The per-token event around the text, made once per text block.
        self._textPrefix = (_TEXT_DELTA + str(self._index).encode()
                            + b',"delta":{"type":"text_delta","text":')
        self._textJoin = _TEXT_END + self._textPrefix
        self._textFraming = self._textPrefix + b"\n" + _TEXT_END
        return out

    def _stopBlock(self) -> list[bytes]:
        return [self._blockStop()]

    def _blockStop(self) -> bytes:
        return _event(b"content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _thinking(self, text: str) -> bytes:
        return _event(b"content_block_delta", {
            "type": "content_block_delta", "index": self._index,
            "delta": {"type": "thinking_delta", "thinking": text},
        })

    def _framing(self) -> bytes | None:
        """
        The text delta's pieces, while a text block is open.
        """
        return self._textFraming if self.openKind == TEXT else None

    def _text(self, text: str) -> bytes:
        return self._textPrefix + codec.dumps(text) + _TEXT_END

    def _textRun(self, texts: list[str], out: list[bytes]) -> None:
        """
        A run of text deltas: the texts encoded and joined by the bytes
        between two of them (one delta's end, the next one's start), with
        no Python step per token.
        """
        # The texts' quotes are the framing's: the texts encoded in one call.
        out += (self._textPrefix + b'"', (b'"' + self._textJoin + b'"').join(codec.dumpsBodies(texts)),
                _QUOTED_END)

    def _toolCall(self, call: ToolCall) -> bytes:
        self._toolUse = True
        out = self._blockStart({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
        out += _event(b"content_block_delta", {
            "type": "content_block_delta", "index": self._index,
            "delta": {"type": "input_json_delta", "partial_json": codec.dumps(call.arguments).decode()},
        })
        return out + self._blockStop()

    def _finish(self, finish: Finish) -> list[bytes]:
        return [_event(b"message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": stopReason(finish.reason, self._toolUse), "stop_sequence": None},
            "usage": usageObject(finish.usage, self.inputEstimate),
        }), _event(b"message_stop", {"type": "message_stop"})]

    def _failure(self, message: str) -> bytes:
        """
        @return: C{event: error} (after C{message_start}, so SDKs that
            insist on it first still read the error).
        """
        return _event(b"error", errorObject(502, message))


class AnthropicErrors(EncodedErrors):
    """
    Anthropic's errors: C{{"type": "error", "error": {"type", "message"}}}
    before the stream, C{event: error} in it.
    """

    def _object(self, status: int, message: str, param: str | None) -> JSON:
        return errorObject(status, message)


ERRORS = AnthropicErrors()


class AnthropicDialect:
    """
    The Anthropic reply dialect (L{ollama_proxy.protocol.dialect.Dialect})
    of one request: it knows the request's input estimate.
    """

    errors = ERRORS

    def __init__(self, inputEstimate: int, newId: IdMaker = randomId) -> None:
        """
        @param inputEstimate: the request's estimated input tokens.
        @param newId: makes the message id.
        """
        self.inputEstimate = inputEstimate
        self._newId = newId

    def streamEncoder(self, model: str, start: int) -> AnthropicEncoder:
        """
        @return: a fresh encoder for one stream.
        """
        return AnthropicEncoder(model, self._newId("msg_"), self.inputEstimate)

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        """
        @return: the message object: thinking, text, then tool_use blocks.
        """
        content: list[JSON] = []
        if reply.thinking:
            content.append({"type": "thinking", "thinking": reply.thinking, "signature": ""})
        if reply.content:
            content.append({"type": "text", "text": reply.content})
        content.extend(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
            for call in reply.toolCalls
        )
        return {
            "id": self._newId("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stopReason(reply.reason, bool(reply.toolCalls)),
            "stop_sequence": None,
            "usage": usageObject(reply.usage, self.inputEstimate),
        }


class MessagesRoute:
    """
    C{/v1/messages} as a route speaks it
    (L{ollama_proxy.protocol.dialect.RouteDialect}): the model in the
    body, Anthropic's parser and errors, a reply side that knows the
    request's input estimate.
    """

    errors = ERRORS
    native = "messages"

    def __init__(self, newId: IdMaker = randomId) -> None:
        self._newId = newId

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        return body.get("model")

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation:
        request = parseMessagesRequest(body)
        return Generation(request, AnthropicDialect(estimateTokens(request), self._newId))


MESSAGES = MessagesRoute()
