# -*- test-case-name: tests.web.test_cors -*-
"""
Browser protections: cross-origin requests, allowed the way Ollama allows them (C{OLLAMA_ORIGINS}
plus its built-in list), so browser-based clients -- Obsidian
(C{app://obsidian.md}), VS Code webviews, Tauri apps, pages on localhost --
work against the proxy as they do against Ollama.

L{CORSResource} wraps the root resource: it adds the C{Access-Control-*}
headers to responses for allowed origins, answers preflight C{OPTIONS}
itself, and leaves everything else to the wrapped tree.  A disallowed
origin simply gets no CORS headers (the browser then blocks the page);
its preflight is refused with a 403.

L{HostPolicy} is the other browser protection Ollama has: against DNS
rebinding.  A page on C{evil.example} whose name is re-pointed at
127.0.0.1 is same-origin with the proxy, so CORS never applies, and it could
spend the backend key.  When every listener is on loopback, only local
C{Host} names are served (see L{ollama_proxy.web.site}).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from typing import Any, Iterable

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.target import parseAuthority

DEFAULT_ORIGINS: tuple[str, ...] = tuple(
    origin
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for origin in (f"{scheme}://{host}", f"{scheme}://{host}:*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
"""Ollama's always-allowed origins (C{envconfig.AllowedOrigins})."""

ALLOW_METHODS = b"GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"
ALLOW_HEADERS = b", ".join(
    [
        b"Authorization",
        b"Content-Type",
        b"User-Agent",
        b"Accept",
        b"X-Requested-With",
        b"Origin",
        b"Content-Length",
        b"OpenAI-Beta",
    ]
    + [
        b"x-stainless-" + name
        for name in (
            b"arch", b"async", b"custom-poll-interval", b"helper-method", b"lang",
            b"os", b"package-version", b"poll-helper", b"retry-count", b"runtime",
            b"runtime-version", b"timeout",
        )
    ]
)
"""The request headers Ollama accepts cross-origin (its list, plus the
gin-contrib/cors defaults)."""

MAX_AGE = b"43200"
"""Seconds a browser may cache a preflight answer (gin-contrib/cors' 12 h)."""


