# -*- test-case-name: tests.service.test_logging -*-
"""
JSON log lines for log shippers (Loki, Vector, Fluent Bit, journald's
JSON readers): one object per line with the time, level, namespace, the
formatted message and every field of the C{twisted.logger} event, so that
C{model}, C{backend}, C{status} or C{ttft_ms} of the per-request line can be
queried without parsing text.

Two ways to turn it on:

    - C{twistd --logger ollama_proxy.service.logging.jsonLogger ollama-proxy ...}:
      twistd's own option for a log observer factory.  The factory receives
      no arguments, so it writes to standard output (what systemd and
      container runtimes collect);
    - C{twistd --logfile=/var/log/ollama-proxy.json ollama-proxy --log-format json ...}:
      the plugin option; it honours twistd's C{--logfile} (a file that
      rotates at 1,000,000 bytes and on C{SIGUSR1}, like twistd's own text
      log) or standard output with C{-n}.
"""

from __future__ import annotations

import atexit
import signal
import sys
import time
from threading import RLock, get_ident
from typing import IO, Any, Callable, cast
from weakref import WeakSet

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.compat import ioType
from twisted.python.logfile import LogFile
from zope.interface import implementer

from ollama_proxy.protocol import codec

_destination: tuple[str | None, bool] = (None, True)
"""Where L{jsonLogger} writes: (twistd's C{--logfile}, C{--nodaemon})."""

_redact: Callable[[str], str] | None = None
"""
What every formatted line passes through before it is written: the
service's redactor (L{redactLogsWith}).  twistd makes its log observer
before the plugin makes the service, so the secrets reach the formatters
through this one setter rather than as an argument.
"""


def redactLogsWith(redact: Callable[[str], str] | None) -> None:
    """
    Pass every line the text and JSON formatters write through C{redact}.

    The call sites already redact what they log, but a line no one thought
    of (a traceback whose exception text quotes a backend's answer, a
    library's own message) must not carry a secret either: this is the
    last filter before the log file, the same for every line.

    @param redact: C{text -> text} with every secret the proxy holds
        replaced (L{ollama_proxy.protocol.redact.Redactor.text} of the
        service's context, which follows C{SIGHUP} reloads), or C{None} to
        write lines as they are.
    """
    global _redact
    _redact = redact


def _clean(line: str) -> str:
    """
    @param line: a formatted log line.
    @return: the line with every secret replaced.
    """
    redact = _redact
    return line if redact is None else redact(line)


def _jsonable(value: Any) -> Any:
    """
    @param value: an event field.
    @return: C{value} if orjson can encode it, else its C{repr}.
    """
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    try:
        codec.dumps(value)
    except TypeError:
        return repr(value)
    return value


