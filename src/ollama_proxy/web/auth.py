# -*- test-case-name: tests.web.test_auth -*-
"""
Inbound authentication and the per-request client key.

L{KeyGate} wraps the root resource: every request must carry one of the
configured keys as C{Authorization: Bearer <key>}, C{X-API-Key: <key>} or
(Google's clients) C{X-Goog-Api-Key: <key>} or C{?key=<key>} on the Gemini
API's routes,
except C{GET /}, C{HEAD /} and C{/health/...} (health checks, see
L{ollama_proxy.web.health}) and C{OPTIONS} (CORS
preflights, which browsers send without credentials).  Keys are compared
with L{hmac.compare_digest} against every configured key, so the time taken
does not reveal how much of a guess was right.

The key a client presented is read once per request (L{presentedKey}, kept
on the exchange) and passed explicitly with each upstream call made on the
request's behalf (the C{clientKey} of
L{ollama_proxy.upstream.backend.Backend.headers}, required there): no state
outside the request carries it, so concurrent requests never see each
other's keys.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from typing import Iterable

from twisted.web.http import parse_qs
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.target import dialectOf, errorObject

GEMINI = b"/v1beta"
"""The Gemini API's own tree (see L{ollama_proxy.web.gemini})."""
GEMINI_V1 = b"/v1/models"
"""Where Google's C{v1} clients meet the OpenAI model routes."""


def queryKey(request: Request) -> bytes | None:
    """
    @return: the C{key} query parameter Google's clients may send instead
        of a header, if any.
    """
    values = parse_qs(request.uri.partition(b"?")[2]).get(b"key")
    return values[0].strip() or None if values else None


def googleClient(request: Request) -> bool:
    """
    Whether a request comes from one of Google's clients: it carries the
    key as they do (C{X-Goog-Api-Key}, or C{?key=}).  On C{/v1/models},
    shared by OpenAI's and Google's C{v1} APIs, this picks the dialect.
    """
    return bool(request.requestHeaders.getRawHeaders(b"x-goog-api-key")) or queryKey(request) is not None


def geminiPath(path: bytes) -> bool:
    """
    @return: whether C{path} is under C{/v1beta}, or C{/v1/models}.
    """
    return path in _GEMINI_ROOTS or path.startswith(_GEMINI_PREFIXES)


_GEMINI_ROOTS = (GEMINI, GEMINI_V1)
_GEMINI_PREFIXES = tuple(root + b"/" for root in _GEMINI_ROOTS)


def presentedKey(request: Request) -> bytes | None:
    """
    The key a client sent.

    @param request: the client request.
    @return: the token of C{Authorization: Bearer <token>}, else the value
        of C{X-API-Key} or C{X-Goog-Api-Key}, else (on the Gemini API's
        routes, L{geminiPath}) the C{key} query parameter, else C{None}.
    """
    headers = request.requestHeaders
    authorization = headers.getRawHeaders(b"authorization")
    if authorization:
        scheme, _, token = authorization[0].strip().partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    for name in (b"x-api-key", b"x-goog-api-key"):
        apiKey = headers.getRawHeaders(name)
        if apiKey and apiKey[0].strip():
            return apiKey[0].strip()
    if geminiPath(request.path or b""):
        # Google's clients may put the key in the query instead; only on
        # the routes where it makes the request Google's, whose query
        # never goes upstream (a relayed OpenAI route keeps its query).
        return queryKey(request)
    return None


def readKeys(text: str) -> list[str]:
    """
    Parse keys from a file or an option: one per line or comma-separated,
    blank entries and C{#} comment lines ignored.

    @param text: the raw text.
    @return: the keys.
    """
    keys: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        keys.extend(part.strip() for part in line.split(",") if part.strip())
    return keys


