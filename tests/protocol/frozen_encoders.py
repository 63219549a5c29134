"""
A frozen copy of the Anthropic and Responses stream encoders (and the block
machine they share) as they were before issue 23's dialect work (main
2858fa9), kept only here: C{tests.protocol.test_blocks} checks that random
event streams, split into reads anywhere, with pings, failures, whole
replies and the text cap, still come out byte for byte the same from the
encoders in C{protocol/}.  Not to be edited or used by the code.
"""
# mypy: ignore-errors

from __future__ import annotations

import io
import os
import re
from typing import Any, Sequence

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.dialect import DONE, OPEN, Encoder, EncoderMisuse
from ollama_proxy.protocol.events import (
    Delta, Event, Finish, StreamFailed, ToolCall, ToolCalls, Usage,
)
from ollama_proxy.protocol.responses_request import ResponsesContext, ToolName

SSE = b"text/event-stream; charset=utf-8"

THINKING = "thinking"
TEXT = "text"


# The block machine (protocol/blocks.py)


class BlockEncoder(Encoder):
    """
    Events to a stream of blocks, with keep-alives (L{ping}) while the
    backend is silent.

    Subclasses implement L{_startBlock}, L{_stopBlock}, L{_thinking},
    L{_text}, L{_toolCall} and L{_finish}, and the base's L{_opening} and
    L{_failure}.

    A hook may raise L{StreamFailed} (a dialect's own limit): the events
    of the read before it go out in its C{output}, before the error.

    @ivar openKind: the kind of the open block (L{THINKING}, L{TEXT}), or
        C{None}.
    """

    contentType = SSE
    openKind: str | None = None

    def _startBlock(self, kind: str) -> bytes:
        """
        @return: the events that open a block of C{kind}.
        """
        raise NotImplementedError

    def _stopBlock(self) -> list[bytes]:
        """
        @return: the events that close the open block, as pieces joined
            once with the read's other events (a long text repeated by the
            closing events is not copied on the way).
        """
        raise NotImplementedError

    def _thinking(self, text: str) -> bytes:
        """
        @return: a reasoning delta in the open thinking block.
        """
        raise NotImplementedError

    def _text(self, text: str) -> bytes:
        """
        @return: a text delta in the open text block.
        """
        raise NotImplementedError

    def _toolCall(self, call: ToolCall) -> bytes:
        """
        @return: one complete tool call as its own block (none is open).
        """
        raise NotImplementedError

    def _finish(self, finish: Finish) -> list[bytes]:
        """
        @return: the reply's last events (no block is open), as pieces.
        """
        raise NotImplementedError

    def _firstPing(self) -> bytes:
        """
        @return: what a ping adds to the opening, the first time.
        """
        return b""

    def _ping(self) -> bytes:
        """
        @return: the keep-alive once the stream is open.
        """
        raise NotImplementedError

    def _close(self) -> list[bytes]:
        if self.openKind is None:
            return []
        out = self._stopBlock()
        self.openKind = None
        return out

    def _switch(self, kind: str, out: list[bytes]) -> None:
        out.extend(self._close())
        self.openKind = kind
        out.append(self._startBlock(kind))

    def ping(self) -> bytes:
        """
        @return: a keep-alive, preceded by the stream's opening events if
            they were not written yet, to show a waiting client that the
            stream is alive.
        @raise ollama_proxy.protocol.dialect.EncoderMisuse: after the end.
        """
        if self.state is OPEN:
            return self._ping()
        return self._open() + self._firstPing()

    def _encode(self, events: Sequence[Event]) -> bytes:
        out: list[bytes] = []
        try:
            for event in events:
                if type(event) is Delta:
                    if event.thinking:
                        if self.openKind != THINKING:
                            self._switch(THINKING, out)
                        out.append(self._thinking(event.thinking))
                    if event.content:
                        if self.openKind != TEXT:
                            self._switch(TEXT, out)
                        out.append(self._text(event.content))
                elif type(event) is ToolCalls:
                    for call in event.calls:
                        out.extend(self._close())
                        out.append(self._toolCall(call))
                elif type(event) is Finish:
                    if event is not events[-1]:
                        raise EncoderMisuse(f"{type(self).__name__}: events after the Finish")
                    self.state = DONE
                    out.extend(self._close())
                    out.extend(self._finish(event))
        except StreamFailed as e:
            # A dialect's own limit, part-way through the read: the events
            # before it still belong to the client, before the error.
            e.output = b"".join(out) + e.output
            raise
        return b"".join(out)


