# -*- test-case-name: tests.web.test_models -*-
"""
The Ollama dialect's model routes: C{/api/tags}, C{/api/show}, C{/api/ps},
C{/api/experimental/model-recommendations}, C{/api/status}, and the
management routes (pull, delete, copy, create, push, blobs), which
the proxy answers for the models it serves and forwards to the fallback
Ollama for the rest.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.server import NOT_DONE_YET, Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import ModelMeta
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import (
    BadRequest,
    NotFound,
    ProxyError,
)
from ollama_proxy.protocol.listing import (
    STATUS,
    psResponse,
    recommendations,
    showResponse,
    tagsResponse,
)
from ollama_proxy.protocol.management import Route, checkFields, checkName, modelName
from ollama_proxy.protocol.ollama_request import requireModel, streamFlag
from ollama_proxy.protocol.dialect import JSON_TYPE
from ollama_proxy.protocol.redact import Redactor
from ollama_proxy.web.auth import presentedKey
from ollama_proxy.web.bridge import MIN_CLIENT_KEY, Exchange, ProxyResource
from ollama_proxy.web.observe import OBSERVED, logRequest
from ollama_proxy.web.encoded import Encoded, encoded
from ollama_proxy.web.fallback import forwardToFallback


class Tags(ProxyResource):
    """
    C{GET /api/tags}: the served models in Ollama's list shape, with their
    capabilities and context lengths (Ollama 0.30+).

    The body is built once per catalog (which changes only when a backend's
    list or metadata was fetched again, at most once per C{--models-ttl}),
    so a warm call costs what listing the cached models costs; a cold one
    waits for the lists and then one round of metadata requests.
    """

    _builtFrom: dict[str, ModelMeta] | None = None
    _body: Encoded | None = None
    _WARM = (b"GET", b"HEAD")

    def render(self, request: Request) -> Any:
        """
        A warm list for a client without a key of its own: the encoded
        bytes, written and logged at once (no exchange, no funnel: nothing
        in this answer can fail or wait).  Everything else (a cold
        catalog, a client key the body must be redacted of, a compressed
        body, C{--debug}, a sub-path or another method) takes the common
        path, whose answer these bytes equal.  The key gate, the CORS and
        C{Host} checks ran before this resource was reached.
        """
        ctx = self.ctx
        if (request.method not in self._WARM or request.postpath or ctx.debug
                or request.requestHeaders.hasHeader(b"content-encoding")):
            return super().render(request)
        key = presentedKey(request)
        if key and len(key) >= MIN_CLIENT_KEY:
            return super().render(request)
        catalog = ctx.models.readyCatalog()
        if catalog is None:
            return super().render(request)
        start = ctx.now()
        body = self._answer(catalog).body
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        # Observed here, with the route, not again by the site on finish.
        setattr(request, OBSERVED, True)
        request.finish()
        logRequest(_Answered(request, start, ctx.redactor), self._route(request), ctx.now(),
                   ctx.metrics)
        return NOT_DONE_YET

    _routeFor: tuple[list[bytes], str] | None = None

    def _route(self, request: Request) -> str:
        """
        The route label of a warm answer (the resource's own path, which
        C{request.prepath} is here: no sub-path), joined once per path
        rather than per request.
        """
        if self.label:
            return self.label
        found = self._routeFor
        if found is None or found[0] != request.prepath:
            found = self._routeFor = (list(request.prepath or []), self.routeLabel(request))
        return found[1]

    async def handle_GET(self, ex: Exchange) -> Encoded:
        return self._answer(await self.ctx.models.catalog())

    def ready(self, ex: Exchange) -> Encoded | None:
        """
        A warm catalog is answered within C{render}.
        """
        catalog = self.ctx.models.readyCatalog()
        return None if catalog is None else self._answer(catalog)

    def _answer(self, catalog: dict[str, ModelMeta]) -> Encoded:
        """
        The answer, encoded and redacted once per catalog (and per set of
        secrets): a warm request sends those bytes.
        """
        body, redactor = self._body, self.ctx.redactor
        if catalog is not self._builtFrom or body is None:
            value = tagsResponse(catalog.values(), self.ctx.now(), self.ctx.tag)
            body = self._body = encoded(value, redactor)
            self._builtFrom = catalog
        elif body.redactor is not redactor:
            body = self._body = encoded(body.value, redactor)
        return body


@attrs.define
class _Answered:
    """
    What the log line and the metrics read off a warm list answered by
    L{Tags.render} (an L{ollama_proxy.web.observe.Observed}): no model, no
    backend, no tokens; the client was there (the answer was written in
    the same call).
    """

    request: Any
    start: int
    redactor: Redactor
    model: str | None = None
    backend: str | None = None
    modelLabel: str = ""
    tokensIn: int | None = None
    tokensOut: int | None = None
    firstToken: int | None = None
    upstreamError: str | None = None
    gone: bool = False

    @property
    def client(self) -> "_Answered":
        return self

    def redactText(self, text: str) -> str:
        """
        @return: C{text} without the proxy's secrets (the client presented
            no key that is one).
        """
        return self.redactor.text(text, [])


class Show(ProxyResource):
    """
    C{POST /api/show}: the model's metadata (see L{ollama_proxy.protocol.catalog}).
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json()
        model = requireModel(body)
        ex.model = model
        meta = await self.ctx.models.served(model)
        if meta is None:
            raise NotFound(f"model '{model}' not found")
        ex.modelLabel = meta.id
        return showResponse(meta, self.ctx.now())


