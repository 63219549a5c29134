# -*- test-case-name: tests.test_resources -*-
"""
The exceptions that become Ollama-style C{{"error": ...}} responses.

Handlers raise these; one funnel in L{ollama_proxy.resources} turns them into
a JSON body with the right status before streaming, or an NDJSON error line
after streaming has begun.  Keeping the status on the exception means the
mapping lives next to the place that knows what went wrong.
"""

from __future__ import annotations

from ollama_proxy.protocol.codec import JSON


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


class PayloadTooLarge(ProxyError):
    """
    The request body is larger than the configured cap (413).
    """

    status = 413


class UpstreamError(ProxyError):
    """
    The backend could not be reached or answered garbage (502).
    """

    status = 502


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
    """


from ollama_proxy.protocol.errors import UpstreamError


class StreamFailed(UpstreamError):
    """
    The upstream stream failed part-way through one read.

    The relay joins the reads of one reactor turn, so a read can hold good
    events before the failing one; their lines still belong to the client,
    before the error line.

    @ivar chunks: the Ollama chunks translated before the failing event.
    @ivar output: the same as NDJSON, filled in by L{NDJSONStream}.
    """

    def __init__(self, message: str, chunks: list[JSON]) -> None:
        super().__init__(message)
        self.chunks = chunks
        self.output = b""


def _failedAfter(message: str, output: bytes) -> StreamFailed:
    """
    A L{StreamFailed} whose earlier lines are already encoded.
    """
    failure = StreamFailed(message, [])
    failure.output = output
    return failure
