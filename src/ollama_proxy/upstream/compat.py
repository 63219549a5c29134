# -*- test-case-name: tests.upstream.test_compat -*-
"""
The fence around Twisted's private client API: every use of it is here, checked when the module is
imported, with a fallback to the stock client.

Twisted's client decodes C{Transfer-Encoding: chunked} one chunk at a time and hands every chunk to
the response's body protocol through a callback chain (response state dispatcher, the body reader).
An OpenAI-style backend sends one chunk per SSE event, i.e. per token, so that chain ran a hundred
times per socket read and was the largest single cost of a relayed stream (C{bench/RESULTS.md}).
L{BatchingChunkedDecoder} decodes every complete chunk of one read in one pass and delivers them in
one call. L{ConnectionPool} never keeps a connection that is already closing.

Private API used here (checked by L{_check} at import, pinned by C{tests.upstream.test_compat};
C{pyproject.toml} bounds the Twisted releases it was tried on): C{HTTPConnectionPool._putConnection}
and C{._factory}, C{twisted.web.client._HTTP11ClientFactory} (its C{_quiescentCallback}),
C{HTTP11ClientProtocol._parser}, C{HTTPClientParser._transferDecoders} and
C{twisted.web.http._ChunkedTransferDecoder} (its states, C{_buffer}, C{_start}, C{length} and its
C{dataCallback}/C{finishCallback}). If any of them is missing, L{COMPATIBLE} is false, a warning is
logged, and L{ConnectionPool} is Twisted's own pool with its own decoder: slower on streams, never
broken.

L{writeThrough} (both sides' TCP transports send at once when nothing is buffered) reads
C{FileDescriptor}'s buffers and flags (C{dataBuffer}, C{_tempDataLen}, C{_writeDisconnecting}, the
producer state) and C{tcp.Connection}'s C{_aborting}, C{TLS} and C{socket}, checked by
L{_writeThroughMissing} (L{WRITE_THROUGH_MISSING}); if any is missing, transports keep Twisted's
buffered writes.

L{LazyStdlibRequest} replaces C{twisted.web.client._FakeStdlibRequest} (which C{CookieAgent.request}
makes by that name, checked by L{_lazyRequestMissing}): the same request for a cookie jar, its URI
parsed only when the jar asks; without the name, Twisted's own is left in place.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser, Request
from twisted.web.client import (
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.http import _ChunkedTransferDecoder

log = Logger()


def _check() -> list[str]:
    """
    @return: the private names this module relies on that the installed
        Twisted lacks (none, on the releases C{pyproject.toml} allows).
    """
    missing = [
        f"{owner.__name__}.{name}"
        for owner, name in (
            (HTTPConnectionPool, "_putConnection"),
            (HTTPConnectionPool, "_factory"),
            (HTTP11ClientProtocol, "_parser"),
            (HTTPClientParser, "_transferDecoders"),
        )
        if not hasattr(owner, name)
    ]
    try:
        decoder = _ChunkedTransferDecoder(lambda data: None, lambda rest: None)
    except TypeError:
        return [*missing, "_ChunkedTransferDecoder(dataCallback, finishCallback)"]
    for name in ("state", "_buffer", "_start", "dataCallback", "finishCallback"):
        if not hasattr(decoder, name):
            missing.append(f"_ChunkedTransferDecoder.{name}")
    if getattr(decoder, "state", None) != "CHUNK_LENGTH":
        missing.append("_ChunkedTransferDecoder.state == 'CHUNK_LENGTH'")
    return missing


MISSING = _check()
"""The private names the installed Twisted lacks."""
COMPATIBLE = not MISSING
"""Whether the batching decoder and the careful pool are in use."""

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

    def connectionMade(self) -> None:
        """
        A plain TCP transport writes through (L{writeThrough}).
        """
        writeThrough(self.transport)
        super().connectionMade()

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


class BatchingConnectionPool(HTTPConnectionPool):
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


def choosePool(missing: list[str]) -> type[HTTPConnectionPool]:
    """
    @param missing: the private names the installed Twisted lacks.
    @return: L{BatchingConnectionPool}, or, with any name missing,
        Twisted's own pool (its protocol keeps the stock chunked decoder),
        with a warning.
    """
    if not missing:
        return BatchingConnectionPool
    log.warn(
        "this Twisted lacks {missing}: the upstream client uses its stock pool and "
        "chunked decoder (slower on streams)", missing=", ".join(missing),
    )
    return HTTPConnectionPool


ConnectionPool = choosePool(MISSING)
"""The pool the proxy uses: L{BatchingConnectionPool}, or Twisted's own."""