class Unauthorized(Resource):
    """
    The answer to a request without a valid key: 401 with the JSON error
    shape of the route's dialect (Ollama's, or Anthropic's and OpenAI's on
    the agent and C{/v1} routes, whose SDKs read their own) and a C{WWW-Authenticate}
    challenge.
    """

    isLeaf = True

    def __init__(self, challenge: bytes = b'Bearer realm="ollama-proxy"') -> None:
        """
        @param challenge: the C{WWW-Authenticate} value (C{Basic} makes a
            browser ask for the key).
        """
        super().__init__()
        self.challenge = challenge

    def render(self, request: Request) -> bytes:
        """
        @return: C{{"error": "unauthorized"}}, or the error of the path's
            dialect (L{dialectOf}: Anthropic's, OpenAI's, Google's).
        """
        request.setResponseCode(401)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"WWW-Authenticate", self.challenge)
        path = request.path or b""
        # /v1/models is Google's v1 API for Google's clients (ModelsRoute).
        google = path.startswith(GEMINI_V1) and googleClient(request)
        dialect = "gemini" if google else dialectOf(path)
        return codec.dumps(errorObject(dialect, 401, "unauthorized"))


BROWSER_PATHS = frozenset({b"status", b"status.json", b"status.js"})
"""The status page's paths: a browser opens them, and can send a key only
as HTTP Basic credentials (the key as the password), which it asks the
user for on a C{WWW-Authenticate: Basic} challenge."""


def basicPassword(request: Request) -> bytes | None:
    """
    @param request: the client request.
    @return: the password of C{Authorization: Basic ...}, or C{None}.
    """
    authorization = request.requestHeaders.getRawHeaders(b"authorization")
    if not authorization:
        return None
    scheme, _, token = authorization[0].strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    _, colon, password = decoded.partition(b":")
    return password if colon and password else None


class KeyGate(Resource):
    """
    A root resource that admits only requests carrying an accepted key and
    otherwise delegates traversal to the wrapped root.

    @ivar wrapped: the real root.
    @ivar keys: the accepted keys (bytes); none admits every request (a
        reload may remove the last key, or add the first).
    """

    def __init__(self, wrapped: IResource, keys: Iterable[str]) -> None:
        super().__init__()
        self.wrapped = wrapped
        self.keys = [key.encode("utf-8") for key in keys]
        self._unauthorized = Unauthorized()
        self._browserUnauthorized = Unauthorized(b'Basic realm="ollama-proxy", charset="UTF-8"')

    def allowed(self, request: Request, basic: bool = False) -> bool:
        """
        @param request: the client request.
        @param basic: also take the key as an HTTP Basic password (the
            status page's paths only).
        @return: whether it carries one of L{keys}.
        """
        presented = presentedKey(request)
        if presented is None and basic:
            presented = basicPassword(request)
        if presented is None:
            return False
        # Compare against every key, without short-circuiting.
        matches = [hmac.compare_digest(presented, key) for key in self.keys]
        return any(matches)

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        """
        Check the key at the first path segment; health checks and CORS
        preflights pass without one.
        """
        method = request.method
        isHealthCheck = method in (b"GET", b"HEAD") and (
            (path == b"" and not request.postpath) or path == b"health"
        )
        browser = path in BROWSER_PATHS
        if (method == b"OPTIONS" or isHealthCheck or not self.keys
                or self.allowed(request, basic=browser)):
            child: IResource = self.wrapped.getChildWithDefault(path, request)
            return child
        return self._browserUnauthorized if browser else self._unauthorized

    def render(self, request: Request) -> bytes:
        """
        Not reached through a L{twisted.web.server.Site} (traversal always
        has at least one segment); refuse to be safe.
        """
        return self._unauthorized.render(request)


def requireKeys(root: IResource, keys: Iterable[str]) -> IResource:
    """
    Put a L{KeyGate} in front of C{root}'s resources, but behind a CORS
    wrapper if there is one (L{ollama_proxy.web.cors.CORSResource}): preflights
    are then answered by the CORS layer, and a 401 still carries the CORS
    headers, so a browser sees the real error rather than a CORS failure.

    @param root: what L{ollama_proxy.web.tree.buildRoot} returned.
    @param keys: the accepted keys.
    @return: the root to serve.
    """
    from ollama_proxy.web.cors import CORSResource

    if isinstance(root, CORSResource):
        root.wrapped = KeyGate(root.wrapped, keys)
        return root
    return KeyGate(root, keys)
