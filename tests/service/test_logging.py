"""
JSON log output: the line format, the observer factory for twistd's
C{--logger}, and the plugin's C{--log-format json} under twistd's own
option parser.
"""

from __future__ import annotations

import io
import os
import signal

from twisted.application.app import ServerOptions
from twisted.logger import Logger, LogLevel, LogPublisher
from twisted.python.failure import Failure
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
