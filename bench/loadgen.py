"""
A verifying HTTP/1.1 load generator on raw asyncio (uvloop when installed).

C{concurrency} keep-alive connections each send the same request back to back
for a fixed time (bounded by a request count too).  Every response is checked:
status 200, and for streams the number of content lines (NDJSON) or content
events (SSE) and the final C{done: true} / C{data: [DONE]}.  Reported: requests
per second, p50/p99 latency, p50/p99 time to first body byte, content chunks
per second, errors, and the peak RSS and CPU time of a watched process (the
proxy) during the run.

Used as a library by L{bench.run}; C{python bench/loadgen.py --help} runs one
scenario by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------
# Verification


def dechunk(body: bytes) -> bytes:
    """Decode an HTTP/1.1 chunked body (without trailers)."""
    out = []
    pos = 0
    find = body.find
    while True:
        j = find(b"\r\n", pos)
        if j < 0:
            raise ValueError("truncated chunked body")
        size = int(body[pos:j].split(b";", 1)[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[j + 2 : j + 2 + size])
        pos = j + 4 + size


def verifyNDJSON(body: bytes, chunks: int, exact: bool) -> tuple[str | None, int]:
    """
    An Ollama stream: C{chunks} content lines then one C{done: true} line.

    @return: (error or None, content lines seen).
    """
    if not body.endswith(b"\n"):
        return "stream does not end with a newline", 0
    lines = body.count(b"\n")
    last = body[body.rfind(b"\n", 0, len(body) - 1) + 1 :]
    try:
        final = json.loads(last)
    except ValueError:
        return f"last line is not JSON: {last[:100]!r}", lines
    if "error" in final:
        return f"error line: {final['error']}", lines
    if final.get("done") is not True:
        return "last line is not done:true", lines
    content = lines - 1
    if exact and content != chunks:
        return f"expected {chunks} content lines, got {content}", content
    if content < chunks:
        return f"expected >= {chunks} content lines, got {content}", content
    return None, content


def verifySSE(body: bytes, chunks: int, exact: bool) -> tuple[str | None, int]:
    """
    An OpenAI stream: C{chunks} events with content, ending in C{[DONE]}.
    """
    content = body.count(b'"content"')
    if not body.rstrip().endswith(b"data: [DONE]"):
        return "SSE stream does not end with data: [DONE]", content
    if content != chunks:
        return f"expected {chunks} content events, got {content}", content
    return None, content


def verifyNamedSSE(body: bytes, delta: bytes, end: bytes, chunks: int) -> tuple[str | None, int]:
    """
    A stream of named SSE events (Anthropic Messages, OpenAI Responses):
    C{chunks} C{delta} events, and C{end} as the last event.
    """
    names = [line[7:].strip() for line in body.split(b"\n") if line.startswith(b"event: ")]
    content = names.count(delta)
    if not names or names[-1] != end:
        return f"stream does not end with event {end.decode()}", content
    if content != chunks:
        return f"expected {chunks} {delta.decode()} events, got {content}", content
    return None, content


def verifyGeminiSSE(body: bytes, chunks: int) -> tuple[str | None, int]:
    """
    A Gemini API stream (C{alt=sse}): C{data:} events only, C{chunks} with
    text, and a last one with the C{finishReason}.
    """
    events = [e for e in body.split(b"\n\n") if e.strip()]
    if not events or b'"finishReason"' not in events[-1]:
        return "stream does not end with a finishReason", 0
    if any(not e.startswith(b"data: ") or b'"error"' in e for e in events):
        return "stream has a non-data or error event", 0
    content = len(events) - 1
    if content != chunks:
        return f"expected {chunks} text events, got {content}", content
    return None, content


def verifyJSON(body: bytes, key: str) -> tuple[str | None, int]:
    try:
        decoded = json.loads(body)
    except ValueError:
        return "body is not JSON", 0
    if key not in decoded:
        return f"no {key!r} in body", 0
    if key == "message" and decoded.get("done") is not True:
        return "non-streamed reply is not done:true", 0
    return None, 1


# ---------------------------------------------------------------------------
# Client


class Conn(asyncio.Protocol):
    """One keep-alive connection; one outstanding request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Any] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: object) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.headDone and self.length is None and not self.chunked:
                self._complete(time.perf_counter())
            else:
                self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def send(self, raw: bytes) -> asyncio.Future[Any]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.pieces: list[bytes] = []
        self.size = 0
        self.headDone = False
        self.status = 0
        self.length: int | None = None
        self.chunked = False
        self.ttfb: float | None = None
        self.ttfbCpu: float | None = None
        self.tail = b""
        assert self.transport is not None
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.waiter is None or self.waiter.done():
            return
        if not self.headDone:
            self.pieces.append(data)
            buf = b"".join(self.pieces)
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.pieces = [buf]
                return
            head = buf[:end].lower()
            self.status = int(head[9:12])
            i = head.find(b"\r\ncontent-length:")
            if i >= 0:
                j = head.find(b"\r\n", i + 2)
                self.length = int(head[i + 17 : j if j >= 0 else len(head)])
            self.chunked = b"transfer-encoding: chunked" in head
            self.headDone = True
            data = buf[end + 4 :]
            self.pieces = []
            if not data:
                if self.length == 0:
                    self._complete(now)
                return
        if self.ttfb is None:
            self.ttfb = now
            if CPU_AT_FIRST_BYTE:
                # The watched processes' CPU time when this first byte
                # arrived: a time to first byte in the proxy's own CPU
                # seconds, steady where wall time waits for a shared core.
                self.ttfbCpu = sum(cpuSeconds(pid) for pid in CPU_AT_FIRST_BYTE)
        self.pieces.append(data)
        self.size += len(data)
        if self.length is not None:
            if self.size >= self.length:
                self._complete(now)
        elif self.chunked:
            tail = (self.tail + data)[-7:]
            self.tail = tail
            if tail.endswith(b"\r\n0\r\n\r\n") or (self.size == 5 and tail == b"0\r\n\r\n"):
                self._complete(now)

    def _complete(self, now: float) -> None:
        body = b"".join(self.pieces)
        self.pieces = []
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        try:
            if self.chunked:
                body = dechunk(body)
        except ValueError as e:
            waiter.set_exception(e)
            return
        waiter.set_result((self.status, body, self.ttfb, now))


