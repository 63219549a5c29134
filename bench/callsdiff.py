"""
Function calls per request of two C{bench/calls.sh} profiles, and the
functions whose calls per request differ most.

A request is one call of twisted.web's C{Request.process}, or of
C{web/traverse.py}'s C{traverse} (which does its work since issue 23's
fourth round), so the count leaves out start-up and the requests the load
generator cut at its end.

    python bench/callsdiff.py A.prof B.prof [N]
"""

from __future__ import annotations

import pstats
import sys


def perRequest(path: str) -> dict[tuple[str, str], float]:
    stats = pstats.Stats(path).stats  # type: ignore[attr-defined]
    calls: dict[tuple[str, str], float] = {}
    for (filename, _, name), (_, count, _, _, _) in stats.items():
        key = (filename.split("/src/")[-1].split("site-packages/")[-1], name)
        if name.startswith("<built-in method __new__"):
            key = ("~", "__new__")  # the type's address differs between processes
        calls[key] = calls.get(key, 0) + count
    requests = calls.get(("twisted/web/server.py", "process"), 0) + calls.get(
        ("ollama_proxy/web/traverse.py", "traverse"), 0)
    return {key: count / requests for key, count in calls.items()}


def main() -> None:
    a, b = perRequest(sys.argv[1]), perRequest(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    ta, tb = sum(a.values()), sum(b.values())
    print(f"calls per request: {ta:.0f} / {tb:.0f} ({tb / ta:.4f}x)")
    for key in sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))[:top]:
        print(f"{a.get(key, 0):10.2f} {b.get(key, 0):10.2f}  {key[0]}:{key[1]}")


if __name__ == "__main__":
    main()
