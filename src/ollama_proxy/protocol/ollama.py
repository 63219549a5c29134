"""
TODO
"""

from __future__ import annotations

from typing import Any

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import Clock, createdTimestamp, wallClock
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import StreamFailed, _failedAfter
from ollama_proxy.protocol.names import (
    DEFAULT_TAG,
    clientModelName,
    modelDigest,
    modelIds,
)
from ollama_proxy.protocol.openai import StreamTranslator
from ollama_proxy.protocol.sse import (
    DEFAULT_MAX_LINE_LENGTH,
    SSEDecoder,
    SSELineTooLong,
)


def modelDetails(family: str = "openai") -> JSON:
    """
    The C{details} object of C{/api/tags} and C{/api/show}.

    Every string is non-null: Swift clients (OllamaKit) decode them as
    non-optional and fail on C{null}.

    @param family: the model family to report.
    @return: a fresh dict.
    """
    return {
        "parent_model": "",
        "format": "openai",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    }


def tagsFromModels(models: Any, nowNs: int, tag: str = DEFAULT_TAG) -> JSON:
    """
    Build the C{/api/tags} body from an OpenAI model list.

    @param models: the decoded C{GET /v1/models} body.
    @param nowNs: the time to use when the backend gives no C{created}.
    @param tag: the suffix for untagged ids.
    @return: C{{"models": [...]}} in Ollama's list shape.
    """
    created: dict[str, int] = {}
    for entry in models.get("data") or [] if isinstance(models, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("created"), int):
            if entry["created"] > 0:
                created.setdefault(entry.get("id"), entry["created"])  # type: ignore[arg-type]
    result = []
    for modelId in modelIds(models):
        name = clientModelName(modelId, tag)
        result.append(
            {
                "name": name,
                "model": name,
                "modified_at": createdTimestamp(created.get(modelId), nowNs),
                "size": 0,
                "digest": modelDigest(name),
                "details": modelDetails(),
            }
        )
    return {"models": result}


_CHAT_KEYS = ("model", "created_at", "message", "done")


_GENERATE_KEYS = ("model", "created_at", "response", "done")


_MESSAGE_KEYS = ("role", "content")


class NDJSONStream:
    """
    The whole streaming pipeline as one pure object: SSE bytes in, Ollama
    NDJSON bytes out, one call per socket read.

    The Twisted side calls L{feed} from each C{treq.collect} callback and
    writes the result with a single C{request.write}, so a read that carried
    ten tokens costs one HTTP chunk, while each token is still its own line.
    """

    def __init__(
        self,
        translator: StreamTranslator,
        maxLineLength: int = DEFAULT_MAX_LINE_LENGTH,
        clock: Clock = wallClock,
    ) -> None:
        self.translator = translator
        self.decoder = SSEDecoder(maxLineLength)
        self._clock = clock
        self._templateKey: tuple[Any, Any, bytes] | None = None
        self._templateBytes = b""

    def feed(self, data: bytes) -> bytes:
        """
        @param data: one upstream read.
        @return: zero or more complete NDJSON lines.
        @raise StreamFailed: on upstream error events or garbage, carrying
            the lines of this read before the failure in C{output}.
        @raise ollama_proxy.sse.SSELineTooLong: on an oversized line.
        """
        cut = data.rfind(b"\n") + 1
        if 0 < cut < len(data):
            # An unfinished line follows complete events (the relay joins the
            # reads of a turn): translate the events before the decoder can
            # refuse the tail as too long, so their lines are not lost.
            tail = data[cut:]
            head = self.feed(data[:cut])
            try:
                return head + self.feed(tail)
            except SSELineTooLong as e:
                raise _failedAfter(str(e), head) from None
            except StreamFailed as e:
                e.output = head + e.output
                raise
        payloads = self.decoder.feed(data)
        if not payloads:
            return b""
        try:
            chunks = self.translator.feed(payloads)
        except StreamFailed as e:
            e.output = self.encode(e.chunks)
            raise
        return self.encode(chunks)

    def encode(self, chunks: list[JSON]) -> bytes:
        """
        Encode chunks as NDJSON, byte for byte as L{codec.dumpLine} would.

        The common chunk, C{{"model", "created_at", "message": {"role":
        "assistant", "content"}, "done": false}} (or C{response} for
        generate), is written from a template made once per model and
        timestamp, so only its content string is encoded per token; any
        other chunk goes through L{codec.dumpLine}.

        @param chunks: Ollama chunk objects.
        @return: one line per chunk.
        """
        lines = []
        for chunk in chunks:
            lines.append(self._line(chunk))
        return b"".join(lines)

    def _line(self, chunk: JSON) -> bytes:
        """
        One chunk as one line; see L{encode}.
        """
        keys = tuple(chunk)
        if keys == _CHAT_KEYS:
            message = chunk["message"]
            if (
                chunk["done"] is False
                and type(message) is dict
                and tuple(message) == _MESSAGE_KEYS
                and message["role"] == "assistant"
                and type(message["content"]) is str
            ):
                return self._template(chunk, b',"message":{"role":"assistant","content":') + (
                    codec.dumps(message["content"]) + b'},"done":false}\n'
                )
        elif keys == _GENERATE_KEYS:
            if chunk["done"] is False and type(chunk["response"]) is str:
                return self._template(chunk, b',"response":') + (
                    codec.dumps(chunk["response"]) + b',"done":false}\n'
                )
        return codec.dumpLine(chunk)

    def _template(self, chunk: JSON, middle: bytes) -> bytes:
        """
        The line's start up to the content, cached for the last model and
        timestamp (one per socket read).
        """
        key = (chunk["model"], chunk["created_at"], middle)
        if key != self._templateKey:
            model, createdAt = chunk["model"], chunk["created_at"]
            if type(model) is not str or type(createdAt) is not str:
                raise TypeError("model and created_at must be strings")
            self._templateKey = key
            self._templateBytes = (
                b'{"model":' + codec.dumps(model) + b',"created_at":'
                + codec.dumps(createdAt) + middle
            )
        return self._templateBytes

    def end(self) -> bytes:
        """
        The upstream body ended cleanly.

        @return: the remaining lines, ending with the C{done: true} object.
        @raise UpstreamError: if the stream was truncated.
        """
        try:
            chunks = self.translator.feed(self.decoder.close())
        except StreamFailed as e:
            e.output = self.encode(e.chunks)
            raise
        chunks.extend(self.translator.finish())
        return self.encode(chunks)