@dataclass
class Spec:
    """What to send and how to check it."""

    name: str
    port: int
    raw: bytes
    check: Callable[[bytes], tuple[str | None, int]]


def buildRequest(method: str, path: str, body: Any = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\nAccept: */*\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return head.encode() + b"\r\n" + data


@dataclass
class Result:
    requests: int = 0
    errors: int = 0
    errorSamples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    ttfbs: list[float] = field(default_factory=list)
    ttfbCpus: list[float] = field(default_factory=list)
    chunks: int = 0
    elapsed: float = 0.0
    peakRSSkB: int = 0
    baseRSSkB: int = 0
    cpuSeconds: float = 0.0
    rssSamples: list[tuple[float, int]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], p: float) -> float:
            if not values:
                return float("nan")
            s = sorted(values)
            return s[min(len(s) - 1, int(p * len(s)))] * 1000

        ok = self.requests - self.errors
        return {
            "requests": self.requests,
            "ok": ok,
            "errors": self.errors,
            "errorSamples": self.errorSamples[:3],
            "elapsed": round(self.elapsed, 3),
            "rps": ok / self.elapsed if self.elapsed else 0.0,
            "p50ms": pct(self.latencies, 0.5),
            "p99ms": pct(self.latencies, 0.99),
            "ttfbP50ms": pct(self.ttfbs, 0.5),
            "ttfbP99ms": pct(self.ttfbs, 0.99),
            **({"ttfbCpuP50ms": pct(self.ttfbCpus, 0.5), "ttfbCpuP99ms": pct(self.ttfbCpus, 0.99)}
               if self.ttfbCpus else {}),
            "chunksPerS": self.chunks / self.elapsed if self.elapsed else 0.0,
            "peakRSSMB": self.peakRSSkB / 1024,
            "baseRSSMB": self.baseRSSkB / 1024,
            "cpuMsPerReq": 1000 * self.cpuSeconds / ok if ok else float("nan"),
            "cpuUtil": self.cpuSeconds / self.elapsed if self.elapsed else 0.0,
        }


# ---------------------------------------------------------------------------
# Process watching


def readRSS(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB of C{pid} and its children are not included."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def resetHWM(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux: write 5 to clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


CPU_AT_FIRST_BYTE: list[int] = []
"""Pids whose CPU time each connection reads at its first byte (set by
L{run} for C{perConn} runs, the thousand-stream scenarios): the summary's
C{ttfbCpuP50ms} is the watched processes' CPU time from the start of the
measured run to a request's first byte."""


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def watch(pids: list[int], result: Result, stop: asyncio.Event, interval: float) -> None:
    start = time.perf_counter()
    while not stop.is_set():
        total = 0
        for pid in pids:
            try:
                total += readRSS(pid)[0]
            except OSError:
                pass
        result.rssSamples.append((time.perf_counter() - start, total))
        result.peakRSSkB = max(result.peakRSSkB, total)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except asyncio.TimeoutError:
            pass


# ---------------------------------------------------------------------------
# Running


async def connect(port: int, count: int) -> list[Conn]:
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(count):
        _, proto = await loop.create_connection(Conn, "127.0.0.1", port)
        conns.append(proto)
    return conns


async def run(
    spec: Spec,
    concurrency: int,
    duration: float,
    maxRequests: int = 1_000_000,
    warmup: float = 0.3,
    watchPids: list[int] | None = None,
    timeout: float = 60.0,
    rssInterval: float = 0.05,
    perConn: int | None = None,
    burst: bool = False,
) -> Result:
    """
    Drive C{spec} with C{concurrency} connections for C{duration} seconds
    (plus C{warmup} not counted), at most C{maxRequests} measured requests.
    With C{perConn}, each connection sends exactly that many requests, all
    measured (no warm-up), and C{duration} is ignored.  With C{burst}, the
    connections are not made beforehand one by one: every worker connects
    at the same moment and sends at once, and the connect counts in its
    request's latency, time to first byte and C{timeout} (a SYN dropped by a
    full accept queue shows up as a retransmit delay or a timeout).
    """
    result = Result()
    pids = watchPids or []
    conns: list[Any] = [None] * concurrency if burst else await connect(spec.port, concurrency)
    loop = asyncio.get_running_loop()
    budget = [maxRequests]

    async def once(conn: Conn | None) -> tuple[Conn, str | None, int, float | None, float, float]:
        if conn is not None and conn.closed:
            _, conn = await loop.create_connection(Conn, "127.0.0.1", spec.port)  # type: ignore[assignment]
        t0 = time.perf_counter()
        try:
            if conn is None:
                _, conn = await asyncio.wait_for(  # type: ignore[assignment]
                    loop.create_connection(Conn, "127.0.0.1", spec.port), timeout)
            assert conn is not None
            status, body, ttfb, t1 = await asyncio.wait_for(
                conn.send(spec.raw), timeout - (time.perf_counter() - t0))
            error = None if status == 200 else f"HTTP {status}: {body[:200]!r}"
            n = 0
            if error is None:
                error, n = spec.check(body)
        except Exception as e:  # noqa: BLE001 - every failure is counted
            error, n, ttfb, t1 = f"{type(e).__name__}: {e}", 0, None, time.perf_counter()
            if conn is None:
                conn = Conn()
            if conn.transport is not None:
                conn.transport.close()
            conn.closed = True
        return conn, error, n, ttfb, t0, t1

    def record(error: str | None, n: int, ttfb: float | None, t0: float, t1: float,
               ttfbCpu: float | None = None) -> None:
        result.requests += 1
        if error is not None:
            result.errors += 1
            if len(result.errorSamples) < 5:
                result.errorSamples.append(error)
        else:
            result.latencies.append(t1 - t0)
            if ttfb is not None:
                result.ttfbs.append(ttfb - t0)
            if ttfbCpu is not None:
                result.ttfbCpus.append(ttfbCpu - cpu0)
            result.chunks += n

    if perConn is None and warmup > 0:
        # Warm up: every connection completes one request (so a slow target
        # does not carry warm-up requests into the measured window), then
        # the rest of the warm-up time back to back.
        warmDeadline = loop.time() + warmup

        async def warm(conn: Conn) -> Conn:
            conn = (await once(conn))[0]
            while loop.time() < warmDeadline:
                conn = (await once(conn))[0]
            return conn

        conns = list(await asyncio.wait_for(asyncio.gather(*(warm(c) for c in conns)), timeout + warmup + 5))
    deadline = loop.time() + (timeout if perConn is not None else duration)

    async def worker(conn: Conn) -> None:
        sent = 0
        while loop.time() < deadline and budget[0] > 0:
            if perConn is not None:
                if sent >= perConn:
                    break
                sent += 1
            budget[0] -= 1
            conn, error, n, ttfb, t0, t1 = await once(conn)
            record(error, n, ttfb, t0, t1, conn.ttfbCpu if error is None else None)
        conns.append(conn)

    stop = asyncio.Event()
    for pid in pids:
        resetHWM(pid)
    result.baseRSSkB = sum(readRSS(pid)[0] for pid in pids)
    cpu0 = sum(cpuSeconds(pid) for pid in pids)
    CPU_AT_FIRST_BYTE[:] = pids if perConn is not None else []
    watcher = asyncio.ensure_future(watch(pids, result, stop, rssInterval))
    t0 = time.perf_counter()
    workers = list(conns)
    conns = []
    await asyncio.wait_for(asyncio.gather(*(worker(c) for c in workers)), duration + timeout + 5)
    result.elapsed = time.perf_counter() - t0
    stop.set()
    await watcher
    result.cpuSeconds = sum(cpuSeconds(pid) for pid in pids) - cpu0
    for pid in pids:
        result.peakRSSkB = max(result.peakRSSkB, readRSS(pid)[1])
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="one scenario by hand")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/chat")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("-c", "--concurrency", type=int, default=16)
    parser.add_argument("-d", "--duration", type=float, default=5.0)
    parser.add_argument("--pid", type=int, action="append", default=[])
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.path == "/api/chat" and args.chunks == 0:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        check = lambda b: verifyJSON(b, "message")  # noqa: E731
    elif args.path == "/api/tags":
        body = None
        check = lambda b: verifyJSON(b, "models")  # noqa: E731
    elif args.path == "/api/chat":
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                "options": {"num_predict": args.chunks}}
        check = lambda b: verifyNDJSON(b, args.chunks, True)  # noqa: E731
    else:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": args.chunks, "stream": True}
        check = lambda b: verifySSE(b, args.chunks, True)  # noqa: E731
    spec = Spec("manual", args.port, buildRequest("POST" if body is not None else "GET", args.path, body), check)
    result = asyncio.run(run(spec, args.concurrency, args.duration, watchPids=args.pid))
    print(json.dumps(result.summary(), indent=2))


if __name__ == "__main__":
    main()
