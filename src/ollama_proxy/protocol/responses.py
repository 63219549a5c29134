# -*- test-case-name: tests.protocol.test_responses -*-
"""
The OpenAI Responses dialect's reply side: events to the C{/v1/responses}
event stream, a whole reply to the response object, and the errors.

Every event is C{event: <type>} plus a C{data} object with C{type} and a
C{sequence_number} counting from 0.  The stream opens with
C{response.created} and C{response.in_progress}; each output item
(C{reasoning}, C{message}, C{function_call}, C{custom_tool_call}) is opened
with C{output_item.added}, filled with its deltas and closed with its
C{.done} events before the next one opens (Codex records history from the
C{output_item.done} items); it ends with C{response.completed} (or
C{response.incomplete} when C{max_output_tokens} cut the reply).  A failure
after the stream began is C{response.failed} with the items completed so
far: Codex reads no other error event.

Memory: the protocol repeats an item's whole text in three closing events
and the response object in C{response.completed}, so the text is kept until
the item closes.  It is JSON-encoded once: the closing events are written
around it as byte pieces, and the response objects that repeat it carry a
hole where it goes, filled by reference; the pieces are joined once, so a
streamed reply peaks at about six times its text instead of re-encoding it
four times and joining the copies.

Speed (issue 23): every event is written from byte pieces made when its
item opens (no object built and encoded per event but the response
object); a read's run of text deltas is one call that joins their encoded
texts and sequence numbers (L{ResponsesEncoder._textRun}).  The wire is
pinned byte for byte against the encoder before this
(C{tests/protocol/frozen_encoders.py}).  The text one item keeps is capped (L{MAX_REPLY_TEXT}); past it
the stream ends with C{response.failed} naming the cap.  The C{stream:
false} object repeats nothing and is built without encoding any event.
"""

from __future__ import annotations

import io
from typing import Any, Mapping

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.anthropic import IdMaker, randomHex, randomId
from ollama_proxy.protocol.blocks import TEXT, THINKING, BlockEncoder
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.protocol.dialect import EncodedErrors, Generation
from ollama_proxy.protocol.events import Finish, Reply, StreamFailed, ToolCall, Usage, replyEvents
from ollama_proxy.protocol.responses_request import ResponsesContext, ToolName, parseResponsesRequest

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

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error",
               404: "invalid_request_error", 413: "invalid_request_error",
               415: "invalid_request_error", 429: "rate_limit_error"}
ERROR_CODES = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded",
               503: "server_is_overloaded"}


def errorObject(status: int, message: str, param: str | None = None) -> JSON:
    """
    @return: OpenAI's error body for C{status} (C{param} and
        C{unsupported_parameter} for a field the proxy refuses).
    """
    code = "unsupported_parameter" if param else ERROR_CODES.get(status)
    return {"error": {
        "message": message,
        "type": ERROR_TYPES.get(status, "server_error"),
        "param": param,
        "code": code,
    }}


def usageObject(usage: Usage | None) -> JSON | None:
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


_TEXT_DELTA = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
               b'"sequence_number":')
_TEXT_END = b',"logprobs":[]}\n\n'
_TEXT_BETWEEN = _TEXT_END + _TEXT_DELTA
_QUOTED_END = b'"' + _TEXT_END
_QUOTED_BETWEEN = b'"' + _TEXT_BETWEEN
_EMPTY_TEXT = b'"part":{"type":"output_text","text":"","annotations":[],"logprobs":[]}}\n\n'
_EMPTY_SUMMARY = b'"summary_index":0,"part":{"type":"summary_text","text":""}}\n\n'

_NUMBERS = tuple(str(n).encode() for n in range(4096))
"""The first sequence numbers as they are written: a text delta's number
is looked up, not formatted (formatting an integer cost a third of what
the rest of a delta's event did).  Longer streams format the rest."""


_HOLE_END = b'\\u0000"'
"""How a held text's hole ends in an encoded event, after its index."""


