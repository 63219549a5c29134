# -*- test-case-name: tests.upstream.test_pool -*-
"""
The upstream HTTP client, and every use of Twisted's private client API in
one place: one persistent connection pool, one agent, one treq client, built
once per process.

treq turns a C{bytes} body into a C{FileBodyProducer}, which writes the body
from a cooperator task on a later reactor turn.  The request head and body
then leave in two TCP segments, and Nagle's algorithm holds the second one
until the backend acknowledges the first: with a delayed ACK that stalled
every upstream request by about 10 ms on loopback (measured in
C{bench/RESULTS.md}).  L{BytesProducer} writes the body synchronously, so
head and body go out in one send.

Twisted's client decodes C{Transfer-Encoding: chunked} one chunk at a time
and hands every chunk to the response's body protocol through a callback
chain (response state dispatcher, treq's collector, the body reader).  An
OpenAI-style backend sends one chunk per SSE event, i.e. per token, so that
chain ran a hundred times per socket read and was the largest single cost of
a relayed stream (C{bench/RESULTS.md}).  L{BatchingChunkedDecoder} decodes
every complete chunk of one read in one pass and delivers them in one call.

Private API used here (pinned by C{tests.upstream.test_pool}):
C{HTTPConnectionPool._putConnection} and C{._factory},
C{twisted.web.client._HTTP11ClientFactory}, C{HTTP11ClientProtocol._parser},
C{HTTPClientParser._transferDecoders} and
C{twisted.web.http._ChunkedTransferDecoder} (its states, C{_buffer},
C{_start}, C{length} and its C{dataCallback}/C{finishCallback}).
"""

from __future__ import annotations

import re
from typing import Any

from hyperlink import EncodedURL
from twisted.internet.interfaces import IAddress
from twisted.web._newclient import HTTP11ClientProtocol, Request
from twisted.web.client import (
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http import _ChunkedTransferDecoder

_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")
"""A chunk-size line without extensions: what the fast path accepts.
Anything else (extensions, a longer or malformed size) goes to Twisted's
own strict parser."""


class BatchingChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, delivering all the chunk data of one read in
    one C{dataCallback} call.

    The common case (a size line without extensions, the chunk data, its
    CRLF) is decoded by a loop over the read's bytes; anything else (the
    terminal chunk and trailers, chunk extensions, malformed input, a read
    ending inside the size line) is left to the inherited state machine,
    which keeps Twisted's limits and errors.  Data decoded before an error
    or the terminal chunk is delivered before it, as Twisted does.
    """

    def dataReceived(self, data: bytes) -> None:
        """
        Decode one read.

        @param data: the bytes of the read.
        """
        buf = self._buffer
        if buf:
            # A read that ended inside a size line or a CRLF: decode the
            # whole from its start.
            buf += data
            data = bytes(buf)
            del buf[:]
            self._start = 0
        pieces: list[bytes] = []
        pos, end = 0, len(data)
        state = self.state
        if state == "CHUNK_LENGTH":
            # The common case, one iteration per chunk: a size line, the
            # data and its CRLF all in this read.
            # A size is hex digits only: isalnum() keeps out the signs,
            # spaces and underscores int() would take, the prefix test its
            # "0x", int() the other letters.
            find, startswith, append = data.find, data.startswith, pieces.append
            while True:
                eol = find(b"\r\n", pos, pos + 18)
                if eol < 0:
                    break
                size = data[pos:eol]
                if not size.isalnum() or size[1:2] in (b"x", b"X"):
                    break
                try:
                    start = eol + 2
                    stop = start + int(size, 16)
                except ValueError:
                    break
                if stop == start or not startswith(b"\r\n", stop):
                    break
                append(data[start:stop])
                pos = stop + 2
        while pos < end:
            if state == "CHUNK_LENGTH":
                eol = data.find(b"\r\n", pos, pos + 18)
                if eol < 0 or _CHUNK_SIZE.fullmatch(data, pos, eol) is None:
                    break
                length = int(data[pos:eol], 16)
                if length == 0:
                    break
                self.length = length
                pos = eol + 2
                state = "BODY"
            elif state == "BODY":
                stop = pos + self.length
                if stop > end:
                    pieces.append(data[pos:])
                    self.length = stop - end
                    pos = end
                    break
                pieces.append(data[pos:stop])
                pos = stop
                state = "CRLF"
            elif state == "CRLF" and data.startswith(b"\r\n", pos):
                pos += 2
                state = "CHUNK_LENGTH"
            else:
                break
        self.state = state
        deliver = self.dataCallback
        if pos < end:
            buf += data[pos:] if pos else data
            finish = self.finishCallback

            def finished(rest: bytes) -> None:
                self.dataCallback = deliver
                if pieces:
                    deliver(b"".join(pieces))
                    pieces.clear()
                finish(rest)

            self.dataCallback = pieces.append
            self.finishCallback = finished
            try:
                super().dataReceived(b"")
            finally:
                self.dataCallback = deliver
                self.finishCallback = finish
                if pieces:
                    deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        elif pieces:
            deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces))


_TRANSFER_DECODERS: dict[bytes, type[_ChunkedTransferDecoder]] = {b"chunked": BatchingChunkedDecoder}


class BatchingClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client protocol whose response parser decodes
    chunked bodies with L{BatchingChunkedDecoder}.
    """

    def request(self, request: Request) -> Any:
        """
        Send C{request}; its response's chunked body is decoded per read.

        @param request: the request.
        @return: the response's L{Deferred}.
        """
        d = super().request(request)
        parser = self._parser
        if parser is not None:
            parser._transferDecoders = _TRANSFER_DECODERS
        return d


