# -*- test-case-name: tests.web.test_chat -*-
"""
The Ollama dialect's generating routes: C{/api/chat}, C{/api/generate},
C{/api/embed}, C{/api/embeddings}, and C{/api/version}.

Each parses its body into the hub's typed request
(L{ollama_proxy.protocol.ollama_request}), has the builder make the OpenAI
body for the routed backend, and lets L{ollama_proxy.web.chat.answer} write
the reply in Ollama's dialect (L{ollama_proxy.protocol.ollama}).
"""

from __future__ import annotations

from typing import Awaitable

from twisted.web.iweb import IResponse

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.embeddings import (
    EmbedResponse,
    dimensionsValue,
    embedInputs,
    embedRequestToOpenAI,
    embedResponse,
    emptyEmbedResponse,
    legacyPrompt,
    vectorsFromOpenAI,
)
from ollama_proxy.protocol.ollama import Kind, OllamaDialect, loadResponse
from ollama_proxy.protocol.ollama_request import (
    parseChat,
    parseGenerate,
    parseTextCompletion,
    requireModel,
    streamFlag,
    thinkValue,
    wantsCompletion,
)
from ollama_proxy.protocol.openai_request import chatBody, textBody
from ollama_proxy.upstream.body import readJSON
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.fleet import send
from ollama_proxy.web.chat import ReadOptions, answer, generate, upstreamBody
from ollama_proxy.web.context import ProxyContext


class Version(ProxyResource):
    """
    C{GET /api/version}: a dotted version clients accept.
    """

    async def handle_GET(self, ex: Exchange) -> JSON:
        return {"version": self.ctx.version}

    def ready(self, ex: Exchange) -> JSON:
        """
        A constant, answered within C{render}.
        """
        return {"version": self.ctx.version}


class Completion(ProxyResource):
    """
    C{POST /api/chat} and C{POST /api/generate}: translated to
    C{/v1/chat/completions} (C{raw}/C{suffix} generate to
    C{/v1/completions}), streamed back as NDJSON by default.
    """

    def __init__(self, ctx: ProxyContext, kind: Kind) -> None:
        super().__init__(ctx)
        self.kind = kind
        self.dialect = OllamaDialect(kind, ctx.now)

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = ex.json(keep=False)
        model = requireModel(body)
        ex.model = model
        # stream and think are checked before routing, as before: a bad
        # value is a 400 even for a model no backend offers.
        stream = streamFlag(body)
        thinkValue(body)
        route = await self.route(ex, model, body)
        defaults = route.override.options
        if self.kind == "chat":
            if not body.get("messages"):
                return loadResponse(model, "chat", body.get("keep_alive") == 0, self.ctx.now())
            request = parseChat(body, defaults)
        else:
            if not body.get("prompt") and not body.get("images"):
                return loadResponse(
                    model, "generate", body.get("keep_alive") == 0, self.ctx.now()
                )
            if wantsCompletion(body):
                return await self._textCompletion(ex, body, route, stream)
            request = parseGenerate(body, defaults)
        return await generate(self.ctx, ex, route, request, self.dialect)

    async def _textCompletion(
        self, ex: Exchange, body: JSON, route: Route, stream: bool
    ) -> JSON | None:
        """
        C{/api/generate} with C{raw} or C{suffix}: sent to C{/v1/completions};
        a backend without that route gets a raw prompt as a one-turn chat
        (see L{ollama_proxy.upstream.backend.Backend.postText}).

        @return: the generate object, or C{None} after streaming.
        """
        defaults = route.override.options
        request = parseTextCompletion(body, defaults)

        def post(member: Route) -> Awaitable[tuple[IResponse, bool]]:
            flavor = member.backend.flavor
            textRequest = upstreamBody(self.ctx, member, textBody(request, member.modelId, flavor), ex)

            def asChat() -> JSON:
                chat = parseGenerate({k: v for k, v in body.items() if k != "raw"}, defaults)
                return upstreamBody(self.ctx, member, chatBody(chat, member.modelId, flavor), ex)

            return member.backend.postText(textRequest, None if body.get("suffix") else asChat)

        route, (response, isChat) = await send(self.ctx, ex, route, post)
        backend = route.backend
        # Raw text and code: a leading <think> is the user's, unless the
        # prompt went to a chat model after all.
        options = ReadOptions(thinkTags=isChat, text=not isChat)
        return await answer(self.ctx, ex, backend, response, self.dialect, stream, options)


class Embed(ProxyResource):
    """
    C{POST /api/embed}: batch embeddings through C{/v1/embeddings}.
    """

    async def handle_POST(self, ex: Exchange) -> EmbedResponse:
        body = ex.json(keep=False)
        model = requireModel(body)
        ex.model = model
        inputs = embedInputs(body)
        dimensions = dimensionsValue(body)
        if not inputs:
            return emptyEmbedResponse(model)
        route = await self.route(ex, model)
        route, response = await send(self.ctx, ex, route, lambda member: member.backend.postJSON(
            "embeddings", embedRequestToOpenAI(member.modelId, inputs, dimensions)
        ))
        vectors, tokens = vectorsFromOpenAI(
            await readJSON(response, route.backend.reactor, route.backend.idleTimeout), len(inputs)
        )
        ex.tokensIn = tokens
        return embedResponse(model, vectors, tokens, dimensions, ex.start, self.ctx.now())


class LegacyEmbeddings(ProxyResource):
    """
    C{POST /api/embeddings}: one C{prompt}, one C{embedding}, as the backend
    computed it (Ollama does not normalise on this route).
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        body = ex.json(keep=False)
        model = requireModel(body)
        ex.model = model
        prompt = legacyPrompt(body)
        if not prompt:
            return {"embedding": []}
        route = await self.route(ex, model)
        route, response = await send(self.ctx, ex, route, lambda member: member.backend.postJSON(
            "embeddings", embedRequestToOpenAI(member.modelId, [prompt], None)
        ))
        [vector], _ = vectorsFromOpenAI(
            await readJSON(response, route.backend.reactor, route.backend.idleTimeout), 1
        )
        return {"embedding": vector}
