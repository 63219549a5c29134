# -*- test-case-name: tests.protocol.test_target -*-
"""
The request grammar the proxy accepts before any resource runs: the
request-target (origin-form paths only, no dot segments, no encoded
slashes), the C{Host} authority (RFC 3986 C{host[:port]}), and the error
shape of the dialect a path belongs to.

Why this strict: the relayed routes carry the operator's backend key, and a
front proxy or backend that normalises C{/v1/models/../../key/generate}
(nginx C{proxy_pass .../}, CDNs, LiteLLM behind either) would serve a route
the proxy never meant to reach.  Refusing every spelling of a dot segment
or of a slash inside a segment (raw, percent-encoded in any case, encoded
twice, with C{;} parameters, as a backslash, as overlong UTF-8) at the door
means no later stage has to get it right.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal, Sequence
from urllib.parse import quote, unquote_to_bytes

from ollama_proxy.protocol import anthropic, gemini, responses
from ollama_proxy.protocol.codec import JSON

Dialect = Literal["ollama", "openai", "anthropic", "gemini"]

_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
"""A C{%} not followed by two hex digits: malformed (C{%u002e} is IIS's)."""

_DECODINGS = 4
"""How many rounds of percent-decoding are looked through: C{%25252e} is a
dot after three; more rounds than any server applies."""

_REG_NAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9_])?\.?\Z")
"""A host name as the proxy serves it: letters, digits, C{-}, C{_} and
dots, one trailing dot (the absolute form of the same name) allowed.
Stricter than RFC 3986's reg-name, which also takes sub-delims and
percent-escapes no resolver gives a meaning."""

_MODEL_ID = re.compile(rb"/models/[^/]+\Z")
"""A path ending in C{/models/{id}}: OpenAI's model retrieval."""

_PORT = re.compile(r"[0-9]{0,5}\Z")

PATH_SAFE = "/:@!$&'()*+,;=-._~%"
"""What stays as it is when a checked path is re-encoded for upstream:
RFC 3986's C{pchar}s, the separator, and the escapes already there."""

QUERY_SAFE = PATH_SAFE + "?"


def checkTarget(target: bytes) -> str | None:
    """
    Check a request-target.

    @param target: the request line's target, as sent.
    @return: why it is refused, or C{None} when it is a clean origin-form
        path (and query).
    """
    if not target.startswith(b"/"):
        # absolute-form (GET http://evil/), authority-form (CONNECT h:443),
        # asterisk-form (OPTIONS *): the proxy is an origin server, not a
        # forward proxy, and an authority in the target would decide where
        # a request built from it goes.
        return "the request target must be a path starting with /"
    path = target.partition(b"?")[0]
    if b"#" in path:
        return "the request target must not contain a fragment (#)"
    return checkPath(path)


GRAMMAR_CACHE_SIZE = 512
"""Targets and C{Host} values whose verdict L{refusedGrammar} remembers (a
client uses the same few; a flood of new ones clears the table, so it
stays small)."""

GRAMMAR_CACHE_KEY = 512
"""The longest target and C{Host} remembered, in bytes together."""

_verdicts: dict[tuple[bytes, bytes | None], str | None] = {}
"""L{refusedGrammar}'s verdicts for one C{Host}: a pure function of the two,
and the same few requests (C{POST /api/chat}, C{Host: localhost:11434})
are most of a proxy's traffic, so each is checked once."""


def refusedGrammar(target: bytes, hosts: Sequence[bytes]) -> str | None:
    """
    Check a request's target (L{checkTarget}) and its C{Host} headers.

    @param target: the request line's target, as sent.
    @param hosts: the values of its C{Host} headers.
    @return: why the request is refused, or C{None}.
    """
    if len(hosts) > 1:
        # twisted.web would take the last; a front proxy may have checked
        # the first.
        return checkTarget(target) or "more than one Host header"
    key = (target, hosts[0] if hosts else None)
    try:
        return _verdicts[key]
    except KeyError:
        pass
    verdict = checkTarget(target)
    host = key[1].strip() if key[1] is not None else b""
    if verdict is None and host and parseAuthority(host) is None:
        verdict = "malformed Host header: expected host or host:port (RFC 3986)"
    if len(target) + len(key[1] or b"") <= GRAMMAR_CACHE_KEY:
        if len(_verdicts) >= GRAMMAR_CACHE_SIZE:
            _verdicts.clear()
        _verdicts[key] = verdict
    return verdict


