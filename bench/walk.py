"""
Count the modules one streamed POST /v1/messages walks through in the test
harness, and the modules it re-enters after having left them:
``python bench/walk.py`` (docs/architecture.md quotes it; ``--dynamic`` for
every call of every chunk, ``-v`` for each step; run it against another
build with ``PYTHONPATH=<build>/src``).

The counting rule, as a reader follows the walk from the resource down:

- A step is a call from the code of one package module into a function of
  another (calls inside a module are not steps; Twisted, treq and the
  standard library in between are looked through, to the package module
  that called them).
- Only the proxy's own walk counts: a call the harness starts (the test
  driving the fake backend's bytes, the clock, the model-list fetch) has no
  package caller and is dropped.  The old script said so in a comment and
  counted them anyway.
- A coroutine or generator resuming is its ``await`` returning, not a call:
  Python's profiler reports ``call`` for it, so each module on the
  coroutine's stack looked re-entered every time the backend answered.  Only
  a coroutine's first run is a step.  (The old script counted resumptions.)
- A constructor a module's source does not hold (the ``__init__`` that
  ``dataclasses`` and ``attrs`` generate: its code is in ``<string>``) is
  not a step: it stores the fields it is given, as a ``NamedTuple``'s
  (never counted: its ``__new__`` is not the module's code) does.
- Each step is counted once (caller module, callee module, callee
  function): the second chunk of a stream takes the steps of the first.
  ``--dynamic`` counts every call instead (the per-chunk cost of the path).
- A module is re-entered when a step enters it after an earlier step had:
  the walk left it and came back.
"""
from __future__ import annotations

import sys
from collections import Counter
from types import FrameType
from typing import Any

from ollama_proxy.testing.harness import ProxyHarness, delta

CO_GENERATOR, CO_COROUTINE, CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR = 0x20, 0x80, 0x100, 0x200
RESUMABLE = CO_GENERATOR | CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR
PACKAGE, HARNESS = "ollama_proxy.", "ollama_proxy.testing"

Step = tuple[str, str, str, str]
"""(caller module, callee module, callee function, where the caller was)"""


def module(frame: FrameType) -> str | None:
    """
    @return: the package module C{frame} runs in (without the package
        prefix), or C{None} for code outside it and for the harness.
    """
    name = frame.f_globals.get("__name__", "")
    if not name.startswith(PACKAGE) or name.startswith(HARNESS):
        return None
    return name.removeprefix(PACKAGE)


def record(run: Any) -> list[Step]:
    """
    @param run: what to profile.
    @return: every step, in order.
    """
    steps: list[Step] = []
    started: set[FrameType] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        code = frame.f_code
        if code.co_flags & RESUMABLE:
            if frame in started:
                return  # a resumption: the await returning into it
            started.add(frame)
        if code.co_filename.startswith("<"):
            return  # generated (a dataclass's or attrs' __init__)
        callee = module(frame)
        if callee is None:
            return
        caller = frame.f_back
        while caller is not None and module(caller) is None:
            if caller.f_globals.get("__name__", "").startswith(HARNESS):
                return  # the harness started it
            caller = caller.f_back
        if caller is None:
            return  # the reactor or the test started it
        name = module(caller)
        assert name is not None
        if name != callee:
            steps.append((name, callee, code.co_name, f"{caller.f_code.co_name}:{caller.f_lineno}"))

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return steps


def oneStream(h: ProxyHarness) -> None:
    """
    One streamed C{POST /v1/messages} through a fresh harness: two content
    deltas, the finish.
    """
    body = {"model": "m", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    h.post("/v1/messages", body)
    up = h.backend.received[-1]
    up.startSSE()
    up.event(delta("Hel"))
    up.event(delta("lo", finish_reason="stop"))
    up.done()
    h.pump()


def main(argv: list[str]) -> None:
    dynamic, verbose = "--dynamic" in argv, "-v" in argv
    # Import every module first (the first request's imports are not the
    # walk), and build the harness outside the profile.
    oneStream(ProxyHarness())
    h = ProxyHarness()
    steps = record(lambda: oneStream(h))
    if not dynamic:
        once: set[tuple[str, str, str]] = set()
        unique = []
        for step in steps:
            if step[:3] not in once:
                once.add(step[:3])
                unique.append(step)
        steps = unique
    seen: list[str] = []
    reentries: list[str] = []
    for caller, callee, function, where in steps:
        again = callee in seen
        if again:
            reentries.append(callee)
        else:
            seen.append(callee)
        if verbose:
            print("RE" if again else "  ", f"{caller}.{where} -> {callee}.{function}")
    print("modules", len(seen), "steps", len(steps), "re-entering steps", len(reentries),
          "modules re-entered", len(set(reentries)), "(dynamic)" if dynamic else "(each step once)")
    print(" -> ".join(seen))
    print(Counter(reentries).most_common())


if __name__ == "__main__":
    main(sys.argv[1:])
