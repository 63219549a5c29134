# -*- test-case-name: tests.web.test_fallback -*-
"""
The fallback Ollama: everything the proxy cannot answer itself is relayed
to a real Ollama (method, path, query, headers, body, streamed back); with
none configured, a JSON 404.
"""

from __future__ import annotations

from twisted.web.server import Request

from ollama_proxy.protocol.errors import (
    NotFound,
)
from ollama_proxy.upstream.backend import sendRequest
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.relay import relayResponse, requestHeaders


async def forwardToFallback(ctx: ProxyContext, ex: Exchange) -> None:
    """
    Relay a request to the fallback Ollama as it is (method, path, query,
    headers, body), streaming its answer back.

    @param ctx: the shared context; C{ctx.fallback} must not be C{None}.
    @param ex: the exchange, body already read.
    @raise UpstreamError: if the fallback cannot be reached.
    """
    request = ex.request
    fallback = ctx.fallback
    assert fallback is not None
    path = request.uri.decode("latin-1")
    what = f"the fallback Ollama at {fallback.base}"
    response = await sendRequest(
        fallback.http, fallback.reactor, fallback.headerTimeout,
        (request.method or b"GET").decode("ascii"), fallback.base.rstrip("/") + path,
        ex.body or None, requestHeaders(request), what,
    )
    await relayResponse(ex, response, fallback.reactor, fallback.idleTimeout)


class FallbackResource(ProxyResource):
    """
    Everything the proxy cannot answer: forwarded to a real Ollama (method,
    path, query, headers, body, streamed back).  Without one, a JSON 404.
    """

    def routeLabel(self, request: Request) -> str:
        """
        @return: C{"fallback"}: the paths that end here are whatever
            clients ask for, too many for a label.
        """
        return "fallback"

    decodesBody = False
    """Relayed as it is, C{Content-Encoding} included: the fallback Ollama
    decides what it accepts."""

    async def _forward(self, ex: Exchange) -> None:
        ex.backend = "fallback"
        if self.ctx.fallback is None:
            raise NotFound(f"{ex.request.path.decode('latin-1')} is not served by this proxy")
        await forwardToFallback(self.ctx, ex)

    handle_GET = _forward
    handle_POST = _forward
    handle_DELETE = _forward
    handle_PUT = _forward
    handle_HEAD = _forward
