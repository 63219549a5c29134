# -*- test-case-name: tests.web.test_tree -*-
"""
The resource tree: which resource serves which path, wrapped in Ollama's
CORS policy.  Unknown paths under C{/}, C{/api} and C{/v1} go to the
fallback.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ollama_proxy.protocol.anthropic import MESSAGES
from ollama_proxy.protocol.ollama import OllamaRoute
from ollama_proxy.web.anthropic import CountTokens
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.cors import CORSResource, OriginPolicy
from ollama_proxy.web.fallback import FallbackResource
from ollama_proxy.web.gemini import GeminiAPI, ModelsRoute
from ollama_proxy.web.health import healthTree
from ollama_proxy.web.models import (
    Blobs,
    Copy,
    Create,
    Delete,
    Ps,
    Pull,
    Push,
    Recommendations,
    Show,
    Status,
    Tags,
)
from ollama_proxy.web.ollama import Embed, LegacyEmbeddings, Version
from ollama_proxy.web.passthrough import Models, Passthrough
from ollama_proxy.protocol.responses import RESPONSES
from ollama_proxy.web.generation import GenerationResource
from ollama_proxy.web.status import statusResources


class Root(ProxyResource):
    """
    C{/}: Ollama's health check (C{Ollama is running}); unknown children go
    to the fallback.
    """

    isLeaf = False

    def __init__(self, ctx: ProxyContext, fallback: IResource) -> None:
        super().__init__(ctx)
        self.fallback = fallback

    def getChild(self, path: bytes, request: Request) -> IResource:
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

    def getChild(self, path: bytes, request: Request) -> IResource:
        return self.fallback

    def render(self, request: Request) -> Any:
        return self.fallback.render(request)


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


def mount(root: Resource, fallback: IResource, resource: GenerationResource) -> GenerationResource:
    """
    Put a generation route at its template's fixed segments, making the
    directories on the way (whose other children go to the fallback).

    @param root: the tree's root.
    @param fallback: where unknown paths go.
    @param resource: the route.
    @return: C{resource}.
    """
    parent = root
    prefix = resource.template.prefix
    *directories, last = prefix
    for segment in directories:
        name = segment.encode("utf-8")
        child = parent.children.get(name)
        if child is None:
            child = Directory(fallback)
            parent.putChild(name, child)
        parent = child
    parent.putChild(last.encode("utf-8"), resource)
    return resource


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
    # Ollama's generations: the generation resource, as every dialect's.
    mount(root, fallback, GenerationResource(ctx, OllamaRoute("chat", ctx.now), "/api/chat"))
    mount(root, fallback, GenerationResource(ctx, OllamaRoute("generate", ctx.now), "/api/generate"))
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
    api.putChild(b"status", Status(ctx))
    experimental = Directory(fallback)
    api.putChild(b"experimental", experimental)
    experimental.putChild(b"model-recommendations", Recommendations(ctx))
    # OpenAI routes, under /v1 and (as some Copilot builds and Open WebUI
    # call them) at the root.
    chatCompletions = Passthrough(ctx, "chat/completions")
    models = Models(ctx)
    v1 = Directory(fallback)
    root.putChild(b"v1", v1)
    # Google's v1 API (the google-genai SDKs' default) shares /v1/models.
    v1.putChild(b"models", ModelsRoute(models, GeminiAPI(ctx, "v1")))
    v1.putChild(b"completions", Passthrough(ctx, "completions"))
    v1.putChild(b"embeddings", Passthrough(ctx, "embeddings"))
    # The coding agents' dialects, translated (Claude Code, Codex): one
    # generation resource each, at its route template.
    messages = mount(root, fallback, GenerationResource(ctx, MESSAGES, "/v1/messages"))
    messages.isLeaf = False
    messages.putChild(b"count_tokens", CountTokens(ctx))
    mount(root, fallback, GenerationResource(ctx, RESPONSES, "/v1/responses"))
    chat = Directory(fallback)
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", chatCompletions)
    root.putChild(b"models", models)
    rootChat = Directory(fallback)
    root.putChild(b"chat", rootChat)
    rootChat.putChild(b"completions", chatCompletions)
    # Google's Gemini API (Gemini CLI): the whole /v1beta tree is one
    # resource, since the model (with its own "/" and ":") is in the path.
    root.putChild(b"v1beta", GeminiAPI(ctx))
    root.putChild(b"health", healthTree(ctx))
    if ctx.metrics is not None:
        root.putChild(b"metrics", MetricsPage(ctx))
        for name, resource in statusResources(ctx).items():
            root.putChild(name, resource)
    return CORSResource(root, OriginPolicy(ctx.corsOrigins))
