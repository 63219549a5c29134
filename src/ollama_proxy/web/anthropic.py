# -*- test-case-name: tests.web.test_anthropic -*-
"""
C{POST /v1/messages} and C{POST /v1/messages/count_tokens}: the Anthropic
Messages API (Claude Code, the C{anthropic} SDKs) translated to the
backend's chat completions.  Errors, before and during a stream, are in
Anthropic's shape.
"""

from __future__ import annotations

from twisted.web.resource import IResource
from twisted.web.server import Request

from ollama_proxy.protocol.anthropic import ERRORS, AnthropicDialect
from ollama_proxy.protocol.anthropic_request import estimateTokens, parseMessagesRequest
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.web.agents import decodedJSON, nativeRoute, relayNative, translate
from ollama_proxy.web.bridge import Exchange, NotServed, ProxyResource


class AnthropicResource(ProxyResource):
    """
    A resource whose errors are Anthropic's C{{"type": "error", "error":
    {"type", "message"}}}.
    """

    errors = ERRORS


class Messages(AnthropicResource):
    """
    C{POST /v1/messages}: a message, whole or as Anthropic's event stream
    (relayed as it is from a backend configured C{native = ["messages"]}).
    Its one child is C{count_tokens}; any other path below it is a 404 in
    Anthropic's shape.
    """

    isLeaf = False

    def getChild(self, path: bytes, request: Request) -> IResource:  # type: ignore[override]
        return NotServed(self.ctx, self)

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = decodedJSON(self.ctx, ex)
        model = body.get("model")
        route = await self.route(ex, model) if isinstance(model, str) and model else None
        if route is not None and nativeRoute(route, "messages"):
            await relayNative(self.ctx, ex, route, "messages", body)
            return None
        request = parseMessagesRequest(body)
        assert route is not None  # the parser insists on a model name
        dialect = AnthropicDialect(estimateTokens(request))
        return await translate(self.ctx, ex, route, request, dialect)


class CountTokens(AnthropicResource):
    """
    C{POST /v1/messages/count_tokens}: an estimate (characters / 4), marked
    C{X-Token-Count: estimate}.  Real Ollama does not serve this route;
    Claude Code, given a 404, instead sends a real one-token request per
    count, and given a fake 0 never compacts its context.  An estimate
    avoids both; no backend is called.
    """

    async def handle_POST(self, ex: Exchange) -> JSON:
        request = parseMessagesRequest(decodedJSON(self.ctx, ex), counting=True)
        ex.model = request.model
        ex.request.setHeader(b"X-Token-Count", b"estimate")
        return {"input_tokens": estimateTokens(request)}
