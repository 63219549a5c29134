# -*- test-case-name: tests.test_resources -*-
"""
The OpenAI-compatible backend as seen from the proxy.

L{Backend} wraps an injected treq-style HTTP client (a real
C{treq.client.HTTPClient} in production, a C{treq.testing.StubTreq} in tests)
and knows URLs, the API key, timeouts and how upstream failures map to
L{ollama_proxy.errors}.  It knows nothing about C{twisted.web} requests.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    DNSLookupError,
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import (
    HTTPConnectionPool,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http import stringToDatetime
from twisted.web.iweb import IResponse

from ollama_proxy import codec
from ollama_proxy.auth import clientKey
from ollama_proxy.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from ollama_proxy.translate import GENERIC, Flavor, errorFromBody

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
    @return: text headers; C{Authorization}, C{X-API-Key} and cookies are
        C{"<redacted>"}.
    """
    secret = {b"authorization", b"x-api-key", b"proxy-authorization", b"cookie", b"api-key"}
    return {
        name.decode("latin-1"): (
            ["<redacted>"] if name.lower() in secret else [v.decode("latin-1") for v in values]
        )
        for name, values in headers.items()
    }


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory without the two "Starting/Stopping
    factory" log lines per upstream connection (most of the log volume
    under load).
    """

    noisy = False


class ConnectionPool(HTTPConnectionPool):
    """
    An L{HTTPConnectionPool} that never keeps a connection that is already
    closing.

    The race it closes (found by C{bench/soak.py}, Twisted 26.10): a client
    disconnects, so the upstream transport is told to C{loseConnection()}
    (twisted.web forwards C{stopProducing} to the request's producer).  TCP
    closes lazily, and in the same reactor iteration the read that was
    already reported ready delivers the last bytes of the response.
    C{HTTP11ClientProtocol} then sees a complete response and returns the
    connection to the pool, where the next request picks it up and fails
    with C{ConnectionDone} (a spurious 502).  Here a closing transport is
    simply not cached; it finishes closing on its own.
    """

    _factory = _QuietClientFactory

    def _putConnection(self, key: Any, connection: Any) -> None:
        transport = connection.transport
        if transport is None or transport.disconnecting:
            return
        super()._putConnection(key, connection)


def failureToError(reason: BaseException, what: str) -> UpstreamError:
    """
    Map a client-side exception from treq/Agent to a proxy error.

    @param reason: the exception.
    @param what: a short description of the upstream, for the message.
    @return: a 504 for timeouts, a 502 for everything else.
    """
    if isinstance(reason, (ResponseNeverReceived, ResponseFailed)):
        inner = [f.value for f in reason.reasons]
        if any(isinstance(e, CancelledError) for e in inner):
            return UpstreamTimeout(f"timed out waiting for {what}")
        detail = "; ".join(str(e) or type(e).__name__ for e in inner)
        return UpstreamConnectError(f"connection to {what} failed: {detail}")
    if isinstance(reason, (CancelledError, ConnectTimeoutError, ConnectingCancelledError)):
        return UpstreamTimeout(f"timed out connecting to {what}")
    if isinstance(reason, DNSLookupError):
        return UpstreamConnectError(f"cannot resolve {what}: {reason}")
    if isinstance(reason, ConnectError):
        return UpstreamConnectError(f"cannot connect to {what}: {reason}")
    return UpstreamError(f"request to {what} failed: {reason}")


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
        L{ollama_proxy.translate.Flavor}).
    @ivar idleTimeout: seconds of silence after which the bodies that
        L{Backend} reads itself (error bodies, L{getJSON}) are abandoned;
        C{None} for no limit.
    @ivar retries: how many times a C{429 Too Many Requests} is retried by
        L{postJSON} (before any byte reached the client); 0 disables.
    @ivar forwardClientKey: send the client's own key (see
        L{ollama_proxy.auth.clientKey}) upstream instead of L{apiKey} when the
        client presented one.
    @ivar maxRetryWait: the longest C{Retry-After} honoured; a backend that
        asks for a longer pause gets its 429 passed on at once.
    @ivar name: the backend's configured name, for logs and metrics.
    @ivar onResponse: called with C{(name, seconds)} each time response
        headers arrive (the metrics' upstream latency), if set.
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
    base: str = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.base = apiBase(self.target)

    def url(self, path: str) -> str:
        """
        @param path: an API path below C{/v1}, e.g. C{"chat/completions"}.
        @return: the absolute URL.
        """
        return f"{self.base}/{path.lstrip('/')}"

    def headers(self, extra: dict[bytes, list[bytes]] | None = None) -> dict[bytes, list[bytes]]:
        """
        The headers for an upstream request.

        @param extra: headers to forward (hop-by-hop and auth already removed
            by the caller).
        @return: C{extra} plus C{Authorization} when a key is configured (or
            the client's key, with L{forwardClientKey}).
        """
        headers = dict(extra or {})
        key = clientKey.get() if self.forwardClientKey else None
        if key is None and self.apiKey:
            key = self.apiKey.encode("utf-8")
        if key is not None:
            headers[b"Authorization"] = [b"Bearer " + key]
        return headers

    async def request(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
        what: str = "the backend",
    ) -> IResponse:
        """
        Send a request and wait for the response headers.

        The response body is not read: the caller streams it.

        @return: the response, whatever its status.
        @raise UpstreamError: if no response arrived.
        """
        started = self.reactor.seconds()
        try:
            response: IResponse = await self.http.request(
                method,
                url,
                data=body,
                headers=headers,
                unbuffered=True,
                timeout=self.headerTimeout,
                reactor=self.reactor,
            )
        except CancelledError:
            raise
        except Exception as e:
            raise failureToError(e, what) from None
        if self.onResponse is not None:
            self.onResponse(self.name, self.reactor.seconds() - started)
        return response

    async def postJSON(self, path: str, body: Any) -> IResponse:
        """
        POST a JSON body to the backend and check the status.

        @param path: the API path below C{/v1}.
        @param body: the JSON-compatible request body.
        @return: a 2xx response with its body unread.
        @raise UpstreamHTTPError: for a non-2xx answer, with the backend's
            status and message.
        """
        data = codec.dumps(body)
        headers = self.headers({b"Content-Type": [b"application/json"]})
        for attempt in range(self.retries + 1):
            response = await self.request("POST", self.url(path), data, headers)
            if response.code != 429 or attempt == self.retries:
                break
            wait = retryDelay(response, self.reactor.seconds())
            if wait is None or wait > self.maxRetryWait:
                break
            await readBody(response, self.reactor, self.idleTimeout)
            await deferLater(self.reactor, wait)
        await raiseForStatus(response, self.reactor, self.idleTimeout)
        return response

    async def getJSON(self, path: str) -> Any:
        """
        GET a JSON document from the backend.

        @param path: the API path below C{/v1}.
        @return: the decoded body.
        @raise UpstreamError: on connection problems, non-2xx, or non-JSON.
        """
        response = await self.request("GET", self.url(path), headers=self.headers())
        await raiseForStatus(response, self.reactor, self.idleTimeout)
        return await readJSON(response, self.reactor, self.idleTimeout)


MAX_RESPONSE_BODY = 64 * 1024 * 1024
"""The largest non-streamed upstream body read into memory (a completion,
an embedding list, an error page); a larger one is a 502."""

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


async def readBody(
    response: IResponse,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> bytes:
    """
    Read a whole (small) upstream body.

    The body is read with L{ollama_proxy.relay.consume}, so a cancelled
    read (the client left while a non-streaming answer was being generated)
    closes the upstream connection instead of letting it run to its end.

    @param response: a treq response.
    @param clock: the clock for the idle timer.
    @param idleTimeout: seconds of upstream silence after which the read is
        abandoned with a 504; C{None} (or no C{clock}) for no limit.
    @return: the bytes.
    @raise UpstreamError: if the connection broke or went idle, or the body
        is larger than L{MAX_RESPONSE_BODY}.
    """
    # relay imports this module for failureToError, hence the late import.
    from ollama_proxy.relay import consume

    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > MAX_RESPONSE_BODY:
            # Raised inside treq's collector: the connection is closed.
            raise UpstreamError(
                f"backend response is larger than {MAX_RESPONSE_BODY} bytes"
            )
        chunks.append(data)

    await consume(response, collect, clock, idleTimeout)
    return b"".join(chunks)


async def readJSON(
    response: IResponse,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> Any:
    """
    Read and decode a JSON upstream body.

    @param response: a treq response.
    @param clock: see L{readBody}.
    @param idleTimeout: see L{readBody}.
    @return: the decoded value.
    @raise UpstreamError: if the body is not JSON.
    """
    body = await readBody(response, clock, idleTimeout)
    try:
        return codec.loads(body)
    except codec.JSONDecodeError:
        raise UpstreamError(
            "backend returned a body that is not JSON: "
            + body[:200].decode("utf-8", "replace")
        ) from None


async def raiseForStatus(
    response: IResponse,
    clock: IReactorTime | None = None,
    idleTimeout: float | None = None,
) -> None:
    """
    Turn a non-2xx upstream answer into an error carrying its status and
    message (read from the body).

    @param response: the upstream response.
    @param clock: see L{readBody}.
    @param idleTimeout: see L{readBody}.
    @raise UpstreamHTTPError: if the status is not 2xx.
    """
    if 200 <= response.code < 300:
        return
    body = await readBody(response, clock, idleTimeout)
    raise UpstreamHTTPError(errorFromBody(body, response.code), response.code)
