# -*- test-case-name: tests.web.test_gemini -*-
"""
C{/v1beta/...}: Google's Gemini API (Gemini CLI, the C{google-genai} SDKs)
translated to the backend's chat completions; its C{v1} twin below
C{/v1/models}, which it shares with OpenAI's model list (L{ModelsRoute}).

One resource serves the tree below C{/v1beta}, because the model is in
the path (C{models/{model}:streamGenerateContent}) and may itself contain
C{/} and C{:}; L{ollama_proxy.protocol.gemini_path.parsePath} reads it,
and the route label of the logs and metrics is the path's template, never
the model.  It answers the model list, a model and C{countTokens} itself;
a generation it hands to the generic
L{ollama_proxy.web.generation.GenerationResource} of that method, which
speaks L{ollama_proxy.protocol.gemini.GEMINI} like every dialect (the
model's extra fields, the debug log, the relay).  Errors, before and
during a stream, are in Google's shape.
"""

from __future__ import annotations

from typing import Any

from twisted.web.http import parse_qs
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest, NotFound, ProxyError
from ollama_proxy.protocol.gemini import ERRORS, GEMINI, modelList, modelObject
from ollama_proxy.protocol.gemini_path import (ACTIONS, COUNT, GENERATE, STREAM, GeminiCall,
                                               GeminiTemplate, parsePath)
from ollama_proxy.protocol.gemini_request import parseCountRequest
from ollama_proxy.protocol.requests import estimateTokens
from ollama_proxy.web.auth import googleClient
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.generation import GenerationResource

PAGE_SIZE = 50
"""Models per page of C{models.list} when the client names no size
(Google's default); at most L{MAX_PAGE_SIZE}."""
MAX_PAGE_SIZE = 1000


def queryValue(request: Request, name: bytes) -> str | None:
    """
    @return: the first value of query parameter C{name}, if any.
    """
    values = parse_qs(request.uri.partition(b"?")[2]).get(name)
    return values[0].decode("utf-8", "replace") if values else None


def _pageSize(request: Request) -> int:
    text = queryValue(request, b"pageSize")
    if text is None:
        return PAGE_SIZE
    if not (text.isascii() and text.isdigit()):
        raise BadRequest("pageSize: expected a non-negative integer")
    size = int(text[:7])
    return min(size, MAX_PAGE_SIZE) if size else PAGE_SIZE


def _offset(request: Request) -> int:
    token = queryValue(request, b"pageToken")
    if not token:
        return 0
    if not (token.isascii() and token.isdigit()) or len(token) > 9:
        raise BadRequest("pageToken: not a token this server gave")
    return int(token)


class GeminiAPI(ProxyResource):
    """
    C{/v1beta/models}, C{/v1beta/models/{model}} (C{GET}) and
    C{/v1beta/models/{model}:generateContent}, C{:streamGenerateContent},
    C{:countTokens} (C{POST}).
    """

    def __init__(self, ctx: ProxyContext, version: str = "v1beta") -> None:
        """
        @param version: the API version segment this resource is under
            (C{v1beta} for the whole tree, C{v1} below C{/v1/models}).
        """
        super().__init__(ctx)
        self.version = version
        self.generation = {
            action: GenerationResource(ctx, GEMINI, GeminiTemplate(version, action))
            for action in (GENERATE, STREAM)
        }

    def render(self, request: Request) -> Any:
        """
        A C{POST} of a generation method is the generic generation
        resource's; everything else is this one's.
        """
        if request.method == b"POST":
            call = self._parse(request)
            if call is not None and call.model is not None and call.action in self.generation:
                return self.generation[call.action].render(request)
        return super().render(request)

    def _parse(self, request: Request) -> GeminiCall | None:
        segments = [*(request.prepath or []), *(request.postpath or [])]
        return parsePath([p.decode("utf-8", "replace") for p in segments[1:]])

    def servesSubPath(self, request: Request) -> bool:
        """
        @return: whether the path is one of the API's (the model list, a
            model, a model's method); any other is a 404 in Google's shape.
        """
        return self._parse(request) is not None

    def call(self, request: Request) -> GeminiCall:
        """
        @return: what the request's path asks for.
        @raise NotFound: for a path the API does not have.
        """
        call = self._parse(request)
        if call is None:
            raise NotFound(f"{(request.path or b'').decode('latin-1')!r} is not a Gemini API path")
        return call

    def routeLabel(self, request: Request) -> str:
        """
        @return: the path's template (C{/v1beta/models/{model}:countTokens});
            C{"not served"} for a path the API does not have, as for every
            other resource's.
        """
        call = self._parse(request)
        return call.template(self.version) if call is not None else "not served"

    errors = ERRORS

    async def handle_GET(self, ex: Exchange) -> JSON:
        call = self.call(ex.request)
        if call.action is not None:
            raise ProxyError(f"{call.action} takes POST", 405)
        if call.model is None:
            size, offset = _pageSize(ex.request), _offset(ex.request)
            catalog = await self.ctx.models.catalog()
            return modelList(catalog.values(), size, offset)
        ex.model = call.model
        meta = await self.ctx.models.served(call.model)
        if meta is None:
            raise NotFound(f"models/{call.model} is not found")
        return modelObject(meta)

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        call = self.call(ex.request)
        if call.model is None or call.action != COUNT:
            # Another method (embedContent, batchGenerateContent, ...) or
            # none: Google's own answer is a 404 too.  (The generation
            # methods never get here: see render.)
            raise NotFound(
                "no such method; served: models/{model}:generateContent, "
                ":streamGenerateContent, :countTokens"
            )
        # An estimate, as /v1/messages/count_tokens gives: no backend is
        # asked, so no route is taken.
        request = parseCountRequest(ex.json(keep=False), call.model)
        ex.model = call.model
        ex.request.setHeader(b"X-Token-Count", b"estimate")
        return {"totalTokens": estimateTokens(request)}


class ModelsRoute(Resource):
    """
    C{/v1/models}, where OpenAI's model list and Google's C{v1} API (the
    default of the C{google-genai} SDKs) meet: a request carrying the key
    as Google's clients do (L{googleClient}), or asking for one of the
    Gemini methods, is Google's; anything else is relayed as OpenAI's.
    """

    isLeaf = True

    def __init__(self, openai: IResource, gemini: GeminiAPI) -> None:
        super().__init__()
        self.openai = openai
        self.gemini = gemini

    def render(self, request: Request) -> Any:
        last = (request.postpath or [b""])[-1].decode("utf-8", "replace")
        if googleClient(request) or last.rpartition(":")[2] in ACTIONS:
            return self.gemini.render(request)
        return self.openai.render(request)