class OriginPolicy:
    """
    Which C{Origin} values may call the proxy from a browser.

    @ivar patterns: glob patterns (C{*} matches anything, as in
        C{OLLAMA_ORIGINS}), compared case-insensitively.
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.patterns = tuple(p.lower() for p in (*DEFAULT_ORIGINS, *extra) if p)

    def allows(self, origin: str) -> bool:
        """
        @param origin: the request's C{Origin} header.
        @return: whether it matches one of the patterns.
        """
        origin = origin.lower()
        return any(fnmatch.fnmatchcase(origin, pattern) for pattern in self.patterns)


def corsHeaders(policy: OriginPolicy, origin: bytes | None) -> list[tuple[bytes, bytes]]:
    """
    The response headers a request's origin is due, for any answer (the
    site's own 408, 413 and 503 as well as the resources').

    @param policy: the allowed origins.
    @param origin: the request's C{Origin} header, if any.
    @return: C{Vary: Origin} for any origin, plus
        C{Access-Control-Allow-Origin} for an allowed one.
    """
    if origin is None:
        return []
    headers = [(b"Vary", b"Origin")]
    if policy.allows(origin.decode("latin-1")):
        headers.append((b"Access-Control-Allow-Origin", origin))
    return headers


LOCAL_SUFFIXES = (".localhost", ".local", ".internal")
"""Names that never resolve outside the machine or its network (Ollama's
list)."""


class HostPolicy:
    """
    Which C{Host} names a loopback-only proxy serves, as Ollama's
    C{allowedHostsMiddleware}: C{localhost}, names under C{.localhost},
    C{.local} and C{.internal}, the machine's own name, IP literals that
    are loopback, private or unspecified (rebinding needs a name), no
    C{Host} at all, and the globs of C{--allow-host}.

    @ivar patterns: the extra globs, lower-case.
    @ivar hostname: the machine's own name, lower-case.
    """

    CACHED = 64
    """How many C{Host} values' answers are kept: a client sends the same
    one on every request, and parsing it as an IP address was ~6 % of a
    warm C{/api/tags}; the bound keeps a client that varies it from
    growing the cache."""

    def __init__(self, extra: Iterable[str] = (), hostname: str | None = None) -> None:
        self.patterns = tuple(p.lower() for p in extra if p)
        self.hostname = (hostname if hostname is not None else socket.gethostname()).lower()
        self._answers: dict[bytes, bool] = {}

    def allows(self, host: bytes | None) -> bool:
        """
        @param host: the request's C{Host} header (with or without a port).
        @return: whether the request may be served: never for a value that
            is not RFC 3986's C{host[:port]} (the site answers those 400
            before asking), and C{localhost.} is C{localhost} (the absolute
            form of the same name; C{127.0.0.1.} is what a browser's URL
            parser makes C{127.0.0.1} of, and no DNS zone can hold it).
        """
        if not host:
            return True
        answer = self._answers.get(host)
        if answer is None:
            answer = self._allows(host)
            if len(self._answers) >= self.CACHED:
                self._answers.clear()
            self._answers[host] = answer
        return answer

    def _allows(self, host: bytes) -> bool:
        """
        L{allows}, uncached.
        """
        authority = parseAuthority(host.strip())
        if authority is None:
            return False
        name = authority[0]
        if name in ("", "localhost", self.hostname) or name.endswith(LOCAL_SUFFIXES):
            return True
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)
        return address.is_loopback or address.is_private or address.is_unspecified


def _forbidden(request: Request) -> bytes:
    request.setResponseCode(403)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    return codec.dumps({"error": "origin not allowed"})


class Preflight(Resource):
    """
    The answer to C{OPTIONS}: 204 with the C{Allow-*} headers for an allowed
    origin, a plain 204 without an C{Origin}; and 403 for any request from a
    disallowed origin.
    """

    isLeaf = True

    def __init__(self, allowed: bool | None) -> None:
        super().__init__()
        self.allowed = allowed

    def render(self, request: Request) -> Any:
        if self.allowed is False:
            return _forbidden(request)
        request.setResponseCode(204)
        if self.allowed:
            request.setHeader(b"Access-Control-Allow-Methods", ALLOW_METHODS)
            # The full list: the browser checks each requested header
            # against it and refuses the request if one is missing.
            request.setHeader(b"Access-Control-Allow-Headers", ALLOW_HEADERS)
            request.setHeader(b"Access-Control-Max-Age", MAX_AGE)
        else:
            request.setHeader(b"Allow", ALLOW_METHODS)
        return b""


class CORSResource(Resource):
    """
    Wraps the root: every request passes through L{getChildWithDefault}
    once, which is where the headers are added.

    @ivar wrapped: the real root resource.
    @ivar policy: the allowed origins.
    """

    def __init__(self, wrapped: IResource, policy: OriginPolicy) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.policy = policy

    def _decorate(self, request: Request) -> bool | None:
        """
        Add the response headers for the request's origin.

        @return: C{None} without an C{Origin}, else whether it is allowed.
        """
        origin = request.getHeader(b"Origin")
        if origin is None:
            return None
        headers = corsHeaders(self.policy, origin)
        for name, value in headers:
            request.responseHeaders.addRawHeader(name, value)
        return len(headers) > 1

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        allowed = self._decorate(request)
        if request.method == b"OPTIONS" or allowed is False:
            # Like Ollama, refuse any request from a disallowed origin, not
            # only its preflight: a page may send a "simple" POST (text/plain)
            # without one, and it would spend the backend's tokens even
            # though the browser hides the answer.
            return Preflight(allowed)
        child: IResource = self.wrapped.getChildWithDefault(path, request)
        return child

    def render(self, request: Request) -> Any:
        # Only reached for a request with an empty path list, which HTTP
        # cannot produce; delegate all the same.
        return self.wrapped.render(request)
