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
"""

from __future__ import annotations

import io
from typing import Any, Mapping

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.anthropic import IdMaker, randomId
from ollama_proxy.protocol.blocks import THINKING, BlockEncoder
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.dialect import EncodedErrors
from ollama_proxy.protocol.events import Finish, Reply, ToolCall, Usage, replyEvents
from ollama_proxy.protocol.requests import ChatRequest
from ollama_proxy.protocol.responses_request import ResponsesContext, ToolName, parseResponsesRequest
from ollama_proxy.protocol.sse import sseEvent

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

    def __init__(
        self, model: str, start: int, context: ResponsesContext, newId: IdMaker = randomId
    ) -> None:
        """
        @param model: the client's model name, echoed.
        @param start: when the request arrived (ns), for C{created_at}.
        @param context: the request's echoed fields and tool names.
        @param newId: makes the response's and the items' ids.
        """
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
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sseEvent(kind.encode(), codec.dumps(data))

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
        return out + self._emit("response.content_part.added", **where, content_index=0,
                                part=_text(""))

    def _thinking(self, text: str) -> bytes:
        self._buffer.write(text)
        return self._emit("response.reasoning_summary_text.delta", item_id=self._item["id"],
                          output_index=len(self._output), summary_index=0, delta=text)

    def _text(self, text: str) -> bytes:
        self._buffer.write(text)
        # The per-token event, from a template made when the message
        # opened: only the sequence number and the text are encoded here.
        out = (_TEXT_DELTA + str(self._seq).encode() + self._textWhere
               + codec.dumps(text) + b',"logprobs":[]}\n\n')
        self._seq += 1
        return out

    def _stopBlock(self) -> bytes:
        item = self._item
        text = self._buffer.getvalue()
        self._buffer = io.StringIO()
        where = {"item_id": item["id"], "output_index": len(self._output)}
        out: list[bytes] = []
        if item["type"] == "message":
            out.append(self._emit("response.output_text.done", **where, content_index=0,
                                  text=text, logprobs=[]))
            out.append(self._emit("response.content_part.done", **where, content_index=0,
                                  part=_text(text)))
            item = {**item, "status": "completed", "content": [_text(text)]}
        else:
            part = {"type": "summary_text", "text": text}
            out.append(self._emit("response.reasoning_summary_text.done", **where,
                                  summary_index=0, text=text))
            out.append(self._emit("response.reasoning_summary_part.done", **where,
                                  summary_index=0, part=part))
            item = {**item, "summary": [part]}
        out.append(self._done(item))
        return b"".join(out)

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

    def _finish(self, finish: Finish) -> bytes:
        if finish.reason == "length" and self._context.echo.get("max_output_tokens"):
            self.response = self._object(
                "incomplete", finish.usage, incomplete_details={"reason": "max_output_tokens"}
            )
            return self._emit("response.incomplete", response=self.response)
        self.response = self._object(
            "completed", finish.usage, completed_at=finish.end // 1_000_000_000
        )
        return self._emit("response.completed", response=self.response)

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
        @return: the response object the stream would have ended with.
        """
        encoder = ResponsesEncoder(model, start, self.context, self._newId)
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

    def parse(self, body: JSON, params: Mapping[str, str]) -> tuple[ChatRequest, ResponsesDialect]:
        request, context = parseResponsesRequest(body)
        return request, ResponsesDialect(context, self._newId)


RESPONSES = ResponsesRoute()
