# -*- test-case-name: tests.test_resources -*-
"""
The C{twisted.web} resource tree: one class per endpoint, one async bridge,
one error funnel.

Handlers are coroutines that receive an L{Exchange} and either return a
JSON-compatible value (sent as C{application/json}), return C{None} after
streaming the body themselves, or raise a L{ProxyError}.  L{ProxyResource}
turns all of that into HTTP: statuses and C{{"error": ...}} bodies before the
first byte, an NDJSON error line after it, cancellation when the client
leaves, and one log line per request.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy import codec
from ollama_proxy.errors import BadRequest, NotFound, ProxyError, UpstreamError
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

    def resolve(self, name: str) -> str:
        """
        @param name: a client's model name.
        @return: the backend id for it.
        """
        return backendModel(name, self.knownIds, self.tag)

    async def listModels(self) -> Any:
        """
        Fetch the backend's model list and remember its ids.

        @return: the decoded C{/v1/models} body.
        """
        models = await self.backend.getJSON("models")
        self.knownIds = set(modelIds(models))
        return models


@attrs.define
class Exchange:
    """
    One client request in flight.

    @ivar request: the twisted.web request.
    @ivar body: the request body, read before the first C{await}.
    @ivar start: arrival time in ns (from L{ProxyContext.now}).
    @ivar client: whether the client is still connected.
    @ivar model: the model named by the request, for the log line.
    """

    request: Request
    body: bytes
    start: int
    client: ClientState
    model: str | None = None

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
        try:
            result = await handler(ex)
            if result is not None and not ex.client.gone:
                request.setHeader(b"Content-Type", JSON_TYPE)
                request.write(codec.dumps(result))
        except CancelledError:
            pass
        except ProxyError as e:
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
            # Mid-stream: Ollama ends the NDJSON with an error line, never a
            # fake done:true.
            request.write(codec.dumpLine({"error": message}))
        else:
            request.write(jsonError(request, status, message))

    def _logRequest(self, ex: Exchange) -> None:
        """
        One info line per request, without bodies or secrets.

        @param ex: the finished exchange.
        """
        request = ex.request
        self.log.info(
            "{method} {path} model={model} status={status} duration={duration:.1f}ms"
            "{gone}",
            method=(request.method or b"").decode("ascii", "replace"),
            path=request.path.decode("latin-1"),
            model=ex.model or "-",
            status=request.code,
            duration=(self.ctx.now() - ex.start) / 1e6,
            gone=" (client disconnected)" if ex.client.gone and not request.finished else "",
        )


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


def requestHeaders(request: Request, keep: frozenset[bytes] | None = None) -> dict[bytes, list[bytes]]:
    """
    The client's headers that may travel upstream.

    @param request: the client request.
    @param keep: when given, only these (lower-case) names; otherwise all
        but hop-by-hop and auth headers.
    @return: raw headers.
    """
    out: dict[bytes, list[bytes]] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        lower = name.lower()
        if keep is not None:
            if lower in keep:
                out[name] = list(values)
        elif lower not in HOP_BY_HOP and lower not in (b"authorization", b"accept-encoding"):
            out[name] = list(values)
    return out


async def relayResponse(ctx: ProxyContext, ex: Exchange, response: Any) -> None:
    """
    Send an upstream response to the client as it is: status, end-to-end
    headers, and the body as it arrives.

    @param ctx: the shared context.
    @param ex: the exchange.
    @param response: the upstream response, body unread.
    """
    request = ex.request
    request.setResponseCode(response.code)
    for name, values in response.headers.getAllRawHeaders():
        if name.lower() not in HOP_BY_HOP and name.lower() != b"content-encoding":
            request.responseHeaders.setRawHeaders(name, values)
    await consume(response, ex.write, ctx.clock, ctx.idleTimeout, ex.client)


class Passthrough(ProxyResource):
    """
    An OpenAI route (C{/v1/models}, C{/v1/chat/completions}, ...) relayed to
    the backend as it is, with the configured API key, and with C{:proxy} /
    C{:latest} stripped from C{model} so that names from C{/api/tags} work.
    """

    def __init__(self, ctx: ProxyContext, path: str) -> None:
        super().__init__(ctx)
        self.path = path

    async def _forward(self, ex: Exchange) -> None:
        body = ex.body
        if body:
            try:
                decoded = codec.loads(body)
            except codec.JSONDecodeError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("model"), str):
                ex.model = decoded["model"]
                backendId = self.ctx.resolve(ex.model)
                if backendId != ex.model:
                    decoded["model"] = backendId
                    body = codec.dumps(decoded)
        request = ex.request
        url = self.ctx.backend.url(
            "/".join([self.path, *(p.decode("latin-1") for p in request.postpath)])
            if request.postpath
            else self.path
        )
        query = request.uri.partition(b"?")[2]
        if query:
            url += "?" + query.decode("latin-1")
        headers = self.ctx.backend.headers(
            requestHeaders(request, frozenset({b"content-type", b"accept", b"user-agent"}))
        )
        response = await self.ctx.backend.request(
            (request.method or b"GET").decode("ascii"), url, body or None, headers
        )
        await relayResponse(self.ctx, ex, response)

    handle_GET = _forward
    handle_POST = _forward


class FallbackResource(ProxyResource):
    """
    Everything the proxy cannot answer: forwarded to a real Ollama (method,
    path, query, headers, body, streamed back).  Without one, a JSON 404.
    """

    async def _forward(self, ex: Exchange) -> None:
        request = ex.request
        fallback = self.ctx.fallback
        path = request.uri.decode("latin-1")
        if fallback is None:
            raise NotFound(f"{request.path.decode('latin-1')} is not served by this proxy")
        what = f"the fallback Ollama at {fallback.base}"
        try:
            response = await fallback.http.request(
                (request.method or b"GET").decode("ascii"),
                fallback.base.rstrip("/") + path,
                data=ex.body or None,
                headers=requestHeaders(request),
                unbuffered=True,
                reactor=self.ctx.clock,
                timeout=self.ctx.backend.headerTimeout,
            )
        except CancelledError:
            raise
        except Exception as e:
            raise failureToError(e, what) from None
        await relayResponse(self.ctx, ex, response)

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
        return tagsFromModels(models, self.ctx.now(), self.ctx.tag)


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
        backendId = self.ctx.resolve(model)
        if self.kind == "chat":
            if not body.get("messages"):
                return loadResponse(model, "chat", body.get("keep_alive") == 0, self.ctx.now())
            upstreamBody = chatRequestToOpenAI(body, backendId, stream)
        else:
            if not body.get("prompt") and not body.get("images"):
                return loadResponse(
                    model, "generate", body.get("keep_alive") == 0, self.ctx.now()
                )
            upstreamBody = generateRequestToOpenAI(body, backendId, stream)
        if self.ctx.debug:
            self.log.debug("upstream request {body}", body=codec.dumps(upstreamBody).decode())
        response = await self.ctx.backend.postJSON("chat/completions", upstreamBody)
        if not stream:
            completion = await readJSON(response)
            return responseFromOpenAI(
                completion, model, self.kind, ex.start, self.ctx.now(), think is False
            )
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


def buildRoot(ctx: ProxyContext) -> IResource:
    """
    Assemble the resource tree.

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
    v1 = Directory(fallback)
    root.putChild(b"v1", v1)
    v1.putChild(b"models", Passthrough(ctx, "models"))
    v1.putChild(b"completions", Passthrough(ctx, "completions"))
    chat = Directory(fallback)
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", Passthrough(ctx, "chat/completions"))
    return root