class Ps(ProxyResource):
    """
    C{GET /api/ps}: every served model, as if loaded.
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        models = await self.ctx.models.catalog()
        return psResponse(models.values(), self.ctx.now(), self.ctx.tag)

    def ready(self, ex: Exchange) -> JSON | None:
        """
        A warm catalog is answered within C{render}.
        """
        models = self.ctx.models.readyCatalog()
        return None if models is None else psResponse(models.values(), self.ctx.now(), self.ctx.tag)


class Recommendations(ProxyResource):
    """
    C{GET /api/experimental/model-recommendations}: the served models fit
    for agents (the VS Code extension and C{ollama launch} ask at start-up).
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        catalog = await self.ctx.models.catalog()
        return recommendations(catalog.values(), self.ctx.tag)

    def ready(self, ex: Exchange) -> JSON | None:
        """
        A warm catalog is answered within C{render}.
        """
        catalog = self.ctx.models.readyCatalog()
        return None if catalog is None else recommendations(catalog.values(), self.ctx.tag)


class Status(ProxyResource):
    """
    C{GET /api/status}: cloud models are off (see
    L{ollama_proxy.protocol.listing.STATUS}).
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        return STATUS

    def ready(self, ex: Exchange) -> JSON:
        """
        A constant, answered within C{render}.
        """
        return STATUS


class ModelManagement(ProxyResource):
    """
    Base for Ollama's model-management routes.  The proxy answers what it
    can for the models it serves; the fallback Ollama (when configured) gets
    what it cannot; otherwise the client gets a clear JSON error.  Bodies
    are checked with Ollama's rules (L{ollama_proxy.protocol.management})
    first, so the fallback never receives one Ollama would refuse.
    """

    async def _modelOrFallback(
        self, ex: Exchange, model: str, invalid: str = "invalid model name"
    ) -> ModelMeta | None:
        """
        @param ex: the exchange.
        @param model: the requested name.
        @param invalid: Ollama's message for a name it cannot parse.
        @return: the served model, or C{None} after the request was
            forwarded to the fallback.
        @raise NotFound: for a model neither served nor forwardable.
        @raise BadRequest: for a name Ollama would refuse (not served).
        """
        meta = await self.ctx.models.served(model)
        if meta is not None:
            return meta
        checkName(model, invalid)
        if self.ctx.fallback is None:
            raise NotFound(f"model '{model}' not found")
        await forwardToFallback(self.ctx, ex)
        return None

    async def _refuseServed(self, ex: Exchange, model: str, done: str, invalid: str) -> None:
        """
        Forward an operation on a model the proxy does not serve; refuse it
        for one it serves (those live on the backend).

        @param ex: the exchange.
        @param model: the requested name.
        @param done: the operation's past participle, for the message.
        @param invalid: Ollama's message for a name it cannot parse.
        @raise BadRequest: for a served model, or an invalid name.
        @raise NotFound: for a model neither served nor forwardable.
        """
        if await self._modelOrFallback(ex, model, invalid) is not None:
            raise BadRequest(
                f"model '{model}' is served by the OpenAI-compatible backend and "
                f"cannot be {done} through ollama-proxy"
            )

    async def _fallbackOnly(self, ex: Exchange, what: str, route: Route | None = None) -> None:
        """
        Forward to the fallback, or explain that nothing can do C{what}.

        @param route: the management route whose JSON body is checked
            first (C{None} for blob uploads, which are not JSON).
        @raise BadRequest: for a body Ollama would refuse.
        @raise ProxyError: 501 without a fallback.
        """
        if route is not None:
            body = ex.json()
            checkFields(route, body)
            model = modelName(body)
            ex.model = model
            checkName(model, "invalid model name")
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
        checkFields("pull", body)
        model = modelName(body)
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
        body = ex.json()
        checkFields("delete", body)
        model = modelName(body)
        ex.model = model
        await self._refuseServed(ex, model, "deleted", f'name "{model}" is invalid')


class Copy(ModelManagement):
    """
    C{POST /api/copy}: served models cannot be copied; others go to the
    fallback.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        body = ex.json()
        checkFields("copy", body)
        source, destination = body.get("source"), body.get("destination")
        if not isinstance(source, str) or not source:
            raise BadRequest("source is required")
        if not isinstance(destination, str) or not destination:
            raise BadRequest("destination is required")
        ex.model = source
        checkName(destination, f'destination "{destination}" is invalid')
        await self._refuseServed(ex, source, "copied", f'source "{source}" is invalid')


class Create(ModelManagement):
    """
    C{POST /api/create}: only a real Ollama can create models.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "creating models", "create")


class Push(ModelManagement):
    """
    C{POST /api/push}: only a real Ollama can push models.
    """

    async def handle_POST(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "pushing models", "push")


class Blobs(ModelManagement):
    """
    C{HEAD}/C{POST /api/blobs/<digest>}: blob uploads for C{/api/create}.
    """

    def servesSubPath(self, request: Request) -> bool:
        """
        @return: C{True}: the digest is the sub-path (for the fallback).
        """
        return True

    async def handle_POST(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "uploading blobs")

    async def handle_HEAD(self, ex: Exchange) -> None:
        await self._fallbackOnly(ex, "uploading blobs")
