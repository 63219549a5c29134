"""
JSON log output: the line format, the observer factory for twistd's
C{--logger}, and the plugin's C{--log-format json} under twistd's own
option parser.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading

from twisted.application.app import ServerOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service import logging as proxylogging
from ollama_proxy.service.logging import (
    eventAsJSONLine,
    jsonLogger,
    jsonObserver,
    jsonObserverFor,
)
from tests.tempdirs import tempDir


class JSONLineTests(SynchronousTestCase):
    """
    L{eventAsJSONLine} and L{jsonObserver}.
    """

    def test_flatObject(self) -> None:
        """
        An event becomes one line holding time, level, namespace, the
        formatted message and the event's own fields with their types.
        """
        out = io.StringIO()
        publisher = LogPublisher(jsonObserver(out))
        log = Logger(namespace="ollama_proxy.test", observer=publisher)
        log.info("POST {path} status={status}", path="/api/chat", status=200, tokens_in=None,
                 backend="a")
        [line] = out.getvalue().splitlines()
        record = codec.loads(line)
        self.assertEqual(
            {k: record[k] for k in ("level", "namespace", "message", "path", "status",
                                    "tokens_in", "backend")},
            {"level": "info", "namespace": "ollama_proxy.test",
             "message": "POST /api/chat status=200", "path": "/api/chat", "status": 200,
             "tokens_in": None, "backend": "a"},
        )
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertFalse(any(key.startswith("log_") for key in record))

    def test_failureAndOddValues(self) -> None:
        """
        A logged failure adds its traceback; a value JSON cannot hold is
        written as its repr rather than breaking the line.
        """
        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        line = eventAsJSONLine({"log_format": "oops", "log_level": LogLevel.error,
                                "log_namespace": "n", "log_time": 0.5, "log_failure": failure,
                                "thing": object()})
        record = codec.loads(line)
        self.assertEqual((record["level"], record["time"]), ("error", "1970-01-01T00:00:00.500Z"))
        self.assertIn("ZeroDivisionError", record["traceback"])
        self.assertTrue(record["thing"].startswith("<object object"))
        self.assertTrue(line.endswith("}\n"))


class FactoryTests(SynchronousTestCase):
    """
    Where the JSON goes.
    """

    def setUp(self) -> None:
        self.addCleanup(proxylogging.useJSON, None, True)
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    def test_rotationHandlerInstalled(self) -> None:
        """
        A JSON log file gets twistd's C{SIGUSR1} rotation, as its text log
        would.
        """
        path = os.path.join(tempDir(self), "proxy.json")
        jsonObserverFor(path, False)
        self.assertTrue(callable(signal.getsignal(signal.SIGUSR1)))

    def test_fileDestination(self) -> None:
        """
        With a log file, L{jsonObserverFor} writes JSON lines into it.
        """
        directory = tempDir(self)
        path = os.path.join(directory, "proxy.json")
        observer = jsonObserverFor(path, False)
        Logger(namespace="t", observer=observer).info("hello {who}", who="ops")
        with open(path, encoding="utf-8") as f:
            record = codec.loads(f.readline())
        self.assertEqual((record["message"], record["who"]), ("hello ops", "ops"))

    def test_loggerFactoryDefaultsToStdout(self) -> None:
        """
        C{jsonLogger()} (for C{twistd --logger}) writes to standard output
        until told otherwise.
        """
        out = io.StringIO()
        self.patch(proxylogging.sys, "stdout", out)
        Logger(namespace="t", observer=jsonLogger()).info("x")
        self.assertEqual(codec.loads(out.getvalue())["message"], "x")

    def test_logFormatOptionUnderTwistd(self) -> None:
        """
        C{twistd --logfile F ollama-proxy --log-format json} makes twistd's
        log observer factory the JSON one, writing to F.
        """
        directory = tempDir(self)
        path = os.path.join(directory, "proxy.json")
        config = ServerOptions()
        config.parseOptions(["--logfile", path, "ollama-proxy", "--target",
                             "http://127.0.0.1:1", "--log-format", "json"])
        self.assertIs(config["logger"], jsonLogger)
        Logger(namespace="t", observer=config["logger"]()).info("to file")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(codec.loads(f.readline())["message"], "to file")

    def test_explicitLoggerWins(self) -> None:
        """
        A C{--logger} given to twistd is left alone.
        """
        config = ServerOptions()
        config.parseOptions(["--logger", "twisted.logger.textFileLogObserver", "ollama-proxy",
                             "--target", "http://127.0.0.1:1", "--log-format", "json"])
        from twisted.logger import textFileLogObserver

        self.assertIs(config["logger"], textFileLogObserver)


class TextLogTests(SynchronousTestCase):
    """
    The plugin's text log: twistd's classic lines, formatted more cheaply.
    """

    events = [
        {"log_format": "{line}", "line": "GET /api/tags model=- status=200", "status": 200,
         "log_level": LogLevel.info, "log_namespace": "ollama_proxy.web.observe",
         "log_time": 1_700_000_000.25},
        {"log_format": "{line}", "line": "two\nlines", "log_system": "sys",
         "log_level": LogLevel.info, "log_namespace": "n", "log_time": 1_700_000_000.75},
        {"log_format": "hello {who}", "who": "ops", "log_level": LogLevel.warn,
         "log_namespace": "n", "log_time": 1_700_000_001.0},
        {"log_format": "no time", "log_namespace": "n"},
    ]

    def test_sameAsTwisted(self) -> None:
        """
        Every line is what Twisted's classic formatter writes.
        """
        from twisted.logger import formatEventAsClassicLogText

        from ollama_proxy.service.logging import classicFormatter

        fmt = classicFormatter()
        for event in self.events:
            self.assertEqual(fmt(dict(event)), formatEventAsClassicLogText(dict(event)), event)

    def test_failureFallsBack(self) -> None:
        """
        An event with a failure keeps Twisted's own formatting (traceback).
        """
        from ollama_proxy.service.logging import classicFormatter

        try:
            1 / 0
        except ZeroDivisionError:
            failure = Failure()
        line = classicFormatter()({"log_format": "{line}", "line": "x", "log_failure": failure,
                                   "log_namespace": "n", "log_time": 0.0})
        self.assertIn("ZeroDivisionError", line)

    def test_defaultUnderTwistd(self) -> None:
        """
        Without C{--log-format}, twistd's observer factory becomes the
        plugin's text logger, writing classic lines to C{--logfile}.
        """
        from ollama_proxy.service.logging import textLogger

        directory = tempDir(self)
        path = os.path.join(directory, "proxy.log")
        config = ServerOptions()
        config.parseOptions(["--logfile", path, "ollama-proxy", "--target", "http://127.0.0.1:1"])
        self.assertIs(config["logger"], textLogger)
        Logger(namespace="t", observer=config["logger"]()).info("{line}", line="to file")
        with open(path, encoding="utf-8") as f:
            self.assertRegex(f.readline(), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[t#info\] to file\n$")

    def test_syslogLeftAlone(self) -> None:
        """
        With twistd's C{--syslog}, its own observer stays.
        """
        config = ServerOptions()
        if "syslog" not in config:
            raise SkipTest("no --syslog on this platform")
        config.parseOptions(["--syslog", "ollama-proxy", "--target", "http://127.0.0.1:1"])
        self.assertIsNone(config["logger"])


class RedactedLogTests(SynchronousTestCase):
    """
    The last filter before the log file: every line the text and JSON
    formatters write, tracebacks included, has every secret the service
    holds replaced (issue 19: "every log line").
    """

    def setUp(self) -> None:
        self.addCleanup(proxylogging.redactLogsWith, None)

    def serviceWithKey(self) -> None:
        """
        Make a service whose backend key and inbound key are secrets: its
        wiring installs the log filter.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ollama_proxy.service.options import Options
        from ollama_proxy.service.tap import makeService

        options = Options()
        options.parseOptions([
            "--target", "http://127.0.0.1:1", "--api-key", "sk-backend-secret-0001",
            "--require-key", "inbound-secret-0002",
        ])
        makeService(options, reactor=MemoryReactorClock())

    def failureQuoting(self, text: str) -> Failure:
        try:
            raise ValueError(f"the backend said: {text}")
        except ValueError:
            return Failure()

    def test_tracebackRedactedInBothFormats(self) -> None:
        """
        An exception whose text quotes a secret (a traceback no call site
        redacted) reaches neither the text nor the JSON log with it, plain
        or JSON-escaped.
        """
        from ollama_proxy.service.logging import classicFormatter

        self.serviceWithKey()
        for secret in ("sk-backend-secret-0001", "inbound-secret-0002"):
            event = {
                "log_format": "refresh failed: {why}", "why": secret,
                "log_failure": self.failureQuoting(secret), "log_time": 0.0,
                "log_level": LogLevel.error, "log_namespace": "test",
            }
            text = classicFormatter()(event)
            line = eventAsJSONLine(event)
            assert text is not None
            self.assertIn("the backend said", text)
            self.assertIn("the backend said", line)
            for written in (text, line):
                self.assertNotIn(secret, written)
                self.assertNotIn(secret[:-1], written)

    def test_accessLineRedacted(self) -> None:
        """
        The per-request line's fast path is filtered too.
        """
        from ollama_proxy.service.logging import classicFormatter

        self.serviceWithKey()
        text = classicFormatter()({"log_format": "{line}", "line": "GET /x sk-backend-secret-0001",
                                   "log_time": 0.0})
        assert text is not None
        self.assertNotIn("sk-backend-secret-0001", text)
        self.assertIn("GET /x", text)

    def test_unfilteredWithoutService(self) -> None:
        """
        Without a service (a tool formatting lines on its own) the lines
        are written as they are.
        """
        from ollama_proxy.service.logging import classicFormatter

        text = classicFormatter()({"log_format": "{line}", "line": "plain", "log_time": 0.0})
        assert text is not None
        self.assertIn("plain", text)


