# -*- test-case-name: tests.protocol.test_embeddings -*-
"""
Pure translation of Ollama's embedding routes to OpenAI's
C{POST /v1/embeddings}.

C{/api/embed} (current) takes C{input} as a string or a list of strings and
answers C{{"model", "embeddings": [[...]], "total_duration",
"load_duration", "prompt_eval_count"}} with L2-normalised vectors.  The
legacy C{/api/embeddings} takes one C{prompt} and answers
C{{"embedding": [...]}} as the backend computed it.  Field names follow
Ollama exactly: LiteLLM's Ollama client crashes without
C{prompt_eval_count}.
"""

from __future__ import annotations

import math
from typing import Mapping, TypedDict

from ollama_proxy.protocol.errors import BadRequest, UpstreamError


class _EmbeddingsBody(TypedDict):
    model: str
    input: list[str]
    encoding_format: str


class EmbeddingsBody(_EmbeddingsBody, total=False):
    """The C{/v1/embeddings} body the backend gets."""

    dimensions: int


class _EmbedResponse(TypedDict):
    model: str
    embeddings: list[list[float]]


class EmbedResponse(_EmbedResponse, total=False):
    """Ollama's C{/api/embed} answer (counts absent when nothing was embedded)."""

    total_duration: int
    load_duration: int
    prompt_eval_count: int


def embedInputs(body: Mapping[str, object]) -> list[str]:
    """
    Validate C{input} of C{/api/embed}.

    @param body: the request object.
    @return: the texts; empty for C{""}, C{[]} or a missing C{input}
        (Ollama then only loads the model).
    @raise BadRequest: C{invalid input type} for anything but a string or a
        list of strings (Ollama's message).
    """
    value = body.get("input")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise BadRequest("invalid input type")


def dimensionsValue(body: Mapping[str, object]) -> int | None:
    """
    Validate C{dimensions}.

    @param body: the request object.
    @return: the requested vector length, or C{None} for the model's own.
    @raise BadRequest: unless it is a positive integer.
    """
    value = body.get("dimensions")
    if value is None or value == 0:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest("dimensions must be a positive integer")
    return value


def embedRequestToOpenAI(backendId: str, inputs: list[str], dimensions: int | None) -> EmbeddingsBody:
    """
    The C{/v1/embeddings} body.  C{truncate}, C{options} and C{keep_alive}
    have no OpenAI equivalent and are accepted and dropped (backends
    truncate or refuse on their own).

    @param backendId: the upstream model id.
    @param inputs: the texts.
    @param dimensions: the requested length, if any.
    @return: the request object, asking for float vectors explicitly (the
        OpenAI SDK default is base64).
    """
    request: EmbeddingsBody = {"model": backendId, "input": inputs, "encoding_format": "float"}
    if dimensions is not None:
        request["dimensions"] = dimensions
    return request


def normalise(vector: list[float]) -> list[float]:
    """
    @param vector: any vector.
    @return: the vector scaled to unit length (unchanged if all zero).
    """
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if norm == 0:
        return vector
    return [x / norm for x in vector]


def vectorsFromOpenAI(response: object, count: int) -> tuple[list[list[float]], int]:
    """
    Extract the vectors, in input order, and the token count.

    @param response: the decoded C{/v1/embeddings} body.
    @param count: how many inputs were sent.
    @return: C{(vectors, prompt_tokens)}.
    @raise UpstreamError: if the body is not a list of float vectors, one per
        input.
    """
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(response, dict) or not isinstance(data, list):
        raise UpstreamError("backend returned embeddings without a data list")
    slots: list[list[float] | None] = [None] * count
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise UpstreamError("backend returned an embedding that is not an object")
        index = item.get("index", position)
        vector = item.get("embedding")
        if isinstance(vector, str):
            raise UpstreamError("backend returned base64 embeddings although floats were asked for")
        if (
            not isinstance(index, int)
            or not 0 <= index < count
            or not isinstance(vector, list)
            or not all(isinstance(x, (int, float)) for x in vector)
        ):
            raise UpstreamError("backend returned a malformed embedding")
        slots[index] = [float(x) for x in vector]
    vectors = [v for v in slots if v is not None]
    if len(vectors) != count:
        raise UpstreamError(
            f"backend returned {len(vectors)} embeddings for {count} inputs"
        )
    usage = response.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return vectors, tokens if isinstance(tokens, int) else 0


def embedResponse(
    model: str,
    vectors: list[list[float]],
    promptTokens: int,
    dimensions: int | None,
    start: int,
    end: int,
) -> EmbedResponse:
    """
    The C{/api/embed} body.

    @param model: the client's model name, echoed.
    @param vectors: the backend's vectors in input order.
    @param promptTokens: the backend's token count.
    @param dimensions: the requested length: longer vectors (from backends
        that ignore C{dimensions}) are cut, as Ollama does.
    @param start: request arrival (ns).
    @param end: now (ns).
    @return: the object, vectors L2-normalised like Ollama's.
    """
    if dimensions is not None:
        vectors = [v[:dimensions] for v in vectors]
    return {
        "model": model,
        "embeddings": [normalise(v) for v in vectors],
        "total_duration": max(1, end - start),
        "load_duration": 0,
        "prompt_eval_count": promptTokens,
    }


def emptyEmbedResponse(model: str) -> EmbedResponse:
    """
    Ollama's answer to an empty C{input}: the model is loaded, nothing is
    embedded.

    @param model: the client's model name.
    @return: C{{"model": ..., "embeddings": []}}.
    """
    return {"model": model, "embeddings": []}


def legacyPrompt(body: Mapping[str, object]) -> str:
    """
    Validate C{prompt} of the legacy C{/api/embeddings}.

    @param body: the request object.
    @return: the text (C{""} when missing).
    @raise BadRequest: if it is not a string.
    """
    prompt = body.get("prompt")
    if prompt is None:
        return ""
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    return prompt
