# -*- test-case-name: tests.web.test_responses -*-
"""
C{POST /v1/responses}: the OpenAI Responses API (Codex CLI, Copilot CLI,
the C{openai} SDKs' C{responses.create}) translated to the backend's chat
completions, statelessly.  Errors are OpenAI's C{{"error": {...}}} before
the stream and C{response.failed} after it began.
"""

from __future__ import annotations

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.responses import ERRORS, ResponsesDialect
from ollama_proxy.protocol.responses_request import parseResponsesRequest
from ollama_proxy.web.agents import decodedJSON, nativeRoute, relayNative, translate
from ollama_proxy.web.bridge import Exchange, ProxyResource


class Responses(ProxyResource):
    """
    C{POST /v1/responses}: a response, whole or as its event stream
    (relayed as it is from a backend configured C{native = ["responses"]}).
    """

    errors = ERRORS

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = decodedJSON(self.ctx, ex)
        model = body.get("model")
        route = await self.route(ex, model) if isinstance(model, str) and model else None
        if route is not None and nativeRoute(route, "responses"):
            # The backend keeps its own state: previous_response_id and
            # friends are its business.
            await relayNative(self.ctx, ex, route, "responses", body)
            return None
        # A refused field (Unsupported) is named in the error's "param" by
        # the dialect's error shape.
        request, context = parseResponsesRequest(body)
        assert route is not None  # the parser insists on a model name
        return await translate(self.ctx, ex, route, request, ResponsesDialect(context))
