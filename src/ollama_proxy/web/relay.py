# -*- test-case-name: tests.web.test_relay -*-
"""
Moving an upstream body to the client as it arrives.

This is the only module that sees both sides of a stream.  It reads the
upstream body with L{ollama_proxy.upstream.body.BodyReader}, hands each
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

from ollama_proxy.protocol.errors import StreamFailed
from ollama_proxy.upstream.backend import HOP_BY_HOP
from ollama_proxy.upstream.body import BodyReader, readBody
from ollama_proxy.web.bridge import Exchange


@implementer(IPushProducer)
class _IdlePausingProducer:
    """
    The upstream transport as the client request's producer, telling the
    idle timer when the client pauses and resumes the stream, so a slow
    client is never reported as a silent backend.
    """

    def __init__(
        self, producer: IPushProducer, paused: Callable[[], None], resumed: Callable[[], None]
    ) -> None:
        self._producer = producer
        self._paused = paused
        self._resumed = resumed

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()
        self._paused()

    def resumeProducing(self) -> None:
        self._producer.resumeProducing()
        self._resumed()

    def stopProducing(self) -> None:
        self._producer.stopProducing()


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


async def relayResponse(
    ex: Exchange, response: IResponse, clock: IReactorTime, idleTimeout: float | None
) -> None:
    """
    Send an upstream response to the client as it is: status, end-to-end
    headers (but not the upstream's CORS headers, and its C{Vary} added to
    the proxy's), and the body as it arrives.

    @param ex: the exchange.
    @param response: the upstream response, body unread.
    @param clock: the upstream's clock.
    @param idleTimeout: seconds of upstream silence before giving up.
    """
    request = ex.request
    request.setResponseCode(response.code)
    for name, values in response.headers.getAllRawHeaders():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == b"content-encoding":
            continue
        if lower.startswith(b"access-control-"):
            # The proxy's CORS policy (L{CORSResource}) answers for the
            # proxy; an upstream's own (say C{*}) must not widen it.
            continue
        if lower == b"vary":
            # Added to, not replaced: C{Vary: Origin} is the CORS layer's.
            for value in values:
                request.responseHeaders.addRawHeader(name, value)
            continue
        request.responseHeaders.setRawHeaders(name, values)
    if not 200 <= response.code < 300:
        # An error page is small, and may echo the request's key: read it
        # whole (a secret split across reads would escape a per-read
        # replacement) and redact it.
        ex.write(ex.redactData(await readBody(response, clock, idleTimeout)))
        return
    redacting = ex.redactStream()
    if redacting is None:
        await relayBody(ex, response, ex.write, clock, idleTimeout)
        return
    # A 2xx stream may carry an error event that quotes a key, too.
    feed, write = redacting.feed, ex.write

    def collect(data: bytes) -> None:
        write(feed(data))

    await relayBody(ex, response, collect, clock, idleTimeout)
    ex.write(redacting.end())


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
    reader = BodyReader(collector, clock, idleTimeout, isGone=lambda: ex.client.gone)
    registered = False

    def started(producer: IPushProducer) -> None:
        nonlocal registered
        if not ex.client.gone:
            ex.request.registerProducer(
                _IdlePausingProducer(producer, reader.pauseIdle, reader.resumeIdle), True
            )
            registered = True

    try:
        await reader.read(response, started)
    except StreamFailed as e:
        if e.output and not ex.client.gone:
            ex.request.write(e.output)
        raise
    finally:
        if registered and not ex.client.gone:
            ex.request.unregisterProducer()
