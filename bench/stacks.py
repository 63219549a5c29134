"""Summarise py-spy raw (collapsed) stacks: own samples per function, and inclusive samples for a few areas."""
import collections
import sys

own: collections.Counter[str] = collections.Counter()
incl: collections.Counter[str] = collections.Counter()
total = 0
AREAS = {
    "translate (TranslatedStream.feed/end)": ("feed (ollama_proxy/protocol/stream.py", "end (ollama_proxy/protocol/stream.py", "(ollama_proxy/protocol/backend_reader.py", "(ollama_proxy/protocol/ollama.py"),
    "SSE decoder": ("feed (ollama_proxy/protocol/stream.py:", "close (ollama_proxy/protocol/stream.py:"),
    "chunked decoding (client)": ("_ChunkedTransferDecoder", "_dataReceived_CHUNK", "_dataReceived_BODY", "_dataReceived_CRLF"),
    "treq.request (URL, agent, pool, write request)": ("request (treq/client.py",),
    "server request parsing + render": ("requestReceived (twisted/web/http.py",),
    "client response parsing (headers)": ("statusReceived", "headerReceived (twisted/web/_newclient.py", "allHeadersReceived"),
    "logging": ("twisted/logger", "twisted/python/log.py:msg", "emit ("),
    "socket send/recv": ("send (", "recv ("),
    "epoll wait (idle)": ("poll (twisted/internet/epollreactor.py",),
}
with open(sys.argv[1]) as f:
    for line in f:
        stack, _, count = line.rstrip().rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for area, keys in AREAS.items():
            if any(k in fr for fr in frames for k in keys):
                incl[area] += n
busy = total - incl["epoll wait (idle)"]
print(f"samples: {total} (busy {busy})")
print("inclusive share of busy samples:")
for area, n in incl.most_common():
    if area != "epoll wait (idle)":
        print(f"  {100 * n / max(busy, 1):5.1f}%  {area}")
print("top own-time functions (% of busy):")
for fn, n in own.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 25):
    if "poll (twisted/internet/epollreactor" in fn:
        continue
    print(f"  {100 * n / max(busy, 1):5.1f}%  {fn}")
