# -*- test-case-name: tests.upstream.test_failures -*-
"""
Client-side failures (treq, Agent, connection errors) as the proxy's
errors: a 504 for timeouts, a 502 for everything else, with a message that
names the upstream.  Its own module so that the body reader and the backend
client share it without importing each other.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    DNSLookupError,
)
from twisted.internet.error import (
    TimeoutError as ConnectTimeoutError,
)
from twisted.web.client import (
    ResponseFailed,
    ResponseNeverReceived,
)

from ollama_proxy.protocol.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)


def failureToError(reason: BaseException, what: str) -> UpstreamError:
    """
    Map a client-side exception from treq/Agent to a proxy error.

    @param reason: the exception.
    @param what: a short description of the upstream, for the message.
    @return: a 504 for timeouts, a 502 for everything else.
    """
    if isinstance(reason, (ResponseNeverReceived, ResponseFailed)):
        inner = [f.value for f in reason.reasons]
        if any(isinstance(e, CancelledError) for e in inner):
            return UpstreamTimeout(f"timed out waiting for {what}")
        detail = "; ".join(str(e) or type(e).__name__ for e in inner)
        return UpstreamConnectError(f"connection to {what} failed: {detail}")
    if isinstance(reason, (CancelledError, ConnectTimeoutError, ConnectingCancelledError)):
        return UpstreamTimeout(f"timed out connecting to {what}")
    if isinstance(reason, DNSLookupError):
        return UpstreamConnectError(f"cannot resolve {what}: {reason}")
    if isinstance(reason, ConnectError):
        return UpstreamConnectError(f"cannot connect to {what}: {reason}")
    return UpstreamError(f"request to {what} failed: {reason}")
