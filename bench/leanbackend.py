"""
A lean, bench-only OpenAI-compatible backend: raw asyncio (uvloop when
installed), HTTP/1.1 keep-alive, pre-built SSE bytes.

It exists so that the backend is not the bottleneck of a proxy benchmark.
Routes (model names are echoed, any model is accepted):

  - C{GET /v1/models}: three models.
  - C{POST /v1/chat/completions}: C{max_tokens} (default 100) deltas; with
    C{"stream": true} one SSE event per HTTP chunk (as vLLM and LiteLLM
    frame them), the finish event, a usage event when
    C{stream_options.include_usage} is set, then C{data: [DONE]}; without
    it one JSON completion.

C{--delay} seconds between streamed events (0: the whole reply in one
write); a model named C{slow-<ms>} (e.g. C{slow-20}) streams with that many
milliseconds between events instead.  Listens on 127.0.0.1 only.

    python bench/leanbackend.py --port 18000 [--delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

WORDS = [b"Hello", b" from", b" the", b" lean", b" bench", b" backend", b",", b" token", b" by", b" token."]
CREATED = b"1700000000"

_templates: dict[bytes, list[bytes]] = {}


def _frame(data: bytes) -> bytes:
    """HTTP/1.1 chunked framing of one piece."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def _events(model: bytes) -> list[bytes]:
    """The framed per-word delta events for C{model}, cached."""
    cached = _templates.get(model)
    if cached is None:
        head = (
            b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
            + CREATED + b',"model":' + json.dumps(model.decode()).encode()
            + b',"choices":[{"index":0,"delta":{"content":'
        )
        cached = [
            _frame(head + json.dumps(w.decode()).encode() + b'},"finish_reason":null}]}\n\n')
            for w in WORDS
        ]
        if len(_templates) < 64:
            _templates[model] = cached
    return cached


def _tail(model: bytes, n: int, usage: bool) -> bytes:
    m = json.dumps(model.decode()).encode()
    base = (
        b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":'
        + CREATED + b',"model":' + m
    )
    out = _frame(base + b',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    if usage:
        out += _frame(
            base + b',"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d,'
            b'"total_tokens":%d}}\n\n' % (n, n + 5)
        )
    return out + _frame(b"data: [DONE]\n\n") + b"0\r\n\r\n"


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)

MODELS_BODY = json.dumps(
    {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": 1700000000, "owned_by": "bench"}
            for m in ("fake-model", "bench-a", "bench-b")
        ],
    }
).encode()


def _jsonResponse(body: bytes, status: bytes = b"200 OK") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


class BackendProtocol(asyncio.Protocol):
    """One client connection; requests are answered in order."""

    delay = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""
        self.busy = False
        self.handle: asyncio.TimerHandle | None = None

    def connection_lost(self, exc: object) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._process()

    def _process(self) -> None:
        while not self.busy:
            buf = self.buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = buf[:end]
            length = 0
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j >= 0 else len(head)])
            if len(buf) < end + 4 + length:
                return
            body = buf[end + 4 : end + 4 + length]
            self.buf = buf[end + 4 + length :]
            method, path, _ = head[: head.find(b"\r\n") if b"\r\n" in head else len(head)].split(b" ", 2)
            self._handle(method, path, body)

    def _handle(self, method: bytes, path: bytes, body: bytes) -> None:
        path = path.split(b"?", 1)[0].rstrip(b"/")
        if path.startswith(b"/v1"):
            path = path[3:]
        if method == b"GET" and path == b"/models":
            self.transport.write(_jsonResponse(MODELS_BODY))
            return
        if method == b"POST" and path == b"/chat/completions":
            try:
                request = json.loads(body)
            except ValueError:
                self.transport.write(_jsonResponse(b'{"error":{"message":"bad json"}}', b"400 Bad Request"))
                return
            model = str(request.get("model") or "fake-model").encode()
            n = request.get("max_tokens") or request.get("max_completion_tokens") or 100
            n = max(1, min(int(n), 1_000_000))
            if request.get("stream"):
                usage = bool((request.get("stream_options") or {}).get("include_usage"))
                delay = self.delay
                if model.startswith(b"slow-"):
                    delay = int(model[5:]) / 1000
                self._stream(model, n, usage, delay)
            else:
                text = b"".join(WORDS[i % len(WORDS)] for i in range(n)).decode()
                self.transport.write(_jsonResponse(json.dumps({
                    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000,
                    "model": model.decode(),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5},
                }).encode()))
            return
        self.transport.write(_jsonResponse(b'{"error":{"message":"no route"}}', b"404 Not Found"))

    def _stream(self, model: bytes, n: int, usage: bool, delay: float) -> None:
        events = _events(model)
        k = len(events)
        if delay <= 0:
            full, rest = divmod(n, k)
            self.transport.write(
                STREAM_HEAD + b"".join(events) * full + b"".join(events[:rest]) + _tail(model, n, usage)
            )
            return
        self.busy = True
        self.transport.write(STREAM_HEAD)
        loop = asyncio.get_running_loop()
        state = [0]

        def step() -> None:
            self.handle = None
            if self.transport.is_closing():
                return
            i = state[0]
            if i < n:
                self.transport.write(events[i % k])
                state[0] = i + 1
                self.handle = loop.call_later(delay, step)
            else:
                self.transport.write(_tail(model, n, usage))
                self.busy = False
                if self.buf:
                    self._process()

        self.handle = loop.call_later(delay, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    BackendProtocol.delay = args.delay

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(BackendProtocol, "127.0.0.1", args.port, backlog=4096)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"leanbackend pid={os.getpid()} port={args.port} delay={args.delay}", file=sys.stderr, flush=True)
        await stop.wait()
        server.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
