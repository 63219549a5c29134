# -*- test-case-name: tests.service.test_workers -*-
"""
Several proxy processes on one machine, sharing the listening ports.

One Twisted process uses one core.  With C{--workers N} (Linux, or any
system with C{SO_REUSEPORT}), the twistd process binds each C{tcp:} port
with C{SO_REUSEPORT} and starts N-1 copies of itself (C{twist ollama-proxy}
with the same options) that bind the same ports the same way; the kernel
then spreads new connections over the N listening sockets.  Every worker is
a complete, independent proxy (its own upstream pool); nothing is shared but
the metrics directory (see L{ollama_proxy.web.metrics}).  A worker that dies
is restarted with backoff; the workers stop when the parent stops, and stop
on their own if the parent dies.

The alternative without this option is C{systemd} socket activation: one
socket unit and several service instances each listening on
C{systemd:domain=INET:index=0} (see C{docs/performance.md}).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from ollama_proxy.web.metrics import processGone

log = Logger()


def parseTCP(description: str) -> tuple[str, int, int]:
    """
    Read a C{tcp:} strports description.

    @param description: e.g. C{tcp:11434:interface=127.0.0.1:backlog=1024}
        or C{tcp:port=11434}.
    @return: C{(interface, port, backlog)}; the interface defaults to all
        IPv4 addresses and the backlog to Twisted's 50 (L{makeService}
        always names one: see L{ollama_proxy.service.listen.withBacklog}).
    @raise usage.UsageError: for any other kind of description.
    """
    kind, _, rest = description.partition(":")
    if kind != "tcp" or not rest or "\\" in rest:
        raise usage.UsageError(
            f"--workers needs tcp: listen descriptions, got {description!r}"
        )
    interface, port, backlog = "", None, 50
    for index, part in enumerate(rest.split(":")):
        key, sep, value = part.partition("=")
        try:
            if not sep and index == 0:
                port = int(part)
            elif key == "port":
                port = int(value)
            elif key == "interface":
                interface = value
            elif key == "backlog":
                backlog = int(value)
            else:
                raise ValueError(part)
        except ValueError:
            raise usage.UsageError(
                f"--workers cannot read {part!r} in {description!r}"
            ) from None
    if port is None:
        raise usage.UsageError(f"no port in {description!r}")
    return interface, port, backlog


def reusePortSocket(interface: str, port: int, backlog: int) -> socket.socket:
    """
    A listening TCP socket that other processes may bind as well.

    @raise OSError: if the address is taken by a socket without
        C{SO_REUSEPORT}, or the system has no C{SO_REUSEPORT}.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReusePortService(Service):
    """
    Serve C{factory} on a C{SO_REUSEPORT} socket.

    @ivar port: the listening port while running.
    """

    def __init__(self, reactor: Any, description: str, factory: IProtocolFactory) -> None:
        self.reactor = reactor
        self.description = description
        self.address = parseTCP(description)
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        """
        Bind and hand the socket to the reactor (which keeps its own copy).

        @raise CannotListenError: if the address cannot be bound, as
            Twisted's own listeners raise it.
        """
        super().startService()
        interface, port, backlog = self.address
        try:
            sock = reusePortSocket(interface, port, backlog)
        except OSError as e:
            raise CannotListenError(interface, port, e) from None
        try:
            self.port = self.reactor.adoptStreamPort(sock.fileno(), sock.family, self.factory)
        finally:
            sock.close()

    def stopService(self) -> Deferred[None] | None:
        """
        @return: fires when the port is closed.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        stopped: Deferred[None] = maybeDeferred(port.stopListening)  # type: ignore[call-overload]
        return stopped


def childArguments(rawArgs: Sequence[str], parentPid: int, target: str | None = None) -> list[str]:
    """
    The plugin options for a worker: the parent's, without C{--workers},
    C{--demo} and C{--demo-port} (only the parent runs the demo backend),
    with C{--worker-of} naming the parent.

    @param rawArgs: the parent's plugin arguments as given.
    @param parentPid: the parent's process id.
    @param target: the resolved C{--target}, passed when C{--demo} chose it.
    @return: the worker's plugin arguments.
    """
    out: list[str] = []
    skip = False
    for arg in rawArgs:
        if skip:
            skip = False
            continue
        if arg in ("--workers", "--demo-port"):
            skip = True
            continue
        if arg.startswith(("--workers=", "--demo-port=")) or arg == "--demo":
            continue
        out.append(arg)
    if target is not None and "--demo" in rawArgs:
        out += ["--target", target]
    return out + ["--worker-of", str(parentPid)]


WORKER_MAIN = (
    "import signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    "from twisted.application.twist._twist import Twist; sys.exit(Twist.main(sys.argv))"
)
"""A worker's program: C{python -m twisted} (C{twist}), but deaf to C{SIGHUP}
from its first moment until its reload handler is installed.  The parent
forwards a C{SIGHUP} to every worker, and one that is still starting would
otherwise die of it (Twisted resets ignored signals in children, so the
parent cannot pass C{SIG_IGN} on)."""


def exitDescription(reason: BaseException) -> str:
    """
    @param reason: what C{processEnded} received.
    @return: C{"exit status 3"}, C{"signal 9 (SIGKILL)"} or the reason.
    """
    if isinstance(reason, (ProcessTerminated, ProcessDone)):
        if reason.signal is not None:
            try:
                name = signal.Signals(reason.signal).name
            except ValueError:
                name = "unknown"
            return f"signal {reason.signal} ({name})"
        return f"exit status {reason.exitCode}"
    return str(reason)


MAX_LOG_LINE = 1024 * 1024
"""The longest log record relayed from a worker; longer ones are cut."""


class _Worker(ProcessProtocol):
    """
    Watches one worker process and relays its log into the parent's.

    The worker logs Twisted's JSON events to its standard output (C{twist
    --log-format=json}); each is published again here, with C{worker} (its
    slot number) as a field and C{worker N} as its system, so that it goes
    where the parent's log goes (twistd's C{--logfile}, text or C{--log-
    format json}), even in daemon mode, where a worker's own standard
    output leads nowhere.  Its standard error (a Python traceback, the
    one-line start-up error) becomes error lines the same way.
    """

    def __init__(self, index: int, started: float,
                 publish: Callable[[dict[str, Any]], None] = globalLogPublisher) -> None:
        self.index = index
        self.started = started
        self.publish = publish
        self.pid: int | None = None
        self.reason: BaseException | None = None
        self.ended: Deferred[None] = Deferred()
        self._buffers = {1: b"", 2: b""}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Split the worker's output into records and relay each.
        """
        if childFD not in self._buffers:
            return
        buffered = self._buffers[childFD] + data
        *records, rest = buffered.split(b"\n")
        if len(rest) > MAX_LOG_LINE:
            records.append(rest[:MAX_LOG_LINE])
            rest = b""
        self._buffers[childFD] = rest
        for record in records:
            self._relay(childFD, record)

    def _relay(self, childFD: int, record: bytes) -> None:
        record = record.strip(b"\x1e\r\n ")
        if not record:
            return
        text = record.decode("utf-8", "replace")
        event: dict[str, Any] | None = None
        if childFD == 1 and text.startswith("{"):
            try:
                event = dict(eventFromJSON(text))
            except ValueError:
                event = None
        if event is None:
            event = {"log_format": "{line}", "line": text, "log_namespace": "ollama_proxy.worker",
                     "log_level": LogLevel.error if childFD == 2 else LogLevel.info,
                     "log_time": time.time()}
        event["worker"] = self.index
        event["worker_pid"] = self.pid
        event["log_system"] = f"worker {self.index}"
        self.publish(event)

    def processEnded(self, reason: Failure) -> None:
        for childFD, rest in self._buffers.items():
            if rest:
                self._relay(childFD, rest)
        self._buffers = {1: b"", 2: b""}
        self.reason = reason.value
        self.ended.callback(None)


