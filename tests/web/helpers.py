"""
Helpers for the web tests: reading answers, serving the catalog refresh,
recorded LiteLLM metadata, and the requests several tests send.
"""

from __future__ import annotations

import re
from typing import Any

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import ProxyHarness

CONTINUE_PARAMETER = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')
"""Continue's parser for the lines of C{/api/show} C{parameters}."""


LITELLM_INFO = {
    "data": [
        {
            "model_name": "gpt-4o",
            "litellm_params": {"model": "openai/gpt-4o"},
            "model_info": {
                "max_input_tokens": 128000,
                "supports_function_calling": True,
                "supports_vision": True,
                "supports_reasoning": None,
                "mode": "chat",
            },
        },
        {
            "model_name": "o3",
            "model_info": {
                "max_input_tokens": 200000,
                "supports_function_calling": False,
                "supports_reasoning": True,
                "mode": "chat",
            },
        },
        {
            "model_name": "text-embedding-3-small",
            "model_info": {"max_input_tokens": 8191, "mode": "embedding", "output_vector_size": 1536},
        },
    ]
}


def body(h: ProxyHarness, response: Any) -> Any:
    """
    @return: the decoded JSON body of a response.
    """
    return codec.loads(_content(h, response))


def _content(h: ProxyHarness, response: Any) -> bytes:
    """
    @return: the whole body of a response, which must end after pumping.
    """
    chunks: list[bytes] = []
    d = h.client.collect(response, chunks.append)
    h.pump()
    assert d.called, "response body did not end"
    return b"".join(chunks)


def serveCatalog(h: ProxyHarness, data: list[Any], info: Any = None) -> None:
    """
    Answer the catalog refresh the proxy just started: C{GET /v1/models},
    then C{GET /v1/model/info} (a 404 unless C{info} is given, as on any
    backend that is not LiteLLM).
    """
    models = h.backend.received[-1]
    assert (models.method, models.path) == ("GET", "/v1/models"), models.path
    models.respond(200, {"object": "list", "data": data})
    h.pump()
    infoRequest = h.backend.received[-1]
    assert (infoRequest.method, infoRequest.path) == ("GET", "/v1/model/info"), infoRequest.path
    if info is None:
        infoRequest.respond(404, {"error": {"message": "Not Found"}})
    else:
        infoRequest.respond(200, info)
    h.pump()


CHAT = {"model": "m:proxy", "messages": [{"role": "user", "content": "hi"}]}
"""A minimal streamed chat request."""


def embeddingData(vectors: list[list[float]], order: list[int] | None = None) -> Any:
    order = order if order is not None else list(range(len(vectors)))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in order],
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }
