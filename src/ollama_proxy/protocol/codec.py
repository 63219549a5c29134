# -*- test-case-name: tests.protocol.test_ollama -*-
"""
One place that encodes and decodes JSON.

Every byte the proxy writes to a client and every upstream chunk it reads goes
through these two functions, so the JSON library is a single swap.  We use
C{orjson}: it returns C{bytes} directly (no C{str} round trip per streamed
line) and is several times faster than the standard library, which matters on
the per-token path.
"""

from __future__ import annotations

from typing import Any

import orjson

JSON = dict[str, Any]
"""A decoded JSON object."""

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: object) -> bytes:
    """
    Encode C{obj} as compact UTF-8 JSON.

    @param obj: a JSON-compatible value.
    @return: the encoded bytes, without a trailing newline.
    """
    return orjson.dumps(obj)


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


def canonical(obj: object) -> bytes:
    """
    Encode C{obj} with sorted keys, so that equal values give equal bytes
    (for digests).

    @param obj: a JSON-compatible value.
    @return: the encoded bytes.
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
