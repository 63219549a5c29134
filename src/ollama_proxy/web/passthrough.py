# -*- test-case-name: tests.web.test_passthrough -*-
"""
OpenAI routes (C{/v1/models}, C{/v1/chat/completions}, ...) relayed to the
backend as they are, with the backend's key and the model name resolved,
so that names from C{/api/tags} work there too.  No translation: the
backend's bytes go to the client as they arrive.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import quote, urlsplit

from twisted.web.iweb import IResponse
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.ndguard import StreamGuard
from ollama_proxy.protocol.redact import Redactor
from ollama_proxy.protocol.relayguard import relayGuard
from ollama_proxy.protocol.responses import ERRORS as OPENAI_ERRORS
from ollama_proxy.protocol.target import QUERY_SAFE, checkPath, reencode
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.budget import chargeParse
from ollama_proxy.web.fleet import send
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.observe import streaming
from ollama_proxy.web.relay import relayResponse, requestHeaders

GENERATING = frozenset({"chat/completions", "completions"})
"""The OpenAI routes that get a model's configured C{extra} fields."""


PASSED_HEADERS = frozenset({b"content-type", b"accept", b"user-agent"})
"""Client headers a relayed OpenAI request takes upstream (the key is the
backend's)."""


async def forwardToBackend(
    ctx: ProxyContext,
    ex: Exchange,
    target: Route | Backend,
    path: str | Callable[[Route], str],
    body: bytes | None | Callable[[Route], bytes | None],
    keep: frozenset[bytes],
    texts: bool = False,
    streamed: bool = False,
    guard: Callable[[Redactor, Iterable[str | None]], StreamGuard | None] = relayGuard,
) -> None:
    """
    Relay the client's request to one of the backend's own routes, with the
    backend's key, and its answer (streamed or not) back as it arrives.

    @param ctx: the shared context.
    @param ex: the exchange.
    @param target: where it goes: a route (balanced over its pool, failing
        over before the first byte) or one backend.
    @param path: the API path below C{/v1} (per member, for a route); the
        client's query is kept.
    @param body: the body to send (the client's, with the model mapped;
        per member, for a route).
    @param keep: the client headers that travel upstream.
    @param texts: whether a streamed answer is an OpenAI stream whose texts
        a client joins across events (then watched across them, see
        L{ollama_proxy.protocol.relayguard}).
    @param streamed: whether the client asked for a stream: its SDK reads
        the answer as SSE whatever content type the backend claims, so the
        texts are watched then too.
    @param guard: makes the watch for the stream's shape (OpenAI chat and
        completions by default; the agent APIs' for a native relay).
    """
    request = ex.request
    query = request.uri.partition(b"?")[2]
    suffix = "?" + reencode(query.decode("latin-1"), QUERY_SAFE) if query else ""
    method = (request.method or b"GET").decode("ascii")
    headers = requestHeaders(request, keep)

    def url(member: Route) -> str:
        url = member.backend.url(path(member) if callable(path) else path) + suffix
        # The last lock before the backend's key goes with it: whatever built
        # the path, no dot segment or encoded slash leaves.
        refused = checkPath(urlsplit(url).path.encode("latin-1"))
        if refused is not None:
            raise BadRequest(refused)
        return url

    def post(member: Route) -> Awaitable[IResponse]:
        backend = member.backend
        data = body(member) if callable(body) else body
        return backend.request(method, url(member), data,
                               backend.headers(headers, clientKey=ex.presented))

    if isinstance(target, Backend):
        target = Route(target.name, target, "")
    url(target)  # a refused path is the client's 400 before any backend is asked
    target, response = await send(ctx, ex, target, post)
    backend = target.backend
    contentType = response.headers.getRawHeaders(b"content-type") or [b""]
    sse = contentType[0].startswith(b"text/event-stream")
    watch = guard(ex.redactor, ex.clientKey()) if texts and (sse or streamed) else None
    if sse:
        with streaming(ctx.metrics):
            await relayResponse(ex, response, backend.reactor, backend.idleTimeout, watch)
    else:
        await relayResponse(ex, response, backend.reactor, backend.idleTimeout, watch)


SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
"""What stays as it is in a path segment re-encoded for upstream (RFC
3986's C{pchar} without C{%}: the segment is already decoded)."""


def segmentPath(segments: list[str]) -> str:
    """
    @param segments: decoded path segments (the client's, or a backend's
        model id split at C{/}).
    @return: them joined with C{/}, each percent-encoded again, so that a
        decoded C{%2f} or C{%} cannot become a separator or an escape.
    """
    return "/".join(quote(s.encode("utf-8", "surrogateescape"), safe=SEGMENT_SAFE)
                    for s in segments)


class Passthrough(ProxyResource):
    """
    An OpenAI route (C{/v1/completions}, C{/v1/chat/completions},
    C{/v1/embeddings}) relayed to the backend as it is, with the configured
    API key, and with C{:proxy} / C{:latest} stripped from C{model} so that
    names from C{/api/tags} work.

    C{POST} only, and no sub-path: with the operator's key, C{GET
    /v1/chat/completions} lists OpenAI's stored completions of everyone on
    that key, and C{/v1/chat/completions/{id}} reads or deletes them.
    Errors are OpenAI's C{{"error": {...}}}, as Ollama's own C{/v1} routes
    answer.
    """

    def __init__(self, ctx: ProxyContext, path: str) -> None:
        super().__init__(ctx)
        self.path = path

    errors = OPENAI_ERRORS
    """OpenAI's error objects before the stream; in a relayed stream, an
    OpenAI error event."""

    async def _forward(self, ex: Exchange) -> Any:
        body = ex.body
        request = ex.request
        postpath = [p.decode("utf-8", "surrogateescape") for p in request.postpath or []]
        path = segmentPath([*self.path.split("/"), *postpath])
        if body:
            chargeParse(ex.request, body)
            # Not JSON: relayed as it is, the backend answers it.  JSON
            # nested too deep: a 400 here, as on every route.
            try:
                decoded = codec.loadsBounded(body)
            except codec.TooDeep as e:
                raise BadRequest(str(e)) from None
            except codec.JSONDecodeError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("model"), str):
                route = await self.route(ex, decoded["model"], decoded)
                generating = self.path in GENERATING
                raw = body

                def bodyFor(member: Route) -> bytes:
                    assert isinstance(decoded, dict)
                    extra = member.override.extra if generating else {}
                    if member.modelId == ex.model and not extra:
                        return raw
                    return codec.dumps({**decoded, **extra, "model": member.modelId})

                await forwardToBackend(self.ctx, ex, route, path, bodyFor, PASSED_HEADERS,
                                       generating, decoded.get("stream") is True)
                return None
        if self.path == "models" and len(self.ctx.models.router.backends) > 1:
            if not postpath:
                # Several backends: their merged list, not the first one's.
                return await self.ctx.models.listModels()
            # GET /v1/models/{id}: ask a backend that has the model.
            route = await self.route(ex, "/".join(postpath))
            await forwardToBackend(
                self.ctx, ex, route,
                lambda member: segmentPath(["models", *member.modelId.split("/")]),
                body or None, PASSED_HEADERS,
            )
            return None
        first = self.ctx.models.router.backends[0]
        ex.backend = first.name
        await forwardToBackend(self.ctx, ex, first.backend, path, body or None, PASSED_HEADERS,
                               self.path in GENERATING)
        return None

    handle_POST = _forward


class Models(Passthrough):
    """
    C{GET /v1/models} and C{GET /v1/models/{id}} (OpenAI's model
    retrieval; an id may contain C{/}, as C{qwen/qwen3-coder} does): the
    one relayed route with a sub-path, and C{GET} (and C{HEAD}) only.
    """

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__(ctx, "models")

    def servesSubPath(self, request: Request) -> bool:
        """
        @return: whether the sub-path is a model id: no empty segment
            (C{/v1/models/}, C{/v1/models//x}).
        """
        return all(request.postpath or [b""])

    handle_GET = Passthrough._forward
    handle_POST = None  # type: ignore[assignment]
