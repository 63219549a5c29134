# -*- test-case-name: tests.web.test_responses -*-
"""
C{POST /v1/responses}: the OpenAI Responses API (Codex CLI, Copilot CLI,
the C{openai} SDKs' C{responses.create}) translated to the backend's chat
completions, statelessly.  Errors are OpenAI's C{{"error": {...}}} before
the stream and C{response.failed} after it began.
"""

from __future__ import annotations

from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.responses import ResponsesDialect, errorObject
from ollama_proxy.protocol.responses_request import Unsupported, parseResponsesRequest
from ollama_proxy.web.agents import decodedJSON, nativeRoute, relayNative, translate
from ollama_proxy.web.bridge import JSON_TYPE, Exchange, ProxyResource


class Responses(ProxyResource):
    """
    C{POST /v1/responses}: a response, whole or as its event stream
    (relayed as it is from a backend configured C{native = ["responses"]}).
    """

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        body = decodedJSON(self.ctx, ex)
        model = body.get("model")
        route = await self.route(ex, model, body) if isinstance(model, str) and model else None
        if route is not None and nativeRoute(route, "responses"):
            # The backend keeps its own state: previous_response_id and
            # friends are its business.
            await relayNative(self.ctx, ex, route, "responses", body)
            return None
        try:
            request, context = parseResponsesRequest(body)
        except Unsupported as e:
            # The field goes in "param", which the funnel's errorBody has
            # no place for.
            ex.request.setResponseCode(e.status)
            return errorObject(e.status, e.message, e.param)
        assert route is not None  # the parser insists on a model name
        return await translate(self.ctx, ex, route, request, ResponsesDialect(context))

    def errorBody(self, request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", JSON_TYPE)
        return codec.dumps(errorObject(status, message))
