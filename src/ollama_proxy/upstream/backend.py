# -*- test-case-name: tests.upstream.test_backend -*-
"""
The OpenAI-compatible backend as seen from the proxy.

L{Backend} wraps an injected treq-style HTTP client (a real
C{treq.client.HTTPClient} in production, a C{treq.testing.StubTreq} in tests)
and knows URLs, the API key, timeouts, and the backend-level decisions of a
request: retrying a 429, retrying once without sampling extras the backend
refused, falling back from C{/v1/completions} to chat.  It knows nothing
about the client's request or dialect.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from hyperlink import EncodedURL
from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.http import RESPONSES, stringToDatetime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import UpstreamConnectError, UpstreamHTTPError
from ollama_proxy.protocol.backend_reader import errorFromBody
from ollama_proxy.protocol.flavors import GENERIC, Flavor, withoutRejectedExtras
from ollama_proxy.upstream.body import readBody, readJSON
from ollama_proxy.upstream.failures import failureToError
from ollama_proxy.upstream.pool import NO_COOKIES

async def raiseForStatus(
    response: IResponse,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> None:
    """
    Turn a non-2xx upstream answer into an error carrying its status and
    message (read from the body).  It lives with the requests that check
    the status (L{Backend.postJSON}, L{Backend.getJSON}): a 2xx answer
    never leaves this module for it.

    @param response: the upstream response.
    @param clock: see L{ollama_proxy.upstream.body.readBody}.
    @param idleTimeout: see L{ollama_proxy.upstream.body.readBody}.
    @raise UpstreamHTTPError: if the status is not 2xx.
    """
    if 200 <= response.code < 300:
        return
    body = await readBody(response, clock, idleTimeout)
    raise UpstreamHTTPError(errorFromBody(body, response.code), response.code)


def refusedRedirect(response: IResponse, what: str = "the backend") -> UpstreamConnectError:
    """
    The error for a redirect the proxy does not follow: a generation is
    only ever posted to the backend's own C{/v1} route (a redirect would
    send the prompt, and its key, wherever the backend points).  A 502
    naming the status, as Twisted's C{RedirectAgent} reported a redirected
    C{POST} (a failed connection, so that a pool fails over as before).

    @param response: the 3xx answer (its body already read).
    @param what: the upstream, for the message.
    @return: the error to raise.
    """
    phrase = RESPONSES.get(response.code, b"").decode("latin-1")
    return UpstreamConnectError(
        f"connection to {what} failed: {response.code} {phrase} (redirects are not followed)"
    )


class ReadyURL(EncodedURL):
    """
    An upstream URL parsed and converted to a URI once.

    treq parses a C{str} URL with hyperlink and converts it to a URI
    (IDNA-encoding the host) for every request; for the backend's own fixed
    URLs that was about a tenth of a non-streamed request.  This is the same
    hyperlink URL whose C{to_uri()} is itself and whose C{to_text()} is the
    text computed once, so treq sends exactly the bytes it would have.
    """

    _texts: tuple[str, str] | None = None

    @classmethod
    def fromText(cls, url: str) -> ReadyURL:
        """
        @param url: an absolute URL.
        @return: it, ready for treq.
        """
        uri = EncodedURL.from_text(url).to_uri()
        ready = cls(
            scheme=uri.scheme, host=uri.host, path=uri.path, query=uri.query,
            fragment=uri.fragment, port=uri.port, rooted=uri.rooted,
            userinfo=uri.userinfo, uses_netloc=uri.uses_netloc,
        )
        ready._texts = (uri.to_text(), uri.to_text(with_password=True))
        return ready

    def to_uri(self) -> EncodedURL:
        """
        @return: this URL, already a URI (a derived copy converts anew).
        """
        if self._texts is None:
            return super().to_uri()
        return self

    def to_text(self, with_password: bool = False) -> str:
        """
        @param with_password: include the password of the user info.
        @return: the text computed once (a derived copy formats anew).
        """
        if self._texts is None:
            return super().to_text(with_password)
        return self._texts[1 if with_password else 0]


log = Logger()

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)
"""Headers that describe one connection and must not be forwarded."""


HTTPClient = Any
"""
A treq-style client: C{treq.client.HTTPClient} in production,
C{treq.testing.StubTreq} in tests.  Only its C{request(method, url, **kw)}
is used.  (C{StubTreq} builds its methods at run time, so no static type
covers both.)
"""


async def sendRequest(
    http: HTTPClient,
    reactor: IReactorTime,
    headerTimeout: float,
    method: str,
    url: str | ReadyURL,
    body: bytes | None,
    headers: dict[bytes, list[bytes]] | Headers | None,
    what: str,
    follow: bool = True,
) -> IResponse:
    """
    Send one request and wait for its response headers (the body is left
    for the caller to stream), mapping every client-side failure to a proxy
    error.

    @param http: the treq-style client.
    @param reactor: the clock for the header timeout.
    @param headerTimeout: seconds to wait for the response headers.
    @param method: the HTTP method.
    @param url: the absolute URL (a L{ReadyURL} for the backend's own
        paths, parsed once).
    @param body: the request body, if any.
    @param headers: the request headers (a L{Headers} is sent as it is,
        not converted again).
    @param what: the upstream, for error messages.
    @param follow: whether treq follows a redirect (its C{RedirectAgent});
        C{False} answers with the 3xx itself, for the caller to refuse.
    @return: the response, whatever its status.
    @raise UpstreamError: if no response arrived.
    """
    try:
        response: IResponse = await http.request(
            method, url, data=body, headers=headers, unbuffered=True,
            timeout=headerTimeout, reactor=reactor, cookies=NO_COOKIES,
            allow_redirects=follow,
        )
    except CancelledError:
        raise
    except Exception as e:
        raise failureToError(e, what) from None
    return response


def apiBase(target: str) -> str:
    """
    The OpenAI API root for a C{--target}.

    The seed takes a server root (C{http://127.0.0.1:4000}) and calls
    C{/v1/models}; OpenAI-style URLs often already end in C{/v1}
    (C{https://api.openai.com/v1}, C{https://openrouter.ai/api/v1}).  Both
    are accepted.

    @param target: the configured base URL.
    @return: the base, without a trailing slash, ending in C{/v1}.
    """
    base = target.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def redactHeaders(headers: dict[bytes, list[bytes]]) -> dict[str, list[str]]:
    """
    A loggable copy of headers with secrets replaced.

    @param headers: raw header names and values.
    @return: text headers; C{Authorization}, C{X-API-Key}, C{X-Goog-Api-Key}
        and cookies are C{"<redacted>"}.
    """
    secret = {
        b"authorization", b"x-api-key", b"x-goog-api-key", b"proxy-authorization", b"cookie",
        b"api-key",
    }
    return {
        name.decode("latin-1"): (
            ["<redacted>"] if name.lower() in secret else [v.decode("latin-1") for v in values]
        )
        for name, values in headers.items()
    }


@attrs.define
class Backend:
    """
    One OpenAI-compatible server.

    @ivar http: the injected treq-style client.
    @ivar target: the base URL as configured.
    @ivar reactor: the clock for timeouts.
    @ivar apiKey: sent as C{Authorization: Bearer}; never logged.
    @ivar headerTimeout: seconds to wait for response headers.
    @ivar flavor: which non-OpenAI request fields the server accepts (see
        L{ollama_proxy.protocol.flavors.Flavor}).
    @ivar idleTimeout: seconds of silence after which the bodies that
        L{Backend} reads itself (error bodies, L{getJSON}) are abandoned;
        C{None} for no limit.
    @ivar retries: how many times a C{429 Too Many Requests} is retried by
        L{postJSON} (before any byte reached the client); 0 disables.
    @ivar forwardClientKey: send the client's own key (the C{clientKey}
        its request passes to L{headers}) upstream instead of L{apiKey} when
        the client presented one.
    @ivar maxRetryWait: the longest C{Retry-After} honoured; a backend that
        asks for a longer pause gets its 429 passed on at once.
    @ivar name: the backend's configured name, for logs and metrics.
    @ivar onResponse: called with C{(name, seconds)} each time response
        headers arrive (the metrics' upstream latency), if set.
    @ivar native: the agent APIs (C{"messages"}, C{"responses"}) the
        server speaks itself: requests to them are relayed, not translated.
    """

    http: HTTPClient
    target: str
    reactor: IReactorTime
    apiKey: str | None = attrs.field(default=None, repr=False)
    headerTimeout: float = 600.0
    flavor: Flavor = GENERIC
    retries: int = 0
    maxRetryWait: float = 10.0
    idleTimeout: float | None = None
    forwardClientKey: bool = False
    name: str = "default"
    onResponse: Callable[[str, float], None] | None = attrs.field(default=None, repr=False)
    native: frozenset[str] = frozenset()
    base: str = attrs.field(init=False)
    _ready: dict[str, ReadyURL] = attrs.field(init=False, factory=dict, repr=False)
    _jsonHeaders: Headers | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self.base = apiBase(self.target)

    def url(self, path: str) -> str:
        """
        @param path: an API path below C{/v1}, e.g. C{"chat/completions"}.
        @return: the absolute URL.
        """
        return f"{self.base}/{path.lstrip('/')}"

    def readyURL(self, path: str) -> ReadyURL:
        """
        L{url}, parsed once per path (the proxy's own few API paths; client
        paths of the passthrough are not cached).

        @param path: an API path below C{/v1}.
        @return: the absolute URL, ready for treq.
        """
        ready = self._ready.get(path)
        if ready is None:
            ready = self._ready[path] = ReadyURL.fromText(self.url(path))
        return ready

    def headers(
        self, extra: dict[bytes, list[bytes]] | None, *, clientKey: bytes | None
    ) -> dict[bytes, list[bytes]]:
        """
        The headers for an upstream request.

        @param extra: headers to forward (hop-by-hop and auth already removed
            by the caller).
        @param clientKey: the key the client presented, for a request made
            on its behalf (sent instead of L{apiKey} with
            L{forwardClientKey}); C{None} for one whose answer is shared by
            every client (model lists, metadata), so that one client's key
            cannot decide what the others see.  Required, so that every
            caller says which it is: the key travels with the request that
            presented it, never through state another request could see.
        @return: C{extra} plus C{Authorization} when a key is configured (or
            the client's key, with L{forwardClientKey}).
        """
        headers = dict(extra or {})
        key = clientKey if self.forwardClientKey else None
        if key is None and self.apiKey:
            key = self.apiKey.encode("utf-8")
        if key is not None:
            headers[b"Authorization"] = [b"Bearer " + key]
        return headers

    def jsonHeaders(self, clientKey: bytes | None) -> Headers:
        """
        L{headers} for a JSON body, as the L{Headers} treq sends as they
        are: built once and shared when they hold no client's key (treq,
        its agents and the connection only read them, copying to add), else
        built for this request alone.

        @param clientKey: the client's key (see L{headers}).
        @return: the headers.
        """
        if clientKey is not None and self.forwardClientKey:
            return Headers(self.headers({b"Content-Type": [b"application/json"]}, clientKey=clientKey))
        shared = self._jsonHeaders
        if shared is None:
            shared = self._jsonHeaders = Headers(
                self.headers({b"Content-Type": [b"application/json"]}, clientKey=None))
        return shared

    async def request(
        self,
        method: str,
        url: str | ReadyURL,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | Headers | None = None,
        what: str = "the backend",
        follow: bool = True,
    ) -> IResponse:
        """
        Send a request and wait for the response headers.

        The response body is not read: the caller streams it.

        @param follow: see L{sendRequest}.
        @return: the response, whatever its status.
        @raise UpstreamError: if no response arrived.
        """
        started = self.reactor.seconds()
        response = await sendRequest(
            self.http, self.reactor, self.headerTimeout, method, url, body, headers, what, follow
        )
        if self.onResponse is not None:
            self.onResponse(self.name, self.reactor.seconds() - started)
        return response

    async def postJSON(self, path: str, body: Any, *, clientKey: bytes | None) -> IResponse:
        """
        POST a JSON body to the backend and check the status.

        @param path: the API path below C{/v1}.
        @param body: the JSON-compatible request body.
        @param clientKey: the client's key (see L{headers}).
        @return: a 2xx response with its body unread.
        @raise UpstreamHTTPError: for a non-2xx answer, with the backend's
            status and message.
        @raise UpstreamConnectError: for a redirect (see L{refusedRedirect}).
        """
        data = codec.dumps(body)
        headers = self.jsonHeaders(clientKey)
        for attempt in range(self.retries + 1):
            response = await self.request("POST", self.readyURL(path), data, headers, follow=False)
            if 200 <= response.code < 300:
                # The common answer: no status to check, no coroutine for it.
                return response
            if response.code != 429 or attempt == self.retries:
                break
            wait = retryDelay(response, self.reactor.seconds())
            if wait is None or wait > self.maxRetryWait:
                break
            await readBody(response, self.reactor, self.idleTimeout)
            await deferLater(self.reactor, wait)
        if 300 <= response.code < 400:
            await readBody(response, self.reactor, self.idleTimeout)
            raise refusedRedirect(response)
        try:
            await raiseForStatus(response, self.reactor, self.idleTimeout)
        except UpstreamHTTPError as e:
            if e.status == 429:
                # A pool honours it for this member (ollama_proxy.upstream.fleet).
                e.retryAfter = retryDelay(response, self.reactor.seconds())
            raise
        return response

    async def postChat(
        self, body: JSON, path: str = "chat/completions", *, clientKey: bytes | None
    ) -> IResponse:
        """
        POST a generation request; if the backend refuses the sampling
        extras by name, once more without them (see
        L{withoutRejectedExtras}).

        @param body: the OpenAI request.
        @param path: the API path below C{/v1}.
        @param clientKey: the client's key (see L{headers}).
        @return: a 2xx response, body unread.
        @raise UpstreamHTTPError: for any other non-2xx answer.
        """
        try:
            return await self.postJSON(path, body, clientKey=clientKey)
        except UpstreamHTTPError as e:
            retryBody = withoutRejectedExtras(body, e.status, e.message)
            if retryBody is None:
                raise
            log.info(
                "backend rejected sampling extras (HTTP {status}); retrying without them",
                status=e.status,
            )
            return await self.postJSON(path, retryBody, clientKey=clientKey)

    async def postText(
        self, body: JSON, chatFallback: Callable[[], JSON] | None, *, clientKey: bytes | None
    ) -> tuple[IResponse, bool]:
        """
        POST a legacy text completion (raw prompt, fill-in-the-middle).

        A backend without C{/v1/completions} (404/405/501) gets the chat
        that C{chatFallback} builds instead; without one (a C{suffix} cannot
        be expressed as a chat) the backend's error stands.

        @param body: the C{/v1/completions} request.
        @param chatFallback: builds the equivalent chat request, if any.
        @param clientKey: the client's key (see L{headers}).
        @return: a 2xx response, body unread, and whether it is a chat.
        @raise UpstreamHTTPError: for a non-2xx answer.
        """
        try:
            return await self.postChat(body, "completions", clientKey=clientKey), False
        except UpstreamHTTPError as e:
            if e.status not in (404, 405, 501) or chatFallback is None:
                raise
            log.info(
                "backend refused /v1/completions ({status}); sending the raw prompt as a chat",
                status=e.status,
            )
            return await self.postChat(chatFallback(), clientKey=clientKey), True

    async def getJSON(self, path: str) -> Any:
        """
        GET a JSON document from the backend: the model lists and metadata
        that are cached and shared by every client, so always with the
        configured key (see L{headers}).

        @param path: the API path below C{/v1}.
        @return: the decoded body.
        @raise UpstreamError: on connection problems, non-2xx, or non-JSON.
        """
        response = await self.request("GET", self.readyURL(path), headers=self.headers(None, clientKey=None))
        await raiseForStatus(response, self.reactor, self.idleTimeout)
        return await readJSON(response, self.reactor, self.idleTimeout)


DEFAULT_RETRY_DELAY = 1.0
"""Seconds to wait before retrying a 429 that has no C{Retry-After}."""


def retryDelay(response: IResponse, now: float) -> float | None:
    """
    How long a 429 response asks us to wait.

    @param response: the upstream response.
    @param now: the current POSIX time, for an HTTP-date value.
    @return: seconds (L{DEFAULT_RETRY_DELAY} when the header is absent), or
        C{None} when the header cannot be understood.
    """
    values = response.headers.getRawHeaders(b"retry-after")
    if not values:
        return DEFAULT_RETRY_DELAY
    value = values[0].strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, float(stringToDatetime(value)) - now)
    except (ValueError, IndexError):
        # stringToDatetime fails on an empty value with IndexError.
        return None
