"""
L{ollama_proxy.protocol.errors}: the status each error answers with, and
L{describe}, the words anyone may read.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import (
    BadRequest,
    NotFound,
    ProxyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    describe,
)


class StatusTests(SynchronousTestCase):
    """
    The status lives on the exception.
    """

    def test_defaults(self) -> None:
        """
        Each kind has its status; the message is kept as given.
        """
        cases = [(ProxyError, 500), (BadRequest, 400), (NotFound, 404), (UpstreamError, 502),
                 (UpstreamConnectError, 502), (UpstreamTimeout, 504), (UpstreamHTTPError, 502)]
        for kind, status in cases:
            error = kind("what went wrong")
            self.assertEqual((error.status, error.message, str(error)),
                             (status, "what went wrong", "what went wrong"))

    def test_explicitStatus(self) -> None:
        """
        A status given wins (a backend's own, kept for the client), for
        that instance only.
        """
        error = UpstreamHTTPError("slow down", 429)
        self.assertEqual((error.status, error.retryAfter, error.backend), (429, None, None))
        self.assertEqual(UpstreamHTTPError("x").status, 502)


class DescribeTests(SynchronousTestCase):
    """
    L{describe} uses the proxy's words only, never upstream text.
    """

    def test_kinds(self) -> None:
        """
        Each kind of failure has its phrase.
        """
        cases = [
            (UpstreamHTTPError("sk-secret in a body", 401), "backend answered 401"),
            (UpstreamTimeout("timed out waiting for sk-secret"), "timeout"),
            (UpstreamConnectError("cannot connect to x: Connection was refused"),
             "connection refused"),
            (UpstreamConnectError("cannot resolve x: sk-secret"), "host name not resolved"),
            (UpstreamConnectError("connection to x failed: reset"), "connection failed"),
            (UpstreamError("garbage: sk-secret"), "unusable answer"),
            (BadRequest("sk-secret"), "error"),
        ]
        for error, phrase in cases:
            self.assertEqual(describe(error), phrase)
            self.assertNotIn("sk-secret", describe(error))