def checkPath(path: bytes) -> str | None:
    """
    Check the path of a request-target (or of an upstream URL about to be
    sent).

    @param path: the raw path, starting with C{/}.
    @return: why it is refused, or C{None}.
    """
    if b"\\" in path:
        return "backslashes are not allowed in the path"
    if _PERCENT.search(path):
        return "malformed percent-encoding in the path"
    segments = path.split(b"/")[1:]
    modelId = _MODEL_ID.search(path) is not None
    for i, segment in enumerate(segments):
        reason = _checkSegment(segment, modelId and i == len(segments) - 1)
        if reason is not None:
            return reason
    return None


def _checkSegment(segment: bytes, modelId: bool = False) -> str | None:
    """
    @param segment: one raw path segment.
    @param modelId: whether it is the C{{id}} of C{/models/{id}}, where one
        C{%2F} is part of the id: the C{openai} SDK sends
        C{models.retrieve("qwen/qwen3")} as C{/models/qwen%2Fqwen3}.  Its
        pieces are then checked as segments of their own (C{..%2F..} is
        still refused, as is an empty piece or a slash encoded twice).
    @return: why it is refused, or C{None}.
    """
    for rounds in range(_DECODINGS + 1):
        if rounds and (b"/" in segment or b"\\" in segment):
            if rounds == 1 and modelId and b"\\" not in segment:
                for piece in segment.split(b"/"):
                    reason = _checkSegment(piece) if piece else "empty segment in the model id"
                    if reason is not None:
                        return reason
                return None
            return "encoded slashes are not allowed in the path"
        try:
            segment.decode("utf-8")
        except UnicodeDecodeError:
            # Overlong forms (%c0%ae) are a dot to some decoders.
            return "the path is not valid UTF-8"
        if any(b < 0x20 or b == 0x7F for b in segment):
            return "control characters are not allowed in the path"
        # Tomcat and Spring read "..;x" as ".." (path parameters).
        if segment.partition(b";")[0] in (b".", b".."):
            return "dot segments (. and ..) are not allowed in the path"
        if b"%" not in segment:
            return None
        segment = unquote_to_bytes(segment)
    return "the path is percent-encoded too many times"


def reencode(text: str, safe: str = PATH_SAFE) -> str:
    """
    @param text: a checked path (or query) as text (latin-1 of its bytes).
    @return: the same, with anything outside C{safe} percent-encoded, so
        that no byte can end or change the URL part it is put in.
    """
    return quote(text.encode("latin-1"), safe=safe)


def parseAuthority(value: bytes) -> tuple[str, str | None] | None:
    """
    Parse a C{Host} header value as RFC 3986 C{host [":" port]}.

    @param value: the header value.
    @return: the host (lower-case, IPv6 without brackets, one trailing dot
        removed) and the port text (C{None} without a colon), or C{None}
        when the value is not that grammar (C{[::1]evil.com},
        C{[localhost]:1}, C{localhost:evil}, C{a b}, C{a,b}, ...).
    """
    try:
        text = value.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    port: str | None = None
    if text.startswith("["):
        inside, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return None
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            return None
        host = inside
        if rest:
            port = rest[1:]
    else:
        host, colon, portText = text.partition(":")
        if colon:
            port = portText
        if not _REG_NAME.match(host) or ".." in host:
            return None
        host = host[:-1] if host.endswith(".") else host
    if port is not None and not _PORT.match(port):
        return None
    return host, port


def dialectOf(path: bytes) -> Dialect:
    """
    @param path: a request path.
    @return: whose error shape an answer to it takes: Anthropic's under
        C{/v1/messages}, Google's under C{/v1beta}, OpenAI's elsewhere
        under C{/v1} and on the root OpenAI routes, Ollama's otherwise.
    """
    if path == b"/v1/messages" or path.startswith(b"/v1/messages/"):
        return "anthropic"
    if path == b"/v1beta" or path.startswith(b"/v1beta/"):
        return "gemini"
    for prefix in (b"/v1", b"/models", b"/chat/completions"):
        if path == prefix or path.startswith(prefix + b"/"):
            return "openai"
    return "ollama"


def errorObject(dialect: Dialect, status: int, message: str) -> JSON:
    """
    @param dialect: from L{dialectOf}.
    @param status: the HTTP status.
    @param message: the error text.
    @return: the error body in that dialect's shape.
    """
    if dialect == "anthropic":
        return anthropic.errorObject(status, message)
    if dialect == "openai":
        return responses.errorObject(status, message)
    if dialect == "gemini":
        return gemini.errorObject(status, message)
    return {"error": message}
