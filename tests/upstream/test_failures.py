"""
L{failureToError}: every client-side failure treq and Agent raise becomes
a 504 (timeouts) or a 502 (everything else) naming the upstream.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from ollama_proxy.protocol.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout
from ollama_proxy.upstream.failures import failureToError


class FailureToErrorTests(SynchronousTestCase):
    """
    The mapping, case by case.
    """

    def check(self, reason: BaseException, kind: type[UpstreamError], status: int,
              message: str) -> None:
        error = failureToError(reason, "the backend")
        self.assertIs(type(error), kind)
        self.assertEqual((error.status, error.message), (status, message))

    def test_timeouts(self) -> None:
        """
        A cancelled request (the header or idle deadline) and a connect
        timeout are 504s.
        """
        self.check(ResponseNeverReceived([Failure(CancelledError())]), UpstreamTimeout, 504,
                   "timed out waiting for the backend")
        for reason in (CancelledError(), ConnectTimeoutError(), ConnectingCancelledError(None)):
            self.check(reason, UpstreamTimeout, 504, "timed out connecting to the backend")

    def test_brokenConnection(self) -> None:
        """
        A connection lost before or during the answer is a 502 with each
        reason.
        """
        self.check(ResponseFailed([Failure(ConnectionLost("reset"))]), UpstreamConnectError, 502,
                   "connection to the backend failed: Connection to the other side was "
                   "lost in a non-clean fashion: reset.")
        self.check(ResponseNeverReceived([Failure(ValueError())]), UpstreamConnectError, 502,
                   "connection to the backend failed: ValueError")

    def test_connectFailures(self) -> None:
        """
        DNS and refused connections say which.
        """
        error = failureToError(DNSLookupError("no.such.host"), "the backend")
        self.assertIsInstance(error, UpstreamConnectError)
        self.assertTrue(error.message.startswith("cannot resolve the backend: "))
        error = failureToError(ConnectionRefusedError(), "the backend")
        self.assertIsInstance(error, UpstreamConnectError)
        self.assertTrue(error.message.startswith("cannot connect to the backend: "))
        self.assertEqual(error.status, 502)

    def test_anythingElse(self) -> None:
        """
        Any other exception is a plain 502 that names the upstream.
        """
        self.check(RuntimeError("odd"), UpstreamError, 502, "request to the backend failed: odd")
