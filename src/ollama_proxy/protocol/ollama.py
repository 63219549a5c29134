# -*- test-case-name: tests.protocol.test_ollama -*-
"""
The Ollama dialect's reply side: events to C{/api/chat} and
C{/api/generate} NDJSON, a whole reply to the aggregated C{stream: false}
object, and the load/unload answer.

Streams always end with a C{done: true} object carrying C{done_reason},
token counts and durations (or, after a failure, an C{{"error"}} line,
never a fake C{done}).  The backend reports no timings, so they are
measured by the proxy: in a stream, prompt evaluation is the time to the
first token and evaluation the rest; a whole answer reports the one
interval measured for both (L{wholeMetrics}).  No duration is made up.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import Clock, formatTimestamp, wallClock
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.protocol.dialect import DONE, Answer, EncodedErrors, Encoder, EncoderMisuse, Generation
from ollama_proxy.protocol.events import (
    Delta,
    Event,
    Finish,
    Reply,
    ToolCall,
    ToolCalls,
    Usage,
)
from ollama_proxy.protocol.ollama_request import (
    parseChat,
    parseGenerate,
    parseTextCompletion,
    requireModel,
    streamFlag,
    thinkValue,
    wantsCompletion,
)

Kind = Literal["chat", "generate"]
"""Which Ollama route: C{message.content} (chat) or C{response} (generate)."""

NDJSON = b"application/x-ndjson"


def doneReason(finishReason: object) -> str:
    """
    Map an OpenAI C{finish_reason} onto Ollama's vocabulary.

    Ollama only knows C{stop} and C{length} for generation; tool calls and
    content filters end with C{stop}.

    @param finishReason: the OpenAI value (or C{None}).
    @return: C{"length"} or C{"stop"}.
    """
    return "length" if finishReason == "length" else "stop"


def metrics(start: int, firstToken: int | None, end: int, usage: Usage) -> JSON:
    """
    Ollama's timing and token fields for a final object.

    C{eval_duration} is never zero because UIs divide by it.

    @param start: when the request arrived (ns).
    @param firstToken: when the first token arrived (ns), if any.
    @param end: now (ns).
    @param usage: the backend's token counts.
    @return: the metric fields.
    """
    first = firstToken if firstToken is not None else end
    return {
        "total_duration": max(1, end - start),
        "load_duration": 0,
        "prompt_eval_count": usage.promptTokens if usage.promptTokens is not None else 0,
        "prompt_eval_duration": max(1, first - start),
        "eval_count": usage.completionTokens if usage.completionTokens is not None else 0,
        "eval_duration": max(1, end - first),
    }


def wholeMetrics(start: int, end: int, usage: Usage) -> JSON:
    """
    Ollama's timing and token fields for a whole (non-streamed) answer.

    A backend that answers whole does all its work before its first byte,
    and the proxy cannot tell prompt evaluation from generation inside
    that time.  So it reports the one interval it measured, from the
    request's arrival to the answer's last byte, as both
    C{prompt_eval_duration} and C{eval_duration}: each rate a client
    computes from them is an end-to-end lower bound of the real one,
    never the billions of tokens per second a made-up split (a 1 ns
    C{eval_duration}) produced.

    @param start: when the request arrived (ns).
    @param end: when the answer's last byte arrived (ns).
    @param usage: the backend's token counts.
    @return: the metric fields.
    """
    elapsed = max(1, end - start)
    return {
        "total_duration": elapsed,
        "load_duration": 0,
        "prompt_eval_count": usage.promptTokens if usage.promptTokens is not None else 0,
        "prompt_eval_duration": elapsed,
        "eval_count": usage.completionTokens if usage.completionTokens is not None else 0,
        "eval_duration": elapsed,
    }


def toolCallsJSON(calls: Sequence[ToolCall]) -> list[JSON]:
    """
    @param calls: complete tool calls.
    @return: Ollama's C{tool_calls}, with object arguments.
    """
    return [
        {
            "id": call.id,
            "function": {"index": call.position, "name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]


class NDJSONEncoder(Encoder):
    """
    Events to Ollama NDJSON lines, one line per event.

    The common line, C{{"model", "created_at", "message": {"role":
    "assistant", "content"}, "done": false}} (or C{response} for generate),
    is written from a template made once per timestamp (one per socket
    read), so only its content string is encoded per token; any other line
    goes through L{codec.dumpLine}.
    """

    contentType = NDJSON

    def __init__(self, model: str, kind: Kind, start: int, now: Clock = wallClock) -> None:
        """
        @param model: the client's model name, echoed on every line.
        @param kind: C{"chat"} or C{"generate"}.
        @param start: when the request arrived (ns).
        @param now: the wall clock, for C{created_at}.
        """
        self.model = model
        self.kind = kind
        self.start = start
        self._now = now
        self._stamp = ""
        self._prefix = b""
        self._modelJSON = codec.dumps(model)
        if kind == "chat":
            self._middle = b',"message":{"role":"assistant","content":'
            self._suffix = b'},"done":false}\n'
        else:
            self._middle = b',"response":'
            self._suffix = b',"done":false}\n'
        self._pieces = (b'{"model":' + self._modelJSON + b',"created_at":\n' + self._middle
                        + b"\n" + self._suffix)

    def _framing(self) -> bytes:
        """
        The common line's pieces; its timestamp is the varying part.
        """
        return self._pieces

    def _line(self, createdAt: str, content: str, thinking: str = "") -> JSON:
        """
        One C{done: false} object.
        """
        if self.kind == "chat":
            message: JSON = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            return {"model": self.model, "created_at": createdAt, "message": message,
                    "done": False}
        line: JSON = {"model": self.model, "created_at": createdAt, "response": content,
                      "done": False}
        if thinking:
            line["thinking"] = thinking
        return line

    def _encode(self, events: Sequence[Event]) -> bytes:
        """
        @param events: the events of one read.
        @return: one line per event.
        """
        if not events:
            return b""
        last = events[-1]
        createdAt = formatTimestamp(last.end if type(last) is Finish else self._now())
        if createdAt != self._stamp:
            # The line template of this timestamp (one per read).
            self._stamp = createdAt
            self._prefix = (b'{"model":' + self._modelJSON + b',"created_at":'
                            + codec.dumps(createdAt) + self._middle)
        prefix, suffix, dumps = self._prefix, self._suffix, codec.dumps
        out = []
        for event in events:
            if type(event) is Delta:
                if not event.thinking and event.logprobs is None:
                    out.append(prefix + dumps(event.content) + suffix)
                    continue
                line = self._line(createdAt, event.content, event.thinking)
                if event.logprobs:
                    line["logprobs"] = event.logprobs
                out.append(codec.dumpLine(line))
            elif type(event) is ToolCalls:
                line = self._line(createdAt, "")
                if self.kind == "chat":
                    line["message"]["tool_calls"] = toolCallsJSON(event.calls)
                else:
                    line["tool_calls"] = toolCallsJSON(event.calls)
                out.append(codec.dumpLine(line))
            elif type(event) is Finish:
                if event is not events[-1]:
                    raise EncoderMisuse(f"{type(self).__name__}: events after the Finish")
                self.state = DONE
                out.append(codec.dumpLine(self._final(createdAt, event)))
        return b"".join(out)

    def _final(self, createdAt: str, finish: Finish) -> JSON:
        """
        The C{done: true} object.
        """
        final = self._line(createdAt, "")
        final["done"] = True
        final["done_reason"] = doneReason(finish.reason)
        if finish.logprobs:
            final["logprobs"] = finish.logprobs
        final.update(metrics(self.start, finish.firstToken, finish.end, finish.usage))
        if self.kind == "generate":
            final["context"] = []
        return final

    def _failure(self, message: str) -> bytes:
        """
        @param message: why the stream failed.
        @return: Ollama's mid-stream error line.
        """
        return errorLine(message)

    def _wholeReply(self, reply: Reply, end: int) -> bytes:
        """
        A whole reply where a stream was asked for (a backend that ignored
        C{"stream": true}): the aggregated object as the only line.

        @return: the bytes of the stream.
        """
        self._open()
        self.state = DONE
        return codec.dumpLine(ollamaReply(reply, self.model, self.kind, self.start, end))


def errorLine(message: str) -> bytes:
    """
    @return: Ollama's error line, which ends a stream after a failure
        (never a fake C{done: true}).
    """
    return codec.dumpLine({"error": message})


class OllamaErrors(EncodedErrors):
    """
    Ollama's errors: C{{"error": text}} before the stream, an C{{"error"}}
    line in it (in its own NDJSON or in one the proxy relays).
    """

    def _object(self, status: int, message: str, param: str | None) -> JSON:
        return {"error": message}

    def _relayed(self, message: str) -> bytes:
        return errorLine(message)


ERRORS = OllamaErrors()


class OllamaDialect:
    """
    The Ollama reply dialect of C{/api/chat} or C{/api/generate}
    (L{ollama_proxy.protocol.dialect.Dialect}).
    """

    contentType = NDJSON
    errors = ERRORS

    def __init__(self, kind: Kind, now: Clock = wallClock) -> None:
        """
        @param kind: C{"chat"} or C{"generate"}.
        @param now: the wall clock (ns).
        """
        self.kind = kind
        self._now = now

    def streamEncoder(self, model: str, start: int) -> NDJSONEncoder:
        """
        @return: an encoder for one stream.
        """
        return NDJSONEncoder(model, self.kind, start, self._now)

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        """
        @return: the aggregated C{stream: false} object.
        """
        return ollamaReply(reply, model, self.kind, start, end)


class OllamaRoute:
    """
    C{/api/chat} or C{/api/generate} as a route speaks it
    (L{ollama_proxy.protocol.dialect.RouteDialect}): the model in the
    body, Ollama's parser with the model's default options, its errors,
    one reply side for every request (it needs nothing from the request).

    A request with nothing to generate is Ollama's load (or, with
    C{keep_alive: 0}, unload) answer, given without a backend; a raw or
    fill-in-the-middle C{/api/generate} is a text completion.
    """

    errors = ERRORS
    native = None

    def __init__(self, kind: Kind, now: Clock = wallClock) -> None:
        """
        @param kind: C{"chat"} or C{"generate"}.
        @param now: the wall clock (ns).
        """
        self.kind = kind
        self._now = now
        self._reply = OllamaDialect(kind, now)

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        """
        @return: the model name; C{stream} and C{think} are checked too,
            before routing, so that a bad value is a 400 even for a model
            no backend offers.
        """
        model = requireModel(body)
        streamFlag(body)
        thinkValue(body)
        return model

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation | Answer:
        defaults = override.options
        if self.kind == "chat":
            if not body.get("messages"):
                return self._load(body)
            return Generation(parseChat(body, defaults), self._reply)
        if not body.get("prompt") and not body.get("images"):
            return self._load(body)
        if wantsCompletion(body):
            asChat = None if body.get("suffix") else (
                lambda: parseGenerate({k: v for k, v in body.items() if k != "raw"}, defaults)
            )
            return Generation(parseTextCompletion(body, defaults), self._reply, asChat=asChat)
        return Generation(parseGenerate(body, defaults), self._reply)

    def _load(self, body: JSON) -> Answer:
        return Answer(loadResponse(
            requireModel(body), self.kind, body.get("keep_alive") == 0, self._now()
        ))


def ollamaReply(reply: Reply, model: str, kind: Kind, start: int, end: int) -> JSON:
    """
    One Ollama object with the same fields a stream would have carried,
    aggregated: C{thinking}, C{tool_calls} with object arguments,
    C{logprobs}, counts and durations.

    @param reply: the whole answer.
    @param model: the client's model name, echoed back.
    @param kind: C{"chat"} or C{"generate"} (text in C{response}, thinking
        and tool calls at the top level).
    @param start: request start (ns).
    @param end: when the backend's answer was complete (ns).
    @return: the aggregated Ollama response.
    """
    createdAt = formatTimestamp(end)
    result: JSON
    if kind == "chat":
        message: JSON = {"role": "assistant", "content": reply.content}
        if reply.thinking:
            message["thinking"] = reply.thinking
        if reply.toolCalls:
            message["tool_calls"] = toolCallsJSON(reply.toolCalls)
        result = {"model": model, "created_at": createdAt, "message": message}
    else:
        result = {"model": model, "created_at": createdAt, "response": reply.content}
        if reply.thinking:
            result["thinking"] = reply.thinking
        if reply.toolCalls:
            result["tool_calls"] = toolCallsJSON(reply.toolCalls)
    result["done"] = True
    result["done_reason"] = doneReason(reply.reason)
    if reply.logprobs:
        result["logprobs"] = reply.logprobs
    result.update(wholeMetrics(start, end, reply.usage))
    if kind == "generate":
        result["context"] = []
    return result


def loadResponse(model: str, kind: Kind, unload: bool, nowNs: int) -> JSON:
    """
    Ollama's reply to a request with nothing to generate (it loads or unloads
    the model); clients use it as a warm-up and rely on C{done_reason}.

    @param model: the client's model name.
    @param kind: C{"chat"} or C{"generate"}.
    @param unload: whether C{keep_alive} was 0.
    @param nowNs: the timestamp.
    @return: the C{done: true} object.
    """
    result: JSON = {"model": model, "created_at": formatTimestamp(nowNs)}
    if kind == "chat":
        result["message"] = {"role": "assistant", "content": ""}
    else:
        result["response"] = ""
    result["done"] = True
    result["done_reason"] = "unload" if unload else "load"
    return result
