"""
TODO
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import Clock, formatTimestamp, wallClock
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import StreamFailed, UpstreamError
from ollama_proxy.protocol.requests import Kind
from ollama_proxy.protocol.thinktags import ThinkTagSplitter, splitThinkTags


def doneReason(finishReason: Any) -> str:
    """
    Map an OpenAI C{finish_reason} onto Ollama's vocabulary.

    Ollama only knows C{stop} and C{length} for generation; tool calls and
    content filters end with C{stop}.

    @param finishReason: the OpenAI value (or C{None}).
    @return: C{"length"} or C{"stop"}.
    """
    return "length" if finishReason == "length" else "stop"


def contentText(content: Any) -> str:
    """
    The text of an OpenAI C{content} that is not a plain string.

    Some servers (Mistral's reasoning models) send a list of parts,
    C{[{"type": "text", "text": ...}, ...]}, as chat requests may; the text
    parts, joined, are the reply.

    @param content: C{message.content} or C{delta.content}.
    @return: the joined text parts; C{""} for C{null} or anything else.
    """
    if not isinstance(content, list):
        return ""
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    )


def toolCallsFromOpenAI(calls: Any) -> list[JSON]:
    """
    Convert complete OpenAI tool calls into Ollama's shape, with the
    arguments as a JSON object.

    @param calls: OpenAI C{tool_calls} with string arguments, as the backend
        sent them.
    @return: Ollama C{tool_calls}.
    @raise UpstreamError: if arguments are not a JSON object; reporting it is
        better than calling a tool with C{{}}.  The message names the tool
        and quotes the arguments, so the user can see what the model wrote.
        Also if C{calls} is not a list of objects with object C{function}s
        (a non-streamed reply's C{tool_calls} come straight from the
        backend).
    """
    if not isinstance(calls, list):
        raise UpstreamError("backend returned tool_calls that are not a list")
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if function is None and isinstance(call, dict):
            function = {}
        if not isinstance(function, dict):
            raise UpstreamError("backend returned a malformed tool call")
        raw = function.get("arguments")
        if isinstance(raw, dict):
            arguments = raw
        elif raw is None or raw == "":
            arguments = {}
        else:
            try:
                arguments = codec.loads(raw)
            except codec.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                raise UpstreamError(
                    f"backend returned tool call {function.get('name')!r} "
                    f"with arguments that are not a JSON object: {raw!r}"
                )
        name = function.get("name")
        if name is None:
            name = ""
        elif not isinstance(name, str):
            raise UpstreamError("backend returned a tool call whose name is not a string")
        callId = call.get("id")
        if not isinstance(callId, str) or not callId:
            callId = _responseCallId(index, name, raw)
        out.append(
            {
                "id": callId,
                "function": {"index": index, "name": name, "arguments": arguments},
            }
        )
    return out


def _responseCallId(index: int, name: str, arguments: Any) -> str:
    """
    An id for a tool call the backend sent without one.

    Ollama gives every call an id and clients echo it back with the result;
    deriving it from the call keeps this module pure and repeatable while
    still differing between calls.

    @param index: the call's position.
    @param name: the function name.
    @param arguments: the raw arguments.
    @return: C{call_} and eight hex digits.
    """
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode("utf-8"))
    return "call_" + digest.hexdigest()[:8]


def _errorMessage(payload: JSON) -> str:
    """
    Extract a message from an OpenAI-style error object.

    @param payload: a decoded body with an C{error} key.
    @return: the most specific text available.
    """
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg") or error
        return message if isinstance(message, str) else codec.dumps(message).decode()
    if isinstance(error, str):
        return error
    return codec.dumps(payload).decode()


def errorFromBody(body: bytes, status: int) -> str:
    """
    The message to show for an upstream non-2xx response.

    @param body: the raw upstream body.
    @param status: the upstream status code.
    @return: the upstream's own message when it sent JSON, else its text.
    """
    try:
        decoded = codec.loads(body)
    except codec.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and ("error" in decoded or "detail" in decoded):
        if "error" in decoded:
            return _errorMessage(decoded)
        detail = decoded["detail"]
        return detail if isinstance(detail, str) else codec.dumps(detail).decode()
    text = body.decode("utf-8", "replace").strip()
    return text[:2000] or f"backend returned HTTP {status}"


def _tokenLogprob(entry: Mapping[str, Any]) -> JSON:
    """
    One OpenAI token log-probability in Ollama's shape.

    @param entry: C{{"token", "logprob", "bytes"}}.
    @return: C{{"token", "logprob"}} plus C{bytes} when present (Ollama
        omits it when empty).
    """
    out: JSON = {"token": entry.get("token") or "", "logprob": entry.get("logprob", 0.0)}
    raw = entry.get("bytes")
    if raw:
        out["bytes"] = raw
    return out


def logprobsFromOpenAI(logprobs: Any) -> list[JSON]:
    """
    Translate an OpenAI choice's C{logprobs} into Ollama's chunk-level
    C{logprobs} list.

    @param logprobs: C{choices[0].logprobs}: C{{"content": [{"token",
        "logprob", "bytes", "top_logprobs": [...]}]}} or C{None}.
    @return: C{[{"token", "logprob", "bytes"?, "top_logprobs"?}]}, empty when
        there is nothing.
    """
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return []
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            continue
        item = _tokenLogprob(entry)
        top = entry.get("top_logprobs")
        if isinstance(top, list) and top:
            item["top_logprobs"] = [_tokenLogprob(t) for t in top if isinstance(t, dict)]
        out.append(item)
    return out


class StreamTranslator:
    """
    Turn decoded OpenAI stream chunks into Ollama chunk objects.

    Content and reasoning deltas become one Ollama chunk each (reasoning from
    C{reasoning_content}, C{reasoning} or a leading C{<think>} block, all as
    C{thinking}, or dropped for C{think: false}); token log-probabilities ride
    on the chunk of their text.  Tool-call fragments are accumulated per
    C{index} and released as one chunk with object arguments at the end;
    C{finish_reason} and C{usage} (which may arrive in a later chunk) go into
    the final C{done: true} object.

    @ivar model: the model name exactly as the client sent it.
    @ivar kind: C{"chat"} (C{message.content}) or C{"generate"} (C{response}).
    @ivar sawDone: whether C{[DONE]} has been seen.
    @ivar sawFinish: whether a C{finish_reason} has been seen; with
        C{sawDone}, whether the stream may end normally.
    """

    def __init__(
        self,
        model: str,
        kind: Kind = "chat",
        startNs: int | None = None,
        clock: Clock = wallClock,
        dropThinking: bool = False,
        thinkTags: bool = True,
    ) -> None:
        """
        @param model: the client's model name.
        @param kind: C{"chat"} or C{"generate"}.
        @param startNs: when the request arrived; now when omitted.
        @param clock: the wall clock (ns).
        @param dropThinking: whether the client sent C{think: false}.
        @param thinkTags: whether a leading C{<think>} block in the content is
            thinking (off for raw and fill-in-the-middle text completions).
        """
        self.model = model
        self.kind = kind
        self._clock = clock
        self._start = clock() if startNs is None else startNs
        self._firstToken: int | None = None
        self._dropThinking = dropThinking
        self._finishReason: Any = None
        self._usage: JSON | None = None
        self._tools: list[JSON] = []
        self._toolSlots: dict[int, int] = {}
        self._tags = ThinkTagSplitter()
        self._seekingTags = thinkTags
        self._logprobs: list[JSON] = []
        self.sawDone = False
        self.sawFinish = False

    def _chunk(self, createdAt: str, content: str, thinking: str | None) -> JSON:
        """
        Build one C{done: false} chunk.

        @param createdAt: the formatted timestamp.
        @param content: the text delta.
        @param thinking: the reasoning delta, if any.
        """
        if self.kind == "chat":
            message: JSON = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            return {
                "model": self.model,
                "created_at": createdAt,
                "message": message,
                "done": False,
            }
        chunk: JSON = {
            "model": self.model,
            "created_at": createdAt,
            "response": content,
            "done": False,
        }
        if thinking:
            chunk["thinking"] = thinking
        return chunk

    def feed(self, payloads: list[bytes], createdAt: str | None = None) -> list[JSON]:
        """
        Translate the SSE payloads of one socket read.

        @param payloads: C{data:} payloads from L{SSEDecoder.feed}.
        @param createdAt: the timestamp for every chunk of this read; computed
            from the clock when omitted.
        @return: the Ollama chunks to send now, in order.
        @raise StreamFailed: (an L{UpstreamError}) on an upstream error event
            or non-JSON data, with the chunks translated before it.
        """
        out: list[JSON] = []
        try:
            self._feedInto(payloads, createdAt, out)
        except StreamFailed:
            raise
        except UpstreamError as e:
            raise StreamFailed(e.message, out) from None
        return out

    def _feedInto(self, payloads: list[bytes], createdAt: str | None, out: list[JSON]) -> None:
        """
        L{feed}'s work: append the chunks to C{out} as they are made.
        """
        for payload in payloads:
            if payload == b"[DONE]":
                self.sawDone = True
                continue
            try:
                event = codec.loads(payload)
            except codec.JSONDecodeError:
                raise UpstreamError(
                    "backend sent a stream event that is not JSON: "
                    + payload[:200].decode("utf-8", "replace")
                )
            if not isinstance(event, dict):
                raise UpstreamError("backend sent a stream event that is not an object")
            if event.get("error") is not None:
                raise UpstreamError(_errorMessage(event))
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._usage = usage
            choices = event.get("choices")
            if not choices or not isinstance(choices, list):
                continue
            choice = choices[0]
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finishReason = choice["finish_reason"]
                self.sawFinish = True
            logprobs = choice.get("logprobs")
            if logprobs:
                self._logprobs.extend(logprobsFromOpenAI(logprobs))
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if self._dropThinking or not isinstance(thinking, str):
                thinking = ""
            fragments = delta.get("tool_calls")
            if fragments:
                self._accumulateTools(fragments)
            if not isinstance(content, str):
                content = contentText(content)
            if self._seekingTags and content:
                if self._firstToken is None:
                    self._firstToken = self._clock()
                tagged, content = self._tags.feed(content)
                self._seekingTags = not self._tags.passing
                if not self._dropThinking:
                    thinking += tagged
            if content or thinking:
                if self._firstToken is None:
                    self._firstToken = self._clock()
                if createdAt is None:
                    createdAt = formatTimestamp(self._clock())
                chunk = self._chunk(createdAt, content, thinking)
                if self._logprobs:
                    chunk["logprobs"] = self._logprobs
                    self._logprobs = []
                out.append(chunk)

    def _accumulateTools(self, fragments: Any) -> None:
        """
        Merge streamed tool-call fragments by C{index}.

        Arguments are concatenated (they are split anywhere, even inside a
        string).  A name is appended only when it is not a repeat: some
        backends send the whole name in every fragment.  A fragment with a
        different C{id} at an occupied index (backends that number every
        call 0) starts a new call, which later fragments without an id at
        that index continue.  Calls keep the order in which they began.

        @param fragments: the C{delta.tool_calls} list.
        """
        if not isinstance(fragments, list):
            return
        for offset, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", offset)
            if not isinstance(index, int):
                index = offset
            fragmentId = fragment.get("id")
            position = self._toolSlots.get(index)
            if position is not None:
                slot = self._tools[position]
                if fragmentId and slot["id"] and fragmentId != slot["id"]:
                    position = None
            if position is None:
                self._toolSlots[index] = len(self._tools)
                slot = {"id": None, "function": {"name": "", "arguments": ""}}
                self._tools.append(slot)
            if fragmentId:
                slot["id"] = fragmentId
            function = fragment.get("function")
            if isinstance(function, dict):
                name = function.get("name")
                if name and isinstance(name, str):
                    known = slot["function"]["name"]
                    slot["function"]["name"] = name if name.startswith(known) else known + name
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    if isinstance(slot["function"]["arguments"], str):
                        slot["function"]["arguments"] += arguments
                elif isinstance(arguments, dict):
                    slot["function"]["arguments"] = arguments
        if self._firstToken is None:
            self._firstToken = self._clock()

    def finish(self) -> list[JSON]:
        """
        The stream ended normally: release held-back text, accumulated tool
        calls and the final C{done: true} object.

        @return: the last chunks to send.
        @raise UpstreamError: if the backend ended the stream before saying it
            was done, or sent tool-call arguments that are not a JSON object
            (the client then gets an error line instead of C{done: true}: a
            tool call with made-up arguments would be worse).
        """
        if not (self.sawDone or self.sawFinish):
            raise UpstreamError("backend closed the stream before it was complete")
        now = self._clock()
        createdAt = formatTimestamp(now)
        out: list[JSON] = []
        thinking, content = self._tags.flush()
        if self._dropThinking:
            thinking = ""
        if content or thinking:
            out.append(self._chunk(createdAt, content, thinking))
            if self._logprobs:
                out[0]["logprobs"] = self._logprobs
                self._logprobs = []
        if self._tools:
            calls = toolCallsFromOpenAI(self._tools)
            chunk = self._chunk(createdAt, "", None)
            if self.kind == "chat":
                chunk["message"]["tool_calls"] = calls
            else:
                chunk["tool_calls"] = calls
            out.append(chunk)
        final = self._chunk(createdAt, "", None)
        final["done"] = True
        final["done_reason"] = doneReason(self._finishReason)
        if self._logprobs:
            final["logprobs"] = self._logprobs
            self._logprobs = []
        final.update(metrics(self._start, self._firstToken, now, self._usage))
        if self.kind == "generate":
            final["context"] = []
        out.append(final)
        return out


def metrics(start: int, firstToken: int | None, end: int, usage: Any) -> JSON:
    """
    Ollama's timing and token fields for a final object.

    The OpenAI backend reports no timings, so they are measured by the proxy:
    prompt evaluation is the time to the first token, evaluation the rest.
    C{eval_duration} is never zero because UIs divide by it.

    @param start: when the request arrived (ns).
    @param firstToken: when the first token arrived (ns), if any.
    @param end: now (ns).
    @param usage: the OpenAI C{usage} object, if one was sent.
    @return: the metric fields.
    """
    first = firstToken if firstToken is not None else end
    result: JSON = {
        "total_duration": max(1, end - start),
        "load_duration": 0,
        "prompt_eval_count": 0,
        "prompt_eval_duration": max(1, first - start),
        "eval_count": 0,
        "eval_duration": max(1, end - first),
    }
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            result["prompt_eval_count"] = prompt
        if isinstance(completion, int):
            result["eval_count"] = completion
    return result


def responseFromOpenAI(
    completion: Any,
    model: str,
    kind: Kind,
    start: int,
    end: int,
    dropThinking: bool = False,
    thinkTags: bool = True,
) -> JSON:
    """
    Translate a non-streamed OpenAI chat completion into one Ollama object
    with the same fields a stream would have carried, aggregated:
    C{thinking} (from the reasoning fields or a leading C{<think>} block),
    C{tool_calls} with object arguments, C{logprobs}, counts and durations.

    @param completion: the decoded upstream body.
    @param model: the client's model name, echoed back.
    @param kind: C{"chat"} or C{"generate"} (text in C{response}, thinking
        and tool calls at the top level).
    @param start: request start (ns).
    @param end: now (ns).
    @param dropThinking: whether the client asked for C{think: false}.
    @param thinkTags: whether a leading C{<think>} block in the content is
        thinking.
    @return: the aggregated Ollama response.
    @raise UpstreamError: if the body has no choices, or tool-call arguments
        are not a JSON object.
    """
    if not isinstance(completion, dict):
        raise UpstreamError("backend returned a completion that is not an object")
    if completion.get("error") is not None:
        raise UpstreamError(_errorMessage(completion))
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("backend returned a completion without choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content = message.get("content")
    if not isinstance(content, str):
        content = contentText(content)
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if not isinstance(thinking, str):
        thinking = ""
    if thinkTags:
        tagged, content = splitThinkTags(content)
        thinking += tagged
    if dropThinking:
        thinking = ""
    toolCalls = (
        toolCallsFromOpenAI(message["tool_calls"]) if message.get("tool_calls") else None
    )
    createdAt = formatTimestamp(end)
    result: JSON
    if kind == "chat":
        ollamaMessage: JSON = {"role": "assistant", "content": content}
        if thinking:
            ollamaMessage["thinking"] = thinking
        if toolCalls:
            ollamaMessage["tool_calls"] = toolCalls
        result = {"model": model, "created_at": createdAt, "message": ollamaMessage}
    else:
        result = {"model": model, "created_at": createdAt, "response": content}
        if thinking:
            result["thinking"] = thinking
        if toolCalls:
            result["tool_calls"] = toolCalls
    result["done"] = True
    result["done_reason"] = doneReason(choice.get("finish_reason"))
    logprobs = logprobsFromOpenAI(choice.get("logprobs"))
    if logprobs:
        result["logprobs"] = logprobs
    result.update(metrics(start, None, end, completion.get("usage")))
    if kind == "generate":
        result["context"] = []
    return result
