"""
Count the modules one streamed POST /v1/messages walks through the test harness, and the
re-entries (a call from one package module into another it had entered before):
``python bench/walk.py`` (docs/architecture.md quotes it; run it against another build with
``PYTHONPATH=<build>/src``).
"""
import sys
from ollama_proxy.testing.harness import ProxyHarness, delta

h = ProxyHarness()
body = {"model": "m", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
calls = []

def mod(frame):
    name = frame.f_globals.get("__name__", "")
    if not name.startswith("ollama_proxy.") or name.startswith("ollama_proxy.testing"):
        return None
    return name.removeprefix("ollama_proxy.")

def prof(frame, event, arg):
    if event != "call":
        return
    m = mod(frame)
    if m is None:
        return
    caller = frame.f_back
    while caller is not None and mod(caller) is None and not caller.f_globals.get("__name__", "").startswith("ollama_proxy.testing"):
        caller = caller.f_back
    c = mod(caller) if caller is not None else None
    if c != m:
        calls.append((c, m, frame.f_code.co_name))

sys.setprofile(prof)
d = h.post("/v1/messages", body)
up = h.backend.received[-1]
up.startSSE()
up.event(delta("Hel"))
up.event(delta("lo", finish_reason="stop"))
up.done()
h.pump()
sys.setprofile(None)
# drop the model-list fetch and other harness-initiated calls (caller None)
seen, reentries, distinct = [], [], set()
for caller, m, fn in calls:
    if m in seen:
        reentries.append((m, fn))
        distinct.add(m)
    else:
        seen.append(m)
print("modules", len(seen), "calls", len(calls), "re-entry calls", len(reentries), "modules re-entered", len(distinct))
print(" -> ".join(seen))
from collections import Counter
print(Counter(m for m, _ in reentries).most_common())
