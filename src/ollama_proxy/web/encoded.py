# -*- test-case-name: tests.web.test_encoded -*-
"""
Whole JSON answers encoded once for many requests (a warm model list):
L{ollama_proxy.web.bridge.ProxyResource} sends their bytes as they are.
"""

from __future__ import annotations

from typing import Any

import attrs

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.redact import Redactor


@attrs.frozen
class Encoded:
    """
    A whole JSON answer encoded once and redacted of the proxy's own
    secrets, for answers many requests share (a warm model list): sent as
    it is to a request that presents no key of its own, re-encoded from
    L{value} for one that does (its key is a secret too).

    @ivar value: the answer.
    @ivar body: its bytes, as L{ProxyResource} would send them to a
        request without a client key of its own.
    @ivar redactor: the redactor L{body} was made with (a reload makes a
        new one, and a stale body is not used with it).
    """

    value: Any
    body: bytes
    redactor: Redactor


def encoded(value: Any, redactor: Redactor) -> Encoded:
    """
    @param value: a JSON answer.
    @param redactor: the proxy's secrets.
    @return: C{value} encoded and redacted as L{ProxyResource._send} and
        the outbound filter would: the same bytes.
    """
    body = redactor.data(codec.dumps(value))
    outbound = redactor.stream()
    if outbound is not None:
        body = outbound.feed(body) + outbound.end()
    return Encoded(value, body, redactor)
