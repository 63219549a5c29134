# -*- test-case-name: tests.protocol.test_codec -*-
"""
One place that encodes and decodes JSON.

Every byte the proxy writes to a client and every upstream chunk it reads goes
through these two functions, so the JSON library is a single swap.  We use
C{orjson}: it returns C{bytes} directly (no C{str} round trip per streamed
line) and is several times faster than the standard library, which matters on
the per-token path.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson

from ollama_proxy.protocol.errors import BadRequest

JSON = dict[str, Any]
"""A JSON object the proxy built or already checked (its values are
whatever the code put there)."""

Obj = dict[str, object]
"""A decoded JSON object from outside (a client's body, a backend's
reply): nothing in it is trusted until an C{isinstance} check says what it
is.  What a seam takes in, where L{JSON} would let any use through
unchecked."""

JSONDecodeError = orjson.JSONDecodeError

MAX_DEPTH = 128
"""
The deepest nesting of arrays and objects a request body may have.  orjson
parses up to 1024 levels but encodes at most 254, so a body between the two
was parsed and then failed to re-encode (a 500); one limit checked at parse
time, below both, makes every route refuse it with a 400 instead.  128 is
far above what real clients send: a coding agent's deepest tool schema is
about 20 levels, inside a request envelope of about 6.
"""


class TooDeep(ValueError):
    """
    A request body nested deeper than L{MAX_DEPTH}.
    """


def checkDepth(value: object, limit: int = MAX_DEPTH) -> None:
    """
    Walk the containers of a decoded value (breadth first, no recursion).

    @raise TooDeep: if arrays and objects nest deeper than C{limit}.
    """
    level: list[object] = [value]
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            raise TooDeep(f"request body is nested more than {limit} levels deep")
        children: list[object] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                children.extend(v for v in item if isinstance(v, (dict, list)))
        level = children


dumps: Callable[[object], bytes] = orjson.dumps
"""
Encode a JSON-compatible value as compact UTF-8 JSON, without a trailing
newline: orjson's own function, not a wrapper, because the encoders call it
once per token (a Python frame per token for nothing, and a step of every
walk into this module).
"""


loadsFlat: Callable[[bytes], object] = orjson.loads
"""
orjson's own C{loads}, for text the caller then accepts only as a value
that cannot nest (a string): no depth to check, and no Python frame around
it (the stream reader calls it once per token, L{ollama_proxy.protocol.
backend_reader.ChatStreamReader}).  Anything else decodes with L{loadsBounded}.
"""


def dumpsBodies(texts: list[str]) -> list[bytes]:
    """
    Each string's JSON encoding without its quotes, as C{dumps(text)[1:-1]}
    but in one encoding of the list for a run of a stream's texts: a call
    of orjson costs as much as a token's text.

    The list's encoding is cut at its separators (C{","}).  Only a quote
    that a backslash escapes can make C{","} that is no separator (a text
    ending with C{",}), so an encoding with C{\\","} anywhere (that, or a
    text ending with a backslash) is not cut: each text is encoded alone.

    @param texts: the texts.
    @return: their encodings' insides, in order.
    """
    encoded = orjson.dumps(texts)
    if b'\\","' not in encoded:
        bodies = encoded[2:-2].split(b'","')
        if len(bodies) == len(texts):
            return bodies
    return [orjson.dumps(text)[1:-1] for text in texts]


def dumpLine(obj: object) -> bytes:
    """
    Encode C{obj} as one NDJSON line.

    @param obj: a JSON-compatible value.
    @return: the encoded bytes followed by exactly one C{b"\\n"}.
    """
    return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)


def loads(data: bytes | str) -> Any:
    """
    Decode JSON text.

    @param data: UTF-8 bytes or text.
    @return: the decoded value.
    @raise JSONDecodeError: if C{data} is not valid JSON.
    """
    return orjson.loads(data)


def loadsBounded(data: bytes | bytearray | str) -> object:
    """
    Decode JSON nested at most L{MAX_DEPTH} deep, so that whatever parses
    also re-encodes: for client bodies (L{loadsRequest}, the passthrough)
    and the backend's replies alike (a hostile backend's reply or tool-call
    arguments nested deeper would parse and then fail to re-encode into the
    client's dialect, a 500 instead of the backend's fault).

    @raise TooDeep: if it nests deeper than L{MAX_DEPTH} (orjson's own
        recursion limit of 1024 included).
    @raise JSONDecodeError: if C{data} is not valid JSON.
    """
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        # orjson's own limit (1024): "depth limit exceeded" today,
        # "recursion limit" in older releases.
        if "depth limit" in str(e) or "recursion" in str(e):
            raise TooDeep(f"request body is nested more than {MAX_DEPTH} levels deep") from None
        raise
    if isinstance(data, str):
        opened = data.count("{") + data.count("[")
    else:
        opened = data.count(b"{") + data.count(b"[")
    if opened > MAX_DEPTH:
        # Each level opens with a bracket, so only text with more than
        # MAX_DEPTH of them (counted in strings too) can nest that deep:
        # the walk is skipped for a stream's every event.
        checkDepth(decoded, MAX_DEPTH)
    return decoded


def loadsRequest(data: bytes | bytearray) -> object:
    """
    Decode a client's request body: JSON, nested at most L{MAX_DEPTH} deep,
    so that whatever parses also re-encodes.

    @raise ollama_proxy.protocol.errors.BadRequest: for invalid JSON or
        deeper nesting (the route shapes it in its dialect).
    """
    try:
        return loadsBounded(data)
    except TooDeep as e:
        raise BadRequest(str(e)) from None
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"invalid JSON in request body: {e}") from None


def canonical(obj: object) -> bytes:
    """
    Encode C{obj} with sorted keys, so that equal values give equal bytes
    (for digests).

    @param obj: a JSON-compatible value.
    @return: the encoded bytes.
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
