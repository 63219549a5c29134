# -*- test-case-name: tests.upstream.test_agent -*-
"""
The upstream C{IAgent} on llhttp (C{--http-parser httptools}, the
default): treq drives it unchanged, in place of Twisted's C{Agent},
C{HTTPConnectionPool} and C{HTTP11ClientProtocol}.

L{FastAgent} keeps a keep-alive pool per C{(scheme, host, port)} with the
limits the stock pool had here (L{KeepAlivePool.maxPersistentPerHost},
L{KeepAlivePool.cachedConnectionTimeout}, no automatic retry), connects
through L{ollama_proxy.upstream.pool.CachingEndpointFactory} (its connect
timeout, TLS for C{https} with Twisted's browser-like policy), and speaks
HTTP/1.1 through L{ollama_proxy.upstream.connection.ClientConnection}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IDelayedCall
from twisted.web.client import URI
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from ollama_proxy.upstream.connection import ClientConnection

Key = tuple[bytes, bytes, int]


class KeepAlivePool:
    """
    Idle keep-alive connections per upstream, most recently used first.

    @ivar maxPersistentPerHost: idle connections kept per upstream; one more
        is closed.
    @ivar cachedConnectionTimeout: seconds an idle connection is kept.
    @ivar retryAutomatically: always C{False} (kept for the stock pool's
        shape): a request is never sent twice.
    """

    maxPersistentPerHost = 2
    cachedConnectionTimeout = 240.0
    retryAutomatically = False

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._idle: dict[Key, list[ClientConnection]] = {}
        self._timers: dict[ClientConnection, IDelayedCall] = {}
        self._keys: dict[ClientConnection, Key] = {}

    def take(self, key: Key) -> ClientConnection | None:
        """
        @param key: the upstream.
        @return: an idle, open connection to it, or C{None}.
        """
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            # Its timer stays (moved on when it is put back, ignored if it
            # fires while the connection is busy): a callLater and a cancel
            # fewer per request.
            self._keys.pop(connection, None)
            if connection.usable:
                return connection
            self._forget(connection)
        return None

    def connect(self, key: Key, endpoint: Any) -> Deferred[ClientConnection]:
        """
        @param key: the upstream.
        @param endpoint: how to reach it.
        @return: a new connection, once connected.
        """
        connection = ClientConnection(lambda c: self.put(key, c), self._lost)
        connected: Deferred[ClientConnection] = connectProtocol(endpoint, connection)
        return connected

    def put(self, key: Key, connection: ClientConnection) -> None:
        """
        Keep an idle connection (or close it, past the limit).

        @param key: its upstream.
        @param connection: the connection.
        """
        idle = self._idle.setdefault(key, [])
        idle.append(connection)
        self._keys[connection] = key
        timer = self._timers.get(connection)
        if timer is not None and timer.active():
            timer.reset(self.cachedConnectionTimeout)
        else:
            self._timers[connection] = self._reactor.callLater(
                self.cachedConnectionTimeout, self._expire, connection)
        if len(idle) > self.maxPersistentPerHost:
            oldest = idle.pop(0)
            self._forget(oldest)
            oldest.abandon()

    def _expire(self, connection: ClientConnection) -> None:
        self._timers.pop(connection, None)
        if connection not in self._keys:
            return  # busy with a request since it was idle last
        self._remove(connection)
        connection.abandon()

    def _forget(self, connection: ClientConnection) -> None:
        timer = self._timers.pop(connection, None)
        if timer is not None and timer.active():
            timer.cancel()
        self._keys.pop(connection, None)

    def _remove(self, connection: ClientConnection) -> None:
        key = self._keys.get(connection)
        if key is not None:
            idle = self._idle.get(key, [])
            if connection in idle:
                idle.remove(connection)
        self._forget(connection)

    def _lost(self, connection: ClientConnection) -> None:
        self._remove(connection)

    def closeCachedConnections(self) -> Deferred[None]:
        """
        Close every idle connection.

        @return: fires when they are closed.
        """
        closing = []
        for idle in self._idle.values():
            for connection in list(idle):
                self._forget(connection)
                closing.append(connection.close())
        self._idle.clear()
        d: Deferred[Any] = DeferredList(closing)
        return d.addCallback(lambda _: None)


@implementer(IAgent)
class FastAgent:
    """
    An C{IAgent} over L{KeepAlivePool} and L{ClientConnection}.
    """

    maxURIs = 256
    """Parsed request URIs kept (the proxy calls a handful)."""

    def __init__(self, reactor: Any, endpointFactory: IAgentEndpointFactory, pool: KeepAlivePool) -> None:
        self._reactor = reactor
        self._endpoints = endpointFactory
        self.pool = pool
        self._uris: dict[bytes, tuple[URI, Key, bytes, bytes]] = {}

    def _parse(self, uri: bytes) -> tuple[URI, Key, bytes, bytes]:
        # The URI, its pool key, its Host value and its origin form (the
        # request line's path: C{URI.originForm} joins it anew at each ask),
        # computed once per URI.
        known = self._uris.get(uri)
        if known is not None:
            return known
        parsed = URI.fromBytes(uri)
        # The Host value as Twisted's Agent computes it.
        host = parsed.host
        if isIPv6Address(host.decode("ascii")):
            host = b"[" + host + b"]"
        if (parsed.scheme, parsed.port) not in ((b"http", 80), (b"https", 443)):
            host = b"%b:%d" % (host, parsed.port)
        known = (parsed, (parsed.scheme, parsed.host, parsed.port), host, parsed.originForm)
        if len(self._uris) < self.maxURIs:
            self._uris[uri] = known
        return known

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """
        Send a request on a pooled connection (or a new one).

        @return: fires with the response once its head arrived.
        """
        try:
            parsed, key, host, path = self._parse(uri)
            if parsed.scheme not in (b"http", b"https"):
                raise ValueError(f"unsupported scheme {parsed.scheme!r}")
        except Exception:
            return fail()
        if headers is None:
            headers = Headers()
        # Twisted's Agent adds Host to a copy of the headers, last; the
        # connection writes it last instead, with no copy.
        hostHeader: bytes | None = None if headers.hasHeader(b"host") else host
        connection = self.pool.take(key)
        if connection is not None:
            try:
                return connection.request(method, uri, path, headers, bodyProducer, hostHeader)
            except Exception:
                connection.abandon()
                return fail()
        try:
            endpoint = self._endpoints.endpointForURI(parsed)
        except Exception:
            return fail()
        connecting = self.pool.connect(key, endpoint)

        def connected(connection: ClientConnection) -> Deferred[IResponse]:
            try:
                return connection.request(method, uri, path, headers, bodyProducer, hostHeader)
            except Exception:
                connection.abandon()
                raise

        return connecting.addCallback(connected)
