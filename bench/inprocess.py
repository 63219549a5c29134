"""
The dialects' streams through the whole proxy in one process, no sockets:
the real resource tree behind a C{StubTreq} client, the in-process fake
backend, 100-chunk streams.  Steadier than the socket runs on a shared
machine (no scheduling between processes): CPU per stream
(C{time.process_time}, the proxy and the fake backend together) per
round, interleaved, with the median ratio to streamed C{/api/chat}, and
the function calls per stream (cProfile), which do not vary between runs.

    python bench/inprocess.py [--rounds 12] [--streams 40]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from typing import Any

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import FakeOpenAI
from ollama_proxy.testing.harness import TARGET, Counter, contextFor
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.tree import buildRoot

HI = [{"role": "user", "content": "hi"}]
ROUTES: dict[str, tuple[str, Any]] = {
    "chat": ("/api/chat", {"model": "fake-model", "messages": HI, "options": {"num_predict": 100}}),
    "gemini": ("/v1beta/models/fake-model:streamGenerateContent?alt=sse",
               {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 100}}),
    "anthropic": ("/v1/messages", {"model": "fake-model", "max_tokens": 100, "stream": True,
                                   "messages": HI}),
    "responses": ("/v1/responses", {"model": "fake-model", "max_output_tokens": 100,
                                    "stream": True, "input": "hi"}),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--streams", type=int, default=40)
    args = parser.parse_args()
    clock = MemoryReactorClock()
    root = buildRoot(contextFor(Backend(StubTreq(FakeOpenAI(clock)), TARGET, clock),
                                clock=clock, now=Counter()))
    client: Any = StubTreq(root)

    def stream(path: str, body: Any) -> bytes:
        d = client.post("http://proxy.test" + path, data=codec.dumps(body))
        for _ in range(6):
            client.flush()
        out: list[bytes] = []
        d.addCallback(client.content).addCallback(out.append)
        for _ in range(6):
            client.flush()
        assert out and out[0], path
        return out[0]

    sizes = {name: len(stream(*route)) for name, route in ROUTES.items()}
    calls = {}
    for name, route in ROUTES.items():
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(10):
            stream(*route)
        profile.disable()
        calls[name] = pstats.Stats(profile).total_calls / 10  # type: ignore[attr-defined]
    cpu: dict[str, list[float]] = {name: [] for name in ROUTES}
    for _ in range(args.rounds):
        for name, route in ROUTES.items():
            start = time.process_time()
            for _ in range(args.streams):
                stream(*route)
            cpu[name].append((time.process_time() - start) / args.streams * 1000)
    base = cpu["chat"]
    print(f"{args.rounds} rounds of {args.streams} streams, median; ratio per round, then median")
    for name in ROUTES:
        ratio = statistics.median(c / b for c, b in zip(cpu[name], base))
        print(f"{name:10} {statistics.median(cpu[name]):.3f} CPU ms/stream  {ratio:.3f}x  "
              f"{calls[name]:7.0f} calls ({calls[name] / calls['chat']:.3f}x)  {sizes[name]} bytes")


if __name__ == "__main__":
    main()
