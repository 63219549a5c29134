"""
The fallback's relayed NDJSON stream, clean, before and after its text guard
(C{protocol/ndguard.py}): CPU per relayed stream of two builds in
alternating rounds (as C{ab.py}: proxies on core 0, the fake fallback and
this load generator on core 1), and the guard alone per line.

The fake fallback answers any C{POST /api/...} with C{--lines} Ollama chat
lines (the bench backend's words), one HTTP chunk and one socket write per
line with a loop turn between them (as a model's tokens come), then the
C{done} line.  The proxies run with C{--api-key} and C{--require-key}, so
that there are secrets to guard.

    bench/.venvs/bench/bin/python bench/ndguard.py --proxy-python PY A=TREE/src B=TREE/src \\
        [--rounds 5] [--duration 3] [--concurrency 16] [--lines 100]

C{--micro} times the guard alone; C{--calls} counts the Python calls of one
relayed stream in-process (the proxy's harness, one read per line or event:
the steady figure on a shared machine), for the tree on C{PYTHONPATH}:

    PYTHONPATH=TREE/src PY bench/ndguard.py --calls
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
import run  # noqa: E402

WORDS = ["Hello", " from", " the", " lean", " bench", " fallback", ",", " token", " by", " token."]
KEY = "sk-bench-backend-QWERTYUIOPqwertyuiop"
INBOUND = "in-bench-ZXCVBNMzxcvbnm"


def lines(count: int) -> list[bytes]:
    out = []
    for i in range(count):
        out.append(json.dumps({"model": "m", "created_at": "2026-12-06T00:00:00.000000000Z",
                               "message": {"role": "assistant", "content": WORDS[i % len(WORDS)]},
                               "done": False}, separators=(",", ":")).encode() + b"\n")
    out.append(json.dumps({"model": "m", "created_at": "2026-12-06T00:00:00.000000000Z",
                           "message": {"role": "assistant", "content": ""}, "done": True,
                           "done_reason": "stop", "eval_count": count},
                          separators=(",", ":")).encode() + b"\n")
    return out


async def fallback(port: int, count: int) -> None:
    """The fake fallback Ollama (run with C{--serve PORT})."""
    body = lines(count)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if length:
                    await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for piece in body:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await asyncio.sleep(0)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def load(port: int, concurrency: int, duration: float, count: int) -> int:
    """
    @return: streams completed, each checked (every line, then C{done}).
    """
    request = (b"POST /api/x-chat HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
               + INBOUND.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n"
               b'{"model":"m"}')
    done = 0
    end = time.monotonic() + duration

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < end:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            assert b" 200 " in head.split(b"\r\n")[0], head
            body = b""
            while not body.endswith(b"0\r\n\r\n") or b'"done":true' not in body:
                body += await reader.read(65536)
            data = loadgen.dechunk(body)
            assert data.count(b"\n") == count + 1 and b"<redacted>" not in data, data[-200:]
            done += 1
        writer.close()

    await asyncio.gather(*(one() for _ in range(concurrency)))
    return done


def micro(count: int) -> None:
    """The guard alone: one clean line per read, and every line ending in a key's start."""
    import cProfile
    import pstats

    from ollama_proxy.protocol.ndguard import ndjsonGuard
    from ollama_proxy.protocol.redact import Redactor

    clean = lines(count)
    held = [line.replace(b'"content":"', b'"content":"s') for line in clean]
    held = [line.replace(b'"},"done"', b' s"},"done"', 1) for line in held]
    for name, body in (("clean", clean), ("every line ending in s", held)):
        best = float("inf")
        for _ in range(20):
            guard = ndjsonGuard(Redactor([KEY]), [INBOUND])
            assert guard is not None
            start = time.perf_counter()
            for piece in body:
                guard.feed(piece)
            guard.end()
            best = min(best, time.perf_counter() - start)
        profile = cProfile.Profile()
        guard = ndjsonGuard(Redactor([KEY]), [INBOUND])
        assert guard is not None
        profile.enable()
        for piece in body:
            guard.feed(piece)
        guard.end()
        profile.disable()
        calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        print(f"guard alone, {name}: {best * 1e6:.0f} us / {calls} Python calls for {len(body)} lines")


