# -*- test-case-name: tests.upstream.test_pool -*-
"""
The upstream HTTP client, on public API only: one persistent connection
pool (from L{ollama_proxy.upstream.compat}, where the private Twisted API is
fenced), one agent, one treq client, built once per process.

treq turns a C{bytes} body into a C{FileBodyProducer}, which writes the body
from a cooperator task on a later reactor turn.  The request head and body
then leave in two TCP segments, and Nagle's algorithm holds the second one
until the backend acknowledges the first: with a delayed ACK that stalled
every upstream request by about 10 ms on loopback (measured in
C{bench/RESULTS.md}).  L{BytesProducer} writes the body synchronously, so
head and body go out in one send.
"""

from __future__ import annotations

from http.cookiejar import Cookie, DefaultCookiePolicy
from typing import Any, Iterator

import treq.client
from treq.cookies import IndexableCookieJar
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint, ITCPTransport
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from ollama_proxy.upstream.agent import FastAgent, KeepAlivePool
from ollama_proxy.upstream.message import BytesProducer

__all__ = ["BytesProducer", "CachingEndpointFactory", "NoCookies", "bodyProducer", "clientFor", "makeClient"]


def bodyProducer(data: Any) -> IBodyProducer:
    """
    treq's C{data_to_body_producer}: in-memory bytes are written
    synchronously; anything else gets treq's default adaptation.

    @param data: a request body as given to treq.
    @return: a body producer.
    """
    if isinstance(data, bytes):
        return BytesProducer(data)
    return IBodyProducer(data)


def noDelay(protocol: IProtocol) -> IProtocol:
    """
    Turn Nagle's algorithm off on a new connection's TCP socket.

    @param protocol: the connected protocol (its transport a TCP one, or
        TLS over one, which passes the call down to its socket).
    @return: C{protocol}.
    """
    transport = getattr(protocol, "transport", None)
    if ITCPTransport.providedBy(transport):
        try:
            transport.setTcpNoDelay(True)
        except OSError:
            pass  # closed already: its read reports that
    return protocol


class _NoDelay:
    """
    A TCP endpoint whose connections send without Nagle's delay, as the
    server side's channels do (twisted.web sets C{TCP_NODELAY} on every
    accepted connection; Twisted's client connections keep Nagle on).

    With Nagle on, a small segment waits while an earlier small one is
    unacknowledged, and the receiver may delay its ACK (up to 40 ms on
    Linux): a request written in pieces (a streamed body's chunks, a write
    the kernel took in part, TLS records) could stall that long.  Both
    agents write a request after the connect's C{Deferred} fires, whose
    first callback is this one: the option is set before the first byte,
    one system call per connection.
    """

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return super().connect(protocolFactory).addCallback(noDelay)  # type: ignore[misc, no-any-return]


class NoDelayTCP4Endpoint(_NoDelay, TCP4ClientEndpoint):
    """C{TCP4ClientEndpoint} with L{noDelay}."""


class NoDelayTCP6Endpoint(_NoDelay, TCP6ClientEndpoint):
    """C{TCP6ClientEndpoint} with L{noDelay}."""


class NoDelayHostnameEndpoint(_NoDelay, HostnameEndpoint):
    """C{HostnameEndpoint} with L{noDelay}."""


@implementer(IAgentEndpointFactory)
class CachingEndpointFactory:
    """
    The agent's endpoints, built once per C{(scheme, host, port)}.

    L{Agent} otherwise builds a new L{HostnameEndpoint} (and IDNA-encodes
    the host) for every request, although the proxy talks to one or two
    hosts for its whole life.  The cache is bounded because a fallback URL
    is fixed too; nothing here is per-client.

    @ivar maxSize: endpoints kept; past it, new ones are built uncached.
    """

    maxSize = 64

    def __init__(
        self,
        reactor: Any,
        connectTimeout: float | None = None,
        policy: IPolicyForHTTPS | None = None,
    ) -> None:
        self._reactor = reactor
        self._connectTimeout = connectTimeout
        self._policy = policy if policy is not None else BrowserLikePolicyForHTTPS()
        self._cache: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        """
        TCP for C{http}, TLS over TCP for C{https}, like L{Agent}'s own.

        A host that is an IP address is connected to directly: a
        C{HostnameEndpoint} would still "resolve" it with C{getaddrinfo} in
        the reactor's thread pool (ten threads) for every new connection,
        a round trip through a thread and a reactor turn before the
        connect even starts; with a thousand streams opening at once that
        queue was in front of every first byte.  A name is resolved by
        C{HostnameEndpoint} as before (its addresses can change).  Every
        connection is made without Nagle's delay (L{noDelay}).

        @param uri: the request URI.
        @return: the (cached) endpoint.
        @raise ValueError: for another scheme.
        """
        key = (uri.scheme, uri.host, uri.port)
        endpoint = self._cache.get(key)
        if endpoint is not None:
            return endpoint
        if uri.scheme not in (b"http", b"https"):
            raise ValueError(f"unsupported scheme {uri.scheme!r}")
        host = uri.host.decode("ascii")
        kwargs: dict[str, Any] = {}
        if self._connectTimeout is not None:
            kwargs["timeout"] = self._connectTimeout
        if isIPAddress(host):
            endpoint = NoDelayTCP4Endpoint(self._reactor, host, uri.port, **kwargs)
        elif isIPv6Address(host):
            endpoint = NoDelayTCP6Endpoint(self._reactor, host, uri.port, **kwargs)
        else:
            endpoint = NoDelayHostnameEndpoint(self._reactor, host, uri.port, **kwargs)
        if uri.scheme == b"https":
            creator = self._policy.creatorForNetloc(uri.host, uri.port)
            endpoint = wrapClientTLS(creator, endpoint)
        if len(self._cache) < self.maxSize:
            self._cache[key] = endpoint
        return endpoint


