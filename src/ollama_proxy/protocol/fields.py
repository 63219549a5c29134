# -*- test-case-name: tests.protocol.test_fields -*-
"""
Field validators every dialect's parser shares, so that no dialect imports
another's parser for them: a body that must be an object, a typed number,
an image given as base64.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest


def requireObject(body: object) -> JSON:
    """
    @param body: a decoded request body.
    @return: C{body} if it is a JSON object.
    @raise BadRequest: otherwise.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def numberField(body: JSON, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """
    One typed number of an agent request (C{"<key>: expected a number"}).

    @param body: the object holding it.
    @param key: its key.
    @param kind: C{int}, or C{(int, float)} for any number.
    @param where: the object's path (C{generationConfig.}), for the message.
    @return: C{body[key]} when it is of C{kind} (bools excluded), C{None}
        when absent or null.
    @raise BadRequest: for another type.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"{where}{key}: expected {'an integer' if kind is int else 'a number'}")
    return value


def base64Data(data: object, where: str) -> bytes:
    """
    Strictly decoded base64 (an image a client sent inline).

    @param data: the encoded value.
    @param where: the field's path, for the message.
    @return: the decoded bytes, never empty.
    @raise BadRequest: for a non-string, invalid base64, or nothing.
    """
    if not isinstance(data, str):
        raise BadRequest(f"{where}: expected a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(f"{where}: invalid base64 image data: {e}") from None
    if not raw:
        raise BadRequest(f"{where}: invalid base64 image data: image is empty")
    return raw
