# -*- test-case-name: tests.web.test_anthropic -*-
"""
What the coding-agent dialects (Anthropic Messages, OpenAI Responses) add
to a resource: compressed request bodies, keep-alive events while the
backend is silent, and the common translate-and-answer path.

Claude Code gives up on a stream after about 20 seconds without a byte, and
a local backend can spend minutes evaluating a long prompt before its
first token (or even its response headers).  L{Heartbeat} writes the
dialect's keep-alive event every C{pingInterval} seconds while a streamed
request is in flight; if the backend has not answered yet, the first one
commits the stream (200 and the dialect's opening events), and any later
failure becomes the dialect's mid-stream error instead of an HTTP status.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.blocks import BlockEncoder
from ollama_proxy.protocol.dialect import DONE, Dialect
from ollama_proxy.protocol.requests import ChatRequest
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.bridge import Exchange
from ollama_proxy.web.chat import generate
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.passthrough import forwardToBackend

log = Logger()

NATIVE_HEADERS = frozenset({
    b"content-type", b"accept", b"user-agent", b"anthropic-version", b"anthropic-beta",
})
"""Client headers a native backend gets (its key is the proxy's)."""


class PingingDialect(Dialect, Protocol):
    """
    A dialect whose stream encoder can ping (a block dialect's).
    """

    def streamEncoder(self, model: str, start: int) -> BlockEncoder:
        """
        @return: a fresh encoder for one stream.
        """


def decodedJSON(ctx: ProxyContext, ex: Exchange) -> JSON:
    """
    The request body as a JSON object (a compressed body was decoded by
    L{ollama_proxy.web.bridge.ProxyResource} before the handler ran, as
    on every route).

    @raise ollama_proxy.protocol.errors.ProxyError: 400.
    """
    return ex.json(keep=False)


class Heartbeat:
    """
    Keep-alive events on one streamed request, every C{interval} seconds,
    until L{stop}.
    """

    def __init__(
        self,
        ex: Exchange,
        encoder: BlockEncoder,
        clock: IReactorTime,
        interval: float,
    ) -> None:
        self._ex = ex
        self._encoder = encoder
        self._clock = clock
        self._interval = interval
        self._call: IDelayedCall | None = clock.callLater(interval, self._beat)

    def _beat(self) -> None:
        ex = self._ex
        if ex.client.gone or self._encoder.state is DONE:
            self._call = None
            return
        if not ex.request.startedWriting:
            ex.startEncoded(self._encoder)
        ex.write(self._encoder.ping())
        self._call = self._clock.callLater(self._interval, self._beat)

    def stop(self) -> None:
        """
        No more keep-alives (the reply is complete or failed).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


async def translate(
    ctx: ProxyContext,
    ex: Exchange,
    route: Route,
    request: ChatRequest,
    dialect: PingingDialect,
) -> JSON | None:
    """
    Send a parsed request to the routed backend's chat completions and
    answer in C{dialect}, with keep-alives on a stream.

    @return: the non-streamed object, or C{None} after streaming.
    """
    heartbeat = encoder = None
    if request.stream and ctx.pingInterval > 0:
        # One encoder for the stream: the keep-alives and the reply.
        encoder = dialect.streamEncoder(request.model, ex.start)
        heartbeat = Heartbeat(ex, encoder, route.backend.reactor, ctx.pingInterval)
    try:
        return await generate(ctx, ex, route, request, dialect, encoder)
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def nativeRoute(route: Route, api: str) -> bool:
    """
    @param api: C{"messages"} or C{"responses"}.
    @return: whether the routed backend serves C{api} itself (its
        configuration's C{native} list).
    """
    return api in route.backend.native


async def relayNative(
    ctx: ProxyContext, ex: Exchange, route: Route, api: str, body: JSON
) -> None:
    """
    Relay an agent request to a backend that speaks its API (LiteLLM
    serves both, OpenAI C{/v1/responses}), with the model name mapped and
    the model's C{extra} fields; the answer, streamed or not, goes to the
    client as it arrives.
    """
    backend = route.backend
    body = {**body, **route.override.extra, "model": route.modelId}
    if ctx.debug:
        log.debug("upstream request {url} {body}", url=backend.url(api),
                  body=codec.dumps(body).decode())
    await forwardToBackend(ctx, ex, backend, api, codec.dumps(body), NATIVE_HEADERS)
