# -*- test-case-name: tests.test_site -*-
"""
The HTTP server side: a request class that enforces a body-size cap and a
C{Site} without per-request access-log formatting.

twisted.web has no body limit of its own and buffers the whole body before a
resource runs; L{LimitedRequest} stops reading at the cap and answers 413
with Ollama's JSON error shape instead of rendering a truncated body.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ollama_proxy import codec

DEFAULT_MAX_BODY = 64 * 1024 * 1024
"""Default request body cap: large enough for several base64 images."""


class LimitedRequest(Request):
    """
    A request that refuses bodies larger than L{maxBody} bytes with 413.

    @ivar maxBody: the cap in bytes, set per site by L{makeSite}.
    """

    maxBody: int = DEFAULT_MAX_BODY
    _tooLarge = False

    def gotLength(self, length: int | None) -> None:
        """
        Reject early when the declared C{Content-Length} is over the cap.
        """
        super().gotLength(length)
        if length is not None and length > self.maxBody:
            self._reject()

    def handleContentChunk(self, data: bytes) -> None:
        """
        Count the body as it arrives; stop buffering at the cap.
        """
        if self._tooLarge:
            return
        if self.content is not None and self.content.tell() + len(data) > self.maxBody:
            self._reject()
            return
        super().handleContentChunk(data)

    def _reject(self) -> None:
        """
        Answer 413 and close the connection; the body is never rendered.
        """
        if self._tooLarge:
            return
        self._tooLarge = True
        body = codec.dumps(
            {"error": f"request body is larger than the limit of {self.maxBody} bytes"}
        )
        self.setResponseCode(413)
        self.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        self.setHeader(b"Content-Length", str(len(body)).encode("ascii"))
        self.setHeader(b"Connection", b"close")
        self.write(body)
        self.finish()
        if self.channel is not None:
            self.channel.loseConnection()

    def process(self) -> None:
        """
        Render only complete bodies.
        """
        if not self._tooLarge:
            super().process()


class ProxySite(Site):
    """
    A L{Site} that does not write an access log: the proxy logs one
    structured line per request itself, off the hot path of formatting
    combined-log lines.
    """

    def log(self, request: Any) -> None:
        """
        Do nothing; see L{ollama_proxy.resources.ProxyResource._logRequest}.
        """


def makeSite(
    root: IResource,
    reactor: IReactorTime | None = None,
    timeout: float | None = 60.0,
    maxBody: int = DEFAULT_MAX_BODY,
) -> Site:
    """
    Build the site for the proxy.

    @param root: the resource tree.
    @param reactor: the reactor for the idle timer (injected in tests).
    @param timeout: seconds a client connection may stay idle (slow headers
        or body, keep-alive); never applies to a response being streamed.
    @param maxBody: the request body cap in bytes.
    @return: the site.
    """
    requestFactory = type("LimitedRequest", (LimitedRequest,), {"maxBody": maxBody})
    site = ProxySite(root, requestFactory=requestFactory, timeout=timeout, reactor=reactor)
    return site
