# -*- test-case-name: tests.web.test_bridge -*-
"""
The async bridge and the error funnel, shared by every resource.

Handlers are coroutines that receive an L{Exchange} and return a JSON value,
C{None} after streaming the body themselves, or raise a L{ProxyError}.
L{ProxyResource} turns that into HTTP: statuses and error bodies before the
first byte, the dialect's error event after it (both written by the
dialect's L{ollama_proxy.protocol.dialect.ErrorShape}), cancellation when
the client leaves.  A ready answer (L{ProxyResource.ready}) takes the same
funnel synchronously.  What happened is noted on the exchange and observed
afterwards by L{ollama_proxy.web.observe}.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON, Obj
from ollama_proxy.protocol.errors import (
    BadRequest,
    ProxyError,
    UpstreamError,
)
from ollama_proxy.protocol.dialect import JSON_TYPE, Encoder, ErrorShape
from ollama_proxy.protocol.events import Finish, Usage
from ollama_proxy.protocol.fields import requireObject
from ollama_proxy.protocol.ollama import ERRORS as OLLAMA_ERRORS
from ollama_proxy.protocol.ollama import NDJSON
from ollama_proxy.protocol.redact import Redactor, StreamRedactor
from ollama_proxy.upstream.backend import redactHeaders
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.auth import presentedKey
from ollama_proxy.web.budget import RETRY_AFTER, Busy, chargeOf, chargeParse, inflate
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.encoded import Encoded
from ollama_proxy.web.metrics import OTHER
from ollama_proxy.web.observe import (OBSERVED, logRequest, modelLabel, noteRoute, routed,
                                      upstreamErrorKind)
from ollama_proxy.web.writes import FastWriteRequest

MIN_CLIENT_KEY = 8  # the shortest client key treated as a secret
MAX_ERROR_TEXT = 2000  # characters of upstream text an error quotes (cut after redaction)
DEBUG_EXCERPT = 4096  # characters of a body a --debug line shows (cut after redaction)


class ClientState:
    """
    Whether the downstream client is still there.

    @ivar gone: set once C{notifyFinish} fired (finished or disconnected).
    @ivar onLeave: called when the client left before its answer was
        finished (the handler's cancel: the same notification, no second).
    """

    def __init__(self, request: Request, watch: bool = True) -> None:
        """
        @param request: the client request.
        @param watch: whether to start watching at once (an answer given in
            C{render}, L{ProxyResource.ready}, cannot lose its client).
        """
        self.gone = False
        self.request = request
        self.onLeave: Callable[[], object] | None = None
        if watch:
            self.watch()

    def watch(self) -> None:
        """Note when the client leaves (or the answer is finished)."""
        self.request.notifyFinish().addBoth(self._finished)

    def _finished(self, result: object) -> None:
        self.gone = True
        if self.onLeave is not None and isinstance(result, Failure):
            self.onLeave()


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
    @ivar modelLabel: the metrics label: a model some backend offers, else
        C{"other"} (clients cannot create label values), or empty.
    @ivar tokensIn: prompt tokens (as the backend reports them).
    @ivar tokensOut: completion tokens (likewise).
    @ivar firstToken: ns from arrival to the first generated token (streams).
    @ivar upstreamError: the kind of upstream failure that ended the
        request (see L{ollama_proxy.web.observe.upstreamErrorKind}), if any.
    @ivar guessed: the route, when the model was sent to the only backend
        unlisted (its label is looked up again at the end if a newer list
        arrived meanwhile).
    @ivar errors: the error shape of the dialect being answered in (the
        resource's, or the dialect's once a generation chose one): the
        funnel asks it, before the stream and after it began.
    @ivar encoder: the encoder of the stream being written, if the proxy
        encodes it (not a relayed one): a mid-stream error ends it.
    @ivar redactor: the proxy's secrets, replaced in upstream text before
        it reaches the client (see L{redactText}, L{redactData}).
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
    upstreamError: str | None = None
    guessed: Route | None = None
    errors: ErrorShape = OLLAMA_ERRORS
    encoder: Encoder | None = None
    redactor: Redactor = attrs.field(factory=Redactor, repr=False)
    _outbound: StreamRedactor | None | bool = attrs.field(default=False, repr=False)
    _clientKey: list[str | None] | None = attrs.field(default=None, repr=False)
    presented: bytes | None = attrs.field(  # the client's key, read once
        default=attrs.Factory(lambda self: presentedKey(self.request), takes_self=True), repr=False)

    def clientKey(self) -> list[str | None]:
        """
        @return: the client's own key (it may be the one forwarded
            upstream, C{--forward-client-key}), when it is at least
            L{MIN_CLIENT_KEY} long: a shorter one is no gateway key (Claude
            Code's usual token is C{ollama}), and redacting it would garble
            the text.  Read once per request: every redaction asks.
        """
        keys = self._clientKey
        if keys is None:
            key = self.presented
            keys = self._clientKey = (
                [key.decode("utf-8", "replace")] if key and len(key) >= MIN_CLIENT_KEY else []
            )
        return keys

    def redactText(self, text: str) -> str:
        """
        @param text: an error message that may quote upstream text, a
            model id, a log field.
        @return: C{text} without any secret the proxy holds, the client's
            own key included (it may be the one forwarded upstream).
        """
        return self.redactor.text(text, self.clientKey())

    def excerpt(self, text: str, limit: int) -> str:
        """
        @param text: upstream text to show in part.
        @param limit: the most characters to keep.
        @return: C{text} redacted, then cut (never the other way round).
        """
        return self.redactor.excerpt(text, limit, self.clientKey())

    def redactData(self, data: bytes) -> bytes:
        """
        @param data: a relayed upstream body (or a chunk for the debug log).
        @return: C{data} without any secret the proxy holds.
        """
        return self.redactor.data(data, self.clientKey())

    def noteUsage(self, usage: Usage) -> None:
        """
        Take the token counts of a reply (0 where the backend reported
        none, as the Ollama answer says).

        @param usage: the backend's counts.
        """
        self.tokensIn = usage.promptTokens if usage.promptTokens is not None else 0
        self.tokensOut = usage.completionTokens if usage.completionTokens is not None else 0

    def noteFinish(self, finish: Finish) -> None:
        """
        Take the token counts and the time to first token of a streamed
        reply.  The proxy measures prompt evaluation as the time to the
        first token (see L{ollama_proxy.protocol.ollama.metrics}).

        @param finish: the reply's end.
        """
        self.noteUsage(finish.usage)
        first = finish.firstToken if finish.firstToken is not None else finish.end
        self.firstToken = max(1, first - self.start)

    def json(self, keep: bool = True) -> Obj:
        """
        Decode the body as a JSON object, charging the request's share of
        the body budget for what decoding makes: the decoded tree and its
        re-encoding for the backend are each about the size of the body.

        @param keep: whether L{body} is still needed (to relay it as it
            is); a translating route drops it, so that a large body is not
            held three times while the backend works.
        @return: the object.
        @raise BadRequest: for an empty, malformed or non-object body.
        @raise Busy: when the budget cannot hold the decoded body (503).
        """
        if not self.body.strip():
            raise BadRequest("missing request body")
        chargeParse(self.request, self.body)
        decoded = requireObject(codec.loadsRequest(self.body))
        if not keep:
            self.body = b""
        return decoded

    def startEncoded(self, encoder: Encoder) -> None:
        """
        Send a 200 for a stream C{encoder} writes (its own error after this).

        @param encoder: the stream's encoder.
        """
        self.encoder = encoder
        self.startStream(encoder.contentType)

    def startStream(self, contentType: bytes = NDJSON) -> None:
        """
        Send a 200 with C{contentType}; the body follows in pieces.  The
        outbound filter and the head (not sent: an error still gets its
        own) are made while the backend is silent, off the first line's wait.

        @param contentType: the media type of the stream.
        """
        self.request.setResponseCode(200)
        self.request.setHeader(b"Content-Type", contentType)
        if self._outbound is False:
            self._outbound = self.redactor.stream(self.clientKey())
        if isinstance(self.request, FastWriteRequest):
            self.request.prepareHead()

    def write(self, data: bytes) -> None:
        """
        Write to the client if it is still there, through the outbound
        filter: every byte of every answer passes here, so no dialect can
        send a secret the proxy holds (a tail that may begin one waits for
        the next write, or L{flush}).

        @param data: bytes of the body.
        """
        if not data or self.client.gone:
            return
        outbound = self._outbound
        if outbound is False:
            outbound = self._outbound = self.redactor.stream(self.clientKey())
        if isinstance(outbound, StreamRedactor):
            data = outbound.feed(data)
        if data:
            self.request.write(data)

    def writeRedacted(self, data: bytes) -> None:
        """Write bytes known to hold no secret in any spelling (certified by the stream's event
        redactor, or L{Encoded}) past the outbound filter; through it while it holds a tail back."""
        outbound = self._outbound
        if isinstance(outbound, StreamRedactor) and outbound.holding:
            self.write(data)
        elif data and not self.client.gone:
            self.request.write(data)

    def writeWhole(self, body: bytes) -> None:
        """L{writeRedacted} for a whole answer that says its length, as Ollama's (Go's net/http)
        does: head and body in one call (L{FastWriteRequest.writeWhole})."""
        request, outbound = self.request, self._outbound
        if (isinstance(outbound, StreamRedactor) and outbound.holding
                or not isinstance(request, FastWriteRequest)):
            request.setHeader(b"Content-Type", JSON_TYPE)
            request.setHeader(b"Content-Length", b"%d" % len(body))
            self.writeRedacted(body)
        elif not self.client.gone:
            request.writeWhole(JSON_TYPE, body)

    def flush(self) -> None:
        """Release what the outbound filter held back (no secret, as it turned out)."""
        if isinstance(self._outbound, StreamRedactor):
            tail = self._outbound.end()
            if tail and not self.client.gone:
                self.request.write(tail)


Handler = Callable[[Exchange], Awaitable[Any]]


def errorAnswer(
    request: Request, errors: ErrorShape, status: int, message: str, param: str | None = None
) -> bytes:
    """
    Prepare an error answer in a dialect's shape, before any byte of the
    response was sent.

    @param request: the request to answer.
    @param errors: the dialect's error shape.
    @param status: the HTTP status.
    @param message: the error text.
    @param param: the request field at fault, if the error names one.
    @return: the body to write.
    """
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", errors.contentType)
    return errors.body(status, message, param)


class ProxyResource(Resource):
    """
    Base class for the endpoints: the async bridge and the error funnel.

    Subclasses define C{async def handle_GET(self, ex)} (and C{POST}, ...).
    C{HEAD} uses C{handle_GET}; twisted.web drops the body.  A subclass
    whose answer is often known at once also defines L{ready}.
    """

    isLeaf = True
    log = Logger()
    errors: ErrorShape = OLLAMA_ERRORS
    """The error shape of the dialect this resource speaks (Ollama's by
    default): the funnel writes every error with it."""
    decodesBody = True
    """Whether a C{Content-Encoding} body is decoded before the handler
    runs (in bounded steps, charged to the body budget); a resource that
    relays bodies as they are (the fallback) sets it false."""
    label: str | None = None
    """A constant route label (a template's), read instead of L{routeLabel}."""

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__()
        self.ctx = ctx

    def servesSubPath(self, request: Request) -> bool:
        """
        Whether this resource answers a path that goes on below its own
        (C{request.postpath} not empty).  No by default: each route serves
        exactly the path the README names, so C{/api/chat/x} or
        C{/v1/chat/completions/x} is a 404 rather than the route itself
        (or a relayed sub-path the operator never meant to expose).

        @param request: the request, traversed to this resource.
        @return: C{False} unless a subclass serves sub-paths.
        """
        return False

    async def route(self, ex: Exchange, name: str, body: Any = None) -> Route:
        """
        Choose the backend for a request and note it on the exchange (for
        the log line and the metrics).

        @param ex: the exchange.
        @param name: the client's model name.
        @param body: the decoded request body, for a sticky pool's key.
        @return: the route (the first member of its pool: L{ollama_proxy.web.fleet.send} picks).
        @raise ProxyError: when no backend offers the name.
        """
        ex.model = name
        ex.modelLabel = OTHER
        route = await self.ctx.models.route(name, ex.request.getHeader, body)
        ex.backend = route.name
        routed(ex, self.ctx.metrics)
        # A backend id is upstream text: it may carry a key, and it becomes
        # a metrics label.
        ex.modelLabel = ex.redactText(modelLabel(route.known, route.modelId))
        if not route.known:
            ex.guessed = route
        return route

    def _handler(self, method: str) -> Handler | None:
        handler = getattr(self, "handle_" + method, None)
        if handler is None and method == "HEAD":
            handler = getattr(self, "handle_GET", None)
        return handler

    def render(self, request: Request) -> Any:
        """
        Answer from L{ready} at once if it can; otherwise start the handler
        coroutine.  Either way, return C{NOT_DONE_YET}.

        The body is read synchronously: twisted.web closes it when the client
        disconnects.  A disconnect cancels the coroutine, which closes the
        upstream connection.
        """
        method = (request.method or b"GET").decode("ascii", "replace")
        if request.postpath and not self.servesSubPath(request):
            noteRoute(request, self.routeLabel(request))
            path = (request.path or b"").decode("latin-1")
            return errorAnswer(request, self.errors, 404, f"{path} is not served by this proxy")
        handler = self._handler(method)
        if handler is None:
            allowed = sorted(
                name[len("handle_") :] for name in dir(self)
                if name.startswith("handle_") and getattr(self, name) is not None
            )
            if "GET" in allowed and "HEAD" not in allowed:
                allowed.append("HEAD")  # served by handle_GET
            request.setHeader(b"Allow", ", ".join(allowed).encode("ascii"))
            # Logged and counted by the site when the answer is finished.
            noteRoute(request, self.routeLabel(request))
            return errorAnswer(request, self.errors, 405, f"method {method} not allowed")
        body = request.content.read() if request.content is not None else b""
        ex = Exchange(request, body, self.ctx.now(), ClientState(request, watch=False),
                      redactor=self.ctx.redactor, errors=self.errors)
        if self.ctx.debug:
            self.log.debug(
                "request {method} {uri} headers={headers} body={body}",
                method=method, uri=ex.redactText(request.uri.decode("latin-1")),
                headers={name: [ex.redactText(value) for value in values] for name, values in redactHeaders(
                    {k: list(v) for k, v in request.requestHeaders.getAllRawHeaders()}).items()},
                body=ex.excerpt(body.decode("utf-8", "replace"), DEBUG_EXCERPT),
            )
        encoded = bool(body) and self._encoded(request)
        if not encoded and type(self).ready is not ProxyResource.ready and self._answerReady(ex):
            return NOT_DONE_YET
        ex.client.watch()
        d = Deferred.fromCoroutine(self._run(handler, ex, encoded))
        ex.client.onLeave = d.cancel
        return NOT_DONE_YET

    def ready(self, ex: Exchange) -> Any:
        """
        The answer to C{ex} when known without waiting (a fresh cache, a
        constant), sent at once with no coroutine or Deferred: most of what a
        warm C{/api/tags} costs (C{bench/RESULTS.md}, issue 15).  It must equal
        the C{handle_*} answer and must not call a backend (asked if overridden).

        @param ex: the exchange.
        @return: the JSON-compatible answer, or C{None} to let the handler
            answer.
        @raise ProxyError: an error answer that is already known.
        """
        return None

    def _answerReady(self, ex: Exchange) -> bool:
        """
        Answer from L{ready} if it can, through the same funnel as L{_run}.

        @param ex: the exchange (its client not yet watched).
        @return: whether the request was answered (and observed).
        """
        try:
            result = self.ready(ex)
            if result is None:
                return False
            self._send(ex, result)
        except Exception as e:
            self._failWith(ex, e)
        self._close(ex)
        return True

    async def _run(self, handler: Handler, ex: Exchange, encoded: bool) -> None:
        """
        Run C{handler} and turn its outcome into a response.

        @param handler: the bound C{handle_*} method.
        @param ex: the exchange; C{encoded}: whether its body is to be decoded first.
        """
        collected = False
        try:
            if encoded:
                await self._decode(ex)
            self._send(ex, await handler(ex))
        except CancelledError:
            pass
        except GeneratorExit:
            # Collected while suspended: no one waits for this answer, and
            # a log line written by the garbage collector lands anywhere.
            collected = True
            raise
        except Exception as e:
            self._failWith(ex, e)
        finally:
            if not collected:
                self._close(ex)

    def _encoded(self, request: Request) -> bool:
        """
        @return: whether C{request}'s body (if it has one) is one this
            resource decodes; an empty body has nothing to decode, whatever
            its header says.
        """
        return self.decodesBody and request.requestHeaders.hasHeader(b"content-encoding")

    async def _decode(self, ex: Exchange) -> None:
        """
        Replace a compressed body by its decoding, the same way on every
        route (so that an Ollama route never reads zstd as "not valid
        UTF-8", and a passthrough request is routed by its model and sent
        upstream decoded); the header goes with it, so nothing downstream
        sees a coding the body no longer has.

        @raise ProxyError: 400, 413, 415 or 503 (see
            L{ollama_proxy.web.budget.inflate}).
        """
        request = ex.request
        encoding = b", ".join(request.requestHeaders.getRawHeaders(b"content-encoding") or [])
        ex.body = await inflate(
            ex.body, encoding.decode("latin-1"), self.ctx.maxBody, chargeOf(request),
            self.ctx.cooperator,
        )
        request.requestHeaders.removeHeader(b"content-encoding")

    def _send(self, ex: Exchange, result: Any) -> None:
        """
        Send a handler's JSON result (C{None}: it wrote the body itself).

        @param ex: the exchange.
        @param result: what the handler returned.
        """
        if result is None or ex.client.gone:
            return
        shared = isinstance(result, Encoded)
        ready = shared and result.redactor is ex.redactor and not ex.clientKey()
        if ready:
            body = result.body
        else:
            # Redacted whole, in one pass: the outbound filter (for bytes
            # sent in pieces) would find nothing more, so it is skipped.
            body = ex.redactData(codec.dumps(result.value if shared else result))
        ex.writeWhole(body)

    def _failWith(self, ex: Exchange, error: Exception) -> None:
        """
        Answer an exception raised by a handler; called while it is being
        handled (an unexpected one is logged with its traceback).

        @param ex: the exchange.
        @param error: the exception.
        """
        if isinstance(error, ProxyError):
            if isinstance(error, Busy) and not ex.request.startedWriting:
                ex.request.setHeader(b"Retry-After", b"%d" % RETRY_AFTER)
            # A client that leaves before the response headers cancels the
            # upstream request, which then fails with a "timeout" of its
            # own making: not an upstream error.
            if isinstance(error, UpstreamError) and not ex.client.gone:
                ex.upstreamError = upstreamErrorKind(error, bool(ex.request.startedWriting))
            self._fail(ex, error.status, error.message, getattr(error, "param", None))
            return
        self.log.failure("unexpected error handling {uri}", uri=ex.request.uri)
        self._fail(ex, 500, "internal proxy error; see the proxy log")

    def _close(self, ex: Exchange) -> None:
        """Finish the answer and observe it: here, with the exchange's details, not by the site."""
        request = ex.request
        setattr(request, OBSERVED, True)
        if not ex.client.gone:
            ex.flush()
            request.finish()
        guessed = ex.guessed
        if (guessed is not None and guessed.listing is not None
                and guessed.listing.value is not guessed.listingSeen and ex.model is not None):
            # Sent on a guess, and a newer list arrived: it may know the name.
            known = self.ctx.models.router.lookup(ex.model)
            if known is not None:
                ex.modelLabel = ex.redactText(known.modelId)
        logRequest(ex, self.label or self.routeLabel(request), self.ctx.now(), self.ctx.metrics)

    def _fail(
        self, ex: Exchange, status: int, message: str, param: str | None = None
    ) -> None:
        """
        Report an error in the only way still possible, in the shape of
        the dialect being answered (L{Exchange.errors}): its error answer
        before the stream, its error event after it began (the encoder's,
        or, for a relayed stream, the shape's own; never a fake success).

        @param ex: the exchange.
        @param status: the status to use if nothing was sent yet.
        @param message: the error text.
        @param param: the request field at fault, if the error names one.
        """
        if ex.client.gone:
            return
        # The one place every error passes, whatever the dialect: upstream
        # text (a gateway that echoes the Authorization header) loses the
        # proxy's secrets before the error shape writes it (redacted before
        # it is cut, so that no cut key escapes as a prefix), and every
        # byte goes through the exchange's outbound filter.
        message = ex.excerpt(message, MAX_ERROR_TEXT)
        ex.flush()
        request = ex.request
        if request.startedWriting:
            ex.write(ex.errors.midStream(ex.encoder, message))
        else:
            ex.write(errorAnswer(request, ex.errors, status, message, param))

    def routeLabel(self, request: Request) -> str:
        """
        @param request: the request this resource serves.
        @return: the route for logs and metrics: the resource's own path
            (not the client's, which may carry anything after it).
        """
        return "/" + "/".join(p.decode("latin-1") for p in request.prepath or [])

