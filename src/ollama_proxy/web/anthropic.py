# -*- test-case-name: tests.web.test_anthropic -*-
"""
C{POST /v1/messages/count_tokens}: Anthropic's token count, estimated.
(C{/v1/messages} itself is a L{ollama_proxy.web.generation.GenerationResource}
speaking L{ollama_proxy.protocol.anthropic.MESSAGES}.)
"""

from __future__ import annotations

from ollama_proxy.protocol.anthropic import ERRORS
from ollama_proxy.protocol.anthropic_request import parseMessagesRequest
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.requests import estimateTokens
from ollama_proxy.web.bridge import Exchange, ProxyResource


class CountTokens(ProxyResource):
    """
    C{POST /v1/messages/count_tokens}: an estimate (characters / 4), marked
    C{X-Token-Count: estimate}, in Anthropic's error shape.  Real Ollama
    does not serve this route; Claude Code, given a 404, instead sends a
    real one-token request per count, and given a fake 0 never compacts its
    context.  An estimate avoids both; no backend is called.
    """

    errors = ERRORS

    async def handle_POST(self, ex: Exchange) -> JSON:
        request = parseMessagesRequest(ex.json(keep=False), counting=True)
        ex.model = request.model
        ex.request.setHeader(b"X-Token-Count", b"estimate")
        return {"input_tokens": estimateTokens(request)}