def calls(count: int) -> None:
    """Python calls per relayed stream, fallback NDJSON and passthrough SSE."""
    import cProfile
    import pstats

    from ollama_proxy.testing.harness import BodyCollector, ProxyHarness

    ndjson = lines(count)
    sse = [b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                   "model": "m", "choices": [{"index": 0, "delta": {
                                       "content": WORDS[i % len(WORDS)]}, "finish_reason": None}]},
                                  separators=(",", ":")).encode() + b"\n\n" for i in range(count)]
    sse.append(b"data: [DONE]\n\n")

    def once(path: str, body: list[bytes], contentType: bytes, fallback: bool) -> None:
        h = ProxyHarness(apiKey=KEY, secrets=(INBOUND,))
        d = h.post(path, {"model": "m", "stream": True},
                   headers={b"Authorization": [b"Bearer " + INBOUND.encode()]})
        [upstream] = (h.ollama if fallback else h.backend).received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"Content-Type", contentType)
        got: list[BodyCollector] = []
        d.addCallback(lambda response: got.append(BodyCollector(h, response)))
        for piece in body:
            upstream.write(piece)
            h.pump()
        upstream.finish()
        h.pump()
        assert got[0].data == b"".join(body), got[0].data[-300:]

    for name, args in (("fallback NDJSON", ("/api/x-chat", ndjson, b"application/x-ndjson", True)),
                       ("passthrough SSE", ("/v1/chat/completions", sse, b"text/event-stream", False))):
        once(*args)
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(5):
            once(*args)
        profile.disable()
        total = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        print(f"{name}: {total // 5} Python calls per stream ({count} pieces, one read each)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--micro", action="store_true", help="the guard alone (this interpreter's tree)")
    parser.add_argument("--calls", action="store_true", help="calls per relayed stream (this tree)")
    parser.add_argument("--proxy-python")
    parser.add_argument("builds", nargs="*", help="NAME=PYTHONPATH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--base-port", type=int, default=0)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(fallback(args.serve, args.lines))
        return
    if args.micro:
        micro(args.lines)
        return
    if args.calls:
        calls(args.lines)
        return
    os.sched_setaffinity(0, {int(run.BENCH_CORE)})
    logDir = tempfile.mkdtemp(prefix="ndguard-")
    port = args.base_port or run.freePort()
    fake = run.Server("fallback", [sys.executable, __file__, "--serve", str(port), "--lines",
                                   str(args.lines)], port, run.BENCH_CORE)
    fake.start(logDir)
    proxies = []
    try:
        for i, spec in enumerate(args.builds):
            name, _, path = spec.partition("=")
            proxyPort = (args.base_port + 1 + i) if args.base_port else run.freePort()
            argv = [args.proxy_python, "-c", "from twisted.scripts.twistd import run; run()", "-n",
                    "--pidfile=", f"--logfile={name}.log", "ollama-proxy",
                    "--target", f"http://127.0.0.1:{port}", "--fallback", f"http://127.0.0.1:{port}",
                    "--api-key", KEY, "--require-key", INBOUND,
                    "--listen", f"tcp:{proxyPort}:interface=127.0.0.1"]
            server = run.Server(name, argv, proxyPort, run.PROXY_CORE, {"PYTHONPATH": path})
            server.start(logDir)
            proxies.append(server)
        ratios = []
        for round in range(args.rounds):
            cpu = {}
            for server in proxies:
                assert server.proc is not None
                before = loadgen.cpuSeconds(server.proc.pid)
                count = asyncio.run(load(server.port, args.concurrency, args.duration, args.lines))
                used = loadgen.cpuSeconds(server.proc.pid) - before
                cpu[server.name] = used / count * 1000
                print(f"round {round}: {server.name}: {count} streams, {count / args.duration:.0f}/s, "
                      f"{cpu[server.name]:.3f} ms CPU per stream", flush=True)
            if len(proxies) == 2:
                ratios.append(cpu[proxies[1].name] / cpu[proxies[0].name])
        if ratios:
            print(f"median CPU ratio {proxies[1].name}/{proxies[0].name}: {statistics.median(ratios):.3f} "
                  f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})")
    finally:
        for server in proxies:
            server.stop()
        fake.stop()


if __name__ == "__main__":
    main()
