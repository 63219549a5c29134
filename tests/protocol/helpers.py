"""
Shared helpers for the protocol tests: recorded values, a frozen clock, and
the Ollama <-> OpenAI translation composed from the hub's parts (the Ollama
request parser, the OpenAI builder, the OpenAI reader and the Ollama
encoder), as the web layer composes them.
"""

from __future__ import annotations

import base64
from typing import Any, Callable, Protocol

import attrs

from ollama_proxy.protocol import codec, openai_request
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.flavors import GENERIC, Flavor
from ollama_proxy.protocol.ollama import Kind, NDJSONEncoder, ollamaReply, toolCallsJSON
from ollama_proxy.protocol.ollama_request import (
    imageURL,
    parseChat,
    parseGenerate,
    parseMessages,
    parseTextCompletion,
)
from ollama_proxy.protocol.backend_reader import (
    ChatStreamReader,
    readReply,
    toolCallsFromOpenAI,
)
from ollama_proxy.protocol.requests import JSON
from ollama_proxy.protocol.stream import DEFAULT_MAX_LINE_LENGTH
from ollama_proxy.protocol.stream import TranslatedStream

T0 = 1_750_000_000_123_456_789

STAMP = formatTimestamp(T0)

USER = {"role": "user", "content": "hi"}


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 16

GIF = b"GIF89a" + b"\x00" * 16

WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 " + b"\x00" * 8

BMP = b"BM" + b"\x00" * 16


LP_A = {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108],
        "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                         {"token": "Hi", "logprob": -1.5, "bytes": None}]}
LP_B = {"token": "lo", "logprob": -0.01, "bytes": [108, 111], "top_logprobs": []}
"""Token log-probabilities as an OpenAI backend reports them."""


def b64(raw: bytes) -> str:
    """
    @return: C{raw} as standard padded base64 text, as Ollama clients send.
    """
    return base64.b64encode(raw).decode("ascii")


def constant() -> int:
    """
    A clock that never moves, so output is byte-for-byte comparable.
    """
    return T0


def chat(**fields: Any) -> JSON:
    """
    A chat body with one user message plus C{fields}.
    """
    return {"model": "m:proxy", "messages": [USER], **fields}


def sse(*events: Any) -> bytes:
    """
    Encode events as an SSE body; C{bytes} items are sent verbatim.
    """
    return b"".join(
        e if isinstance(e, bytes) else b"data: " + codec.dumps(e) + b"\n\n" for e in events
    )


def event(deltaFields: JSON | None = None, finish: str | None = None, **choice: Any) -> JSON:
    """
    One OpenAI stream chunk with one choice.
    """
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": deltaFields or {}, "finish_reason": finish, **choice}],
    }


def run(pieces: list[bytes], kind: Any = "chat", dropThinking: bool = False) -> bytes:
    """
    Push C{pieces} (one per socket read) through a fresh pipeline with a
    frozen clock.
    """
    pipeline = ollamaStream("m:proxy", kind, T0 - 5_000_000, constant, dropThinking)
    return b"".join(pipeline.feed(p) for p in pieces) + pipeline.end()


def lines(data: bytes) -> list[JSON]:
    """
    Decode NDJSON, checking it is well formed (one object per line, no blank
    lines).
    """
    assert data.endswith(b"\n") and b"\n\n" not in data, data
    return [codec.loads(line) for line in data.splitlines()]


def final(**fields: Any) -> JSON:
    """
    The final chat object of a pipeline run with the frozen clock.
    """
    return {
        "model": "m:proxy",
        "created_at": STAMP,
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 5_000_000,
        "load_duration": 0,
        "prompt_eval_count": 0,
        "prompt_eval_duration": 5_000_000,
        "eval_count": 0,
        "eval_duration": 1,
        **fields,
    }


def piece(content: str = "", **fields: Any) -> JSON:
    """
    One C{done: false} chat chunk of a pipeline run with the frozen clock.
    """
    message: JSON = {"role": "assistant", "content": content}
    logprobs = fields.pop("logprobs", None)
    message.update(fields)
    chunk: JSON = {"model": "m:proxy", "created_at": STAMP, "message": message, "done": False}
    if logprobs is not None:
        chunk["logprobs"] = logprobs
    return chunk


