# -*- test-case-name: tests.protocol.test_backend_reader -*-
"""
The backend's side of the hub: reading OpenAI chat (and legacy text)
completions, streamed or not, into the dialect-neutral events of
L{ollama_proxy.protocol.events}.

Content and reasoning deltas become L{Delta}s (reasoning from
C{reasoning_content}, C{reasoning} or a leading C{<think>} block; dropped
when the client turned thinking off); token log-probabilities ride on the
delta of their text.  Tool-call fragments are accumulated per C{index} and
released as one L{ToolCalls} at the end; C{finish_reason} and C{usage}
(which may arrive in a later chunk) go into the L{Finish}.
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import Clock, wallClock
from ollama_proxy.protocol.codec import JSON, Obj, loadsFlat
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.events import (
    Delta,
    Event,
    Finish,
    Reply,
    ToolCall,
    ToolCalls,
    Usage,
)
from ollama_proxy.protocol.thinktags import ThinkTagSplitter, splitThinkTags


def contentText(content: object) -> str:
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


def toolCallsFromOpenAI(calls: object) -> tuple[ToolCall, ...]:
    """
    Read complete OpenAI tool calls, with the arguments as a JSON object.

    @param calls: OpenAI C{tool_calls} with string arguments, as the backend
        sent them.
    @return: the calls.
    @raise UpstreamError: if arguments are not a JSON object; reporting it is
        better than calling a tool with C{{}}.  The message names the tool
        and quotes the arguments, so the user can see what the model wrote.
        Also if C{calls} is not a list of objects with object C{function}s
        (a non-streamed reply's C{tool_calls} come straight from the
        backend).
    """
    if not isinstance(calls, list):
        raise UpstreamError("backend returned tool_calls that are not a list")
    out: list[ToolCall] = []
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
                decoded = codec.loadsBounded(raw)
            except codec.TooDeep:
                raise UpstreamError(
                    f"backend returned tool call {function.get('name')!r} with arguments "
                    f"nested more than {codec.MAX_DEPTH} levels deep"
                ) from None
            except codec.JSONDecodeError:
                decoded = None
            if not isinstance(decoded, dict):
                raise UpstreamError(
                    f"backend returned tool call {function.get('name')!r} "
                    f"with arguments that are not a JSON object: {raw!r}"
                )
            arguments = decoded
        name = function.get("name")
        if name is None:
            name = ""
        elif not isinstance(name, str):
            raise UpstreamError("backend returned a tool call whose name is not a string")
        callId = call.get("id")
        if not isinstance(callId, str) or not callId:
            callId = _responseCallId(index, name, raw)
        out.append(ToolCall(callId, name, arguments, index))
    return tuple(out)


def _responseCallId(index: int, name: str, arguments: object) -> str:
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


def _errorMessage(payload: Mapping[str, object]) -> str:
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
    # Not cut here: the web layer redacts the proxy's secrets first and
    # cuts after, so that no key cut in two escapes as a prefix.
    text = body.decode("utf-8", "replace").strip()
    return text or f"backend returned HTTP {status}"


def _tokenLogprob(entry: Mapping[str, object]) -> JSON:
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


def logprobsFromOpenAI(logprobs: object) -> list[JSON]:
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


_CONTENT_TOKEN = re.compile(rb'"content"[ \t\r\n]*:[ \t\r\n]*("(?:[^"\\]|\\.)*")', re.DOTALL)
"""A C{"content":} key and the string after it, lexed as JSON does."""

_PROBE = "\x00probe\x01"
_PROBE_TOKEN = b'"\\u0000probe\\u0001"'
"""A string no model writes, put where the template's text goes to see
where it lands."""

LESSONS = 3
"""How many templates one stream may try (L{ChatStreamReader._learn})."""

_UNLEARNT = (b"\xff", b"\xff", 0, -1)
"""No template yet: no JSON text starts with that byte."""

newTuple = tuple.__new__

TEMPLATE_MAX = 4096
"""The longest event a template is made of (held for the stream's life:
a token's envelope is a few hundred bytes)."""


class ChatStreamReader:
    """
    Read the SSE payloads of an OpenAI chat (or text) completion stream as
    events, one socket read at a time.

    @ivar sawDone: whether C{[DONE]} has been seen.
    @ivar sawFinish: whether a C{finish_reason} has been seen; with
        C{sawDone}, whether the stream may end normally.
    @ivar firstToken: when the first generated token arrived (ns), if yet.
    @ivar usage: the token counts reported so far.
    """

    def __init__(
        self,
        clock: Clock = wallClock,
        dropThinking: bool = False,
        thinkTags: bool = True,
        text: bool = False,
        lessons: int = LESSONS,
    ) -> None:
        """
        @param clock: the wall clock (ns), for the first token and the end.
        @param dropThinking: whether the client turned thinking off.
        @param thinkTags: whether a leading C{<think>} block in the content is
            thinking (off for raw and fill-in-the-middle text completions).
        @param text: whether the backend streams legacy C{/v1/completions}
            events (C{choices[0].text}) rather than chat deltas.
        @param lessons: how many templates the stream may try (L{_learn});
            0: every event is decoded whole.
        """
        self._clock = clock
        self._dropThinking = dropThinking
        self._text = text
        self._finishReason: str | None = None
        self._tools: list[JSON] = []
        self._toolSlots: dict[int, int] = {}
        self._tags = ThinkTagSplitter()
        self._seekingTags = thinkTags
        self._logprobs: list[JSON] = []
        self.firstToken: int | None = None
        self.usage = Usage()
        self.sawDone = False
        self.sawFinish = False
        self._template = _UNLEARNT
        self._lessons = lessons

    def feed(self, payloads: list[bytes]) -> list[Event]:
        """
        Read the SSE payloads of one socket read.

        A payload that is the stream's last plain text event with other
        text (L{_learn}: the same bytes before and after its C{content}
        string) is read from that string alone: the rest of the event is
        known to be what it was, so nothing else in it needs looking at.

        @param payloads: C{data:} payloads from L{SSEDecoder.feed}.
        @return: the events to deliver now, in order.
        @raise StreamFailed: (an L{UpstreamError}) on an upstream error event
            or non-JSON data, with the events read before it.
        """
        out: list[Event] = []
        head, tail, start, end = self._template
        try:
            for payload in payloads:
                content: object = None
                if payload.startswith(head) and payload.endswith(tail):
                    # (A payload shorter than the two pieces leaves nothing
                    # between them: not JSON.)
                    try:
                        content = loadsFlat(payload[start:end])
                    except codec.JSONDecodeError:
                        content = None
                if type(content) is str:
                    thinking = ""
                else:
                    if payload == b"[DONE]":
                        self.sawDone = True
                        continue
                    read = self._event(payload)
                    head, tail, start, end = self._template  # it may have learnt one
                    if read is None:
                        continue
                    content, thinking = read
                if self._seekingTags and content:
                    if self.firstToken is None:
                        self.firstToken = self._clock()
                    tagged, content = self._tags.feed(content)
                    self._seekingTags = not self._tags.passing
                    if not self._dropThinking:
                        thinking += tagged
                if content or thinking:
                    if self.firstToken is None:
                        self.firstToken = self._clock()
                    if self._logprobs:
                        out.append(Delta(content, thinking, self._logprobs))
                        self._logprobs = []
                    else:
                        # The tuple made directly: Delta(...) is a Python
                        # function around this, once per token.
                        out.append(newTuple(Delta, (content, thinking, None)))
        except UpstreamError as e:
            raise StreamFailed(e.message, out) from None
        return out

    def _event(self, payload: bytes) -> tuple[str, str] | None:
        """
        Read one event whole.

        @param payload: its C{data}.
        @return: its text and reasoning (before the C{<think>} split), or
            C{None} for an event with neither to give.
        @raise UpstreamError: on an error event or a payload that is not a
            JSON object.
        """
        try:
            event = codec.loadsBounded(payload)
        except codec.TooDeep:
            raise UpstreamError(
                f"backend sent a stream event nested more than {codec.MAX_DEPTH} levels deep"
            ) from None
        except codec.JSONDecodeError:
            raise UpstreamError(
                "backend sent a stream event that is not JSON: "
                + payload[:200].decode("utf-8", "replace")
            )
        if not isinstance(event, dict):
            raise UpstreamError("backend sent a stream event that is not an object")
        get = event.get
        if get("error") is not None:
            raise UpstreamError(_errorMessage(event))
        usage = get("usage")
        if usage is not None and isinstance(usage, dict):
            self.usage = usageFromOpenAI(usage)
        choices = get("choices")
        if not choices or not isinstance(choices, list):
            return None
        choice = choices[0]
        if not isinstance(choice, dict):
            return None
        finish = choice.get("finish_reason")
        if finish:
            self._finishReason = finish if isinstance(finish, str) else str(finish)
            self.sawFinish = True
        logprobs = choice.get("logprobs")
        if logprobs:
            self._logprobs.extend(logprobsFromOpenAI(logprobs))
        if self._text and "text" in choice:
            delta: Obj = {"content": choice.get("text")}
        else:
            given = choice.get("delta")
            if not isinstance(given, dict):
                return None
            delta = given
        content = delta.get("content")
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        thinking = "" if self._dropThinking or not isinstance(reasoning, str) else reasoning
        fragments = delta.get("tool_calls")
        if fragments:
            self._accumulateTools(fragments)
        if isinstance(content, str):
            if not (usage is not None or finish or logprobs or reasoning or fragments or self._text):
                # Plain text, and no more: the template of the next ones.
                self._learn(payload, event, content)
            return content, thinking
        return contentText(content), thinking

    def _learn(self, payload: bytes, event: Obj, content: str) -> None:
        """
        Keep a plain text event's bytes around its C{content} string as the
        template of the events after it (a backend streams every token in
        the same envelope: the same id, model, index and nulls).

        The template is the payload cut at the one string the lexer finds
        after the last C{"content":}, and it is kept only if that string is
        C{delta.content} and nothing else: the payload with another string
        in its place decodes to C{event} with that C{content} and no other
        difference.  A JSON parser is in the same state after the same
        bytes, and a string token moves it to the same next state whatever
        the string holds, so every payload made of the template's two
        pieces around any one JSON string decodes to C{event} with that
        string for C{content}: reading the string alone gives what the
        whole decode would have (L{feed} decodes anything else whole).  A
        few lessons per stream, so that a backend whose every event differs
        elsewhere (a random padding field) costs a few decodes, not one per
        event.

        @param payload: the event's C{data}.
        @param event: the same, decoded.
        @param content: its C{delta.content}.
        """
        if self._lessons <= 0 or len(payload) > TEMPLATE_MAX or content == _PROBE:
            return
        self._lessons -= 1
        token = None
        for token in _CONTENT_TOKEN.finditer(payload):
            pass
        if token is None:
            return
        start, end = token.span(1)
        head, tail = payload[:start], payload[end:]
        if not head or not tail:
            return  # (not an object's member; and the pieces' ends are sliced by length)
        try:
            probe = codec.loadsBounded(head + _PROBE_TOKEN + tail)
            delta = probe["choices"][0]["delta"]  # type: ignore[index]
            if delta["content"] != _PROBE:
                return
            delta["content"] = content
        except (codec.JSONDecodeError, codec.TooDeep, LookupError, TypeError):
            return
        if probe == event:
            self._template = (head, tail, len(head), -len(tail))

    def _accumulateTools(self, fragments: object) -> None:
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
        if self.firstToken is None:
            self.firstToken = self._clock()

    def finish(self) -> list[Event]:
        """
        The stream ended normally: release held-back text, the accumulated
        tool calls and the L{Finish}.

        @return: the last events.
        @raise UpstreamError: if the backend ended the stream before saying it
            was done, or sent tool-call arguments that are not a JSON object
            (the client then gets an error instead of a success: a tool call
            with made-up arguments would be worse).
        """
        if not (self.sawDone or self.sawFinish):
            raise UpstreamError("backend closed the stream before it was complete")
        now = self._clock()
        out: list[Event] = []
        # A splitter that decided (or never saw content) holds nothing.
        thinking, content = self._tags.flush() if self._seekingTags else ("", "")
        if self._dropThinking:
            thinking = ""
        if content or thinking:
            out.append(Delta(content, thinking, self._logprobs or None))
            self._logprobs = []
        if self._tools:
            out.append(ToolCalls(toolCallsFromOpenAI(self._tools)))
        out.append(
            Finish(self._finishReason, self.usage, self.firstToken, now, self._logprobs or None)
        )
        self._logprobs = []
        return out


def usageFromOpenAI(usage: object) -> Usage:
    """
    @param usage: an OpenAI C{usage} object (or anything).
    @return: its prompt and completion token counts, where they are integers.
    """
    if not isinstance(usage, dict):
        return Usage()
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens")
    return Usage(
        prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else None,
        completion if isinstance(completion, int) and not isinstance(completion, bool) else None,
    )


def readReply(
    completion: object,
    dropThinking: bool = False,
    thinkTags: bool = True,
    text: bool = False,
) -> Reply:
    """
    Read a non-streamed OpenAI chat (or text) completion: the same content a
    stream would have carried, aggregated: C{thinking} (from the reasoning
    fields or a leading C{<think>} block), tool calls with object
    arguments, log-probabilities, counts.

    @param completion: the decoded upstream body.
    @param dropThinking: whether the client turned thinking off.
    @param thinkTags: whether a leading C{<think>} block in the content is
        thinking.
    @param text: whether this is a legacy C{/v1/completions} body
        (C{choices[0].text}).
    @return: the reply.
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
    if text and "text" in choice:
        message: Obj = {"content": choice.get("text")}
    else:
        given = choice.get("message")
        message = given if isinstance(given, dict) else {}
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
    calls = message.get("tool_calls")
    toolCalls = toolCallsFromOpenAI(calls) if calls else ()
    finish = choice.get("finish_reason")
    return Reply(
        content,
        thinking,
        toolCalls,
        finish if isinstance(finish, str) else None,
        usageFromOpenAI(completion.get("usage")),
        logprobsFromOpenAI(choice.get("logprobs")),
    )
