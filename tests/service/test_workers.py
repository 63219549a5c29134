"""
C{--workers N}: several proxy processes sharing the listening ports with
C{SO_REUSEPORT}.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.python.usage import UsageError
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

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
from tests.integration.servers import Stack, freePort


def services(service: Any) -> list[Any]:
    """The children of a L{MultiService}, in order."""
    assert isinstance(service, MultiService)
    return list(service)


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
        spelling) and C{--demo}, with the demo's target, and the parent pid.
        """
        self.assertEqual(
            childArguments(["--workers", "3", "--tag", "x", "--workers=3", "--fallback", ""], 42),
            ["--tag", "x", "--fallback", "", "--worker-of", "42"],
        )
        self.assertEqual(
            childArguments(["--demo", "--workers", "2"], 7, "http://127.0.0.1:11435"),
            ["--target", "http://127.0.0.1:11435", "--worker-of", "7"],
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
                                 ModelListing])

    def test_parent(self) -> None:
        """
        With C{--workers 3}: a C{SO_REUSEPORT} listener per C{--listen}, the
        pool, and a L{WorkerPool} that starts 2 more processes with the
        parent's options.
        """
        metricsDir = tempfile.mkdtemp(prefix="ollama-proxy-test-")
        self.addCleanup(shutil.rmtree, metricsDir, True)
        self.addCleanup(singleProcess)
        config = parse("--target", "http://h:1", "--listen", "tcp:1:interface=127.0.0.1",
                       "--listen", "tcp:2", "--workers", "3", "--metrics-dir", metricsDir)
        service = makeService(config, MemoryReactorClock())
        kinds = [type(s) for s in services(service)]
        self.assertEqual(kinds, [ReusePortService, ReusePortService, PoolService, DrainService,
                                 WorkerPool, ModelListing])
        pool = services(service)[-2]
        assert isinstance(pool, WorkerPool)
        self.assertEqual(pool.count, 2)
        self.assertEqual(pool.argv[-2:], ["--worker-of", str(os.getpid())])
        self.assertIn("ollama-proxy", pool.argv)
        self.assertNotIn("--workers", pool.argv)

    def test_child(self) -> None:
        """
        A worker listens the same way and watches its parent.
        """
        service = makeService(parse("--target", "http://h:1", "--worker-of", "1"), MemoryReactorClock())
        self.assertEqual([type(s) for s in services(service)],
                         [ReusePortService, PoolService, DrainService, ParentWatch, ModelListing])


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
    def __init__(self) -> None:
        self.pid = 99
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class FakeProcessReactor(MemoryReactorClock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, str, list[str], FakeProcess]] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], **kwargs: Any) -> FakeProcess:
        process = FakeProcess()
        self.spawned.append((protocol, executable, args, process))
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