# Anthropic (protocol/anthropic.py)

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
        self._textFraming = self._textPrefix + b"\n}}\n\n"
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
        return self._textPrefix + codec.dumps(text) + b"}}\n\n"

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



# Responses (protocol/responses.py)

MAX_REPLY_TEXT = 16 * 1024 * 1024
"""
The most characters of text one output item of a streamed reply may have
(16 Mi: thirty times the longest reply a 128k-token model writes).  The
closing events repeat the whole text, so the proxy must keep it; past this
the stream ends with C{response.failed} (see docs/reliability.md for why
not C{response.incomplete}).
"""

KEEPALIVE = b": keep-alive\n\n"
"""An SSE comment: bytes on the wire that no client treats as an event."""

RESPONSES_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               404: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error"}
RESPONSES_ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded",
               503: "server_is_overloaded"}


def responsesErrorObject(status: int, message: str, param: str | None = None) -> JSON:
    """
    @return: OpenAI's error body for C{status} (C{param} and
        C{unsupported_parameter} for a field the proxy refuses).
    """
    code = "unsupported_parameter" if param else RESPONSES_ERROR_CODES.get(status)
    return {"error": {
        "message": message,
        "type": RESPONSES_ERROR_TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }}


def responsesUsageObject(usage: Usage | None) -> JSON | None:
    """
    @return: the Responses C{usage}, or C{None} before the end.
    """
    if usage is None:
        return None
    prompt = usage.promptTokens or 0
    completion = usage.completionTokens or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


_RESPONSES_TEXT_DELTA = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
               b'"sequence_number":')


_HOLES = re.compile(rb'"\\u0000([0-9a-f]{16}):(\d+)\\u0000"')
"""A held text's place in an encoded event (L{ResponsesEncoder._holeText});
compiled once, the stream's own nonce compared per hole (a pattern per
stream was compiled anew for every request: the cache misses on the
random nonce)."""


