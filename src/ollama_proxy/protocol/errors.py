# -*- test-case-name: tests.protocol.test_errors -*-
"""
The exceptions that become error answers in the client's dialect.

Handlers raise these; one funnel in L{ollama_proxy.web.bridge} turns them
into an error body with the right status before streaming, or the dialect's
mid-stream error after streaming has begun.  Keeping the status on the exception means the
mapping lives next to the place that knows what went wrong.
"""

from __future__ import annotations


class ProxyError(Exception):
    """
    An error with an HTTP status and a message meant for the client.

    @ivar status: the HTTP status code to answer with.
    @ivar message: the text of the C{error} field.
    """

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadRequest(ProxyError):
    """
    The client's request is malformed (400).
    """

    status = 400


class NotFound(ProxyError):
    """
    A model or route does not exist (404).
    """

    status = 404


class UpstreamError(ProxyError):
    """
    The backend could not be reached or answered garbage (502).

    @ivar backend: the name of the pool member that answered with it, when
        a backend did answer (set by the fleet).
    """

    status = 502
    backend: str | None = None


class UpstreamConnectError(UpstreamError):
    """
    The connection to the backend failed or broke (502): refused, DNS,
    reset.  A subclass only so that metrics can tell it from a backend that
    answered garbage.
    """


class UpstreamTimeout(UpstreamError):
    """
    The backend did not answer in time (504).
    """

    status = 504


class UpstreamHTTPError(UpstreamError):
    """
    The backend answered with a non-2xx status; we keep its status and
    message so the client sees the real reason.

    @ivar retryAfter: for a 429, the seconds its C{Retry-After} asked for
        (C{None}: not given or not understood).
    """

    retryAfter: float | None = None



def describe(error: ProxyError) -> str:
    """
    What went wrong with a backend, in the proxy's own words only: for the
    answers anyone may read (C{/health/ready}) and the error lines of
    background refreshes.  Upstream text (a body, a reason phrase, a
    header that a parse error quotes) may carry a key, so none is used.

    @param error: the failure.
    @return: C{"backend answered 401"}, C{"connection refused"},
        C{"timeout"}, ...
    """
    if isinstance(error, UpstreamHTTPError):
        return f"backend answered {error.status}"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamConnectError):
        message = error.message.lower()
        if "refused" in message:
            return "connection refused"
        if message.startswith("cannot resolve"):
            return "host name not resolved"
        return "connection failed"
    if isinstance(error, UpstreamError):
        return "unusable answer"
    return "error"
