"""
TODO
"""

from __future__ import annotations

from typing import Any, Literal

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest

Kind = Literal["chat", "generate"]


def requireObject(body: Any) -> JSON:
    """
    @param body: a decoded request body.
    @return: C{body} if it is a JSON object.
    @raise BadRequest: otherwise.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def requireModel(body: JSON) -> str:
    """
    @param body: a request object.
    @return: its non-empty C{model} (or legacy C{name}) string.
    @raise BadRequest: C{model is required} when missing or not a string.
    """
    model = body.get("model") or body.get("name")
    if model is None or model == "":
        raise BadRequest("model is required")
    if not isinstance(model, str):
        raise BadRequest("model must be a string")
    return model


def optionalString(body: JSON, key: str) -> str | None:
    """
    @param body: a request object.
    @param key: a field that may be absent or null.
    @return: its string value, or C{None}.
    @raise BadRequest: C{<key> must be a string} for any other type.
    """
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def streamFlag(body: JSON) -> bool:
    """
    Ollama's C{stream} defaults to true when absent.

    @param body: a request object.
    @return: whether to stream.
    @raise BadRequest: if C{stream} is not a boolean or null.
    """
    value = body.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRequest("stream must be a boolean")
    return value


_THINK_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def thinkValue(body: JSON) -> bool | str | None:
    """
    Validate Ollama's C{think} field.

    @param body: the request object.
    @return: C{None} when absent, else the bool or level string.
    @raise BadRequest: for any other value (Ollama's own message).
    """
    think = body.get("think")
    if think is None or isinstance(think, bool):
        return think
    if isinstance(think, str) and think in _THINK_EFFORT:
        return think
    raise BadRequest(
        f"invalid think value: {codec.dumps(think).decode()} "
        '(must be "high", "medium", "low", "max", true, or false)'
    )


def _number(options: JSON, key: str, kind: type | tuple[type, ...]) -> Any:
    """
    Read one typed option.

    @param options: the C{options} object.
    @param key: the option name.
    @param kind: C{int}, or C{(int, float)} for numbers.
    @return: the value, or C{None} when absent.
    @raise BadRequest: for a value of the wrong type, with Ollama's wording.
    """
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        typeName = "integer" if kind is int else "number"
        raise BadRequest(f'option "{key}" must be of type {typeName}')
    return value