def _text(text: str) -> JSON:
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
        self, model: str, start: int, context: ResponsesContext, newId: IdMaker = randomId,
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
        # Closed items' texts, JSON-encoded once; the response object
        # carries a hole string in their place (a random nonce, drawn when
        # the first item closes, so no client or backend text can forge
        # one) that _pieces fills by reference.
        self._holeText = ""
        self._nonce = b""
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
        self._textWhere = self._textWhereQuoted = b""
        self._textFraming = b""
        self._where = b""
        self.response = self._object("in_progress", None)

    def _object(self, status: str, usage: Usage | None, **fields: Any) -> JSON:
        obj: JSON = {
            "id": self._id, "object": "response", "created_at": self._created,
            "status": status, "error": None, "incomplete_details": None,
            "model": self._model, "output": list(self._output),
            "previous_response_id": None, "store": False, "background": False,
            "truncation": "disabled", "service_tier": "default",
            **self._context.echo,
            "usage": usageObject(usage),
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
        # Cut at this stream's holes (C{"\\u0000<nonce>:}: a whole JSON
        # string, the nonce no text can hold); anything like a hole with
        # another nonce is text, and stays as it is.
        parts = data.split(b'"\\u0000' + self._nonce + b":")
        pieces = [b"event: " + kind.encode() + b"\ndata: ", parts[0]]
        for part in parts[1:]:
            end = part.index(_HOLE_END)
            pieces += (self._texts[int(part[:end])], part[end + len(_HOLE_END):])
        pieces.append(b"\n\n")
        return pieces

    def _head(self, kind: bytes) -> bytes:
        """
        @return: an event's start, up to the comma before its fields: its
            name, its type and its sequence number (counted).
        """
        seq = self._seq
        self._seq = seq + 1
        return (b"event: " + kind + b'\ndata: {"type":"' + kind + b'","sequence_number":'
                + (_NUMBERS[seq] if seq < len(_NUMBERS) else str(seq).encode()) + b",")

    def _opening(self) -> bytes:
        if self._whole:
            self._seq += 2
            return b""
        # No item is closed yet: the object holds no hole, encoded once.
        response = b'"response":' + codec.dumps(self.response) + b"}\n\n"
        return (self._head(b"response.created") + response
                + self._head(b"response.in_progress") + response)

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
        if self._whole:
            self._seq += 2
            return b""
        # The item's place, written once for its events: no object is
        # built or encoded per event (the closing ones included).
        index = str(len(self._output)).encode()
        self._where = where = (b'"item_id":' + codec.dumps(item["id"]) + b',"output_index":'
                               + index + b",")
        out = (self._head(b"response.output_item.added") + b'"output_index":' + index
               + b',"item":' + codec.dumps(item) + b"}\n\n")
        if kind == THINKING:
            return out + self._head(b"response.reasoning_summary_part.added") + where + _EMPTY_SUMMARY
        self._textWhere = b"," + where + b'"content_index":0,"delta":'
        self._textWhereQuoted = self._textWhere + b'"'
        self._textFraming = _TEXT_DELTA + b"\n" + self._textWhere + b"\n" + _TEXT_END
        return (out + self._head(b"response.content_part.added") + where
                + b'"content_index":0,' + _EMPTY_TEXT)

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
        kept = self._kept + len(text)
        if kept > self.maxText or self._whole:
            self._keep(text)  # past the cap: the failure
            return b""
        self._kept = kept
        self._buffer.write(text)
        # The per-token event, from the pieces made when the message
        # opened: only the text is encoded here.
        seq = self._seq
        self._seq = seq + 1
        return (_TEXT_DELTA + (_NUMBERS[seq] if seq < len(_NUMBERS) else str(seq).encode())
                + self._textWhere + codec.dumps(text) + _TEXT_END)

    def _textRun(self, texts: list[str], out: list[bytes]) -> None:
        """
        A run of text deltas, kept in one write and written from the
        message's pieces: each event's sequence number and the message's
        place joined, the events joined by the bytes between two (one's
        end, the next one's start), no Python step per token.  A run that
        passes the cap, or a whole reply, goes delta by delta (L{_text}),
        so that the failure comes at the delta it always came at.
        """
        joined = texts[0] if len(texts) == 1 else "".join(texts)
        kept = self._kept + len(joined)
        if kept > self.maxText or self._whole:
            return super()._textRun(texts, out)
        self._kept = kept
        self._buffer.write(joined)
        seq = self._seq
        end = self._seq = seq + len(texts)
        numbers = _NUMBERS[seq:end] if end <= len(_NUMBERS) else [
            str(n).encode() for n in range(seq, end)]
        # The texts' quotes are the framing's: the texts encoded in one call.
        out += (_TEXT_DELTA, _QUOTED_BETWEEN.join(
            map(self._textWhereQuoted.join, zip(numbers, codec.dumpsBodies(texts)))),
            _QUOTED_END)

    def _stopBlock(self) -> list[bytes]:
        item = self._item
        text = self._buffer.getvalue()
        self._buffer = io.StringIO()
        self._kept = 0
        message = item["type"] == "message"
        if self._whole:
            self._seq += 3
            part = _text(text) if message else {"type": "summary_text", "text": text}
            self._output.append({**item, "status": "completed", "content": [part]} if message
                                else {**item, "summary": [part]})
            return []
        if not self._texts:
            nonce = randomHex(16)
            self._holeText = "\x00" + nonce + ":{}\x00"
            self._nonce = nonce.encode()
        # The text encoded once, its three closing events built around it
        # by reference; the response object gets its hole.
        encoded = codec.dumps(text)
        self._texts.append(encoded)
        hole = self._holeText.format(len(self._texts) - 1)
        where, index = self._where, str(len(self._output)).encode()
        ident = codec.dumps(item["id"])
        if message:
            self._output.append({**item, "status": "completed", "content": [_text(hole)]})
            return [
                self._head(b"response.output_text.done") + where + b'"content_index":0,"text":',
                encoded, _TEXT_END,
                self._head(b"response.content_part.done") + where
                + b'"content_index":0,"part":{"type":"output_text","text":', encoded,
                b',"annotations":[],"logprobs":[]}}\n\n',
                self._head(b"response.output_item.done") + b'"output_index":' + index
                + b',"item":{"id":' + ident + b',"type":"message","status":"completed",'
                b'"role":"assistant","content":[{"type":"output_text","text":', encoded,
                b',"annotations":[],"logprobs":[]}]}}\n\n',
            ]
        self._output.append({**item, "summary": [{"type": "summary_text", "text": hole}]})
        return [
            self._head(b"response.reasoning_summary_text.done") + where
            + b'"summary_index":0,"text":', encoded, b"}\n\n",
            self._head(b"response.reasoning_summary_part.done") + where
            + b'"summary_index":0,"part":{"type":"summary_text","text":', encoded, b"}}\n\n",
            self._head(b"response.output_item.done") + b'"output_index":' + index
            + b',"item":{"id":' + ident + b',"type":"reasoning","summary":[{"type":"summary_text",'
            b'"text":', encoded, b"}]}}\n\n",
        ]

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


class ResponsesErrors(EncodedErrors):
    """
    OpenAI's errors: C{{"error": {"message", "type", "param", "code"}}}
    before the stream (the refused field as C{param}), C{response.failed}
    in it.
    """

    def _object(self, status: int, message: str, param: str | None) -> JSON:
        return errorObject(status, message, param)


ERRORS = ResponsesErrors()


class ResponsesDialect:
    """
    The Responses reply dialect (L{ollama_proxy.protocol.dialect.Dialect})
    of one request: it knows the request's echoed fields and tool names.
    """

    errors = ERRORS

    def __init__(self, context: ResponsesContext, newId: IdMaker = randomId) -> None:
        self.context = context
        self._newId = newId

    def streamEncoder(self, model: str, start: int) -> ResponsesEncoder:
        """
        @return: a fresh encoder for one stream.
        """
        return ResponsesEncoder(model, start, self.context, self._newId)

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        """
        @return: the response object the stream would have ended with
            (built without encoding any event).
        """
        encoder = ResponsesEncoder(model, start, self.context, self._newId, whole=True)
        encoder.encode(replyEvents(reply, end))
        return encoder.response


class ResponsesRoute:
    """
    C{/v1/responses} as a route speaks it
    (L{ollama_proxy.protocol.dialect.RouteDialect}): the model in the
    body, the stateless parser (a refused field is an error naming it as
    C{param}), OpenAI's errors, a reply side that knows the echoed fields.
    """

    errors = ERRORS
    native = "responses"

    def __init__(self, newId: IdMaker = randomId) -> None:
        self._newId = newId

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        return body.get("model")

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation:
        request, context = parseResponsesRequest(body)
        return Generation(request, ResponsesDialect(context, self._newId))


RESPONSES = ResponsesRoute()
