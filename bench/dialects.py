"""
The translation cost of each client dialect, in one process, same run:
a recorded 2,000-token backend stream (SSE, 20 events per socket read)
through C{TranslatedStream} into Ollama NDJSON, Anthropic SSE, Responses
SSE and Gemini SSE.  Pure CPU, no sockets: it isolates what a dialect's encoder adds to the
shared reader.  Each dialect also runs behind the tool-call id rewriter
every generation goes through (C{+ids}, L{ollama_proxy.protocol.toolids}),
to show its cost.  Ratios matter, not absolute numbers (see RESULTS.md).

    python bench/dialects.py [--tokens 2000] [--rounds 30]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.anthropic import AnthropicDialect
from ollama_proxy.protocol.gemini import GeminiDialect
from ollama_proxy.protocol.ollama import NDJSONEncoder, OllamaDialect
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.responses import ResponsesDialect
from ollama_proxy.protocol.responses_request import ResponsesContext
from ollama_proxy.protocol.requests import ChatRequest, Message
from ollama_proxy.protocol.stream import TranslatedStream
from ollama_proxy.protocol.toolids import uniqueToolIds

T0 = 1_750_000_000_000_000_000


def clock() -> int:
    return T0


def recorded(tokens: int) -> list[bytes]:
    """
    @return: the backend's stream as socket reads of 20 events each.
    """
    events = [b"data: " + codec.dumps({"id": "c", "object": "chat.completion.chunk",
                                        "choices": [{"index": 0, "delta": {"content": f" w{i}"},
                                                     "finish_reason": None}]}) + b"\n\n"
              for i in range(tokens)]
    events.append(b"data: " + codec.dumps({"choices": [{"index": 0, "delta": {},
                                                        "finish_reason": "stop"}]}) + b"\n\n")
    events.append(b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":%d}}\n\n'
                  % tokens)
    events.append(b"data: [DONE]\n\n")
    return [b"".join(events[i:i + 20]) for i in range(0, len(events), 20)]


ECHO = {"instructions": None, "max_output_tokens": None, "parallel_tool_calls": True,
        "reasoning": None, "temperature": 1, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1, "metadata": {}}

REQUEST = ChatRequest("m", (Message("user", "hi"),))

ENCODERS: dict[str, Callable[[], object]] = {
    "ollama": lambda: NDJSONEncoder("m", "chat", T0, clock),
    "anthropic": lambda: AnthropicDialect(5).streamEncoder("m", T0),
    "responses": lambda: ResponsesDialect(ResponsesContext(ECHO)).streamEncoder("m", T0),
    "ollama+ids": lambda: uniqueToolIds(OllamaDialect("chat", clock), REQUEST).streamEncoder("m", T0),
    "anthropic+ids": lambda: uniqueToolIds(AnthropicDialect(5), REQUEST).streamEncoder("m", T0),
    "responses+ids": lambda: uniqueToolIds(
        ResponsesDialect(ResponsesContext(ECHO)), REQUEST).streamEncoder("m", T0),
    "gemini": lambda: GeminiDialect("r", 5, True).streamEncoder("m", T0),
    "gemini+ids": lambda: uniqueToolIds(GeminiDialect("r", 5, True), REQUEST).streamEncoder("m", T0),
}


def once(reads: list[bytes], make: Callable[[], object]) -> tuple[float, int]:
    pipeline = TranslatedStream(ChatStreamReader(clock), make())  # type: ignore[arg-type]
    start = time.perf_counter()
    size = sum(len(pipeline.feed(read)) for read in reads) + len(pipeline.end())
    return time.perf_counter() - start, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    reads = recorded(args.tokens)
    times: dict[str, list[float]] = {name: [] for name in ENCODERS}
    sizes: dict[str, int] = {}
    for _ in range(args.rounds):  # interleaved, so load spikes hit every dialect alike
        for name, make in ENCODERS.items():
            elapsed, sizes[name] = once(reads, make)
            times[name].append(elapsed)
    base = statistics.median(times["ollama"])
    print(f"{args.tokens} tokens, {args.rounds} rounds, median")
    for name in ENCODERS:
        median = statistics.median(times[name])
        plain = statistics.median(times[name.removesuffix("+ids")])
        print(f"{name:14} {median * 1e9 / args.tokens:7.0f} ns/token  {median / base:4.2f}x  "
              f"{median / plain:4.2f}x without ids  {sizes[name] / args.tokens:6.1f} bytes/token")


if __name__ == "__main__":
    main()