def eventAsJSONLine(event: LogEvent) -> str:
    """
    Format one event as a flat JSON object and a newline.

    @param event: a C{twisted.logger} event.
    @return: the line.
    """
    stamp = event.get("log_time") or time.time()
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp))
        + f".{int(stamp * 1000) % 1000:03d}Z",
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    failure = event.get("log_failure")
    if failure is not None:
        out["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if not key.startswith("log_") and key not in out and not key.startswith("_"):
            out[key] = _jsonable(value)
    return _clean(codec.dumps(out).decode("utf-8") + "\n")


BUFFER_LIMIT = 64 * 1024
"""The most bytes of log lines held for the end of a reactor turn; a turn
that logs more writes them when they reach this."""


class _Turns:
    """
    Where L{TurnBufferedLogObserver}s ask for their end-of-turn writes: the
    reactor's C{callLater} and the thread it runs in, set by
    L{bufferPerTurn}.
    """

    def __init__(self, callLater: Callable[..., Any]) -> None:
        self.callLater = callLater
        self.thread = get_ident()


_turns: _Turns | None = None
"""Set while the reactor runs (L{bufferPerTurn}); C{None}: every line is
written at once."""

_observers: WeakSet[TurnBufferedLogObserver] = WeakSet()


@implementer(ILogObserver)
class TurnBufferedLogObserver:
    """
    C{twisted.logger}'s C{FileLogObserver}, with the C{info} lines of one
    reactor turn written together: one C{write} (one system call, and one
    acquisition of C{LogFile}'s lock) at the turn's end instead of a write
    and a flush per line.  The access line is one C{info} event per
    request, so a busy proxy wrote (and a cached C{/api/tags} paid) one
    system call per request for it (C{bench/RESULTS.md}, round 4).

    Nothing is kept longer than the turn that logged it, and nothing is
    lost: lines are written, in the order they were logged, at the end of
    the reactor turn (a C{callLater(0)}, once per turn that logged), when
    L{BUFFER_LIMIT} bytes are held, before any line that is not C{info}
    (warnings, errors and tracebacks are written at once, after what was
    held), before a log rotation (L{flushAll}), when the reactor shuts
    down and at the process's exit.  Until L{bufferPerTurn} is called
    (before the reactor runs: start-up errors), after the reactor's
    shutdown, and for events logged from any other thread, every line is
    written at once, as C{FileLogObserver} writes it.
    """

    def __init__(self, outFile: IO[Any], formatEvent: Callable[[LogEvent], str | None]) -> None:
        """
        @param outFile: a text or binary file (binary gets UTF-8).
        @param formatEvent: C{event -> line or None}.
        """
        self._out = outFile
        self._encode = ioType(outFile) is not str
        self.formatEvent = formatEvent
        self._lines: list[str] = []
        self._held = 0
        self._lock = RLock()
        self._flushing = False
        _observers.add(self)

    def __call__(self, event: LogEvent) -> None:
        """
        Format C{event} and write its line now or with its turn's.

        @param event: a log event.
        """
        text = self.formatEvent(event)
        if not text:
            return
        turns = _turns
        with self._lock:
            self._lines.append(text)
            if turns is None or event.get("log_level") is not LogLevel.info or get_ident() != turns.thread:
                self._write()
                return
            self._held += len(text)
            if self._held >= BUFFER_LIMIT:
                self._write()
            elif not self._flushing:
                self._flushing = True
                turns.callLater(0, self._turnEnded)

    def _turnEnded(self) -> None:
        with self._lock:
            self._flushing = False
            self._write()

    def flush(self) -> None:
        """
        Write every held line now.
        """
        with self._lock:
            self._write()

    def _write(self) -> None:
        # Called with the lock held.
        if not self._lines:
            return
        lines, self._lines, self._held = self._lines, [], 0
        text = "".join(lines)
        self._out.write(text.encode("utf-8") if self._encode else text)
        self._out.flush()


def flushAll() -> None:
    """
    Write the held lines of every L{TurnBufferedLogObserver}.
    """
    for observer in list(_observers):
        observer.flush()


atexit.register(flushAll)


def bufferPerTurn(reactor: Any) -> None:
    """
    Hold C{info} lines for the end of their reactor turn from now until
    the reactor shuts down (see L{TurnBufferedLogObserver}).  Called by
    the plugin with the reactor it runs on, from the reactor's thread.

    @param reactor: an C{IReactorTime} and C{IReactorCore}.
    """
    global _turns
    _turns = _Turns(reactor.callLater)

    def shutDown() -> None:
        global _turns
        _turns = None
        flushAll()

    reactor.addSystemEventTrigger("after", "shutdown", shutDown)


def jsonObserver(outFile: IO[Any]) -> ILogObserver:
    """
    @param outFile: a text or binary file.
    @return: an observer writing one JSON line per event to it (the lines
        of a reactor turn together, L{TurnBufferedLogObserver}).
    """
    return TurnBufferedLogObserver(outFile, eventAsJSONLine)


class _SecondCache:
    """
    Twisted's classic log timestamp (local time, second resolution), formatted
    once per second.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        """
        @param when: a POSIX time, or C{None}.
        @return: what L{formatTime} returns for it.
        """
        if when is None:
            return formatTime(None)
        second = int(when)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


def _system(event: LogEvent) -> str:
    """
    The C{[system]} part of a classic log line, as Twisted writes it.
    """
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
    try:
        return str(system)
    except Exception:
        return "UNFORMATTABLE"


def classicFormatter() -> Any:
    """
    A formatter for twistd's classic text lines (C{"time [system] text"}),
    the same as C{formatEventAsClassicLogText}, with the timestamp formatted
    once per second and the per-request line (an event whose format is
    C{"{line}"}, made by L{ollama_proxy.web.observe.logRequest}) written
    without a C{string.Formatter} pass.  Formatting the access line was a
    quarter of the CPU of a cached C{/api/tags} (C{bench/RESULTS.md}).

    @return: C{event -> str | None}.
    """
    stamp = _SecondCache()

    def format(event: LogEvent) -> str | None:
        if event.get("log_format") == "{line}" and "log_failure" not in event and "line" in event:
            text = str(event["line"]).replace("\n", "\n\t")
            return _clean(f"{stamp(event.get('log_time'))} [{_system(event)}] {text}\n")
        classic = formatEventAsClassicLogText(event, formatTime=stamp)
        return None if classic is None else _clean(classic)

    return format


def _destinationFile(logfile: str | None, nodaemon: bool) -> IO[Any]:
    """
    Where twistd writes its log: standard output for C{-} or for C{-n}
    without a file, else a L{LogFile} that rotates by size and on
    C{SIGUSR1}.
    """
    if logfile == "-" or (nodaemon and not logfile):
        return sys.stdout
    logFile = LogFile.fromFullPath(logfile or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):

        def rotate(signum: int, frame: Any) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(rotate, logFile)  # type: ignore[attr-defined]

        signal.signal(signal.SIGUSR1, rotate)
    return cast(IO[Any], logFile)


def rotate(logFile: LogFile) -> None:
    """
    Rotate the log (on C{SIGUSR1}), after writing the lines held for the
    end of this turn: they belong to the file being closed.

    @param logFile: the log file.
    """
    flushAll()
    logFile.rotate()


def textLogger() -> ILogObserver:
    """
    The log observer factory the plugin gives twistd for its default text
    log: twistd's own format and destination (see L{useJSON} for where),
    formatted by L{classicFormatter}.

    @return: the observer.
    """
    return TurnBufferedLogObserver(_destinationFile(*_destination), classicFormatter())


def jsonObserverFor(logfile: str | None, nodaemon: bool) -> ILogObserver:
    """
    An observer for twistd's C{--logfile} / C{--nodaemon} pair, chosen as
    twistd chooses its text log: standard output for C{-} or for C{-n}
    without a file, else a L{LogFile} that rotates by size and on
    C{SIGUSR1}.

    @param logfile: twistd's C{--logfile}, or C{None}.
    @param nodaemon: twistd's C{--nodaemon}.
    @return: the observer.
    """
    return jsonObserver(_destinationFile(logfile, nodaemon))


def useJSON(logfile: str | None, nodaemon: bool) -> None:
    """
    Make L{jsonLogger} write where twistd would have written its text log.

    @param logfile: twistd's C{--logfile}.
    @param nodaemon: twistd's C{--nodaemon}.
    """
    global _destination
    _destination = (logfile, nodaemon)


def jsonLogger() -> ILogObserver:
    """
    The log observer factory for C{twistd --logger
    ollama_proxy.service.logging.jsonLogger}: JSON lines on standard output, or
    where L{useJSON} said (the plugin's C{--log-format json} does that).

    @return: the observer.
    """
    return jsonObserverFor(*_destination)
