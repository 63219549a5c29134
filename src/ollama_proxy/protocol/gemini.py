# -*- test-case-name: tests.protocol.test_gemini -*-
"""
The Gemini API dialect's reply side: events to C{GenerateContentResponse}
chunks (an SSE stream with C{alt=sse}, as every Google SDK and Gemini CLI
ask for it; a JSON array without), a whole reply to one response object,
Google's error objects, and the model list in Google's shape.

A chunk carries the parts of one backend delta: text, C{"thought": true}
text for reasoning (when the request asked for thoughts), or the reply's
C{functionCall}s (object C{args}, an C{id} the client pairs its
C{functionResponse} with).  The last chunk has the C{finishReason} and
C{usageMetadata}.  A failure after the stream began is a final
C{{"error": {...}}} chunk, which the SDKs raise on; never a C{STOP}.
"""

from __future__ import annotations

import secrets
from typing import Iterable, Mapping, Sequence

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import ModelMeta
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.backends import ModelOverride
from ollama_proxy.protocol.dialect import DONE, EncodedErrors, Encoder, EncoderMisuse, Generation
from ollama_proxy.protocol.events import (
    Delta,
    Event,
    Finish,
    Reply,
    ToolCall,
    ToolCalls,
    Usage,
)
from ollama_proxy.protocol.gemini_path import STREAM
from ollama_proxy.protocol.gemini_request import parseGenerateRequest
from ollama_proxy.protocol.requests import estimateTokens

SSE = b"text/event-stream"
ARRAY = b"application/json; charset=utf-8"

STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "UNIMPLEMENTED",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""HTTP statuses as Google's canonical error codes (other 4xx:
C{INVALID_ARGUMENT}, other 5xx: C{INTERNAL})."""


def responseId() -> str:
    """
    @return: a fresh C{responseId} (22 URL-safe characters, as Google's).
    """
    return secrets.token_urlsafe(16)


def errorObject(status: int, message: str) -> JSON:
    """
    @return: Google's error body for C{status}.
    """
    fallback = "INVALID_ARGUMENT" if status < 500 else "INTERNAL"
    return {"error": {"code": status, "message": message, "status": STATUSES.get(status, fallback)}}


def finishReason(reason: str | None) -> str:
    """
    An OpenAI C{finish_reason} as Google's C{finishReason} (tool calls end
    with C{STOP}, as Google's own do).
    """
    if reason == "length":
        return "MAX_TOKENS"
    if reason == "content_filter":
        return "SAFETY"
    return "STOP"


def usageMetadata(usage: Usage, promptEstimate: int) -> JSON:
    """
    @return: Google's C{usageMetadata}: the backend's counts, the estimate
        for prompt tokens it did not report.
    """
    prompt = usage.promptTokens if usage.promptTokens is not None else promptEstimate
    candidates = usage.completionTokens if usage.completionTokens is not None else 0
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
    }


def functionCallPart(call: ToolCall) -> JSON:
    """
    @return: a C{functionCall} part: object C{args}, the backend's id.
    """
    return {"functionCall": {"id": call.id, "name": call.name, "args": call.arguments}}


_HEAD = b'{"candidates":[{"content":{"parts":['


class GeminiEncoder(Encoder):
    """
    Events to C{GenerateContentResponse} chunks, one per backend delta (the
    lifecycle is L{ollama_proxy.protocol.dialect.Encoder}'s).

    The common chunk (text of one delta) is a byte template around the
    encoded text, so only the text is encoded per token.
    """

    def __init__(
        self, model: str, responseId: str, promptEstimate: int, thoughts: bool, sse: bool = True
    ) -> None:
        """
        @param model: the client's model name (C{modelVersion}).
        @param responseId: the C{responseId} of every chunk.
        @param promptEstimate: prompt tokens until the backend reports them.
        @param thoughts: whether reasoning goes out as thought parts.
        @param sse: C{data:} events (C{alt=sse}), else one JSON array.
        """
        self.promptEstimate = promptEstimate
        self.thoughts = thoughts
        self.sse = sse
        self.contentType = SSE if sse else ARRAY
        self._tail = (
            b'],"role":"model"},"index":0}],"modelVersion":' + codec.dumps(model)
            + b',"responseId":' + codec.dumps(responseId) + b"}"
        )
        self._first = True
        # The common chunk, one delta's text, in SSE: everything but the
        # encoded text made once.
        self._textPrefix = b"data: " + _HEAD + b'{"text":'
        self._textSuffix = b"}" + self._tail + b"\n\n"
        self._pieces = self._textPrefix + b"\n" + self._textSuffix

    def _framing(self) -> bytes | None:
        """
        The common chunk's pieces (SSE only; nothing in it varies).
        """
        return self._pieces if self.sse else None

    def _frame(self, chunk: bytes) -> bytes:
        if self.sse:
            return b"data: " + chunk + b"\n\n"
        if self._first:
            self._first = False
            return b"[" + chunk
        return b",\r\n" + chunk

    def _chunk(self, parts: bytes) -> bytes:
        return self._frame(_HEAD + parts + self._tail)

    def _encode(self, events: Sequence[Event]) -> bytes:
        """
        @param events: the events of one read.
        @return: their chunks.
        """
        out = []
        prefix, suffix, dumps = self._textPrefix, self._textSuffix, codec.dumps
        sse = self.sse
        for event in events:
            if sse and type(event) is Delta and not event.thinking:
                # The common case: one delta's text.
                if event.content:
                    out.append(prefix + dumps(event.content) + suffix)
            else:
                if type(event) is Finish:
                    if event is not events[-1]:
                        raise EncoderMisuse(f"{type(self).__name__}: events after the Finish")
                    self.state = DONE
                out.append(self._event(event))
        return b"".join(out)

    def _event(self, event: Event) -> bytes:
        """
        @return: the chunk of any event but plain text in SSE.
        """
        if type(event) is Delta:
            text = b'{"text":' + codec.dumps(event.content) + b"}" if event.content else b""
            if event.thinking and self.thoughts:
                thought = b'{"text":' + codec.dumps(event.thinking) + b',"thought":true}'
                return self._chunk(thought + b"," + text if text else thought)
            return self._chunk(text) if text else b""
        if type(event) is ToolCalls:
            return self._chunk(b",".join(codec.dumps(functionCallPart(call)) for call in event.calls))
        assert type(event) is Finish
        return self._finish(event)

    def _finish(self, finish: Finish) -> bytes:
        chunk = codec.dumps({
            "candidates": [{
                "content": {"parts": [{"text": ""}], "role": "model"},
                "finishReason": finishReason(finish.reason),
                "index": 0,
            }],
            "usageMetadata": usageMetadata(finish.usage, self.promptEstimate),
        })
        # modelVersion and responseId, as on every chunk.
        chunk = chunk[:-1] + self._tail[self._tail.index(b',"modelVersion"'):]
        return self._frame(chunk) + (b"" if self.sse else b"]")

    def _failure(self, message: str) -> bytes:
        """
        @return: a final C{{"error": ...}} chunk (a 502: the backend
            failed), closing the array in array mode.
        """
        chunk = self._frame(codec.dumps(errorObject(502, message)))
        return chunk if self.sse else chunk + b"]"


class GeminiErrors(EncodedErrors):
    """
    Google's errors: C{{"error": {"code", "message", "status"}}} before the
    stream, a final error chunk in it.
    """

    def _object(self, status: int, message: str, param: str | None) -> JSON:
        return errorObject(status, message)


ERRORS = GeminiErrors()


class GeminiDialect:
    """
    The Gemini reply dialect (L{ollama_proxy.protocol.dialect.Dialect}) of
    one request.
    """

    errors = ERRORS

    def __init__(
        self, responseId: str, promptEstimate: int, thoughts: bool, sse: bool = True
    ) -> None:
        """
        @param responseId: the response's id.
        @param promptEstimate: the request's estimated prompt tokens.
        @param thoughts: whether the request asked for thought parts.
        @param sse: whether a stream is SSE (C{alt=sse}) or a JSON array.
        """
        self.responseId = responseId
        self.promptEstimate = promptEstimate
        self.thoughts = thoughts
        self.sse = sse

    def streamEncoder(self, model: str, start: int) -> GeminiEncoder:
        """
        @return: an encoder for the stream.
        """
        return GeminiEncoder(model, self.responseId, self.promptEstimate, self.thoughts, self.sse)

    def reply(self, reply: Reply, model: str, start: int, end: int) -> JSON:
        """
        @return: one C{GenerateContentResponse}: thought, text, then
            C{functionCall} parts.
        """
        parts: list[JSON] = []
        if reply.thinking and self.thoughts:
            parts.append({"text": reply.thinking, "thought": True})
        if reply.content:
            parts.append({"text": reply.content})
        parts.extend(functionCallPart(call) for call in reply.toolCalls)
        return {
            "candidates": [{
                "content": {"parts": parts or [{"text": ""}], "role": "model"},
                "finishReason": finishReason(reply.reason),
                "index": 0,
            }],
            "usageMetadata": usageMetadata(reply.usage, self.promptEstimate),
            "modelVersion": model,
            "responseId": self.responseId,
        }


class GeminiRoute:
    """
    C{models/{model}:generateContent} and C{:streamGenerateContent} as a
    route speaks them (L{ollama_proxy.protocol.dialect.RouteDialect}):
    the model and the method in the URL (L{ollama_proxy.protocol.gemini_path.GeminiTemplate}),
    the stream's framing in its query (C{alt=sse}), Google's parser (what
    a chat backend cannot take dropped and named) and errors.
    """

    errors = ERRORS
    native = None

    def model(self, body: JSON, params: Mapping[str, str]) -> object:
        return params["model"]

    def parse(
        self, body: JSON, params: Mapping[str, str], override: ModelOverride
    ) -> Generation:
        parsed = parseGenerateRequest(body, params["model"], params["method"] == STREAM)
        dialect = GeminiDialect(
            responseId(), estimateTokens(parsed.chat), parsed.thoughts,
            sse=params.get("alt") == "sse",
        )
        return Generation(parsed.chat, dialect, parsed.dropped)


GEMINI = GeminiRoute()


METHODS = ["generateContent", "streamGenerateContent", "countTokens"]
"""The C{supportedGenerationMethods} of every listed model."""


def modelObject(meta: ModelMeta) -> JSON:
    """
    A served model as Google's C{Model}: its limits from the catalog (the
    output limit is the source's, else the context window).
    """
    output = meta.facts.get("max_output_tokens")
    return {
        "name": "models/" + meta.id,
        "baseModelId": meta.id,
        "version": "001",
        "displayName": meta.id,
        "description": f"{meta.id}, served by ollama-proxy",
        "inputTokenLimit": meta.maxInputTokens or meta.contextLength,
        "outputTokenLimit": output if isinstance(output, int) else meta.contextLength,
        "supportedGenerationMethods": METHODS,
        "thinking": "thinking" in meta.capabilities(),
    }


def modelList(catalog: Iterable[ModelMeta], pageSize: int, offset: int) -> JSON:
    """
    One page of C{models.list}: the chat models (embedding models have no
    method served here), C{nextPageToken} when more follow.

    @param catalog: the served models, in listing order.
    @param pageSize: models per page.
    @param offset: where the page starts (the previous page's token).
    """
    models = [meta for meta in catalog if not meta.isEmbedding]
    page: JSON = {"models": [modelObject(meta) for meta in models[offset:offset + pageSize]]}
    if offset + pageSize < len(models):
        page["nextPageToken"] = str(offset + pageSize)
    return page