def makeClient(
    reactor: Any,
    poolSize: int,
    connectTimeout: float,
    poolFactory: type[HTTPConnectionPool] = HTTPConnectionPool,
    httpParser: str = "twisted",
) -> tuple[treq.client.HTTPClient, HTTPConnectionPool | KeepAlivePool]:
    """
    Build the process's upstream client.

    @param reactor: the reactor.
    @param poolSize: persistent connections kept per upstream host; with
        fewer than the concurrent streams, each extra stream pays a TCP
        connect and the pool churns.
    @param connectTimeout: seconds to wait for a TCP connection.
    @param poolFactory: the pool class (the proxy uses
        L{ollama_proxy.upstream.pool.ConnectionPool}).
    @param httpParser: C{"httptools"} for L{FastAgent} and its
        L{KeepAlivePool} (the same limits), C{"twisted"} for Twisted's
        C{Agent} over C{poolFactory}.
    @return: the treq client and its pool (the caller closes the pool on
        shutdown).
    """
    endpoints = CachingEndpointFactory(reactor, connectTimeout)
    if httpParser == "httptools":
        fast = KeepAlivePool(reactor)
        fast.maxPersistentPerHost = poolSize
        return clientFor(FastAgent(reactor, endpoints, fast)), fast
    pool = poolFactory(reactor, persistent=True)
    pool.maxPersistentPerHost = poolSize
    pool.retryAutomatically = False
    agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)
    return clientFor(agent), pool


def clientFor(agent: IAgent) -> treq.client.HTTPClient:
    """
    @param agent: the agent treq drives.
    @return: the treq client: no cookies kept, in-memory bodies written at
        once.
    """
    return treq.client.HTTPClient(
        agent, cookiejar=refusingCookieJar(), data_to_body_producer=bodyProducer
    )


class NoCookies(IndexableCookieJar):
    """
    A cookie jar that never holds a cookie, at no cost per request.

    treq wraps every request in Twisted's C{CookieAgent}, which asks the jar
    for a C{Cookie} header (the stdlib jar takes its lock, expires cookies
    and walks its policy) and offers it every response's C{Set-Cookie}
    (parsed, then refused by the policy).  A jar that stores nothing has
    nothing to add and nothing to keep: the same answers, without the work.
    The refusing policy stays, for any caller of the stdlib's own methods.
    """

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))

    def add_cookie_header(self, request: Any) -> None:
        """
        Nothing stored, so no C{Cookie} header to add.
        """

    def extract_cookies(self, response: Any, request: Any) -> None:
        """
        A backend's C{Set-Cookie} is not kept.
        """

    def set_cookie(self, cookie: Any) -> None:
        """
        Nor is any other cookie (treq merges a request's C{cookies=} here).
        """

    def set_cookie_if_ok(self, cookie: Any, request: Any) -> None:
        """
        Nor one that a policy would allow.
        """

    def __iter__(self) -> Iterator[Cookie]:
        return iter(())

    def __len__(self) -> int:
        return 0


def refusingCookieJar() -> IndexableCookieJar:
    """
    A cookie jar that stores nothing.

    One client serves every user of the proxy: a C{Set-Cookie} from the
    backend or the fallback answering one user's request must not be
    replayed on everybody's later requests.

    @return: the jar for the upstream client.
    """
    return NoCookies()


NO_COOKIES = NoCookies()
"""An empty jar to pass as treq's C{cookies=}: without one, treq builds a
new jar (a lock and a policy) for every request.  treq only reads it (it
copies its cookies into the client's jar), and it cannot hold any."""
