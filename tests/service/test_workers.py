"""
C{--workers N}: several proxy processes sharing the listening ports with
C{SO_REUSEPORT}.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.error import ProcessTerminated
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from ollama_proxy.protocol import codec
from ollama_proxy.service.tap import DrainService, ModelListing, Options, PoolService, makeService
from ollama_proxy.service.workers import (
    ParentWatch,
    ReusePortService,
    WorkerPool,
    childArguments,
    parseTCP,
    reusePortSocket,
)
from ollama_proxy.web.metrics import singleProcess
from tests.upstream.helpers import LogCapture
from tests.integration.servers import Stack, freePort, listening, sockets, workerPids
from tests.tempdirs import tempDir


def services(service: Any) -> list[Any]:
    """
    The children of a L{MultiService}, in order, with a L{DrainService}'s
    listeners and the services it stops after the drain in its place
    (followed by itself).
    """
    assert isinstance(service, MultiService)
    out: list[Any] = []
    for child in service:
        if isinstance(child, DrainService):
            out += [*child, *child.after]
        out.append(child)
    return out


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


class ParseTCPTests(SynchronousTestCase):
    """
    L{parseTCP} reads the C{tcp:} descriptions C{--listen} accepts.
    """

    def test_forms(self) -> None:
        """
        Positional and keyword ports, interface and backlog.
        """
        self.assertEqual(parseTCP("tcp:11434"), ("", 11434, 50))
        self.assertEqual(parseTCP("tcp:11434:interface=127.0.0.1"), ("127.0.0.1", 11434, 50))
        self.assertEqual(parseTCP("tcp:port=80:backlog=1024:interface=0.0.0.0"), ("0.0.0.0", 80, 1024))

    def test_othersRejected(self) -> None:
        """
        Other endpoint kinds, unknown parameters and missing ports are usage
        errors, not crashes at start-up.
        """
        for bad in ("unix:/tmp/x.sock", "ssl:443", "tcp:", "tcp:x", "tcp:80:mode=1",
                    "tcp:interface=127.0.0.1", "systemd:domain=INET:index=0"):
            self.assertRaises(UsageError, parseTCP, bad)


class OptionsTests(SynchronousTestCase):
    """
    The C{--workers} option.
    """

    def test_defaultOneProcess(self) -> None:
        """
        One process unless asked; the raw arguments are kept.
        """
        options = parse("--target", "http://127.0.0.1:4000")
        self.assertEqual(options.settings.workers, 1)
        self.assertIsNone(options.settings.workerOf)
        self.assertEqual(options.rawArgs, ["--target", "http://127.0.0.1:4000"])

    def test_workersParsed(self) -> None:
        """
        C{--workers 2} is an integer.
        """
        self.assertEqual(parse("--target", "http://h:1", "--workers", "2")["workers"], 2)

    def test_invalid(self) -> None:
        """
        Zero workers, or workers with a non-TCP listener, are refused.
        """
        self.assertRaises(UsageError, parse, "--target", "http://h:1", "--workers", "0")
        self.assertRaises(
            UsageError, parse, "--target", "http://h:1", "--workers", "2", "--listen", "unix:/tmp/p.sock"
        )

    def test_childArguments(self) -> None:
        """
        A worker gets the parent's options without C{--workers} (either
        spelling), C{--demo} and C{--demo-port}, with the demo's target, and
        the parent pid.
        """
        self.assertEqual(
            childArguments(["--workers", "3", "--tag", "x", "--workers=3", "--fallback", ""], 42),
            ["--tag", "x", "--fallback", "", "--worker-of", "42"],
        )
        self.assertEqual(
            childArguments(["--demo", "--workers", "2"], 7, "http://127.0.0.1:11435"),
            ["--target", "http://127.0.0.1:11435", "--worker-of", "7"],
        )
        self.assertEqual(
            childArguments(["--demo", "--demo-port", "9", "--demo-port=9", "--tag", "x"], 7,
                           "http://127.0.0.1:9"),
            ["--tag", "x", "--target", "http://127.0.0.1:9", "--worker-of", "7"],
        )


class ServiceShapeTests(SynchronousTestCase):
    """
    What L{makeService} builds with and without workers.
    """

    def test_single(self) -> None:
        """
        Without C{--workers}, listeners are ordinary strports services.
        """
        service = makeService(parse("--target", "http://h:1"), MemoryReactorClock())
        kinds = [type(s) for s in services(service)]
        self.assertEqual(kinds, [StreamServerEndpointService, PoolService, DrainService,
                                 ModelListing, TimerService])

    def test_parent(self) -> None:
        """
        With C{--workers 3}: a C{SO_REUSEPORT} listener per C{--listen}, the
        pool, and a L{WorkerPool} that starts 2 more processes with the
        parent's options.
        """
        metricsDir = tempDir(self, "ollama-proxy-test-")
        self.addCleanup(singleProcess)
        config = parse("--target", "http://h:1", "--listen", "tcp:1:interface=127.0.0.1",
                       "--listen", "tcp:2", "--workers", "3", "--metrics-dir", metricsDir)
        service = makeService(config, MemoryReactorClock())
        kinds = [type(s) for s in services(service)]
        self.assertEqual(kinds, [ReusePortService, ReusePortService, PoolService, DrainService,
                                 WorkerPool, ModelListing, TimerService])
        pool = services(service)[-3]
        assert isinstance(pool, WorkerPool)
        self.assertEqual(pool.count, 2)
        self.assertEqual(pool.argv[-2:], ["--worker-of", str(os.getpid())])
        self.assertIn("ollama-proxy", pool.argv)
        self.assertNotIn("--workers", pool.argv)

    def test_failedStartRemovesTemporaryDirectory(self) -> None:
        """
        When the parent cannot listen, the temporary metrics directory it
        made is removed: the stop that removes it otherwise never comes.
        A C{--metrics-dir} of the operator's is left alone.
        """
        from ollama_proxy.service.tap import StartupError

        self.addCleanup(singleProcess)
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for extra in ([], ["--metrics-dir", tempDir(self, "ollama-proxy-test-")]):
            service: Any = makeService(parse(
                "--target", "http://h:1", "--workers", "2",
                "--listen", f"tcp:{port}:interface=127.0.0.1", *extra), MemoryReactorClock())
            [pool] = [s for s in services(service) if isinstance(s, WorkerPool)]
            directory = pool.metricsDirectory
            assert directory is not None
            self.assertTrue(os.path.isdir(directory))
            self.assertRaises(StartupError, service.startService)
            self.assertEqual(os.path.isdir(directory), bool(extra))

    def test_child(self) -> None:
        """
        A worker listens the same way and watches its parent.
        """
        service = makeService(parse("--target", "http://h:1", "--worker-of", "1"), MemoryReactorClock())
        self.assertEqual([type(s) for s in services(service)],
                         [ReusePortService, PoolService, DrainService, ParentWatch, ModelListing,
                          TimerService])


class ReusePortServiceTests(SynchronousTestCase):
    """
    L{ReusePortService} binds real sockets.
    """

    def test_twoSocketsOnePort(self) -> None:
        """
        Two C{SO_REUSEPORT} sockets bind the same port (as two processes
        do); a plain socket cannot.
        """
        port = freePort()
        first = reusePortSocket("127.0.0.1", port, 10)
        self.addCleanup(first.close)
        second = reusePortSocket("127.0.0.1", port, 10)
        self.addCleanup(second.close)
        plain = socket.socket()
        self.addCleanup(plain.close)
        with self.assertRaises(OSError) as caught:
            plain.bind(("127.0.0.1", port))
        self.assertEqual(caught.exception.errno, errno.EADDRINUSE)

    def test_serviceAdoptsAndStops(self) -> None:
        """
        The service hands a listening IPv4 socket to the reactor on start
        and stops listening on stop.
        """
        reactor = MemoryReactorClock()
        service = ReusePortService(reactor, f"tcp:{freePort()}:interface=127.0.0.1", Site(Resource()))
        service.startService()
        self.assertEqual(len(reactor.adoptedPorts), 1)
        self.assertEqual(reactor.adoptedPorts[0][1], socket.AF_INET)
        self.assertIsNotNone(service.port)
        service.stopService()
        self.assertIsNone(service.port)


class FakeProcess:
    pids = iter(range(100, 10_000))

    def __init__(self) -> None:
        self.pid: int | None = next(self.pids)
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, str, list[str], FakeProcess]] = []
        self.childFDs: list[Any] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> FakeProcess:
        process = FakeProcess()
        self.spawned.append((protocol, executable, args, process))
        self.childFDs.append(kwargs.get("childFDs"))
        return process


class WorkerPoolTests(SynchronousTestCase):
    """
    L{WorkerPool} starts and stops the extra processes.
    """

    def test_startStop(self) -> None:
        """
        Start spawns C{count} processes; stop sends C{SIGTERM} and fires when
        they have exited; a worker that does not exit gets C{SIGKILL}.
        """
        reactor = FakeProcessReactor()
        pool = WorkerPool(reactor, 2, ["--target", "http://h:1", "--worker-of", "5"])
        pool.startService()
        self.assertEqual(len(reactor.spawned), 2)
        self.assertEqual(reactor.spawned[0][2][-2:], ["--worker-of", "5"])
        d = pool.stopService()
        processes = [entry[3] for entry in reactor.spawned]
        self.assertEqual([p.signals for p in processes], [["TERM"], ["TERM"]])
        reactor.spawned[0][0].processEnded(Failure(Exception("done")))
        self.assertNoResult(d)
        reactor.advance(pool.stopTimeout)
        self.assertEqual(processes[1].signals, ["TERM", "KILL"])
        reactor.spawned[1][0].processEnded(Failure(Exception("killed")))
        self.successResultOf(d)


    def die(self, reactor: FakeProcessReactor, which: int, **how: Any) -> None:
        """
        End spawned process C{which} as the reactor reports it (the
        transport forgets its pid before the protocol hears of the end).
        """
        protocol, _, _, process = reactor.spawned[which]
        process.pid = None
        protocol.processEnded(Failure(ProcessTerminated(**how)))

    def test_restartWithBackoff(self) -> None:
        """
        A worker that dies is logged with its real pid and exit status and
        started again after 1 s, then 2 s, 4 s... while it keeps dying
        quickly; one that ran for C{stableAfter} starts the count afresh.
        """
        logs = LogCapture(self)
        reactor = FakeProcessReactor()
        pool = WorkerPool(reactor, 1, ["--worker-of", "5"])
        pool.startService()
        firstPid = reactor.spawned[0][3].pid
        self.die(reactor, 0, exitCode=3)
        [event] = logs.errors()
        self.assertEqual(formatEvent(event),
                         f"worker 1 (pid {firstPid}) exited with exit status 3 after 0.0s; "
                         "restarting it in 1s")
        reactor.advance(0.9)
        self.assertEqual(len(reactor.spawned), 1)
        reactor.advance(0.1)
        self.assertEqual(len(reactor.spawned), 2)
        self.die(reactor, 1, signal=9)
        self.assertIn("exited with signal 9 (SIGKILL) after 0.0s; restarting it in 2s",
                      formatEvent(logs.errors()[-1]))
        reactor.advance(2)
        self.assertEqual(len(reactor.spawned), 3)
        reactor.advance(pool.stableAfter)
        self.die(reactor, 2, exitCode=1)
        self.assertIn("restarting it in 1s", formatEvent(logs.errors()[-1]))
        pool.stopService()

    def test_crashLoopStops(self) -> None:
        """
        After C{crashLimit} quick deaths in a row, the slot is given up with
        a critical line; nothing is spawned any more.
        """
        logs = LogCapture(self)
        reactor = FakeProcessReactor()
        pool = WorkerPool(reactor, 1, ["--worker-of", "5"])
        pool.startService()
        for attempt in range(pool.crashLimit + 1):
            self.die(reactor, attempt, exitCode=1)
            reactor.advance(pool.maxBackoff)
        self.assertEqual(len(reactor.spawned), pool.crashLimit + 1)
        critical = [e for e in logs.observer if e["log_level"] == LogLevel.critical]
        self.assertEqual(len(critical), 1)
        self.assertIn("died 6 times in a row within 30s of starting: not restarting it",
                      formatEvent(critical[0]))
        reactor.advance(600)
        self.assertEqual(len(reactor.spawned), pool.crashLimit + 1)

    def test_stopCancelsRestart(self) -> None:
        """
        Stopping while a restart is pending cancels it, and a worker that
        ends during the stop is not restarted.
        """
        reactor = FakeProcessReactor()
        pool = WorkerPool(reactor, 2, ["--worker-of", "5"])
        pool.startService()
        self.die(reactor, 0, exitCode=1)
        d = pool.stopService()
        self.assertEqual(reactor.spawned[1][3].signals, ["TERM"])
        self.die(reactor, 1, exitCode=0)
        self.successResultOf(d)
        reactor.advance(60)
        self.assertEqual(len(reactor.spawned), 2)

    def test_signalAll(self) -> None:
        """
        C{signalAll} passes a signal (C{HUP} for a reload) to every live
        worker.
        """
        reactor = FakeProcessReactor()
        pool = WorkerPool(reactor, 2, ["--worker-of", "5"])
        pool.startService()
        pool.signalAll("HUP")
        self.assertEqual([entry[3].signals for entry in reactor.spawned], [["HUP"], ["HUP"]])
        pool.stopService()

    def test_parentPidTakenAtStart(self) -> None:
        """
        Given a function of the parent's pid, the workers' arguments are
        computed again when the service starts: a daemonizing twistd builds
        the service, then forks, and the workers must watch the process
        that actually runs (not the one that exited after the fork).
        """
        reactor = FakeProcessReactor()
        pids: list[int] = []

        def args(pid: int) -> list[str]:
            pids.append(pid)
            return ["--worker-of", str(pid + len(pids))]

        pool = WorkerPool(reactor, 1, args)
        pool.startService()
        self.assertEqual(pids, [os.getpid(), os.getpid()])
        self.assertEqual(reactor.spawned[0][2][-1], str(os.getpid() + 2))
        pool.stopService()


class WorkerLogTests(SynchronousTestCase):
    """
    A worker's log, relayed into the parent's with its number.
    """

    def setUp(self) -> None:
        from ollama_proxy.service.workers import _Worker

        self.events: list[dict[str, Any]] = []
        self.worker = _Worker(2, 0.0, self.events.append)
        self.worker.pid = 4242

    def test_jsonEventsRelayed(self) -> None:
        """
        Twisted JSON events from the worker's standard output, however the
        pipe splits them, are published whole, with C{worker} and the
        system C{worker N}; the text and JSON log formats show them so.
        """
        from twisted.logger import LogLevel, eventAsJSON, formatEvent

        from ollama_proxy.service.logging import classicFormatter, eventAsJSONLine

        record = ("\x1e" + eventAsJSON({
            "log_format": "{line}", "line": "POST /api/chat status=200", "log_level": LogLevel.info,
            "log_namespace": "ollama_proxy.web.observe", "log_time": 1700000000.0, "status": 200,
        }) + "\n").encode()
        self.worker.childDataReceived(1, record[:10])
        self.assertEqual(self.events, [])
        self.worker.childDataReceived(1, record[10:] + record)
        self.assertEqual(len(self.events), 2)
        event = self.events[0]
        self.assertEqual((event["worker"], event["worker_pid"], event["status"]), (2, 4242, 200))
        self.assertEqual(formatEvent(event), "POST /api/chat status=200")
        self.assertIn("[worker 2] POST /api/chat status=200", classicFormatter()(event))
        line = codec.loads(eventAsJSONLine(event))
        self.assertEqual((line["worker"], line["level"], line["message"], line["status"]),
                         (2, "info", "POST /api/chat status=200", 200))

    def test_stderrRelayed(self) -> None:
        """
        What the worker writes to standard error (a start-up failure)
        becomes error lines with its number; a last line without a newline
        is relayed when the process ends.
        """
        self.worker.childDataReceived(2, b"ollama-proxy: cannot listen\nTraceback")
        self.worker.processEnded(Failure(ProcessTerminated(exitCode=1)))
        self.assertEqual([(e["line"], e["log_level"].name, e["worker"]) for e in self.events],
                         [("ollama-proxy: cannot listen", "error", 2), ("Traceback", "error", 2)])

    def test_spawnedWithPipes(self) -> None:
        """
        The workers log Twisted's JSON events to a pipe the parent reads,
        not to the parent's standard output (nowhere, once daemonized).
        """
        reactor = FakeProcessReactor()
        pool = WorkerPool(reactor, 1, ["--target", "http://h:1"])
        self.assertIn("--log-format=json", pool.argv)
        pool.startService()
        self.assertEqual(reactor.childFDs, [{0: "w", 1: "r", 2: "r"}])
        d = pool.stopService()
        reactor.spawned[0][0].processEnded(Failure(Exception("done")))
        self.successResultOf(d)


class RealDaemonLogTests(SynchronousTestCase):
    """
    C{twistd --logfile=F ollama-proxy --workers 2 --log-format json},
    daemonized: the worker's lines are in F, with its number.
    """

    def test_workerLinesInLogFile(self) -> None:
        """
        The worker's start-up lines and its request lines are JSON lines of
        the parent's log file with C{"worker": 1}; nothing is lost to the
        daemon's closed standard output.
        """
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SkipTest("no SO_REUSEPORT")
        from tests.integration.servers import Twistd, twistdCommand

        backendPort = freePort()
        backend = Twistd("fake-openai", ["--listen", f"tcp:{backendPort}:interface=127.0.0.1"],
                         backendPort)
        self.addCleanup(backend.stop)
        base = tempDir(self, "ollama-proxy-daemon-")
        pidfile, logfile = os.path.join(base, "proxy.pid"), os.path.join(base, "proxy.json")
        port = freePort()
        subprocess.run(
            [*twistdCommand(), f"--pidfile={pidfile}", f"--logfile={logfile}", "ollama-proxy",
             "--target", f"http://127.0.0.1:{backendPort}", "--fallback", "", "--workers", "2",
             "--listen", f"tcp:{port}:interface=127.0.0.1", "--log-format", "json",
             "--drain-delay", "0"],
            cwd=base, check=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(pidfile) as f:
            pid = int(f.read().strip())

        def lines() -> list[dict[str, Any]]:
            with open(logfile, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.startswith("{")]

        try:
            [child] = workerPids(pid, 1, port)
            # Connections spread over both processes: one reaches the worker.
            while time.monotonic() < deadline and not any(
                    line.get("worker") == 1 and line.get("route") for line in lines()):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version",
                                            timeout=10) as r:
                    r.read()
        finally:
            os.kill(pid, signal.SIGTERM)
        while os.path.exists(pidfile) and time.monotonic() < deadline + 15:
            time.sleep(0.05)
        records = lines()
        fromWorker = [line for line in records if line.get("worker") == 1]
        self.assertTrue(any("offers" in line["message"] for line in fromWorker), records[-10:])
        served = [line for line in fromWorker if line.get("route") == "/api/version"]
        self.assertTrue(served)
        self.assertEqual({line["worker_pid"] for line in served}, {child})
        self.assertEqual(served[0]["status"], 200)
        self.assertFalse(any("worker" in line for line in records
                             if line.get("route") and line not in fromWorker))


class ParentWatchTests(SynchronousTestCase):
    """
    L{ParentWatch} stops a worker whose parent is gone.
    """

    def test_parentAlive(self) -> None:
        """
        While the parent is our parent, nothing happens.
        """
        reactor = MemoryReactorClock()
        watch = ParentWatch(reactor, os.getppid())
        watch.startService()
        reactor.advance(5)
        self.assertFalse(reactor.hasStopped)
        watch.stopService()

    def test_parentGone(self) -> None:
        """
        When the parent pid no longer matches, the reactor is stopped.
        """
        reactor = MemoryReactorClock()
        reactor.running = True
        watch = ParentWatch(reactor, -1)
        watch.startService()
        reactor.advance(1)
        self.assertTrue(reactor.hasStopped)


class RealWorkersTests(SynchronousTestCase):
    """
    A real C{twistd ollama-proxy --workers 2}.
    """

    def test_twoProcessesServeOnePort(self) -> None:
        """
        The parent starts one worker; both listen on the port; requests are
        answered; stopping the parent stops the worker.
        """
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SkipTest("no SO_REUSEPORT")
        stack = Stack(["--workers", "2"])
        self.addCleanup(stack.stop)
        parent = stack.proxy.process.pid
        deadline = time.monotonic() + 15
        children: list[int] = []
        while time.monotonic() < deadline and not children:
            out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
            children = [int(p) for p in out.stdout.split()]
            time.sleep(0.1)
        self.assertEqual(len(children), 1, stack.proxy.log())
        # Wait until the worker listens too (its socket shows up in /proc).
        for _ in range(20):
            for _ in range(4):
                with urllib.request.urlopen(stack.url + "/api/tags", timeout=5) as response:
                    self.assertIn("fake-model:proxy", [m["name"] for m in json.load(response)["models"]])
        stack.proxy.stop()
        for _ in range(100):
            try:
                os.kill(children[0], 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            self.fail("the worker outlived its parent")


def _children(parent: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _waitFor(condition: Any, timeout: float = 20.0) -> Any:
    """
    Poll C{condition} (bounded) until it returns something true.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    return condition()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


