# -*- test-case-name: tests.web.test_fallback -*-
"""
The fallback Ollama: everything the proxy cannot answer itself is relayed
to a real Ollama (method, path, query, headers, body, streamed back); with
none configured, a JSON 404.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twisted.web.server import Request

from ollama_proxy.protocol.errors import BadRequest, NotFound
from ollama_proxy.protocol.ndguard import SniffedGuard, StreamGuard, ndjsonGuard
from ollama_proxy.protocol.relayguard import relayGuard
from ollama_proxy.protocol.target import QUERY_SAFE, checkTarget, reencode
from ollama_proxy.upstream.backend import sendRequest
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.relay import relayResponse, requestHeaders


def fallbackURL(base: str, target: bytes) -> str:
    """
    The fallback's URL for a client's request-target, built from parts:
    scheme and authority from C{--fallback}, path and query from the
    target (checked again, re-encoded), never by gluing strings, so that
    no target (C{@127.0.0.1:18001/x}, C{//evil/x}) can change where the
    request goes.

    @param base: the C{--fallback} URL (its path, if any, is a prefix).
    @param target: the client's request-target.
    @return: the absolute URL.
    @raise BadRequest: for a target that is not a clean origin-form path
        (the site refuses those before; this is the second lock).
    """
    refused = checkTarget(target)
    if refused is not None:
        raise BadRequest(refused)
    parts = urlsplit(base)
    path, _, query = target.partition(b"?")
    url = urlunsplit((
        parts.scheme,
        parts.netloc,
        parts.path.rstrip("/") + reencode(path.decode("latin-1")),
        reencode(query.decode("latin-1"), QUERY_SAFE),
        "",
    ))
    if urlsplit(url).netloc != parts.netloc:  # pragma: no cover - checked above
        raise BadRequest("the request target would change the fallback's address")
    return url


async def forwardToFallback(ctx: ProxyContext, ex: Exchange) -> None:
    """
    Relay a request to the fallback Ollama as it is (method, path, query,
    headers, body), streaming its answer back, its texts watched across
    lines or events (L{guardFor}).

    @param ctx: the shared context; C{ctx.fallback} must not be C{None}.
    @param ex: the exchange, body already read.
    @raise UpstreamError: if the fallback cannot be reached.
    """
    request = ex.request
    fallback = ctx.fallback
    assert fallback is not None
    what = f"the fallback Ollama at {fallback.base}"
    response = await sendRequest(
        fallback.http, fallback.reactor, fallback.headerTimeout,
        (request.method or b"GET").decode("ascii"), fallbackURL(fallback.base, request.uri),
        ex.body or None, requestHeaders(request), what,
    )
    contentType = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
    await relayResponse(ex, response, fallback.reactor, fallback.idleTimeout,
                        guardFor(ex, contentType))


def guardFor(ex: Exchange, contentType: bytes) -> StreamGuard | None:
    """
    The guard for a fallback's answer: the fallback may be the backend's
    own host (it knows the backend's key) and may answer any path, so what
    a client joins across its lines or events is watched, whatever the
    path.  An SSE answer gets the relayed OpenAI routes' guard (an OpenAI
    client on a path the fallback serves), by its content type or, as an
    SDK reads SSE whatever the type says, by its first bytes; anything else
    is read as Ollama NDJSON (Ollama's clients read lines whatever the
    content type; a body that is one JSON object is one line).

    @param ex: the exchange (its redactor knows the secrets).
    @param contentType: the answer's C{Content-Type}.
    @return: the guard, or C{None} when there is no secret to look for.
    """
    sse = relayGuard(ex.redactor, ex.clientKey())
    if sse is None or contentType.lower().startswith(b"text/event-stream"):
        return sse
    ndjson = ndjsonGuard(ex.redactor, ex.clientKey())
    assert ndjson is not None  # the same secrets
    return SniffedGuard(ndjson, sse)


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

    def servesSubPath(self, request: Request) -> bool:
        """
        @return: C{True}: whatever path reached the fallback is Ollama's to
            answer (the site already refused dot segments and encoded
            slashes; the fallback gets no backend key).
        """
        return True

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
