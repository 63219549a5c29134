# -*- test-case-name: tests.web.test_ollama -*-
"""
The Ollama routes that are not generations: C{/api/embed},
C{/api/embeddings}, and C{/api/version}.  (C{/api/chat} and
C{/api/generate} are L{ollama_proxy.web.generation.GenerationResource}s
speaking L{ollama_proxy.protocol.ollama.OllamaRoute}.)
"""

from __future__ import annotations

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
from ollama_proxy.protocol.ollama_request import requireModel
from ollama_proxy.upstream.body import readJSON
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.fleet import send


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
            "embeddings", embedRequestToOpenAI(member.modelId, inputs, dimensions), clientKey=ex.presented,
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
            "embeddings", embedRequestToOpenAI(member.modelId, [prompt], None), clientKey=ex.presented,
        ))
        [vector], _ = vectorsFromOpenAI(
            await readJSON(response, route.backend.reactor, route.backend.idleTimeout), 1
        )
        return {"embedding": vector}