# The server side (C{ollama_proxy.web.fastchannel}): a chunked request body
# is decoded by twisted.web's own decoder, and a pull producer registered on
# a request is driven by twisted.web's own adapter, exactly as
# C{HTTPChannel} does, so that llhttp's channel accepts and refuses chunked
# bodies as twisted.web does (C{tests.web.test_fastchannel}).

from twisted.internet._producer_helpers import _PullToPush  # noqa: E402
from twisted.web.http import _MalformedChunkedDataError  # noqa: E402
from twisted.web.http_headers import Headers, _nameEncoder  # noqa: E402

ChunkedRequestDecoder = _ChunkedTransferDecoder
"""twisted.web's C{Transfer-Encoding: chunked} decoder: C{(dataCallback, finishCallback)},
C{dataReceived(bytes)}, raising L{MalformedChunkedData}."""

MalformedChunkedData = _MalformedChunkedDataError
"""What L{ChunkedRequestDecoder} raises for a malformed chunked body."""

PullToPush = _PullToPush
"""twisted.web's adapter that drives an C{IPullProducer} as a push producer:
C{(producer, consumer)}, C{startStreaming()}, C{stopStreaming()}."""

_canonical: dict[bytes, bytes] = {}
"""Header names as clients spell them -> twisted.web's names (at most 1,000, of <= 64 bytes)."""


