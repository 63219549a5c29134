# -*- test-case-name: tests.test_resources -*-
"""
The C{twisted.web} resource tree: one class per endpoint, one async bridge,
one error funnel.

Handlers are coroutines that receive an L{Exchange} and either return a
JSON-compatible value (sent as C{application/json}), return C{None} after
streaming the body themselves, or raise a L{ProxyError}.  L{ProxyResource}
turns all of that into HTTP: statuses and C{{"error": ...}} bodies before the
first byte, an NDJSON error line after it (an SSE error event in a relayed
OpenAI stream), cancellation when the client leaves, and one log line per
request.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.iweb import IResponse
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy import codec
from ollama_proxy.auth import clientKey, presentedKey
from ollama_proxy.catalog import (
    ModelCatalog,
    ModelMeta,
    buildCatalog,
    findModel,
    psResponse,
    showResponse,
)
from ollama_proxy.completions import (
    CompletionStreamTranslator,
    completionAsChat,
    completionRequestToOpenAI,
    wantsCompletion,
)
from ollama_proxy.cors import CORSResource, OriginPolicy
from ollama_proxy.embeddings import (
    dimensionsValue,
    embedInputs,
    embedRequestToOpenAI,
    embedResponse,
    emptyEmbedResponse,
    legacyPrompt,
    vectorsFromOpenAI,
)
from ollama_proxy.config import CAPABILITIES, ModelOverride
from ollama_proxy.errors import (
    BadRequest,
    NotFound,
    ProxyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from ollama_proxy.metrics import OTHER, Metrics
from ollama_proxy.models import Route, Router, applyExtra, applyOverride
from ollama_proxy.relay import ClientState, consume
from ollama_proxy.sse import DEFAULT_MAX_LINE_LENGTH
from ollama_proxy.translate import (
    JSON,
    Clock,
    Kind,
    NDJSONStream,
    StreamTranslator,
    backendModel,
    chatRequestToOpenAI,
    formatTimestamp,
    generateRequestToOpenAI,
    modelIds,
    requireModel,
    requireObject,
    responseFromOpenAI,
    streamFlag,
    tagsFromModels,
    thinkValue,
    wallClock,
    withoutRejectedExtras,
)
from ollama_proxy.upstream import (
    HOP_BY_HOP,
    Backend,
    HTTPClient,
    failureToError,
    readJSON,
    redactHeaders,
)

NDJSON = b"application/x-ndjson"
JSON_TYPE = b"application/json; charset=utf-8"
DEFAULT_VERSION = "0.13.5"
"""What C{/api/version} reports: a current-looking Ollama release (Copilot
refuses anything below 0.6.4)."""


@attrs.define
class Fallback:
    """
    A real Ollama that receives what the proxy cannot answer itself.

    @ivar http: the treq-style client.
    @ivar base: its base URL, e.g. C{http://127.0.0.1:11505}.
    """

    http: HTTPClient
    base: str


@attrs.define
class ProxyContext:
    """
    Everything the resources share, injected once by L{buildRoot}.

    @ivar backend: the OpenAI-compatible server.
    @ivar clock: the reactor's clock, for timers.
    @ivar now: wall-clock nanoseconds, for Ollama's timestamps and durations.
    @ivar fallback: the Ollama for unknown paths, or C{None}.
    @ivar tag: the suffix added to untagged model ids.
    @ivar debug: whether to log payloads and chunks.
    @ivar idleTimeout: seconds of upstream silence before a stream is given up.
    @ivar maxLineLength: the SSE line cap.
    @ivar version: what C{/api/version} reports.
    @ivar knownIds: the backend's model ids as last listed, used to resolve
        names; C{None} until the first listing.
    @ivar catalog: the cached model metadata behind C{/api/show},
        C{/api/ps} and the management routes; by default reused for a
        minute, timed by C{clock}.
    @ivar corsOrigins: origin globs allowed in addition to Ollama's
        built-in list.
    @ivar router: maps model names to backends; by default one built around
        C{backend} alone, listing its models on every C{/api/tags} (no
        cache), as the seed did.
    @ivar metrics: the Prometheus metrics, or C{None} for none (and no
        C{/metrics}).
    """

    backend: Backend
    clock: IReactorTime
    now: Clock = wallClock
    fallback: Fallback | None = None
    tag: str = "proxy"
    debug: bool = False
    idleTimeout: float | None = 300.0
    maxLineLength: int = DEFAULT_MAX_LINE_LENGTH
    version: str = DEFAULT_VERSION
    knownIds: set[str] | None = None
    catalog: ModelCatalog = attrs.field(
        default=attrs.Factory(lambda self: ModelCatalog(self.clock.seconds), takes_self=True)
    )
    corsOrigins: tuple[str, ...] = ()
    router: Router = attrs.field(default=None)
    metrics: Metrics | None = None

    def __attrs_post_init__(self) -> None:
        if self.router is None:
            self.router = Router.single(self.backend, self.clock, ttl=0.0, tag=self.tag)
        if self.metrics is not None:
            for entry in self.router.backends:
                if entry.backend.onResponse is None:
                    entry.backend.onResponse = self._observeUpstream

    async def route(self, ex: Exchange, name: str) -> Route:
        """
        Choose the backend for a request and note it on the exchange (for
        the log line and the metrics).

        @param ex: the exchange.
        @param name: the client's model name.
        @return: the route.
        @raise ProxyError: when no backend offers the name.
        """
        ex.model = name
        ex.modelLabel = OTHER
        route = await self.router.route(name)
        ex.backend = route.name
        ex.modelLabel = route.modelId if route.known else OTHER
        return route

    @contextmanager
    def streaming(self) -> Iterator[None]:
        """
        Count a response being streamed in the C{active_streams} gauge.
        """
        if self.metrics is None:
            yield
            return
        self.metrics.activeStreams.inc()
        try:
            yield
        finally:
            self.metrics.activeStreams.dec()

    def _observeUpstream(self, backend: str, seconds: float) -> None:
        """
        Record the time an upstream took to send its response headers.
        """
        if self.metrics is not None:
            self.metrics.upstreamLatency.labels(backend).observe(seconds)

    def resolve(self, name: str) -> str:
        """
        @param name: a client's model name.
        @return: the backend id for it.
        """
        return backendModel(name, self.knownIds, self.tag)

    async def listModels(self) -> Any:
        """
        Every backend's models (each list cached per C{--models-ttl}),
        merged in configuration order, aliases included, in the shape of an
        OpenAI C{/v1/models} body.

        @return: C{{"object": "list", "data": [...]}}.
        @raise ProxyError: when no backend can be listed.
        """
        merged = await self.router.models()
        models = {"object": "list", "data": [entry for _, entry in merged]}
        self.knownIds = set(modelIds(models))
        return models

    async def models(self) -> dict[str, ModelMeta]:
        """
        The served models with their metadata, from the cache when fresh.

        @return: metadata per backend id.
        @raise ProxyError: if the backend's model list cannot be fetched.
        """
        return await self.catalog.get(self._fetchCatalog)

    async def served(self, name: str) -> ModelMeta | None:
        """
        @param name: a client's model name.
        @return: the model's metadata if the backend serves it, else C{None}.
        """
        return findModel(await self.models(), name, self.tag)

    async def _fetchCatalog(self) -> dict[str, ModelMeta]:
        """
        Fetch the merged model list, then each backend's LiteLLM
        C{/v1/model/info} (any failure of the latter just means "not
        LiteLLM"), and merge them with the overrides: the C{--model-info}
        file, then the configuration file's per-model C{context_length} and
        C{capabilities}.  An alias gets the metadata of its model.

        @return: a fresh catalog.
        """
        merged = await self.router.models()
        models = {"object": "list", "data": [entry for _, entry in merged]}
        self.knownIds = set(modelIds(models))
        # Asked of every backend at once, and only of those that just
        # listed their models: one that is down would cost a connect
        # timeout for nothing.
        asks = [
            Deferred.fromCoroutine(candidate.backend.getJSON("model/info"))
            for candidate in self.router.backends
            if candidate.config.discover and candidate.cache.error is None
            and candidate.cache.entries is not None
        ]
        infos: list[Any] = []
        for ask in asks:
            try:
                infos.append(await ask)
            except ProxyError:
                pass
        info: Any = None
        if infos:
            info = {"data": [item for one in infos if isinstance(one, dict)
                             and isinstance(one.get("data"), list) for item in one["data"]]}
        overrides = dict(self.catalog.overrides)
        for backend, entry in merged:
            target = entry.get("alias_of", entry["id"])
            facts = overrideFacts(backend.config.override(str(target)))
            if facts:
                overrides[entry["id"]] = {**overrides.get(entry["id"], {}), **facts}
        catalog = buildCatalog(models, info, overrides)
        for backend, entry in merged:
            target = entry.get("alias_of")
            if target is not None and target in catalog:
                catalog[entry["id"]] = ModelMeta(
                    entry["id"], {**catalog[target].facts, **overrides.get(entry["id"], {})}
                )
        return catalog


@attrs.define
class Exchange:
    """
    One client request in flight.

    @ivar request: the twisted.web request.
    @ivar body: the request body, read before the first C{await}.
    @ivar start: arrival time in ns (from L{ProxyContext.now}).
    @ivar client: whether the client is still connected.
    @ivar model: the model named by the request, for the log line.
    @ivar backend: the name of the backend it went to.
    @ivar modelLabel: the model's metrics label: a model some backend offers,
        C{"other"} for any other name (so that clients cannot create label
        values at will), empty for requests that name no model.
    @ivar tokensIn: prompt tokens reported by the backend.
    @ivar tokensOut: completion tokens reported by the backend.
    @ivar firstToken: ns from arrival to the first generated token (streams).
    """

    request: Request
    body: bytes
    start: int
    client: ClientState
    model: str | None = None
    backend: str | None = None
    modelLabel: str = ""
    tokensIn: int | None = None
    tokensOut: int | None = None
    firstToken: int | None = None

    def noteFinal(self, final: Any) -> None:
        """
        Take the token counts from the final Ollama object of a response.

        @param final: the C{done: true} object.
        """
        if not isinstance(final, dict):
            return
        if isinstance(final.get("prompt_eval_count"), int):
            self.tokensIn = final["prompt_eval_count"]
        if isinstance(final.get("eval_count"), int):
            self.tokensOut = final["eval_count"]

    def json(self) -> JSON:
        """
        Decode the body as a JSON object.

        @return: the object.
        @raise BadRequest: for an empty, malformed or non-object body.
        """
        if not self.body.strip():
            raise BadRequest("missing request body")
        try:
            decoded = codec.loads(self.body)
        except codec.JSONDecodeError as e:
            raise BadRequest(f"invalid JSON in request body: {e}") from None
        return requireObject(decoded)

    def startStream(self, contentType: bytes = NDJSON) -> None:
        """
        Send a 200 with C{contentType}; the body follows in pieces.

        @param contentType: the media type of the stream.
        """
        self.request.setResponseCode(200)
        self.request.setHeader(b"Content-Type", contentType)

    def write(self, data: bytes) -> None:
        """
        Write to the client if it is still there.

        @param data: bytes of the body.
        """
        if data and not self.client.gone:
            self.request.write(data)


Handler = Callable[[Exchange], Awaitable[Any]]


def jsonError(request: Request, status: int, message: str) -> bytes:
    """
    Prepare an Ollama-style error response.

    @param request: the request to answer.
    @param status: the HTTP status.
    @param message: the C{error} text.
    @return: the body to write.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    return codec.dumps({"error": message})


class ProxyResource(Resource):
    """
    Base class for the endpoints: the async bridge and the error funnel.

    Subclasses define C{async def handle_GET(self, ex)} (and C{POST}, ...).
    C{HEAD} uses C{handle_GET}; twisted.web drops the body.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__()
        self.ctx = ctx

    def _handler(self, method: str) -> Handler | None:
        handler = getattr(self, "handle_" + method, None)
        if handler is None and method == "HEAD":
            handler = getattr(self, "handle_GET", None)
        return handler

    def render(self, request: Request) -> Any:  # type: ignore[override]
        """
        Start the handler coroutine and return C{NOT_DONE_YET}.

        The body is read synchronously: twisted.web closes it when the client
        disconnects.  A disconnect cancels the coroutine, which closes the
        upstream connection.
        """
        method = (request.method or b"GET").decode("ascii", "replace")
        handler = self._handler(method)
        if handler is None:
            allowed = sorted(
                name[len("handle_") :] for name in dir(self) if name.startswith("handle_")
            )
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            return jsonError(request, 405, f"method {method} not allowed")
        body = request.content.read() if request.content is not None else b""
        ex = Exchange(request, body, self.ctx.now(), ClientState(request))
        if self.ctx.debug:
            self.log.debug(
                "request {method} {uri} headers={headers} body={body}",
                method=method,
                uri=request.uri.decode("latin-1"),
                headers=redactHeaders(
                    {k: list(v) for k, v in request.requestHeaders.getAllRawHeaders()}
                ),
                body=body[:4096].decode("utf-8", "replace"),
            )
        d = Deferred.fromCoroutine(self._run(handler, ex))
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return NOT_DONE_YET

    async def _run(self, handler: Handler, ex: Exchange) -> None:
        """
        Run C{handler} and turn its outcome into a response.

        @param handler: the bound C{handle_*} method.
        @param ex: the exchange.
        """
        request = ex.request
        # This coroutine runs in its own copy of the context, so the key is
        # seen only by this request's upstream calls.
        clientKey.set(presentedKey(request))
        try:
            result = await handler(ex)
            if result is not None and not ex.client.gone:
                request.setHeader(b"Content-Type", JSON_TYPE)
                request.write(codec.dumps(result))
        except CancelledError:
            pass
        except ProxyError as e:
            # A client that leaves before the response headers cancels the
            # upstream request, which then fails with a "timeout" of its
            # own making: not an upstream error.
            if (
                isinstance(e, UpstreamError)
                and self.ctx.metrics is not None
                and not ex.client.gone
            ):
                kind = upstreamErrorKind(e, bool(request.startedWriting))
                self.ctx.metrics.upstreamErrors.labels(ex.backend or "-", kind).inc()
            self._fail(ex, e.status, e.message)
        except Exception:
            self.log.failure("unexpected error handling {uri}", uri=request.uri)
            self._fail(ex, 500, "internal proxy error; see the proxy log")
        finally:
            if not ex.client.gone:
                request.finish()
            self._logRequest(ex)

    def _fail(self, ex: Exchange, status: int, message: str) -> None:
        """
        Report an error in the only way still possible.

        @param ex: the exchange.
        @param status: the status to use if nothing was sent yet.
        @param message: the error text.
        """
        if ex.client.gone:
            return
        request = ex.request
        if request.startedWriting:
            contentType = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
            if contentType[0].startswith(b"text/event-stream"):
                # A relayed OpenAI stream: an error event, as Ollama's own
                # /v1 routes send it (OpenAI SDKs raise on it), after a
                # blank line that ends any event the backend left unfinished.
                error = {"message": message, "type": "api_error", "param": None, "code": None}
                request.write(b"\n\ndata: " + codec.dumps({"error": error}) + b"\n\n")
                return
            # Mid-stream: Ollama ends the NDJSON with an error line, never a
            # fake done:true.
            request.write(codec.dumpLine({"error": message}))
        else:
            request.write(jsonError(request, status, message))

    def routeLabel(self, request: Request) -> str:
        """
        @param request: the request this resource serves.
        @return: the route for logs and metrics: the resource's own path
            (not the client's, which may carry anything after it).
        """
        return "/" + "/".join(p.decode("latin-1") for p in request.prepath or [])

    def _logRequest(self, ex: Exchange) -> None:
        """
        One info line per request, without bodies or secrets, and the
        request metrics.  The fields are also event keys, so that a JSON log
        (L{ollama_proxy.logging}) carries them as values.

        @param ex: the finished exchange.
        """
        request = ex.request
        route = self.routeLabel(request)
        durationMs = (self.ctx.now() - ex.start) / 1e6
        ttftMs = ex.firstToken / 1e6 if ex.firstToken is not None else None
        gone = bool(ex.client.gone and not request.finished)
        self.log.info(
            "{method} {path} model={model} status={status} backend={backend} "
            "tokens={tokens} ttft={ttft} duration={duration_ms:.1f}ms{gone}",
            method=(request.method or b"").decode("ascii", "replace"),
            path=request.path.decode("latin-1"),
            route=route,
            model=ex.model or "-",
            backend=ex.backend or "-",
            status=request.code,
            tokens=f"{ex.tokensIn}/{ex.tokensOut}" if ex.tokensIn is not None else "-",
            tokens_in=ex.tokensIn,
            tokens_out=ex.tokensOut,
            ttft=f"{ttftMs:.1f}ms" if ttftMs is not None else "-",
            ttft_ms=ttftMs,
            duration_ms=durationMs,
            client_gone=gone,
            gone=" (client disconnected)" if gone else "",
        )
        metrics = self.ctx.metrics
        if metrics is None:
            return
        status = "499" if gone else str(request.code)
        metrics.requests.labels(route, ex.modelLabel, status).inc()
        metrics.requestDuration.labels(route).observe(durationMs / 1000)
        backend = ex.backend or "-"
        if ex.tokensIn:
            metrics.tokens.labels(backend, ex.modelLabel, "in").inc(ex.tokensIn)
        if ex.tokensOut:
            metrics.tokens.labels(backend, ex.modelLabel, "out").inc(ex.tokensOut)
        if ex.firstToken is not None:
            metrics.firstToken.labels(backend, ex.modelLabel).observe(ex.firstToken / 1e9)


def upstreamErrorKind(error: UpstreamError, midStream: bool) -> str:
    """
    The C{kind} label of an upstream failure.

    @param error: the error.
    @param midStream: whether the client had already received bytes.
    @return: C{stream}, C{timeout}, C{http_4xx}, C{http_5xx}, C{connection}
        or C{protocol} (the backend answered something unusable).
    """
    if midStream:
        return "stream"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamHTTPError):
        return "http_4xx" if error.status < 500 else "http_5xx"
    if isinstance(error, UpstreamConnectError):
        return "connection"
    return "protocol"


def overrideFacts(override: ModelOverride) -> dict[str, Any]:
    """
    The catalog facts (L{ollama_proxy.catalog.Facts}) of a configuration
    file's per-model override.

    @param override: the model's settings.
    @return: C{context_length} and the capability flags it sets.
    """
    facts: dict[str, Any] = {}
    if override.contextLength is not None:
        facts["context_length"] = override.contextLength
    if override.capabilities is not None:
        for flag in sorted(CAPABILITIES - {"completion"}):
            facts[flag] = flag in override.capabilities
    return facts


class Root(ProxyResource):
    """
    C{/}: Ollama's health check (C{Ollama is running}); unknown children go
    to the fallback.
    """

    isLeaf = False

    def __init__(self, ctx: ProxyContext, fallback: IResource) -> None:
        super().__init__(ctx)
        self.fallback = fallback

    def getChild(self, path: bytes, request: Request) -> IResource:  # type: ignore[override]
        """
        Anything not registered goes to the fallback.
        """
        if path == b"":
            return self
        return self.fallback

    def routeLabel(self, request: Request) -> str:
        """
        @return: C{"/"}, however many empty segments (C{//}, C{///}) led
            here: the client's count of slashes is no label value.
        """
        return "/"

    async def handle_GET(self, ex: Exchange) -> None:
        """
        @return: nothing; writes C{Ollama is running} as text.
        """
        ex.request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        ex.write(b"Ollama is running")


class Directory(Resource):
    """
    A path segment such as C{/api} or C{/v1}: registered children are served,
    everything else (and the directory itself) goes to the fallback.
    """

    def __init__(self, fallback: IResource) -> None:
        super().__init__()
        self.fallback = fallback

    def getChild(self, path: bytes, request: Request) -> IResource:  # type: ignore[override]
        return self.fallback

    def render(self, request: Request) -> Any:  # type: ignore[override]
        return self.fallback.render(request)


CLIENT_ONLY = frozenset({b"authorization", b"x-api-key", b"accept-encoding"})
"""Client headers that concern the proxy alone: the client's key for the
proxy (either spelling L{ollama_proxy.auth.presentedKey} accepts) and the
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


async def relayResponse(ctx: ProxyContext, ex: Exchange, response: Any) -> None:
    """
    Send an upstream response to the client as it is: status, end-to-end
    headers (but not the upstream's CORS headers, and its C{Vary} added to
    the proxy's), and the body as it arrives.

    @param ctx: the shared context.
    @param ex: the exchange.
    @param response: the upstream response, body unread.
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
    await consume(response, ex.write, ctx.clock, ctx.idleTimeout, ex.client)


GENERATING = frozenset({"chat/completions", "completions"})
"""The OpenAI routes that get a model's configured C{extra} fields."""


class Passthrough(ProxyResource):
    """
    An OpenAI route (C{/v1/models}, C{/v1/chat/completions}, ...) relayed to
    the backend as it is, with the configured API key, and with C{:proxy} /
    C{:latest} stripped from C{model} so that names from C{/api/tags} work.
    """

    def __init__(self, ctx: ProxyContext, path: str) -> None:
        super().__init__(ctx)
        self.path = path

    async def _forward(self, ex: Exchange) -> Any:
        body = ex.body
        backend: Backend | None = None
        if body:
            try:
                decoded = codec.loads(body)
            except codec.JSONDecodeError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("model"), str):
                route = await self.ctx.route(ex, decoded["model"])
                backend = route.backend
                extra = route.override.extra if self.path in GENERATING else {}
                if route.modelId != ex.model or extra:
                    decoded.update(extra)
                    decoded["model"] = route.modelId
                    body = codec.dumps(decoded)
        request = ex.request
        postpath = [p.decode("latin-1") for p in request.postpath or []]
        if backend is None:
            if self.path == "models" and len(self.ctx.router.backends) > 1:
                if not postpath:
                    # Several backends: their merged list, not the first one's.
                    return await self.ctx.listModels()
                # GET /v1/models/{id}: ask the backend that has the model.
                route = await self.ctx.route(ex, "/".join(postpath))
                backend, postpath = route.backend, [route.modelId]
            else:
                first = self.ctx.router.backends[0]
                backend, ex.backend = first.backend, first.name
        url = backend.url("/".join([self.path, *postpath]))
        query = request.uri.partition(b"?")[2]
        if query:
            url += "?" + query.decode("latin-1")
        headers = backend.headers(
            requestHeaders(request, frozenset({b"content-type", b"accept", b"user-agent"}))
        )
        response = await backend.request(
            (request.method or b"GET").decode("ascii"), url, body or None, headers
        )
        contentType = response.headers.getRawHeaders(b"content-type") or [b""]
        if contentType[0].startswith(b"text/event-stream"):
            with self.ctx.streaming():
                await relayResponse(self.ctx, ex, response)
        else:
            await relayResponse(self.ctx, ex, response)
        return None

    handle_GET = _forward
    handle_POST = _forward


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
    try:
        response = await fallback.http.request(
            (request.method or b"GET").decode("ascii"),
            fallback.base.rstrip("/") + path,
            data=ex.body or None,
            headers=requestHeaders(request),
            unbuffered=True,
            reactor=ctx.clock,
            timeout=ctx.backend.headerTimeout,
        )
    except CancelledError:
        raise
    except Exception as e:
        raise failureToError(e, what) from None
    await relayResponse(ctx, ex, response)


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


class Tags(ProxyResource):
    """
    C{GET /api/tags}: the backend's C{/v1/models} in Ollama's list shape.
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        models = await self.ctx.listModels()
        tags = tagsFromModels(models, self.ctx.now(), self.ctx.tag)
        # Backend ids "x" and "x:proxy" would both be listed as "x:proxy":
        # list each name once.
        seen: set[str] = set()
        unique = []
        for entry in tags["models"]:
            if entry["name"] not in seen:
                seen.add(entry["name"])
                unique.append(entry)
        tags["models"] = unique
        return tags


class Version(ProxyResource):
    """
    C{GET /api/version}: a dotted version clients accept.
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        return {"version": self.ctx.version}


def loadResponse(model: str, kind: Kind, unload: bool, nowNs: int) -> JSON:
    """
    Ollama's reply to a request with nothing to generate (it loads or unloads
    the model); clients use it as a warm-up and rely on C{done_reason}.

    @param model: the client's model name.
    @param kind: C{"chat"} or C{"generate"}.
    @param unload: whether C{keep_alive} was 0.
    @param nowNs: the timestamp.
    @return: the C{done: true} object.
    """
    result: JSON = {"model": model, "created_at": formatTimestamp(nowNs)}
    if kind == "chat":
        result["message"] = {"role": "assistant", "content": ""}
    else:
        result["response"] = ""
    result["done"] = True
    result["done_reason"] = "unload" if unload else "load"
    return result


def isJSONResponse(response: Any) -> bool:
    """
    @param response: an upstream response.
    @return: whether its C{Content-Type} is JSON (rather than an event
        stream).
    """
    values = response.headers.getRawHeaders(b"content-type") or [b""]
    return bool(values[0].split(b";")[0].strip().lower() == b"application/json")


class Completion(ProxyResource):
    """
    C{POST /api/chat} and C{POST /api/generate}: translated to
    C{/v1/chat/completions}, streamed back as NDJSON by default.
    """

    log = Logger()

    def __init__(self, ctx: ProxyContext, kind: Kind) -> None:
        super().__init__(ctx)
        self.kind = kind

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        stream = streamFlag(body)
        think = thinkValue(body)
        route = await self.ctx.route(ex, model)
        body = applyOverride(body, route.override)
        backendId = route.modelId
        flavor = route.backend.flavor
        if self.kind == "chat":
            if not body.get("messages"):
                return loadResponse(model, "chat", body.get("keep_alive") == 0, self.ctx.now())
            upstreamBody = chatRequestToOpenAI(body, backendId, stream, flavor)
        else:
            if not body.get("prompt") and not body.get("images"):
                return loadResponse(
                    model, "generate", body.get("keep_alive") == 0, self.ctx.now()
                )
            if wantsCompletion(body):
                return await self._textCompletion(ex, body, model, route, stream)
            upstreamBody = generateRequestToOpenAI(body, backendId, stream, flavor)
        applyExtra(upstreamBody, route.override)
        if self.ctx.debug:
            self.log.debug("upstream request {body}", body=codec.dumps(upstreamBody).decode())
        response = await self._post(route.backend, "chat/completions", upstreamBody)
        if not stream:
            completion = await readJSON(response, self.ctx.clock, self.ctx.idleTimeout)
            result = responseFromOpenAI(
                completion, model, self.kind, ex.start, self.ctx.now(), think is False
            )
            ex.noteFinal(result)
            return result
        if isJSONResponse(response):
            # A backend that ignores "stream": true (some gateways do) sends
            # one chat.completion; it becomes a single done:true line.
            completion = await readJSON(response, self.ctx.clock, self.ctx.idleTimeout)
            result = responseFromOpenAI(
                completion, model, self.kind, ex.start, self.ctx.now(), think is False
            )
            ex.noteFinal(result)
            ex.startStream()
            ex.write(codec.dumpLine(result))
            return None
        with self.ctx.streaming():
            await self._stream(ex, response, model, think)
        return None

    async def _stream(self, ex: Exchange, response: Any, model: str, think: Any) -> None:
        """
        Relay a streamed chat completion as NDJSON.

        @param ex: the exchange.
        @param response: the upstream response, body unread.
        @param model: the client's model name.
        @param think: the client's C{think} value.
        """
        translator = StreamTranslator(
            model, self.kind, ex.start, self.ctx.now, dropThinking=think is False
        )
        pipeline = NDJSONStream(translator, self.ctx.maxLineLength)
        ex.startStream()
        if self.ctx.debug:
            await consume(
                response, self._debugWriter(ex, pipeline), self.ctx.clock,
                self.ctx.idleTimeout, ex.client,
            )
        else:
            await consume(
                response, lambda data: ex.write(pipeline.feed(data)), self.ctx.clock,
                self.ctx.idleTimeout, ex.client,
            )
        tail = pipeline.end()
        if self.ctx.debug:
            self.log.debug("translated {lines}", lines=tail.decode("utf-8", "replace"))
        ex.write(tail)
        noteStreamEnd(ex, tail)

    async def _post(self, backend: Backend, path: str, upstreamBody: JSON) -> IResponse:
        """
        POST to the backend; if it refuses the sampling extras by name, once
        more without them (see L{withoutRejectedExtras}).

        @param backend: the routed backend.
        @param path: the API path below C{/v1}.
        @param upstreamBody: the translated request.
        @return: a 2xx response, body unread.
        @raise UpstreamHTTPError: for any other non-2xx answer.
        """
        try:
            return await backend.postJSON(path, upstreamBody)
        except UpstreamHTTPError as e:
            retryBody = withoutRejectedExtras(upstreamBody, e.status, e.message)
            if retryBody is None:
                raise
            self.log.info(
                "backend rejected sampling extras ({error}); retrying without them",
                error=e.message,
            )
            return await backend.postJSON(path, retryBody)

    async def _textCompletion(
        self, ex: Exchange, body: JSON, model: str, route: Route, stream: bool
    ) -> JSON | None:
        """
        C{/api/generate} with C{raw} or C{suffix}: sent to C{/v1/completions}.

        A backend without that route (404/405/501) gets a raw prompt as a
        one-turn chat instead; a C{suffix} cannot be expressed as a chat, so
        then the backend's error is returned.

        @return: the generate object, or C{None} after streaming.
        """
        backend = route.backend
        backendId = route.modelId
        flavor = backend.flavor
        upstreamBody = applyExtra(
            completionRequestToOpenAI(body, backendId, stream, flavor), route.override
        )
        if self.ctx.debug:
            self.log.debug("upstream request {body}", body=codec.dumps(upstreamBody).decode())
        thinkTags = False  # raw text and code: a leading <think> is the user's
        try:
            response = await self._post(backend, "completions", upstreamBody)
        except UpstreamHTTPError as e:
            if e.status not in (404, 405, 501) or body.get("suffix"):
                raise
            self.log.info(
                "backend refused /v1/completions ({status}); sending the raw prompt as a chat",
                status=e.status,
            )
            chatBody = {k: v for k, v in body.items() if k != "raw"}
            response = await self._post(
                backend,
                "chat/completions",
                applyExtra(
                    generateRequestToOpenAI(chatBody, backendId, stream, flavor), route.override
                ),
            )
            translator = StreamTranslator(model, "generate", ex.start, self.ctx.now)
            thinkTags = True
        else:
            translator = CompletionStreamTranslator(model, ex.start, self.ctx.now)
        if not stream:
            completion = completionAsChat(
                await readJSON(response, self.ctx.clock, self.ctx.idleTimeout)
            )
            result = responseFromOpenAI(
                completion, model, "generate", ex.start, self.ctx.now(), thinkTags=thinkTags
            )
            ex.noteFinal(result)
            return result
        pipeline = NDJSONStream(translator, self.ctx.maxLineLength)
        ex.startStream()
        with self.ctx.streaming():
            await consume(
                response, lambda data: ex.write(pipeline.feed(data)), self.ctx.clock,
                self.ctx.idleTimeout, ex.client,
            )
            tail = pipeline.end()
            ex.write(tail)
        noteStreamEnd(ex, tail)
        return None

    def _debugWriter(self, ex: Exchange, pipeline: NDJSONStream) -> Callable[[bytes], None]:
        """
        A collector that logs each raw upstream read and what it became.
        """

        def write(data: bytes) -> None:
            self.log.debug("upstream chunk {raw!r}", raw=data)
            out = pipeline.feed(data)
            if out:
                self.log.debug("translated {lines}", lines=out.decode("utf-8", "replace"))
            ex.write(out)

        return write


def noteStreamEnd(ex: Exchange, tail: bytes) -> None:
    """
    Take the token counts and the time to first token from the last NDJSON
    line of a stream (the C{done: true} object).  The proxy measures prompt
    evaluation as the time to the first token (see
    L{ollama_proxy.translate.metrics}), so C{prompt_eval_duration} is it.

    @param ex: the exchange.
    @param tail: the stream's last bytes, ending with that line.
    """
    try:
        final = codec.loads(tail.rstrip(b"\n").rpartition(b"\n")[2])
    except codec.JSONDecodeError:
        return
    ex.noteFinal(final)
    if isinstance(final, dict) and isinstance(final.get("prompt_eval_duration"), int):
        ex.firstToken = final["prompt_eval_duration"]


class Show(ProxyResource):
    """
    C{POST /api/show}: the model's metadata (see L{ollama_proxy.catalog}).
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        meta = await self.ctx.served(model)
        if meta is None:
            raise NotFound(f"model '{model}' not found")
        ex.modelLabel = meta.id
        return showResponse(meta, self.ctx.now())


class Ps(ProxyResource):
    """
    C{GET /api/ps}: every served model, as if loaded.
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        models = await self.ctx.models()
        return psResponse(models.values(), self.ctx.now(), self.ctx.tag)


class Embed(ProxyResource):
    """
    C{POST /api/embed}: batch embeddings through C{/v1/embeddings}.
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        inputs = embedInputs(body)
        dimensions = dimensionsValue(body)
        if not inputs:
            return emptyEmbedResponse(model)
        route = await self.ctx.route(ex, model)
        response = await route.backend.postJSON(
            "embeddings", embedRequestToOpenAI(route.modelId, inputs, dimensions)
        )
        vectors, tokens = vectorsFromOpenAI(
            await readJSON(response, self.ctx.clock, self.ctx.idleTimeout), len(inputs)
        )
        result = embedResponse(model, vectors, tokens, dimensions, ex.start, self.ctx.now())
        ex.noteFinal(result)
        return result


class LegacyEmbeddings(ProxyResource):
    """
    C{POST /api/embeddings}: one C{prompt}, one C{embedding}, as the backend
    computed it (Ollama does not normalise on this route).
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        prompt = legacyPrompt(body)
        if not prompt:
            return {"embedding": []}
        route = await self.ctx.route(ex, model)
        response = await route.backend.postJSON(
            "embeddings", embedRequestToOpenAI(route.modelId, [prompt], None)
        )
        [vector], _ = vectorsFromOpenAI(
            await readJSON(response, self.ctx.clock, self.ctx.idleTimeout), 1
        )
        return {"embedding": vector}


class ModelManagement(ProxyResource):
    """
    Base for Ollama's model-management routes.  The proxy answers what it
    can for the models it serves; the fallback Ollama (when configured) gets
    what it cannot; otherwise the client gets a clear JSON error.
    """

    async def _modelOrFallback(self, ex: Exchange, model: str) -> ModelMeta | None:
        """
        @param ex: the exchange.
        @param model: the requested name.
        @return: the served model, or C{None} after the request was
            forwarded to the fallback.
        @raise NotFound: for a model neither served nor forwardable.
        """
        meta = await self.ctx.served(model)
        if meta is not None:
            return meta
        if self.ctx.fallback is None:
            raise NotFound(f"model '{model}' not found")
        await forwardToFallback(self.ctx, ex)
        return None

    async def _refuseServed(self, ex: Exchange, model: str, done: str) -> None:
        """
        Forward an operation on a model the proxy does not serve; refuse it
        for one it serves (those live on the backend).

        @param ex: the exchange.
        @param model: the requested name.
        @param done: the operation's past participle, for the message.
        @raise BadRequest: for a served model.
        @raise NotFound: for a model neither served nor forwardable.
        """
        if await self._modelOrFallback(ex, model) is not None:
            raise BadRequest(
                f"model '{model}' is served by the OpenAI-compatible backend and "
                f"cannot be {done} through ollama-proxy"
            )

    async def _fallbackOnly(self, ex: Exchange, what: str) -> None:
        """
        Forward to the fallback, or explain that nothing can do C{what}.

        @raise ProxyError: 501 without a fallback.
        """
        if self.ctx.fallback is None:
            raise ProxyError(
                f"{what} is not supported by ollama-proxy: models live on the "
                "OpenAI-compatible backend (start the proxy with --fallback to "
                "send this to a local Ollama)",
                501,
            )
        await forwardToFallback(self.ctx, ex)


class Pull(ModelManagement):
    """
    C{POST /api/pull}: a served model is "pulled" at once (Home Assistant
    pulls any model it does not find in the list).
    """

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        stream = streamFlag(body)
        if await self._modelOrFallback(ex, model) is None:
            return None
        if not stream:
            return {"status": "success"}
        ex.startStream()
        ex.write(codec.dumpLine({"status": "pulling manifest"}) + codec.dumpLine({"status": "success"}))
        return None


class Delete(ModelManagement):
    """
    C{DELETE /api/delete}: served models cannot be deleted from here.
    """

    async def handle_DELETE(self, ex: Exchange) -> None:
        model = requireModel(ex.json())
        ex.model = model
        await self._refuseServed(ex, model, "deleted")


class Copy(ModelManagement):
    """
    C{POST /api/copy}: served models cannot be copied; others go to the
    fallback.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        body = ex.json()
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source:
            raise BadRequest("source is required")
        if not isinstance(destination, str) or not destination:
            raise BadRequest("destination is required")
        ex.model = source
        await self._refuseServed(ex, source, "copied")


class Create(ModelManagement):
    """
    C{POST /api/create}: only a real Ollama can create models.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "creating models")


class Push(ModelManagement):
    """
    C{POST /api/push}: only a real Ollama can push models.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "pushing models")


class Blobs(ModelManagement):
    """
    C{HEAD}/C{POST /api/blobs/<digest>}: blob uploads for C{/api/create}.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "uploading blobs")

    async def handle_HEAD(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "uploading blobs")


class MetricsPage(ProxyResource):
    """
    C{GET /metrics}: the Prometheus exposition of L{ProxyContext.metrics}.

    A L{ProxyResource}, so that whatever guards the others (an inbound API
    key) guards it too.
    """

    async def handle_GET(self, ex: Exchange) -> None:
        metrics = self.ctx.metrics
        assert metrics is not None
        accept = ex.request.getHeader(b"accept")
        body, contentType = metrics.render(accept.decode("latin-1") if accept else None)
        ex.request.setHeader(b"Content-Type", contentType.encode("ascii"))
        ex.write(body)


def buildRoot(ctx: ProxyContext) -> IResource:
    """
    Assemble the resource tree, wrapped in Ollama's CORS policy.

    @param ctx: the shared context.
    @return: the root resource for a L{twisted.web.server.Site}.
    """
    fallback = FallbackResource(ctx)
    root = Root(ctx, fallback)
    api = Directory(fallback)
    root.putChild(b"api", api)
    api.putChild(b"chat", Completion(ctx, "chat"))
    api.putChild(b"generate", Completion(ctx, "generate"))
    api.putChild(b"tags", Tags(ctx))
    api.putChild(b"version", Version(ctx))
    api.putChild(b"show", Show(ctx))
    api.putChild(b"ps", Ps(ctx))
    api.putChild(b"embed", Embed(ctx))
    api.putChild(b"embeddings", LegacyEmbeddings(ctx))
    api.putChild(b"pull", Pull(ctx))
    api.putChild(b"delete", Delete(ctx))
    api.putChild(b"copy", Copy(ctx))
    api.putChild(b"create", Create(ctx))
    api.putChild(b"push", Push(ctx))
    api.putChild(b"blobs", Blobs(ctx))
    # OpenAI routes, under /v1 and (as some Copilot builds and Open WebUI
    # call them) at the root.
    chatCompletions = Passthrough(ctx, "chat/completions")
    models = Passthrough(ctx, "models")
    v1 = Directory(fallback)
    root.putChild(b"v1", v1)
    v1.putChild(b"models", models)
    v1.putChild(b"completions", Passthrough(ctx, "completions"))
    v1.putChild(b"embeddings", Passthrough(ctx, "embeddings"))
    chat = Directory(fallback)
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", chatCompletions)
    root.putChild(b"models", models)
    rootChat = Directory(fallback)
    root.putChild(b"chat", rootChat)
    rootChat.putChild(b"completions", chatCompletions)
    if ctx.metrics is not None:
        root.putChild(b"metrics", MetricsPage(ctx))
    return CORSResource(root, OriginPolicy(ctx.corsOrigins))
