"""
Peak memory of one large C{/v1/responses} reply, in a process of its own.

The proxy's whole reply path without sockets: the backend's SSE bytes in
64 KiB reads through L{TranslatedStream} (reader, Responses encoder) for
C{stream: true}, or the backend's JSON body through C{readReply} and the
dialect's C{reply} plus its encoding for C{stream: false}; C{stream} lifts
the reply cap (C{MAX_REPLY_TEXT}) to show the encoding's own cost,
C{capped} keeps it (the stream ends with C{response.failed} at the cap).  Each mode runs
in a fresh child process (so one's heap does not flatter the other) and
reports its peak RSS (C{VmHWM}), its RSS at the start and after the reply
is dropped, and the bytes it wrote.  Compare builds in one run:

    python bench/responses_memory.py                 # this tree
    PYTHONPATH=/work/main/src python bench/responses_memory.py   # another

@see: bench/RESULTS.md, docs/reliability.md ("/v1/responses memory").
"""

from __future__ import annotations

import gc
import subprocess
import sys

MB = 1_000_000


def rss() -> tuple[int, int]:
    """
    @return: (VmRSS, VmHWM) of this process, in bytes.
    """
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb, _ = line.split()
                values[key[:-1]] = int(kb) * 1024
    return values["VmRSS"], values["VmHWM"]


def child(mode: str, size: int, piece: int) -> None:
    from ollama_proxy.protocol import codec
    from ollama_proxy.protocol.backend_reader import ChatStreamReader, readReply
    from ollama_proxy.protocol import responses
    from ollama_proxy.protocol.events import StreamFailed
    from ollama_proxy.protocol.responses import ResponsesDialect
    from ollama_proxy.protocol.responses_request import ResponsesContext
    from ollama_proxy.protocol.stream import TranslatedStream

    echo = {"instructions": None, "max_output_tokens": None, "parallel_tool_calls": True,
            "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0}
    context = ResponsesContext(echo)
    t0 = 1_750_000_000_000_000_000
    word = "abcdefghij" * (piece // 10)
    count = size // piece
    failed = "-"
    if mode == "stream" and hasattr(responses, "MAX_REPLY_TEXT"):
        # The encoding's own cost, past the cap (mode "capped" keeps it).
        responses.ResponsesEncoder.maxText = 1 << 40
    if mode in ("stream", "capped"):
        event = b"data: " + codec.dumps({"choices": [{"index": 0, "delta": {"content": word},
                                                      "finish_reason": None}]}) + b"\n\n"
        tail = (b"data: " + codec.dumps({"choices": [{"index": 0, "delta": {},
                                                      "finish_reason": "stop"}]})
                + b"\n\ndata: [DONE]\n\n")
        perRead = max(1, 65536 // len(event))
        read = event * perRead
        gc.collect()
        start, _ = rss()
        stream = TranslatedStream(ChatStreamReader(lambda: t0),
                                  ResponsesDialect(context).streamEncoder("m", t0))
        written = 0
        try:
            for _ in range(count // perRead):
                written += len(stream.feed(read))
            written += len(stream.feed(tail))
            written += len(stream.end())
        except StreamFailed as e:
            written += len(e.output)
            failed = "response.failed"
        del stream
    else:
        body = codec.dumps({"choices": [{"message": {"role": "assistant",
                                                     "content": word * count},
                                         "finish_reason": "stop"}]})
        gc.collect()
        start, _ = rss()
        reply = readReply(codec.loads(body))
        del body
        out = codec.dumps(ResponsesDialect(context).reply(reply, "m", t0, t0))
        written = len(out)
        del reply, out
    gc.collect()
    after, peak = rss()
    print(f"{mode} {start} {peak} {after} {written} {failed}")


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 50 * MB
    piece = 100
    print(f"reply: {size / MB:.0f} MB of text in {piece}-character deltas")
    print(f"{'mode':8} {'start MB':>9} {'peak MB':>8} {'after MB':>9} {'peak-start / reply':>19}"
          f" {'written MB':>11}  end")
    for mode in ("stream", "whole", "capped"):
        out = subprocess.run([sys.executable, __file__, "--child", mode, str(size), str(piece)],
                             check=True, capture_output=True, text=True).stdout.split()
        start, peak, after, written = (int(v) for v in out[1:5])
        print(f"{mode:8} {start / MB:9.0f} {peak / MB:8.0f} {after / MB:9.0f}"
              f" {(peak - start) / size:19.1f} {written / MB:11.0f}  {out[5]}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