def addRequestHeaders(headers: Headers, fields: list[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """
    C{headers.addRawHeader(name, value)} for each field, without its
    per-value check for CR and LF (llhttp has refused any) and its per-call
    dispatch: the names are canonicalised by twisted.web's own encoder (each
    spelling once), the values appended to C{Headers._rawHeaders} as
    C{addRawHeader} does.

    @param headers: a request's (empty) C{requestHeaders}.
    @param fields: C{(name, value)} as llhttp parsed them.
    @return: the canonical table, for the channel's own look-ups (read only).
    """
    raw: dict[bytes, list[bytes]] = headers._rawHeaders
    for name, value in fields:
        key = _canonical.get(name)
        if key is None:
            key = _nameEncoder.encode(name)
            if len(_canonical) < 1000 and len(name) <= 64:
                _canonical[name] = key
        values = raw.get(key)
        if values is None:
            raw[key] = [value]
        else:
            values.append(value)
    return raw


def _serverMissing() -> list[str]:
    """
    @return: the private names the llhttp channel needs that the installed
        Twisted lacks.
    """
    missing = [
        f"_PullToPush.{name}"
        for name in ("startStreaming", "stopStreaming", "pauseProducing", "resumeProducing")
        if not hasattr(_PullToPush, name)
    ]
    if not isinstance(getattr(Headers(), "_rawHeaders", None), dict):
        missing.append("Headers._rawHeaders")
    if not callable(getattr(_nameEncoder, "encode", None)):
        missing.append("_nameEncoder.encode")
    return missing + [name for name in MISSING if name.startswith("_ChunkedTransferDecoder")]


SERVER_MISSING = _serverMissing()
"""The private names the llhttp channel needs that the installed Twisted
lacks; with any missing, the site falls back to twisted.web's channel."""


# Write-through TCP transports (both sides: the client's connection and the
# backend's).  Twisted's C{FileDescriptor.write} only buffers and calls
# C{startWriting} (an C{epoll_ctl}); the bytes leave in C{doWrite} on the
# next reactor iteration, which then calls C{stopWriting} (another
# C{epoll_ctl}).  So every relayed chunk cost two system calls and the
# C{doWrite} path, and under load every hop (the request to the backend,
# the first line to the client) waited a whole reactor turn in which every
# other ready stream was served first.  asyncio's selector transports try
# C{send()} at once when nothing is buffered; these do the same.

from twisted.internet import abstract as _abstract  # noqa: E402
from twisted.internet import tcp as _tcp  # noqa: E402
from twisted.internet import main as _main  # noqa: E402
from twisted.internet.endpoints import _WrappingProtocol  # noqa: E402


WRITE_THROUGH_MAX = 128 * 1024
"""The largest write sent at once (Twisted's C{SEND_LIMIT}).  A larger one
(a whole large answer, rare) is buffered as Twisted does: a partial send
would copy its remainder, which Twisted's buffer avoids."""


class _WriteThrough:
    """
    C{write} and C{writeSequence} for a plain TCP transport: with nothing buffered, the bytes
    are sent at once; what the kernel does not take (C{EAGAIN}, a partial send) goes to
    Twisted's own buffered write, as does everything while anything is buffered (so the order
    holds), a pull producer (it is driven by C{doWrite}), a paused producer, a closing,
    half-closed or aborted connection, and TLS started on the connection.  A socket error other
    than C{EAGAIN} leaves the bytes to the buffered write too, whose C{doWrite} reports the loss
    as Twisted always did (no protocol callback from inside C{write}).  C{doRead} is Twisted's.

    Mixed in before C{tcp.Server}/C{tcp.Client} (L{writeThrough} swaps a
    transport's class to the subclass); the attributes are Twisted's
    private C{FileDescriptor} state, checked by L{_writeThroughMissing}.
    """

    # Declared for mypy: the FileDescriptor and tcp.Connection state read here.
    socket: Any
    connected: int
    disconnecting: int
    _writeDisconnecting: bool
    _aborting: bool
    TLS: bool
    dataBuffer: bytes
    _tempDataLen: int
    producer: Any
    streamingProducer: bool
    producerPaused: bool
    protocol: Any
    bufferSize: int

    def write(self, data: bytes) -> None:
        """
        Send C{data} now when the class's conditions hold; buffer what the
        kernel did not take.

        @param data: the bytes (anything else is Twisted's C{TypeError}).
        """
        if data.__class__ is bytes and 0 < len(data) <= WRITE_THROUGH_MAX:
            producer = self.producer
            if (
                not self._tempDataLen and not self.dataBuffer and self.connected
                and not (self.disconnecting or self._writeDisconnecting or self._aborting
                         or self.TLS)
                and (producer is None or (self.streamingProducer and not self.producerPaused))
            ):
                try:
                    sent: int = self.socket.send(data)
                except OSError:
                    pass
                else:
                    if sent >= len(data):
                        return
                    data = data[sent:]
        super().write(data)  # type: ignore[misc]

    def doRead(self) -> Any:
        """Twisted's C{tcp.Connection.doRead}, its C{_dataReceived} written out."""
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == _tcp.EWOULDBLOCK:
                return None
            return _main.CONNECTION_LOST
        if not data:
            return _main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def writeSequence(self, iovec: Any) -> None:
        """
        The same for a sequence of byte strings, joined into one send.

        @param iovec: byte strings.
        """
        try:
            data = b"".join(iovec)
        except TypeError:
            super().writeSequence(iovec)  # type: ignore[misc]  # raises as Twisted does
            return
        self.write(data)


class WriteThroughServer(_WriteThrough, _tcp.Server):
    """A client's connection whose writes go out at once (L{_WriteThrough})."""


class WriteThroughClient(_WriteThrough, _tcp.Client):
    """A backend connection whose writes go out at once (L{_WriteThrough})."""


_WRITE_THROUGH: dict[type, type] = {_tcp.Server: WriteThroughServer, _tcp.Client: WriteThroughClient}


def _writeThroughMissing() -> list[str]:
    """
    @return: the private C{FileDescriptor}/C{tcp.Connection} state
        L{_WriteThrough} reads that the installed Twisted lacks.
    """
    class _Reactor:
        pass

    descriptor = _abstract.FileDescriptor(_Reactor())  # type: ignore[arg-type]
    missing = [
        f"FileDescriptor.{name}" for name in (
            "dataBuffer", "_tempDataLen", "_tempDataBuffer", "offset", "connected", "disconnecting",
            "_writeDisconnecting", "producer", "streamingProducer", "producerPaused",
        ) if not hasattr(descriptor, name)
    ]
    missing += [
        f"tcp.Connection.{name}" for name in ("_aborting", "TLS", "writeSomeData", "bufferSize")
        if not hasattr(_tcp.Connection, name)
    ]
    missing += [] if hasattr(_tcp, "EWOULDBLOCK") else ["tcp.EWOULDBLOCK"]
    return missing


WRITE_THROUGH_MISSING = _writeThroughMissing()
"""The private names write-through needs that the installed Twisted lacks;
with any missing, L{writeThrough} leaves every transport as it is."""
if WRITE_THROUGH_MISSING:
    log.warn("this Twisted lacks {missing}: transports keep buffered writes (a reactor turn "
             "per write)", missing=", ".join(WRITE_THROUGH_MISSING))


def writeThrough(transport: object, reader: object = None) -> bool:
    """
    Make a plain TCP transport (exactly C{tcp.Server} or C{tcp.Client})
    send its writes at once when nothing is buffered, by swapping its class
    to L{WriteThroughServer}/L{WriteThroughClient} (same state, two
    methods overridden).  Anything else (TLS, which wraps the socket in a
    protocol; UNIX sockets; test transports; a subclass) is left as it is.

    Called from a protocol's C{connectionMade}: the one point every
    connection passes through, whatever endpoint or port made it.

    @param transport: the protocol's transport.
    @param reader: the protocol, if the transport may read into the endpoint's
        C{_WrappingProtocol} around it, which only forwards (a call per read of every
        stream): its reads then go to C{reader} itself.  Not for a protocol that is
        half-closeable or takes file descriptors or TLS handshakes (the wrapper's duties).
    @return: whether it now writes through.
    """
    cls = _WRITE_THROUGH.get(type(transport))
    if cls is None or WRITE_THROUGH_MISSING:
        return False
    transport.__class__ = cls
    wrapper = getattr(transport, "protocol", None)
    if reader is not None and type(wrapper) is _WrappingProtocol and wrapper._wrappedProtocol is reader:
        transport.protocol = reader  # type: ignore[attr-defined]
    return True


# treq wraps every request in Twisted's CookieAgent, which makes a
# _FakeStdlibRequest for the cookie jar, and that parsed the URL again
# (URI.fromBytes: urllib's parse, bytes to str and back) on every request
# for a jar (pool.NoCookies) that never looks at it: the largest single
# cost between treq's call and the agent (bench/RESULTS.md, "The request's
# way in").  LazyStdlibRequest parses when a jar first asks.

from twisted.web import client as _client  # noqa: E402
from twisted.python.compat import nativeString as _nativeString  # noqa: E402

STOCK_STDLIB_REQUEST: Any = getattr(_client, "_FakeStdlibRequest", None)
"""Twisted's own C{_FakeStdlibRequest} (C{None} if this Twisted lacks it)."""


class LazyStdlibRequest(STOCK_STDLIB_REQUEST or object):  # type: ignore[misc]
    """
    Twisted's C{_FakeStdlibRequest} (what C{CookieAgent} hands a
    C{http.cookiejar.CookieJar}) with its URI parsed on the first ask for
    C{type}, C{host} or C{origin_req_host}, with Twisted's own computation:
    the same answers, and no parse for a jar that asks nothing.
    """

    def __init__(self, uri: bytes) -> None:
        self.uri = _nativeString(uri)
        self._twistedHeaders = Headers()
        self.unverifiable = False
        self._raw = uri
        self._fields: dict[str, str] | None = None

    def _field(self, name: str) -> str:
        fields = self._fields
        if fields is None:
            parsed = _client.URI.fromBytes(self._raw)
            host = _nativeString(parsed.host)
            if (parsed.scheme, parsed.port) not in ((b"http", 80), (b"https", 443)):
                host += ":" + str(parsed.port)
            fields = self._fields = {
                "type": _nativeString(parsed.scheme), "host": host,
                "origin_req_host": _nativeString(parsed.host),
            }
        return fields[name]

    def _set(self, name: str, value: str) -> None:
        self._field(name)
        assert self._fields is not None
        self._fields[name] = value

    type = property(lambda self: self._field("type"), lambda self, v: self._set("type", v))
    host = property(lambda self: self._field("host"), lambda self, v: self._set("host", v))
    origin_req_host = property(lambda self: self._field("origin_req_host"),
                               lambda self, v: self._set("origin_req_host", v))


def _lazyRequestMissing() -> list[str]:
    """
    @return: what installing L{LazyStdlibRequest} needs that the installed
        Twisted lacks: the class, and C{CookieAgent.request} making it by
        that module-level name.
    """
    if STOCK_STDLIB_REQUEST is None:
        return ["_FakeStdlibRequest"]
    names = getattr(getattr(_client.CookieAgent.request, "__code__", None), "co_names", ())
    return [] if "_FakeStdlibRequest" in names else ["CookieAgent.request's _FakeStdlibRequest"]


LAZY_REQUEST_MISSING = _lazyRequestMissing()
if not LAZY_REQUEST_MISSING:
    _client._FakeStdlibRequest = LazyStdlibRequest  # type: ignore[misc]