class _QuietClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory without the two "Starting/Stopping
    factory" log lines per upstream connection (most of the log volume
    under load).
    """

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        """
        @param addr: the peer's address.
        @return: a L{BatchingClientProtocol}.
        """
        return BatchingClientProtocol(self._quiescentCallback)


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


from http.cookiejar import CookieJar, DefaultCookiePolicy

import treq.client
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IConsumer, IStreamClientEndpoint
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer


@implementer(IBodyProducer)
class BytesProducer:
    """
    An L{IBodyProducer} for a body already in memory: it writes everything
    in L{startProducing}, before the reactor runs again.

    @ivar length: the body length, so the agent sends C{Content-Length}.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """
        Write the whole body.

        @param consumer: the request's body consumer.
        @return: an already-fired L{Deferred}.
        """
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        """
        Nothing to pause: the body was written at once.
        """

    def resumeProducing(self) -> None:
        """
        Nothing to resume.
        """

    def stopProducing(self) -> None:
        """
        Nothing to stop.
        """


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
        endpoint = HostnameEndpoint(self._reactor, host, uri.port, **kwargs)
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
) -> tuple[treq.client.HTTPClient, HTTPConnectionPool]:
    """
    Build the process's upstream client.

    @param reactor: the reactor.
    @param poolSize: persistent connections kept per upstream host; with
        fewer than the concurrent streams, each extra stream pays a TCP
        connect and the pool churns.
    @param connectTimeout: seconds to wait for a TCP connection.
    @param poolFactory: the pool class (the proxy uses
        L{ollama_proxy.upstream.pool.ConnectionPool}).
    @return: the treq client and its pool (the caller closes the pool on
        shutdown).
    """
    pool = poolFactory(reactor, persistent=True)
    pool.maxPersistentPerHost = poolSize
    pool.retryAutomatically = False
    agent = Agent.usingEndpointFactory(
        reactor, CachingEndpointFactory(reactor, connectTimeout), pool=pool
    )
    client = treq.client.HTTPClient(
        agent, cookiejar=refusingCookieJar(), data_to_body_producer=bodyProducer
    )
    return client, pool


def refusingCookieJar() -> IndexableCookieJar:
    """
    A cookie jar that stores nothing.

    One client serves every user of the proxy: a C{Set-Cookie} from the
    backend or the fallback answering one user's request must not be
    replayed on everybody's later requests.

    @return: the jar for the upstream client.
    """
    return IndexableCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


NO_COOKIES = CookieJar()
"""An empty jar to pass as treq's C{cookies=}: without one, treq builds a
new jar (a lock and a policy) for every request.  treq only reads it (it
copies its cookies into the client's jar), so it stays empty."""


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
    def fromText(cls, url: str) -> "ReadyURL":
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

