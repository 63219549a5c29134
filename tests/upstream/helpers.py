"""
Helpers for the upstream tests: a fetch function the test completes by
hand, and a log capture.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import UpstreamConnectError, UpstreamError
from ollama_proxy.upstream.cache import TTLCache


class ScriptedFetch:
    """
    A fetch function whose calls wait until the test answers them.
    """

    def __init__(self) -> None:
        self.calls: list[Deferred[list[dict[str, Any]]]] = []

    async def __call__(self) -> list[dict[str, Any]]:
        d: Deferred[list[dict[str, Any]]] = Deferred()
        self.calls.append(d)
        return await d

    def answer(self, *ids: str) -> None:
        """
        Answer the latest call with these ids.
        """
        self.calls[-1].callback([{"id": i, "object": "model"} for i in ids])

    def fail(self, message: str = "connection refused") -> None:
        """
        Fail the latest call.
        """
        self.calls[-1].errback(UpstreamConnectError(message))


def get(cache: TTLCache[list[dict[str, Any]]]) -> Deferred[list[dict[str, Any]]]:
    """
    @return: L{TTLCache.get} as a Deferred.
    """
    return Deferred.fromCoroutine(cache.get())


def ids(result: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in result]


class LogCapture:
    """
    Collects global log events for one test.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.observer = EventLoggingObserver()
        globalLogPublisher.addObserver(self.observer)
        case.addCleanup(globalLogPublisher.removeObserver, self.observer)

    def errors(self) -> list[Any]:
        """
        @return: the events logged at warning level or above.
        """
        return [e for e in self.observer if e.get("log_level") in (LogLevel.error, LogLevel.warn)]