class _CountingFile(io.StringIO):
    """
    A text file that counts its writes.
    """

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


class TurnBufferTests(SynchronousTestCase):
    """
    L{proxylogging.TurnBufferedLogObserver}: the info lines of one reactor
    turn in one write, nothing lost and nothing reordered.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.out = _CountingFile()
        self.observer = proxylogging.TurnBufferedLogObserver(self.out, lambda e: e["line"] + "\n")
        self.log = Logger(namespace="ollama_proxy.test", observer=self.observer)
        self.addCleanup(self._shutDown)

    def _shutDown(self) -> None:
        for trigger, args, kwargs in self.clock.triggers.get("after", {}).get("shutdown", []):
            trigger(*args, **kwargs)
        self.clock.triggers.clear()
        self.assertIsNone(proxylogging._turns)

    def _lines(self) -> list[str]:
        return self.out.getvalue().splitlines()

    def test_atOnceUntilBuffering(self) -> None:
        """
        Before L{proxylogging.bufferPerTurn} (start-up), each line is
        written and flushed when logged, as C{FileLogObserver} does.
        """
        self.log.info("{line}", line="one")
        self.log.info("{line}", line="two")
        self.assertEqual((self._lines(), self.out.writes), (["one", "two"], 2))

    def test_oneWritePerTurn(self) -> None:
        """
        The info lines of a turn are written together at its end, in order;
        the next turn's lines in the next write.
        """
        proxylogging.bufferPerTurn(self.clock)
        for i in range(50):
            self.log.info("{line}", line=f"GET /{i}")
        self.assertEqual((self._lines(), self.out.writes), ([], 0))
        self.clock.advance(0)
        self.assertEqual(self._lines(), [f"GET /{i}" for i in range(50)])
        self.assertEqual(self.out.writes, 1)
        self.log.info("{line}", line="later")
        self.clock.advance(0)
        self.assertEqual((self._lines()[-1], self.out.writes), ("later", 2))
        self.clock.advance(0)
        self.assertEqual(self.out.writes, 2)

    def test_warningWritesHeldFirst(self) -> None:
        """
        A line that is not C{info} (a warning, an error's traceback) is
        written at once, after the lines held before it.
        """
        proxylogging.bufferPerTurn(self.clock)
        self.log.info("{line}", line="first")
        self.log.info("{line}", line="second")
        self.log.warn("{line}", line="careful")
        self.assertEqual(self._lines(), ["first", "second", "careful"])
        self.assertEqual(self.out.writes, 1)

    def test_limit(self) -> None:
        """
        A turn that logs more than L{proxylogging.BUFFER_LIMIT} bytes
        writes them without waiting for its end.
        """
        proxylogging.bufferPerTurn(self.clock)
        line = "x" * 999
        count = proxylogging.BUFFER_LIMIT // 1000 + 1
        for _ in range(count):
            self.log.info("{line}", line=line)
        self.assertEqual(len(self._lines()), count)
        self.assertEqual(self.out.writes, 1)

    def test_shutdownWritesAndStops(self) -> None:
        """
        The reactor's shutdown writes what is held; from then on every line
        is written at once (twistd logs after the reactor stops).
        """
        proxylogging.bufferPerTurn(self.clock)
        self.log.info("{line}", line="held")
        self._shutDown()
        self.assertEqual(self._lines(), ["held"])
        self.log.info("{line}", line="after")
        self.assertEqual(self._lines(), ["held", "after"])

    def test_otherThreadAtOnce(self) -> None:
        """
        A line logged from another thread than the reactor's is written at
        once, after what the reactor's thread held.
        """
        proxylogging.bufferPerTurn(self.clock)
        self.log.info("{line}", line="reactor")
        thread = threading.Thread(target=lambda: self.log.info("{line}", line="thread"))
        thread.start()
        thread.join(10)
        self.assertEqual(self._lines(), ["reactor", "thread"])

    def test_rotationTakesHeldLines(self) -> None:
        """
        A rotation (C{SIGUSR1}) writes the held lines into the file being
        rotated, then opens the new one.
        """
        directory = tempDir(self, "ollama-proxy-log-")
        logFile = LogFile.fromFullPath(os.path.join(directory, "proxy.log"))
        self.addCleanup(logFile.close)
        observer = proxylogging.TurnBufferedLogObserver(logFile, lambda e: e["line"] + "\n")
        log = Logger(observer=observer)
        proxylogging.bufferPerTurn(self.clock)
        log.info("{line}", line="before")
        proxylogging.rotate(logFile)
        log.info("{line}", line="after")
        self.clock.advance(0)
        with open(os.path.join(directory, "proxy.log.1"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "before\n")
        with open(os.path.join(directory, "proxy.log"), encoding="utf-8") as f:
            self.assertEqual(f.read(), "after\n")

    def test_exitWritesHeld(self) -> None:
        """
        A process that exits with lines held (a reactor turn that never
        ended) writes them at exit.
        """
        directory = tempDir(self, "ollama-proxy-log-")
        path = os.path.join(directory, "proxy.log")
        program = (
            "import sys\n"
            "from twisted.internet.testing import MemoryReactorClock\n"
            "from twisted.logger import Logger\n"
            "from twisted.python.logfile import LogFile\n"
            "from ollama_proxy.service import logging\n"
            "observer = logging.TurnBufferedLogObserver(LogFile.fromFullPath(sys.argv[1]),"
            " lambda e: e['line'] + '\\n')\n"
            "logging.bufferPerTurn(MemoryReactorClock())\n"
            "for i in range(3):\n"
            "    Logger(observer=observer).info('{line}', line=f'line {i}')\n"
        )
        subprocess.run([sys.executable, "-c", program, path], check=True, timeout=60)
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "line 0\nline 1\nline 2\n")
