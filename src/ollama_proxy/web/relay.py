# -*- test-case-name: tests.web.test_relay -*-
"""
Moving an upstream body to the client as it arrives.

This is the only module that sees both sides of a stream.  It reads the
upstream body with L{ollama_proxy.upstream.body.readInto}, hands each
socket read to a transform (the hub's pipeline for translated routes, the
identity for passthrough and fallback) and writes the result once per read.
The upstream transport is registered as the client request's push producer,
so a slow client pauses reading from the backend (back-pressure) and a
client that leaves closes the backend connection at once (no tokens burnt
for nobody).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.web.iweb import IResponse
from twisted.web.server import Request
from zope.interface import implementer

from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.ndguard import StreamGuard
from ollama_proxy.upstream.backend import HOP_BY_HOP
from ollama_proxy.upstream.body import readBody, readInto
from ollama_proxy.web.bridge import Exchange


CLIENT_ONLY = frozenset({b"authorization", b"x-api-key", b"accept-encoding"})
"""Client headers that concern the proxy alone: the client's key for the
proxy (either spelling L{ollama_proxy.web.auth.presentedKey} accepts) and the
encodings the client can decode."""


def requestHeaders(request: Request, keep: frozenset[bytes] | None = None) -> dict[bytes, list[bytes]]:
    """
    The client's headers that may travel upstream.

    @param request: the client request.
    @param keep: when given, only these (lower-case) names; otherwise all
        but hop-by-hop and L{CLIENT_ONLY} headers.
    @return: raw headers.
    """
    out: dict[bytes, list[bytes]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        lower = name.lower()
        if keep is not None:
            if lower in keep:
                out[name] = list(values)
        elif lower not in HOP_BY_HOP and lower not in CLIENT_ONLY:
            out[name] = list(values)
    return out


RELAYED_HEADERS = frozenset(
    {
        b"content-type",
        b"retry-after",
        b"x-request-id",
        b"request-id",
        b"openai-processing-ms",
        b"x-litellm-call-id",
        b"openai-version",
        b"cache-control",
        b"content-disposition",
        b"last-modified",
        b"etag",
        b"vary",
    }
)
"""The backend's response headers a relayed answer keeps (besides the
C{x-ratelimit-*} family): what a client acts on (the body's type, when to
retry, which request it was, its rate limits).  Everything else stays
behind: C{Set-Cookie} (browsers share C{localhost} cookies across ports),
C{Server}, hop-by-hop headers, the backend's CORS headers (the proxy's own
policy answers), and whatever a hostile backend invents."""


def relayedHeaders(ex: Exchange, response: IResponse) -> list[tuple[bytes, list[bytes]]]:
    """
    The backend's response headers that may reach the client: the
    L{RELAYED_HEADERS} allow-list and C{x-ratelimit-*}, and of those only
    the values that carry no secret the proxy holds.

    A value is dropped, not rewritten, when it carries a secret in any
    spelling or a prefix of one (L{Redactor.carries}): a header is small
    and a client decodes it (percent-encoding included) as it likes.

    @param ex: the exchange (its redactor knows the secrets).
    @param response: the upstream response.
    @return: raw names and values.
    """
    out = []
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower not in RELAYED_HEADERS and not lower.startswith(b"x-ratelimit-"):
            continue
        secrets = ex.clientKey()
        kept = [value for value in values if not ex.redactor.carries(value, secrets)]
        if kept:
            out.append((name, kept))
    return out


async def relayResponse(
    ex: Exchange, response: IResponse, clock: IReactorTime, idleTimeout: float | None,
    guard: StreamGuard | None = None,
) -> None:
    """
    Send an upstream response to the client: its status, the headers of
    L{relayedHeaders}, and the body as it arrives.  Every byte goes through
    the exchange's outbound filter (L{Exchange.write}), which replaces the
    proxy's secrets, split across reads or JSON-escaped included.

    @param ex: the exchange.
    @param response: the upstream response, body unread.
    @param clock: the upstream's clock.
    @param idleTimeout: seconds of upstream silence before giving up.
    @param guard: for a relayed stream, what watches its texts across
        events or lines (a key a model echoes token by token), before the
        filter.
    """
    request = ex.request
    # The code only: twisted.web writes its own reason phrase, never the
    # backend's (which is upstream text, too).
    request.setResponseCode(response.code)
    for name, values in relayedHeaders(ex, response):
        if name.lower() == b"vary":
            # Added to, not replaced: C{Vary: Origin} is the CORS layer's.
            for value in values:
                request.responseHeaders.addRawHeader(name, value)
        else:
            request.responseHeaders.setRawHeaders(name, values)
    if not 200 <= response.code < 300:
        # An error page is small, and may echo the request's key: read it
        # whole, so that the filter sees it in one piece.
        ex.write(await readBody(response, clock, idleTimeout))
        return
    if guard is None:
        await relayBody(ex, response, ex.write, clock, idleTimeout)
        return
    write, writeRedacted, feed = ex.write, ex.writeRedacted, guard.feed

    def collect(data: bytes) -> None:
        out = feed(data)
        # A clean read the guard searched as the filter would: past it
        # (through it after all while it holds a tail back).
        if guard.certified:
            writeRedacted(out)
        else:
            write(out)

    try:
        await relayBody(ex, response, collect, clock, idleTimeout)
    except BaseException:
        write(guard.end())  # held text first, then the error
        raise
    write(guard.end())


async def relayBody(
    ex: Exchange,
    response: IResponse,
    collector: Callable[[bytes], None],
    clock: IReactorTime,
    idleTimeout: float | None,
) -> None:
    """
    Read an upstream body to its end, passing each read to C{collector},
    with the upstream transport registered as the client's producer.

    @param ex: the exchange whose client receives the body.
    @param response: the upstream response, body unread.
    @param collector: writes (or transforms and writes) one read.
    @param clock: for the idle timer and the per-turn joining.
    @param idleTimeout: seconds of upstream silence before giving up.
    @raise UpstreamError: if the upstream broke, went idle or sent garbage
        (a L{StreamFailed} after the lines translated before it are
        written).
    """
    try:
        # The reader registers the upstream transport itself, before any
        # data is delivered, and unregisters it at the end (no call back
        # into this module per stream).
        await readInto(response, collector, clock, idleTimeout,
                       None if ex.client.gone else ex.request, ex.client)
    except StreamFailed as e:
        if e.output:
            ex.write(e.output)
        raise
