"""
Several backends for one model (issue 21), measured with three real
C{twistd -n fake-openai} backends on 127.0.0.1 behind C{twistd -n
ollama-proxy}, all in one run:

  kill    streamed /api/chat at c=16; one backend SIGKILLed after 2 s:
          failed requests among those not yet streaming (must be 0), the
          streams in flight on it (must end with the error line), the time
          its circuit took to open (/health/ready), and, started again, the
          time until it is back (within one check interval);
  slow    one backend 200 ms slower before its headers: its share of the
          requests under least-busy (must be under 20 %);
  sticky  100 five-turn conversations with stickiness on (no session
          header: the prefix hash): turns 2-5 on turn 1's backend (>= 95 %);
          then that backend killed for 10 conversations: their next turn
          succeeds elsewhere;
  cost    streamed /api/chat c=16 through a 3-member pool vs one backend
          (--target), alternating rounds: the proxy's CPU per request, same
          run (within 5 %);
  select  the fleet's selection per request, in process (under 20 us).

    python bench/fleet.py [--quick] [--out bench/out/fleet.json]

Uses the project's venv (twistd and ollama_proxy importable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from loadgen import cpuSeconds, dechunk  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
CHECK = 0.5
MODEL = "fake-model"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Proc:
    """One twistd child on a port."""

    def __init__(self, plugin: str, args: list[str], port: int, workdir: str) -> None:
        self.port = port
        self.log = open(os.path.join(workdir, f"{plugin}-{port}.log"), "ab")
        self.p = subprocess.Popen([TWISTD, "-n", "--pidfile=", plugin, *args], cwd=workdir,
                                  stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{plugin} did not listen on {port}")

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
            self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def backend(port: int, workdir: str, delay: float, headerDelay: float = 0.0) -> Proc:
    return Proc("fake-openai", ["--listen", f"tcp:{port}:interface=127.0.0.1", "--delay", str(delay),
                                "--header-delay", str(headerDelay)], port, workdir)


def proxy(workdir: str, ports: list[int], routing: str, single: bool = False) -> Proc:
    port = freePort()
    args = ["--listen", f"tcp:{port}:interface=127.0.0.1", "--fallback", ""]
    if single:
        args += ["--target", f"http://127.0.0.1:{ports[0]}"]
    else:
        path = os.path.join(workdir, f"proxy-{port}.toml")
        with open(path, "w") as f:
            f.write(f"[routing]\nhealth_interval = {CHECK}\nhealth_timeout = 0.5\n{routing}\n")
            for i, p in enumerate(ports):
                f.write(f'[[backend]]\nname = "b{i}"\nurl = "http://127.0.0.1:{p}"\n')
        args += ["--config", path]
    return Proc("ollama-proxy", args, port, workdir)


async def request(port: int, method: str, path: str, body: Any = None,
                  headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on its own connection (closed after)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    writer.write(head.encode() + data)
    try:
        raw = await asyncio.wait_for(reader.read(-1), 60)
    finally:
        writer.close()
    top, _, rest = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if hdrs.get("transfer-encoding") == "chunked":
        try:
            rest = dechunk(rest)
        except (ValueError, IndexError):
            pass  # a stream cut off: what arrived
    return status, hdrs, rest


def chatBody(text: str = "hi", words: int = 40, messages: list[Any] | None = None) -> dict[str, Any]:
    return {"model": MODEL, "messages": messages or [{"role": "user", "content": text}],
            "options": {"num_predict": words}}


class Outcome:
    def __init__(self, status: int, backendName: str, body: bytes, started: float, ended: float) -> None:
        self.status = status
        self.backend = backendName
        self.started = started
        self.ended = ended
        self.lines = [json.loads(x) for x in body.splitlines() if x.strip()] if status == 200 else []
        self.done = bool(self.lines) and self.lines[-1].get("done") is True
        self.errorLine = bool(self.lines) and "error" in self.lines[-1]


async def chat(port: int, body: Any, headers: dict[str, str] | None = None) -> Outcome:
    t = time.monotonic()
    try:
        status, hdrs, raw = await request(port, "POST", "/api/chat", body, headers)
    except OSError:
        return Outcome(0, "", b"", t, time.monotonic())
    return Outcome(status, hdrs.get("x-ollama-proxy-backend", ""), raw, t, time.monotonic())


async def load(port: int, seconds: float, concurrency: int, words: int = 40) -> list[Outcome]:
    out: list[Outcome] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            out.append(await chat(port, chatBody(words=words)))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


async def state(port: int, name: str) -> str:
    try:
        _, _, raw = await request(port, "GET", "/health/ready")
        return str(json.loads(raw).get("backends", {}).get(name, ""))
    except (OSError, ValueError):
        return ""


async def waitState(port: int, name: str, test: Any, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if test(await state(port, name)):
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    return None


# ---------------------------------------------------------------------------


async def killScenario(workdir: str, quick: bool) -> dict[str, Any]:
    ports = [freePort() for _ in range(3)]
    backs = [backend(p, workdir, 0.01) for p in ports]
    px = proxy(workdir, ports, "failures = 3\nbackoff = 30")
    try:
        await asyncio.sleep(1.0)
        victim = 1
        loadTask = asyncio.ensure_future(load(px.port, 4.0 if quick else 6.0, 16))
        await asyncio.sleep(2.0)
        killedAt = time.monotonic()
        backs[victim].kill()
        opened = await waitState(px.port, f"b{victim}", lambda s: s.startswith("circuit open"), 5)
        await asyncio.sleep(0.5)
        backs[victim] = backend(ports[victim], workdir, 0.01)
        cameBack = time.monotonic()
        rejoined = await waitState(px.port, f"b{victim}", lambda s: s == "ok", 5)
        outcomes = await loadTask
        onVictim = [o for o in outcomes if o.backend == f"b{victim}"]
        inFlight = [o for o in onVictim if o.started < killedAt < o.ended and not o.done]
        notStreaming = [o for o in outcomes if o.status != 200]
        brokenStreams = [o for o in outcomes if o.status == 200 and not o.done]
        return {
            "requests": len(outcomes),
            "failedNotStreaming": len(notStreaming),
            "servedByVictim": len(onVictim),
            "victimStreamsCutByKill": len(inFlight),
            "inFlightEndedWithErrorLine": sum(o.errorLine for o in inFlight),
            "streamsEndedWithoutDoneOrError": sum(not o.done and not o.errorLine for o in brokenStreams),
            "circuitOpenSecondsAfterKill": opened,
            "rejoinSecondsAfterRestart": rejoined,
            "checkInterval": CHECK,
            "restartedAfterKill": cameBack - killedAt,
        }
    finally:
        px.stop()
        for b in backs:
            b.stop()


async def slowScenario(workdir: str, quick: bool) -> dict[str, Any]:
    ports = [freePort() for _ in range(3)]
    backs = [backend(p, workdir, 0.005, 0.2 if i == 2 else 0.0) for i, p in enumerate(ports)]
    px = proxy(workdir, ports, 'strategy = "least-busy"')
    try:
        await asyncio.sleep(1.0)
        outcomes = await load(px.port, 4.0 if quick else 8.0, 16, words=20)
        counts = {f"b{i}": sum(o.backend == f"b{i}" for o in outcomes) for i in range(3)}
        return {"requests": len(outcomes), "errors": sum(o.status != 200 or not o.done for o in outcomes),
                "perBackend": counts, "slowShare": counts["b2"] / max(1, len(outcomes))}
    finally:
        px.stop()
        for b in backs:
            b.stop()


async def stickyScenario(workdir: str, quick: bool) -> dict[str, Any]:
    ports = [freePort() for _ in range(3)]
    backs = [backend(p, workdir, 0.0) for p in ports]
    px = proxy(workdir, ports, "sticky = true")
    try:
        await asyncio.sleep(1.0)
        conversations = 100
        homes: dict[int, str] = {}
        same = later = 0
        history: dict[int, list[Any]] = {}
        sem = asyncio.Semaphore(16)

        async def conversation(i: int) -> None:
            nonlocal same, later
            messages: list[Any] = [{"role": "system", "content": f"you are agent {i}"},
                                   {"role": "user", "content": f"task {i}"}]
            for turn in range(5):
                async with sem:
                    o = await chat(px.port, chatBody(messages=messages, words=5))
                assert o.status == 200 and o.done, (o.status, o.lines[-1:])
                if turn == 0:
                    homes[i] = o.backend
                else:
                    later += 1
                    same += o.backend == homes[i]
                messages = messages + [{"role": "assistant", "content": "ok"},
                                       {"role": "user", "content": f"turn {turn + 1}"}]
            history[i] = messages

        await asyncio.gather(*(conversation(i) for i in range(conversations)))
        victim = "b0"
        backs[0].kill()
        moved = [i for i, home in homes.items() if home == victim][:10]
        afterDeath = [await chat(px.port, chatBody(messages=history[i], words=5)) for i in moved]
        return {
            "conversations": conversations, "laterTurns": later, "onTurn1Backend": same,
            "share": same / max(1, later),
            "homes": {name: list(homes.values()).count(name) for name in ("b0", "b1", "b2")},
            "nextTurnAfterHomeDied": len(afterDeath),
            "nextTurnSucceeded": sum(o.status == 200 and o.done for o in afterDeath),
            "nextTurnElsewhere": sum(o.backend not in ("", victim) for o in afterDeath),
        }
    finally:
        px.stop()
        for b in backs:
            b.stop()


async def costScenario(workdir: str, quick: bool, rounds: int = 0) -> dict[str, Any]:
    ports = [freePort() for _ in range(3)]
    backs = [backend(p, workdir, 0.0) for p in ports]
    pool = proxy(workdir, ports, "")
    # The pool's machinery alone: three members that are one backend
    # process, so the backend side is the single case's.
    same = proxy(workdir, [ports[0]] * 3, "")
    single = proxy(workdir, ports, "", single=True)
    rounds = rounds or (2 if quick else 4)
    seconds = 3.0 if quick else 5.0
    configs = (("single", single), ("pool", pool), ("poolOneProcess", same))
    per: dict[str, list[float]] = {name: [] for name, _ in configs}
    counts: dict[str, int] = {name: 0 for name, _ in configs}
    errors = 0
    # As bench/run.py does: the proxies on one core, the backends and the
    # load generator on the other, so that the backends' and the load's
    # scheduling does not land in the proxy's CPU time per request.
    os.sched_setaffinity(0, {1})
    for b in backs:
        os.sched_setaffinity(b.p.pid, {1})
    for _, px in configs:
        os.sched_setaffinity(px.p.pid, {0})
    try:
        await asyncio.sleep(1.0)
        for name, px in configs:
            await load(px.port, 1.0, 16, words=100)  # warm up
        for _ in range(rounds):
            for name, px in configs:
                before = cpuSeconds(px.p.pid)
                outcomes = await load(px.port, seconds, 16, words=100)
                cpu = cpuSeconds(px.p.pid) - before
                good = [o for o in outcomes if o.status == 200 and o.done and len(o.lines) >= 2]
                errors += len(outcomes) - len(good)
                per[name].append(cpu / max(1, len(good)) * 1e3)
                counts[name] += len(good)
        return {
            "rounds": rounds, "secondsPerRound": seconds, "errors": errors, "requests": counts,
            "cpuMsPerRequest": {k: [round(v, 3) for v in vs] for k, vs in per.items()},
            "medianCpuMs": {k: round(statistics.median(vs), 3) for k, vs in per.items()},
            "poolOverSingle": statistics.median(per["pool"]) / statistics.median(per["single"]),
            "poolOneProcessOverSingle":
                statistics.median(per["poolOneProcess"]) / statistics.median(per["single"]),
        }
    finally:
        same.stop()
        pool.stop()
        single.stop()
        for b in backs:
            b.stop()


def selectScenario() -> dict[str, Any]:
    """The fleet's per-request path, in process: pick a member, count it,
    call (an answer that is already there), release the lease."""
    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.task import Clock

    from ollama_proxy.protocol.balance import PoolPolicy, RoutingPolicy
    from ollama_proxy.service.config import BackendConfig
    from ollama_proxy.upstream.backend import Backend
    from ollama_proxy.upstream.cache import TTLCache
    from ollama_proxy.upstream.routing import BackendModels, Router, makeFetcher

    from ollama_proxy.protocol.balance import choose

    out: dict[str, Any] = {}
    chooseOnly: dict[str, Any] = {}
    base = 0.0
    for label, policy in (("least-busy", PoolPolicy()), ("round-robin", PoolPolicy("round-robin")),
                          ("priority", PoolPolicy("priority")),
                          ("least-busy+sticky", PoolPolicy(sticky=True))):
        clock = Clock()
        entries = []
        for i in range(3):
            config = BackendConfig(name=f"b{i}", url=f"http://127.0.0.1:{9000 + i}", models=("m",),
                                   discover=False)
            client = Backend(None, config.url, clock, name=config.name)
            entries.append(BackendModels(config, client, TTLCache(makeFetcher(client, config), clock, 60)))
        router = Router(entries, "proxy", routing=RoutingPolicy(pool=policy), rng=random.Random(1))
        route = router.lookup("m")
        fleet = router.fleet
        assert route is not None and route.pool is not None and fleet is not None

        class Answer:
            code = 200

        answer = Answer()

        async def call(member: Any) -> Any:
            return await succeed(answer)

        keys = [f"m\0h\0conv-{i}" for i in range(1000)]
        n = 20000

        def one(i: int = 0) -> None:
            d = Deferred.fromCoroutine(fleet.send(route, call, keys[i % 1000] if policy.sticky else "",
                                                      clientKey=None))
            d.result[2].release()

        def many() -> None:
            for i in range(n):
                one(i)

        best = min(timeit.repeat(many, number=1, repeat=5))
        out[label] = round(best / n * 1e6, 2)
        states, rng = route.pool.states, random.Random(1)
        strategy = policy.strategy
        choice = min(timeit.repeat(lambda: choose(states, strategy, rng), number=n, repeat=5))
        chooseOnly[label] = round(choice / n * 1e6, 2)

        async def bare(member: Any) -> Any:
            return await succeed(answer)

        def baseline() -> None:
            for _ in range(n):
                Deferred.fromCoroutine(bare(route))

        base = round(min(timeit.repeat(baseline, number=1, repeat=5)) / n * 1e6, 2)
    return {"sendPathUsPerRequest": out, "chooseUsPerRequest": chooseOnly,
            "coroutineBaselineUs": base}


def callsScenario(requests: int = 300) -> dict[str, Any]:
    """
    The proxy's own code per streamed /api/chat (100 chunks), counted in
    function calls (deterministic, unlike CPU time on a shared machine):
    one backend vs a pool of three, in process on a memory reactor.
    """
    import cProfile
    import pstats

    from ollama_proxy.service.config import BackendConfig
    from ollama_proxy.testing.harness import MultiBackendHarness

    chunk = b"".join(
        b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"w "},"finish_reason":null}]}\n\n'
        for _ in range(100)
    ) + (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":'
         b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    out: dict[str, Any] = {}
    for label, names in (("single", ["only"]), ("pool3", ["a", "b", "c"])):
        h = MultiBackendHarness([BackendConfig(name=n, url=f"http://{n}.test:4000", models=("m",),
                                               discover=False) for n in names], metrics=True)

        def once() -> None:
            d = h.post("/api/chat", body)
            for fake in h.backends.values():
                for r in fake.received:
                    if not r.request.finished and r.path.endswith("chat/completions"):
                        r.startSSE()
                        r.write(chunk)
                        r.finish()
            h.pump()
            assert d.called

        for _ in range(20):
            once()
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(requests):
            once()
        profile.disable()
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        # treq.testing's flush is the harness pumping its one stub per
        # backend, not the proxy's work: left out.
        total = sum(v[1] for k, v in stats.items()
                    if not (k[0].endswith("treq/testing.py") and k[2] == "flush"))
        out[label] = round(total / requests, 1)
    out["pool3OverSingle"] = round(out["pool3"] / out["single"], 4)
    return {"callsPerRequest": out,
            "note": "in process: proxy + scripted backends on a memory reactor, "
                    "the harness's stub flushing left out"}


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                               "loadavg": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="ollama-proxy-fleet-bench-") as workdir:
        for name, scenario in (("kill", killScenario), ("slow", slowScenario),
                               ("sticky", stickyScenario), ("cost", costScenario)):
            if args.only and name not in args.only:
                continue
            print(f"== {name}", flush=True)
            if name == "cost":
                results[name] = await costScenario(workdir, args.quick, args.rounds)
            else:
                results[name] = await scenario(workdir, args.quick)
            print(json.dumps(results[name], indent=1), flush=True)
    if not args.only or "calls" in args.only:
        print("== calls", flush=True)
        results["calls"] = callsScenario()
        print(json.dumps(results["calls"]), flush=True)
    if not args.only or "select" in args.only:
        print("== select", flush=True)
        results["select"] = selectScenario()
        print(json.dumps(results["select"]), flush=True)
    results["loadavgAfter"] = os.getloadavg()
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--rounds", type=int, default=0, help="cost rounds (default 4, 2 quick)")
    parser.add_argument("--out", default="")
    asyncio.run(main(parser.parse_args()))