def _textPart(text: str) -> JSON:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class ResponsesEncoder(BlockEncoder):
    """
    Events to the Responses event stream (the shared block lifecycle,
    L{ollama_proxy.protocol.blocks.BlockEncoder}, with output items as the
    blocks), and the response object they make (L{response}, complete
    after the L{Finish}).

    @ivar response: the latest response object.
    """

    maxText = MAX_REPLY_TEXT

    def __init__(
        self, model: str, start: int, context: ResponsesContext, newId: Any,
        whole: bool = False,
    ) -> None:
        """
        @param model: the client's model name, echoed.
        @param start: when the request arrived (ns), for C{created_at}.
        @param context: the request's echoed fields and tool names.
        @param newId: makes the response's and the items' ids.
        @param whole: only build L{response} (the C{stream: false} object):
            no event is encoded, the texts stay strings, nothing is capped.
        """
        self._whole = whole
        # Closed items' texts, JSON-encoded once; events carry a hole
        # string in their place (a random nonce, so no client or backend
        # text can forge one) that _pieces fills by reference.
        nonce = os.urandom(8).hex()
        self._holeText = "\x00" + nonce + ":{}\x00"
        self._nonce = nonce.encode()
        self._texts: list[bytes] = []
        self._kept = 0
        self._model = model
        self._context = context
        self._newId = newId
        self._created = start // 1_000_000_000
        self._id = newId("resp_")
        self._seq = 0
        self._output: list[JSON] = []
        self._item: JSON = {}
        # The open item's whole text, repeated by its closing events (the
        # protocol's): one growing string, not a list of every delta (a
        # 50 MB reply in 10-byte deltas was 300 MB of small strings).
        self._buffer = io.StringIO()
        self._textWhere = b""
        self._textFraming = b""
        self.response = self._object("in_progress", None)

    def _object(self, status: str, usage: Usage | None, **fields: Any) -> JSON:
        obj: JSON = {
            "id": self._id, "object": "response", "created_at": self._created,
            "status": status, "error": None, "incomplete_details": None,
            "model": self._model, "output": list(self._output),
            "previous_response_id": None, "store": False, "background": False,
            "truncation": "disabled", "service_tier": "default",
            **self._context.echo,
            "usage": responsesUsageObject(usage),
        }
        obj.update(fields)
        return obj

    def _emit(self, kind: str, **fields: Any) -> bytes:
        return b"".join(self._pieces(kind, **fields))

    def _pieces(self, kind: str, **fields: Any) -> list[bytes]:
        """
        @return: one event as pieces to join, the held texts in their holes
            by reference (no copy until the one join).
        """
        seq = self._seq
        self._seq += 1
        if self._whole:
            return []
        data = codec.dumps({"type": kind, "sequence_number": seq, **fields})
        if not self._texts:
            return [b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"]
        parts = _HOLES.split(data)
        pieces = [b"event: " + kind.encode() + b"\ndata: ", parts[0]]
        for i in range(1, len(parts), 3):
            nonce, index = parts[i], parts[i + 1]
            if nonce == self._nonce:
                pieces.append(self._texts[int(index)])
            else:  # another stream's hole, in text: as it was
                pieces.append(b'"\\u0000' + nonce + b":" + index + b'\\u0000"')
            pieces.append(parts[i + 2])
        pieces.append(b"\n\n")
        return pieces

    def _opening(self) -> bytes:
        return (self._emit("response.created", response=self.response)
                + self._emit("response.in_progress", response=self.response))

    def _ping(self) -> bytes:
        return KEEPALIVE

    def _startBlock(self, kind: str) -> bytes:
        if kind == THINKING:
            item: JSON = {"id": self._newId("rs_"), "type": "reasoning", "summary": []}
        else:
            item = {"id": self._newId("msg_"), "type": "message", "status": "in_progress",
                    "role": "assistant", "content": []}
        self._item = item
        self._buffer = io.StringIO()
        out = self._emit("response.output_item.added", output_index=len(self._output), item=item)
        where = {"item_id": item["id"], "output_index": len(self._output)}
        if kind == THINKING:
            return out + self._emit("response.reasoning_summary_part.added", **where,
                                    summary_index=0, part={"type": "summary_text", "text": ""})
        self._textWhere = (b',"item_id":' + codec.dumps(item["id"]) + b',"output_index":'
                           + str(len(self._output)).encode() + b',"content_index":0,"delta":')
        self._textFraming = _RESPONSES_TEXT_DELTA + b"\n" + self._textWhere + b'\n,"logprobs":[]}\n\n'
        return out + self._emit("response.content_part.added", **where, content_index=0,
                                part=_textPart(""))

    def _keep(self, text: str) -> None:
        """
        Keep C{text} for the open item's closing events, within L{maxText}.

        @raise StreamFailed: past the cap (the block machine adds this
            read's events so far to its output).
        """
        self._kept += len(text)
        if self._kept > self.maxText and not self._whole:
            self._buffer = io.StringIO()
            self.openKind = None
            raise StreamFailed(
                f"the reply's text passed the proxy's limit of {self.maxText} characters per "
                "output item of a /v1/responses stream (its closing events repeat the whole "
                "text); ask for a shorter reply",
            )
        self._buffer.write(text)

    def _thinking(self, text: str) -> bytes:
        self._keep(text)
        return self._emit("response.reasoning_summary_text.delta", item_id=self._item["id"],
                          output_index=len(self._output), summary_index=0, delta=text)

    def _framing(self) -> bytes | None:
        """
        The text delta's pieces, while a message is open (its sequence
        number is the varying part).
        """
        if self.openKind != TEXT or self._whole:
            return None
        return self._textFraming

    def _text(self, text: str) -> bytes:
        self._keep(text)
        if self._whole:
            return b""
        # The per-token event, from a template made when the message
        # opened: only the sequence number and the text are encoded here.
        out = (_RESPONSES_TEXT_DELTA + str(self._seq).encode() + self._textWhere
               + codec.dumps(text) + b',"logprobs":[]}\n\n')
        self._seq += 1
        return out

    def _stopBlock(self) -> list[bytes]:
        item = self._item
        text = self._buffer.getvalue()
        self._buffer = io.StringIO()
        self._kept = 0
        if not self._whole:
            self._texts.append(codec.dumps(text))
            text = self._holeText.format(len(self._texts) - 1)
        where = {"item_id": item["id"], "output_index": len(self._output)}
        out: list[bytes] = []
        if item["type"] == "message":
            out += self._pieces("response.output_text.done", **where, content_index=0,
                                text=text, logprobs=[])
            out += self._pieces("response.content_part.done", **where, content_index=0,
                                part=_textPart(text))
            item = {**item, "status": "completed", "content": [_textPart(text)]}
        else:
            part = {"type": "summary_text", "text": text}
            out += self._pieces("response.reasoning_summary_text.done", **where,
                                summary_index=0, text=text)
            out += self._pieces("response.reasoning_summary_part.done", **where,
                                summary_index=0, part=part)
            item = {**item, "summary": [part]}
        out += self._pieces("response.output_item.done", output_index=len(self._output),
                            item=item)
        self._output.append(item)
        return out

    def _done(self, item: JSON) -> bytes:
        out = self._emit("response.output_item.done", output_index=len(self._output), item=item)
        self._output.append(item)
        return out

    def _toolCall(self, call: ToolCall) -> bytes:
        name = self._context.names.get(call.name, ToolName(call.name))
        index = len(self._output)
        if name.custom:
            raw = call.arguments.get("input")
            text = raw if isinstance(raw, str) else codec.dumps(call.arguments).decode()
            item: JSON = {"id": self._newId("ctc_"), "type": "custom_tool_call",
                          "status": "in_progress", "call_id": call.id, "name": name.name,
                          "input": ""}
            where = {"item_id": item["id"], "output_index": index}
            out = self._emit("response.output_item.added", output_index=index, item=item)
            out += self._emit("response.custom_tool_call_input.delta", **where, delta=text)
            out += self._emit("response.custom_tool_call_input.done", **where, input=text)
            return out + self._done({**item, "status": "completed", "input": text})
        arguments = codec.dumps(call.arguments).decode()
        item = {"id": self._newId("fc_"), "type": "function_call", "status": "in_progress",
                "call_id": call.id, "name": name.name, "arguments": ""}
        if name.namespace:
            item["namespace"] = name.namespace
        where = {"item_id": item["id"], "output_index": index}
        out = self._emit("response.output_item.added", output_index=index, item=item)
        out += self._emit("response.function_call_arguments.delta", **where, delta=arguments)
        out += self._emit("response.function_call_arguments.done", **where, name=name.name,
                          arguments=arguments)
        return out + self._done({**item, "status": "completed", "arguments": arguments})

    def _finish(self, finish: Finish) -> list[bytes]:
        if finish.reason == "length" and self._context.echo.get("max_output_tokens"):
            self.response = self._object(
                "incomplete", finish.usage, incomplete_details={"reason": "max_output_tokens"}
            )
            return self._pieces("response.incomplete", response=self.response)
        self.response = self._object(
            "completed", finish.usage, completed_at=finish.end // 1_000_000_000
        )
        return self._pieces("response.completed", response=self.response)

    def _failure(self, message: str) -> bytes:
        """
        @return: C{response.failed} with the items completed so far.
        """
        self.response = self._object(
            "failed", None, error={"code": "server_error", "message": message}
        )
        return self._emit("response.failed", response=self.response)
