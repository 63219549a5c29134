"""
The dialects' streams through the whole proxy in one process, no sockets:
the real resource tree behind a C{StubTreq} client, the in-process fake
backend, 100-chunk streams.  Steadier than the socket runs on a shared
machine (no scheduling between processes): CPU per stream
(C{time.process_time}, the proxy and the fake backend together) per
round, interleaved, with the median ratio to streamed C{/api/chat}, and
the function calls per stream (cProfile), which do not vary between runs.

    python bench/inprocess.py [--rounds 12] [--streams 40] [--history 0]

C{--history N} gives every route a conversation of N earlier tool
exchanges (a question, the assistant's reasoning and tool call, the tool's
result), in the route's own dialect, as coding agents send: the cost of
reading the conversation, which a bare C{hi} does not show.
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


def history(name: str, turns: int) -> Any:
    """
    C{turns} tool exchanges and a last question, in dialect C{name}'s shape.
    """
    out: list[Any] = []
    for i in range(turns):
        ask, call, result = f"question {i}: read file {i}", f"call_{i}", f"contents of file {i}\n" * 4
        if name == "chat":
            out += [{"role": "user", "content": ask},
                    {"role": "assistant", "content": "", "thinking": "I should read it",
                     "tool_calls": [{"id": call, "function": {"name": "read", "arguments": {"path": ask}}}]},
                    {"role": "tool", "content": result, "tool_call_id": call}]
        elif name == "anthropic":
            out += [{"role": "user", "content": [{"type": "text", "text": ask}]},
                    {"role": "assistant", "content": [
                        {"type": "thinking", "thinking": "I should read it", "signature": "s"},
                        {"type": "tool_use", "id": call, "name": "read", "input": {"path": ask}}]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call,
                                                  "content": [{"type": "text", "text": result}]}]}]
        elif name == "responses":
            out += [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": ask}]},
                    {"type": "reasoning", "summary": [{"type": "summary_text", "text": "I should read it"}]},
                    {"type": "function_call", "call_id": call, "name": "read",
                     "arguments": codec.dumps({"path": ask}).decode()},
                    {"type": "function_call_output", "call_id": call, "output": result}]
        else:
            out += [{"role": "user", "parts": [{"text": ask}]},
                    {"role": "model", "parts": [{"text": "I should read it", "thought": True},
                                                {"functionCall": {"name": "read", "args": {"path": ask}}}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "read",
                                                                     "response": {"output": result}}}]}]
    return out


def withHistory(name: str, body: Any, turns: int) -> Any:
    """
    C{body} with C{turns} exchanges before its own question.
    """
    if not turns:
        return body
    earlier = history(name, turns)
    if name == "chat":
        return {**body, "messages": earlier + body["messages"]}
    if name == "anthropic":
        return {**body, "messages": earlier + body["messages"]}
    if name == "responses":
        return {**body, "input": earlier + [{"role": "user", "content": body["input"]}]}
    return {**body, "contents": earlier + body["contents"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--streams", type=int, default=40)
    parser.add_argument("--history", type=int, default=0)
    args = parser.parse_args()
    routes = {name: (path, withHistory(name, body, args.history)) for name, (path, body) in ROUTES.items()}
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

    sizes = {name: len(stream(*route)) for name, route in routes.items()}
    calls = {}
    for name, route in routes.items():
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(10):
            stream(*route)
        profile.disable()
        calls[name] = pstats.Stats(profile).total_calls / 10  # type: ignore[attr-defined]
    cpu: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(args.rounds):
        for name, route in routes.items():
            start = time.process_time()
            for _ in range(args.streams):
                stream(*route)
            cpu[name].append((time.process_time() - start) / args.streams * 1000)
    base = cpu["chat"]
    print(f"{args.rounds} rounds of {args.streams} streams, median; ratio per round, then median")
    for name in routes:
        ratio = statistics.median(c / b for c, b in zip(cpu[name], base))
        print(f"{name:10} {statistics.median(cpu[name]):.3f} CPU ms/stream  {ratio:.3f}x  "
              f"{calls[name]:7.0f} calls ({calls[name] / calls['chat']:.3f}x)  {sizes[name]} bytes")


if __name__ == "__main__":
    main()