def ollamaStream(
    model: str = "m",
    kind: Kind = "chat",
    start: int = 0,
    clock: Callable[[], int] = constant,
    dropThinking: bool = False,
    thinkTags: bool = True,
    text: bool = False,
    maxLineLength: int = DEFAULT_MAX_LINE_LENGTH,
) -> TranslatedStream:
    """
    The streaming pipeline of an Ollama route: the OpenAI reader and the
    NDJSON encoder, on one clock.
    """
    return TranslatedStream(
        ChatStreamReader(clock, dropThinking, thinkTags, text),
        NDJSONEncoder(model, kind, start, clock),
        maxLineLength,
    )


def ollamaChunks(
    payloads: list[bytes],
    model: str = "m",
    kind: Kind = "chat",
    start: int = 0,
    clock: Callable[[], int] = lambda: 5,
    finish: bool = True,
) -> list[JSON]:
    """
    Read SSE payloads (and, with C{finish}, end the stream) and decode the
    Ollama lines they become.
    """
    reader = ChatStreamReader(clock)
    encoder = NDJSONEncoder(model, kind, start, clock)
    events = reader.feed(payloads)
    if finish:
        events += reader.finish()
    return [codec.loads(line) for line in encoder.encode(events).splitlines()]


def chatRequestToOpenAI(
    body: JSON, backendId: str, stream: bool, flavor: Flavor = GENERIC
) -> Any:
    """
    An Ollama C{/api/chat} body as the OpenAI request the proxy sends.
    """
    return openai_request.chatBody(attrs.evolve(parseChat(body), stream=stream), backendId, flavor)


def generateRequestToOpenAI(
    body: JSON, backendId: str, stream: bool, flavor: Flavor = GENERIC
) -> Any:
    """
    An Ollama C{/api/generate} body as the OpenAI chat request.
    """
    return openai_request.chatBody(
        attrs.evolve(parseGenerate(body), stream=stream), backendId, flavor
    )


def completionRequestToOpenAI(
    body: JSON, backendId: str, stream: bool, flavor: Flavor = GENERIC
) -> Any:
    """
    A raw or fill-in-the-middle C{/api/generate} body as C{/v1/completions}.
    """
    return openai_request.textBody(
        attrs.evolve(parseTextCompletion(body), stream=stream), backendId, flavor
    )


def messagesToOpenAI(messages: Any, flavor: Flavor = GENERIC) -> list[Any]:
    """
    Ollama C{messages} as OpenAI messages.
    """
    return openai_request.messagesToOpenAI(parseMessages(messages), flavor)


def imagePart(image: Any) -> JSON:
    """
    One Ollama image as an OpenAI content part.
    """
    return {"type": "image_url", "image_url": {"url": imageURL(image)}}


def responseFromOpenAI(
    completion: Any,
    model: str,
    kind: Kind,
    start: int,
    end: int,
    dropThinking: bool = False,
    thinkTags: bool = True,
    text: bool = False,
) -> JSON:
    """
    A non-streamed OpenAI completion as the aggregated Ollama object.
    """
    return ollamaReply(readReply(completion, dropThinking, thinkTags, text), model, kind, start, end)


def ollamaToolCalls(calls: Any) -> list[JSON]:
    """
    Complete OpenAI tool calls in Ollama's shape.
    """
    return toolCallsJSON(toolCallsFromOpenAI(calls))


BACKEND_KEY = "sk-host/ILE+backend-0123456789abcdef"
"""The backend key the stream guards' tests hide (its start has a C{/} and
a C{+}, which JSON and percent-encoding spell otherwise)."""

INBOUND_KEY = "in-key-ABCDEFGH12345678"
"""The key clients present, which the guards hide too."""

SECRETS = (BACKEND_KEY, INBOUND_KEY)


class Guard(Protocol):
    """
    A relayed stream's guard (the SSE, NDJSON and agent guards): bytes in,
    what may go to the client out.
    """

    def feed(self, data: bytes) -> bytes: ...

    def end(self) -> bytes: ...


def feedInPieces(guard: Guard, body: bytes, cuts: list[int]) -> bytes:
    """
    @return: what C{guard} sends for C{body} read in pieces at C{cuts}
        (any integers: taken modulo the body's length, in order), then its
        end.
    """
    out = []
    start = 0
    for cut in sorted(set(c % (len(body) + 1) for c in cuts)) + [len(body)]:
        out.append(guard.feed(body[start:cut]))
        start = cut
    out.append(guard.end())
    return b"".join(out)