def _chat(url: str, model: str = "fake-model") -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}],
                       "stream": False}).encode()
    request = urllib.request.Request(url + "/api/chat", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


class RealSupervisionTests(SynchronousTestCase):
    """
    C{--workers 2} as an operator runs it: one C{/metrics} for both
    processes, and a worker that is killed comes back.
    """

    def setUp(self) -> None:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SkipTest("no SO_REUSEPORT")
        self.metricsDir = tempDir(self, "ollama-proxy-metrics-test-")
        self.stack = Stack(["--workers", "2", "--metrics-dir", self.metricsDir])
        self.addCleanup(self.stack.stop)
        self.parent = self.stack.proxy.process.pid
        children = _waitFor(lambda: _children(self.parent))
        self.assertEqual(len(children), 1, self.stack.proxy.log())
        self.child = children[0]
        # Until the worker listens, every connection goes to the parent.
        self.assertTrue(_waitFor(lambda: self._listening(self.child)))

    def _listening(self, pid: int) -> bool:
        return listening(pid, self.stack.proxy.port)

    def requestCount(self, samples: dict[Any, float]) -> float:
        return samples.get(("ollama_proxy_requests_total",
                            (("model", "fake-model"), ("route", "/api/chat"), ("status", "200"))),
                           0.0)

    def test_metricsSumAndRestart(self) -> None:
        """
        20 chats over 20 connections are spread over both processes, and
        every scrape, whichever process answers it, counts all 20 under the
        served model's own name.  A worker killed with C{SIGKILL} is logged
        with its pid and signal and replaced; its counts stay in the sum.
        """
        url = self.stack.url
        for _ in range(20):
            _chat(url)
        # Both processes wrote counters (the kernel spread the connections).
        counterFiles = [name for name in os.listdir(self.metricsDir)
                        if name.startswith("counter_")]
        self.assertEqual(len(counterFiles), 2, counterFiles)
        _waitFor(lambda: self.requestCount(_scrape(url)) == 20.0, 5)
        for _ in range(10):
            samples = _scrape(url)
            self.assertEqual(self.requestCount(samples), 20.0)
            self.assertEqual(samples[("ollama_proxy_active_streams", ())], 0.0)
            self.assertNotIn(
                ("ollama_proxy_requests_total",
                 (("model", "other"), ("route", "/api/chat"), ("status", "200"))), samples)

        os.kill(self.child, signal.SIGKILL)
        replaced = _waitFor(lambda: [p for p in _children(self.parent) if p != self.child])
        self.assertEqual(len(replaced), 1, self.stack.proxy.log())
        self.assertIn(f"worker 1 (pid {self.child}) exited with signal 9 (SIGKILL)",
                      self.stack.proxy.log())
        self.assertTrue(_waitFor(lambda: self._listening(replaced[0])))
        for _ in range(10):
            _chat(url)
        # A request is counted when its exchange ends, which may be a
        # reactor turn after the client read its last byte: wait (bounded)
        # for the count, then every scrape must agree.
        _waitFor(lambda: self.requestCount(_scrape(url)) == 30.0, 5)
        for _ in range(5):
            self.assertEqual(self.requestCount(_scrape(url)), 30.0)
        self.stack.proxy.stop()
        self.assertTrue(_waitFor(lambda: not os.path.exists(f"/proc/{replaced[0]}"), 10))
        self.assertNotIn("exited with", self.stack.proxy.log().split("SIGKILL", 1)[1])


class RealDrainTests(SynchronousTestCase):
    """
    C{SIGTERM} to the parent of C{--workers 2} lets the streams of every
    process finish.
    """

    def test_everyWorkerDrains(self) -> None:
        """
        Streams open on both processes when the parent gets C{SIGTERM} all
        end with C{done: true}.
        """
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SkipTest("no SO_REUSEPORT")
        stack = Stack(["--workers", "2", "--shutdown-grace", "20"], ["--delay", "0.1"])
        self.addCleanup(stack.stop)
        parent = stack.proxy.process.pid
        [child] = workerPids(parent, 1, stack.proxy.port)
        body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
                           "options": {"num_predict": 30}}).encode()  # the whole sentence, 1.7 s
        streams = []
        for _ in range(12):
            connection = http.client.HTTPConnection("127.0.0.1", stack.proxy.port, timeout=30)
            self.addCleanup(connection.close)
            connection.request("POST", "/api/chat", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            self.assertEqual(response.status, 200)
            response.readline()  # the first token: the stream is under way
            streams.append(response)
            if min(sockets(pid, stack.proxy.port, "01") for pid in (parent, child)) >= 2:
                break
        self.assertGreaterEqual(sockets(child, stack.proxy.port, "01"), 1)
        self.assertGreaterEqual(sockets(parent, stack.proxy.port, "01"), 1)
        stack.proxy.process.send_signal(signal.SIGTERM)
        for response in streams:
            lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
            self.assertTrue(lines[-1]["done"], lines[-1])
        stack.proxy.process.wait(timeout=30)
        self.assertTrue(_waitFor(lambda: not os.path.exists(f"/proc/{child}"), 10))

    def test_everyWorkerAnnouncesDraining(self) -> None:
        """
        With C{--drain-delay}, both processes answer C{/health/ready} with
        503 and report C{draining} at once after C{SIGTERM}, and both keep
        listening until the delay is over.
        """
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SkipTest("no SO_REUSEPORT")
        delay = 4.0  # wide enough that a loaded machine still sees both inside it
        stack = Stack(["--workers", "2", "--drain-delay", str(delay)])
        self.addCleanup(stack.stop)
        port = stack.proxy.port
        parent = stack.proxy.process.pid
        [child] = workerPids(parent, 1, port)
        sent = time.monotonic()
        stack.proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # the parent passes the signal on
        answered: set[int] = set()
        deadline = sent + delay - 1.0
        while answered != {parent, child} and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as r:
                report = json.loads(r.read())
            self.assertTrue(report["draining"], report)
            answered.add(report["pid"])
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5)
                self.fail("ready while draining")
            except urllib.error.HTTPError as e:
                self.assertEqual((e.code, json.loads(e.read())["status"]), (503, "draining"))
        self.assertEqual(answered, {parent, child})
        self.assertTrue(listening(parent, port) and listening(child, port))
        self.assertLess(time.monotonic() - sent, delay)
        stack.proxy.process.wait(timeout=20)
        self.assertGreaterEqual(time.monotonic() - sent, delay)
        self.assertTrue(_waitFor(lambda: not os.path.exists(f"/proc/{child}"), 10))
