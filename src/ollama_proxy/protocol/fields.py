# -*- test-case-name: tests.protocol.test_fields -*-
"""
Field validators every dialect's parser shares, so that no dialect imports
another's parser for them: a body or a field that must be an object, a
string, a list of strings, a boolean, a typed number, an image given as
base64.  The checks are one; the words are the dialect's
(Ollama answers as Ollama does, the agents' dialects name the field's
path), given as templates.
"""

from __future__ import annotations

import base64
import binascii
from typing import Mapping, NamedTuple, overload

from ollama_proxy.protocol.codec import Obj
from ollama_proxy.protocol.errors import BadRequest


def requireObject(body: object) -> Obj:
    """
    @param body: a decoded request body.
    @return: C{body} if it is a JSON object.
    @raise BadRequest: otherwise.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def objectAt(value: object, where: str) -> Obj:
    """
    @param value: a field that must be an object.
    @param where: its path, for the message.
    @return: C{value}.
    @raise BadRequest: C{<where>: expected an object} otherwise.
    """
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object")
    return value


def stringAt(value: object, where: str) -> str:
    """
    @param value: a field that must be a string.
    @param where: its path, for the message.
    @return: C{value}.
    @raise BadRequest: C{<where>: expected a string} otherwise.
    """
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string")
    return value


def stringList(value: object, where: str) -> tuple[str, ...]:
    """
    @param value: a list of strings (stop sequences), or nothing.
    @param where: its path, for the message.
    @return: the strings; none for an absent, null or empty value.
    @raise BadRequest: C{<where>: expected a list of strings} otherwise.
    """
    if not value:
        return ()
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise BadRequest(f"{where}: expected a list of strings")
    return tuple(value)


def listAt(value: object, where: str) -> list[object]:
    """
    @param value: a field that may be a list, absent or null.
    @param where: its path, for the message.
    @return: C{value}, or an empty list for absent or null.
    @raise BadRequest: C{<where>: expected a list} for another type.
    """
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}: expected a list")
    return value


def booleanAt(value: object, where: str) -> bool | None:
    """
    @param value: a field that may be a boolean, absent or null.
    @param where: its path, for the message.
    @return: C{value}.
    @raise BadRequest: C{<where>: expected a boolean} for another type.
    """
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}: expected a boolean")
    return value


AGENT_NUMBER = "{where}{key}: expected {article} {kind}"
"""The agents' dialects' wording of a wrong number (the field's path)."""


Kind = type[int] | tuple[type[int], type[float]]
"""What L{numberField} takes: C{int}, or C{(int, float)} for any number."""


@overload
def numberField(body: Mapping[str, object], key: str, kind: type[int], where: str = "",
                wording: str = AGENT_NUMBER) -> int | None: ...


@overload
def numberField(body: Mapping[str, object], key: str, kind: tuple[type[int], type[float]],
                where: str = "", wording: str = AGENT_NUMBER) -> float | None: ...


def numberField(body: Mapping[str, object], key: str, kind: Kind, where: str = "",
                wording: str = AGENT_NUMBER) -> float | None:
    """
    One typed number of a request.

    @param body: the object holding it.
    @param key: its key.
    @param kind: C{int}, or C{(int, float)} for any number.
    @param where: the object's path (C{generationConfig.}), for the message.
    @param wording: the message's template: C{{where}}, C{{key}},
        C{{kind}} (C{integer} or C{number}) and its C{{article}}.
    @return: C{body[key]} when it is of C{kind} (bools excluded), C{None}
        when absent or null.
    @raise BadRequest: for another type.
    """
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        integer = kind is int
        raise BadRequest(wording.format(where=where, key=key,
                                        kind="integer" if integer else "number",
                                        article="an" if integer else "a"))
    return value


class Base64Wording(NamedTuple):
    """
    The messages of a bad inline image, as templates of C{{where}} (the
    field's path) and C{{error}} (what the decoder said).
    """

    notString: str
    invalid: str
    empty: str


AGENT_BASE64 = Base64Wording(
    notString="{where}: expected a base64 string",
    invalid="{where}: invalid base64 image data: {error}",
    empty="{where}: invalid base64 image data: image is empty",
)
"""The agents' dialects' wording (the field's path and the reason)."""


def base64Data(data: object, where: str = "", wording: Base64Wording = AGENT_BASE64) -> bytes:
    """
    Strictly decoded base64 (an image a client sent inline): standard
    alphabet, padding required, as Go's decoder for C{[]byte} (Ollama's)
    and the agent APIs require.

    @param data: the encoded value.
    @param where: the field's path, for the message.
    @param wording: the messages.
    @return: the decoded bytes, never empty.
    @raise BadRequest: for a non-string, invalid base64, or nothing.
    """
    if not isinstance(data, str):
        raise BadRequest(wording.notString.format(where=where))
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadRequest(wording.invalid.format(where=where, error=e)) from None
    if not raw:
        raise BadRequest(wording.empty.format(where=where))
    return raw


def inlineImage(mediaType: str, data: object, where: str) -> str:
    """
    An image a client sent inline (Anthropic's base64 source, Gemini's
    C{inlineData}) as the C{data:} URL the backend gets, its base64 checked
    strictly first (L{base64Data}).

    @param mediaType: its MIME type, as the client named it.
    @param data: the base64 text.
    @param where: the field's path, for the message.
    @raise BadRequest: for bad base64.
    """
    base64Data(data, where)
    return f"data:{mediaType};base64,{data}"