class WorkerPool(Service):
    """
    Start the extra workers with the parent, restart any that dies, stop
    them with the parent.

    A worker that exits while the pool runs is logged with its pid and
    exit status and started again after a delay that doubles with every
    quick death (L{backoff}, up to L{maxBackoff}); one that ran for
    L{stableAfter} seconds starts the count afresh.  After L{crashLimit}
    quick deaths in a row the slot is given up, with a critical log line:
    a worker that cannot start (a bad file read after a change, a port
    conflict) would otherwise restart forever.  The other processes keep
    serving.

    @ivar argv: the command line of a worker.
    @ivar count: how many workers to start.
    @ivar stopTimeout: seconds a worker gets to stop before C{SIGKILL}.
    @ivar metricsDirectory: the shared metrics directory, whose live
        gauges of a dead worker are dropped, or C{None}.
    """

    stopTimeout = 10.0
    backoff = 1.0
    maxBackoff = 30.0
    stableAfter = 30.0
    crashLimit = 5

    def __init__(
        self,
        reactor: Any,
        count: int,
        pluginArgs: Sequence[str] | Callable[[int], Sequence[str]],
        stopTimeout: float | None = None,
        metricsDirectory: str | None = None,
        removeDirectory: bool = False,
        publish: Callable[[dict[str, Any]], None] = globalLogPublisher,
    ) -> None:
        """
        @param pluginArgs: the workers' plugin arguments, or a function of
            the parent's pid returning them.  A function is called again in
            L{startService}: under C{twistd} without C{-n} the service is
            built before twistd forks into the background, so only then is
            the parent's pid the one the workers must watch.
        @param stopTimeout: seconds a worker gets to drain on stop.
        @param metricsDirectory: the shared metrics directory, if any.
        @param removeDirectory: remove that directory once every worker
            has exited (it is a temporary one of this run).
        @param publish: where the workers' log events go (the parent's log).
        """
        self.reactor = reactor
        self.count = count
        self.pluginArgs = pluginArgs
        if stopTimeout is not None:
            self.stopTimeout = stopTimeout
        self.metricsDirectory = metricsDirectory
        self.removeDirectory = removeDirectory
        self.publish = publish
        self.argv = self._argv()
        self.processes: dict[int, tuple[Any, _Worker]] = {}
        self.quickDeaths: dict[int, int] = {}
        self.pending: dict[int, Any] = {}

    def _argv(self) -> list[str]:
        """
        @return: a worker's command line, for the current process as parent.
        """
        args = self.pluginArgs(os.getpid()) if callable(self.pluginArgs) else self.pluginArgs
        return [sys.executable, "-c", WORKER_MAIN, "--log-format=json", "ollama-proxy", *args]

    def startService(self) -> None:
        super().startService()
        self.argv = self._argv()
        for index in range(1, self.count + 1):
            self._spawn(index)
        log.info("started {n} extra worker(s)", n=self.count)

    def _spawn(self, index: int) -> None:
        """
        Start the worker of slot C{index}.
        """
        self.pending.pop(index, None)
        protocol = _Worker(index, self.reactor.seconds(), self.publish)
        process = self.reactor.spawnProcess(
            protocol, self.argv[0], self.argv, env=os.environ.copy(),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        # Twisted forgets the pid once the process is reaped: keep it.
        protocol.pid = process.pid
        protocol.ended.addCallback(self._ended, protocol)
        self.processes[index] = (process, protocol)

    def _ended(self, result: None, protocol: _Worker) -> None:
        """
        A worker exited: forget its live gauges and, while the pool runs,
        start it again (or give up on a crash loop).
        """
        if self.metricsDirectory is not None and protocol.pid is not None:
            processGone(self.metricsDirectory, protocol.pid)
        if not self.running:
            return
        index = protocol.index
        lived = self.reactor.seconds() - protocol.started
        deaths = 1 if lived >= self.stableAfter else self.quickDeaths.get(index, 0) + 1
        self.quickDeaths[index] = deaths
        how = exitDescription(protocol.reason or Exception("unknown"))
        if deaths > self.crashLimit:
            log.critical(
                "worker {index} (pid {pid}) exited with {how}; it died {deaths} times in a row "
                "within {stable:g}s of starting: not restarting it (the other processes keep "
                "serving; see the lines above for why it fails, then restart the service)",
                index=index, pid=protocol.pid, how=how, deaths=deaths,
                stable=self.stableAfter,
            )
            return
        delay = min(self.backoff * 2 ** (deaths - 1), self.maxBackoff)
        log.error(
            "worker {index} (pid {pid}) exited with {how} after {lived:.1f}s; "
            "restarting it in {delay:g}s",
            index=index, pid=protocol.pid, how=how, lived=lived, delay=delay,
        )
        self.pending[index] = self.reactor.callLater(delay, self._spawn, index)

    def signalAll(self, name: str) -> None:
        """
        Send a signal to every running worker (C{HUP} to reload).

        @param name: the signal name, e.g. C{"HUP"}.
        """
        for process, protocol in self.processes.values():
            if not protocol.ended.called:
                try:
                    process.signalProcess(name)
                except Exception:  # already gone
                    pass

    def stopService(self) -> Deferred[Any]:
        """
        @return: fires when every worker has exited (each drains its
            streams for up to C{--shutdown-grace} on C{SIGTERM}).
        """
        super().stopService()
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        waits = []
        for process, protocol in self.processes.values():
            if protocol.ended.called:
                continue
            try:
                process.signalProcess("TERM")
            except Exception:  # already gone
                continue
            kill = self.reactor.callLater(self.stopTimeout, self._kill, process)
            protocol.ended.addBoth(self._cancel, kill)
            waits.append(protocol.ended)
        done: Deferred[Any] = DeferredList(waits)
        if self.removeDirectory and self.metricsDirectory is not None:
            done.addCallback(self._removeDirectory)
        return done

    def _removeDirectory(self, result: object) -> object:
        """
        Remove this run's temporary metrics directory.
        """
        if self.metricsDirectory is not None:
            shutil.rmtree(self.metricsDirectory, ignore_errors=True)
        return result

    @staticmethod
    def _cancel(result: object, call: Any) -> object:
        if call.active():
            call.cancel()
        return result

    @staticmethod
    def _kill(process: Any) -> None:
        try:
            process.signalProcess("KILL")
        except Exception:
            pass


class ParentWatch(Service):
    """
    In a worker: stop when the parent process is gone (its pid is no longer
    our parent), so a killed parent does not leave workers behind.
    """

    interval = 1.0

    def __init__(self, reactor: Any, parentPid: int) -> None:
        self.reactor = reactor
        self.parentPid = parentPid
        self._loop = LoopingCall(self._check)
        self._loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _check(self) -> None:
        if os.getppid() != self.parentPid:
            log.warn("parent {pid} is gone; stopping", pid=self.parentPid)
            self._loop.stop()
            self.reactor.stop()

