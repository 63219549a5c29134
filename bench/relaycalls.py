"""
Function calls per token of the relay's own work, one SSE event per socket
read (the shape of the thousand-stream scenario): C{TranslatedStream.feed}
and the outbound filter as C{web/chat._writer} applies it (past the filter
when the pipeline certified the read), per dialect, without and with
secrets.  Calls do not vary with machine load.

    python bench/relaycalls.py

Prefix C{PYTHONPATH=<other tree>/src} to count another build.
"""

from __future__ import annotations

import sys
from typing import Any

from dialects import ENCODERS, clock, recorded

from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.redact import Redactor
from ollama_proxy.protocol.stream import TranslatedStream

SECRETS = ["sk-bench-secret-key", "client-key-999999"]


def relay(name: str, reads: list[bytes], secrets: list[str]) -> None:
    redactor = Redactor(secrets)
    pipeline = TranslatedStream(ChatStreamReader(clock), ENCODERS[name](),  # type: ignore[arg-type]
                                redactor=redactor.events())
    outbound = redactor.stream()
    for read in reads:
        out = pipeline.feed(read)
        skip = getattr(pipeline, "redacted", False)  # older builds have no skip
        if outbound is not None and not (skip and not outbound.holding):
            outbound.feed(out)
    if outbound is not None:
        outbound.feed(pipeline.end())


def main() -> None:
    tokens = 2000
    reads = [event + b"\n\n" for read in recorded(tokens) for event in read.split(b"\n\n") if event]
    count = 0

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    for secrets in ([], SECRETS):
        for name in ("ollama", "anthropic", "responses", "gemini"):
            relay(name, reads, secrets)
            count = 0
            sys.setprofile(profile)
            relay(name, reads, secrets)
            sys.setprofile(None)
            label = name + (" + 2 secrets" if secrets else "")
            print(f"{label:24} {count / tokens:6.1f} calls/token")


if __name__ == "__main__":
    main()
