"""
The reactor turns a request and a first chunk wait in the proxy, over real
loopback sockets in this process: a client, the proxy (its site and its
upstream client, as C{--target} builds them) and a backend on one reactor,
whose iterations (C{doIteration}, one poll each) are counted.

A byte written in one iteration is read in the next at the earliest, so
two iterations is the floor for each hop through the proxy (client ->
proxy -> backend, backend -> proxy -> client).  Twisted's buffered
C{write} made each of them three: the bytes waited in the transport for
the next iteration's C{doWrite}.  With L{writeThrough} they leave in the
call that writes them.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import contextFor
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.compat import ConnectionPool, writeThrough
from ollama_proxy.upstream.connection import ClientConnection
from ollama_proxy.upstream.pool import makeClient
from ollama_proxy.web.site import makeSite
from ollama_proxy.web.tree import buildRoot

reactor: Any = _reactor

MODELS = codec.dumps({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "x"}]})


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def event(content: str | None, finish: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    body = codec.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    return chunk(b"data: " + body + b"\n\n")


class Turns:
    """
    Counts the reactor's iterations while a test runs.
    """

    def __init__(self, testCase: TestCase) -> None:
        self.count = 0
        original = reactor.doIteration

        def counted(timeout: float | None) -> None:
            self.count += 1
            original(timeout)

        reactor.doIteration = counted
        testCase.addCleanup(delattr, reactor, "doIteration")


class RawBackend(Protocol):
    """
    A backend answering C{/v1/models}, and a chat stream: its head and
    first event at once (the turn noted), the rest when told.
    """

    def __init__(self, turns: Turns, log: dict[str, Any]) -> None:
        self.turns = turns
        self.log = log
        self.buffer = b""

    def connectionMade(self) -> None:
        writeThrough(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            self.buffer = rest[length:]
            self.answer(head.split(b" ")[1])

    def answer(self, path: bytes) -> None:
        assert self.transport is not None
        if path == b"/v1/models":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: %d\r\n\r\n%b" % (len(MODELS), MODELS))
            return
        if path != b"/v1/chat/completions":
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        self.log["requestAt"] = self.turns.count
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n" + event("hello"))
        self.log["chunkAt"] = self.turns.count
        self.log["finish"] = self.finish

    def finish(self) -> None:
        assert self.transport is not None
        self.transport.write(event(None, "stop") + chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")


class RawClient(Protocol):
    """
    Sends one streamed C{/api/chat} per call, noting the turn it left in
    and the turn its first line arrived in.
    """

    def __init__(self, turns: Turns) -> None:
        self.turns = turns
        self.received = b""
        self.sentAt = 0
        self.lineAt: int | None = None
        self.firstLine: Deferred[None] | None = None
        self.done: Deferred[None] | None = None

    def connectionMade(self) -> None:
        writeThrough(self.transport)

    def send(self) -> tuple[Deferred[None], Deferred[None]]:
        assert self.transport is not None
        body = codec.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        self.received, self.lineAt = b"", None
        self.firstLine, self.done = Deferred(), Deferred()
        self.sentAt = self.turns.count
        self.transport.write(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                             % (len(body), body))
        return self.firstLine, self.done

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        head, sep, body = self.received.partition(b"\r\n\r\n")
        if sep and b"\n" in body and self.lineAt is None and self.firstLine is not None:
            self.lineAt = self.turns.count
            self.firstLine.callback(None)
        if self.received.endswith(b"0\r\n\r\n") and self.done is not None and not self.done.called:
            self.done.callback(None)


class TurnsTests(TestCase):
    """
    The proxy's hops each take the two iterations a byte needs.
    """

    async def hops(
        self, httpParser: str, poolSize: int = 4, endWrites: list[list[bytes]] | None = None,
        sockets: list[Any] | None = None,
    ) -> tuple[int, int]:
        """
        @param endWrites: if given, gets the proxy's client transport's
            C{write}s for each stream's end (one backend read: the last
            event, C{[DONE]} and the terminator).
        @param sockets: if given, gets the proxy's sockets: the client's
            connection's, then the upstream connection's.
        """
        turns = Turns(self)
        log: dict[str, Any] = {}
        backendPort = reactor.listenTCP(
            0, Factory.forProtocol(lambda: RawBackend(turns, log)), interface="127.0.0.1")
        self.addCleanup(backendPort.stopListening)
        http, pool = makeClient(reactor, poolSize, 5.0, ConnectionPool, httpParser=httpParser)
        self.addCleanup(pool.closeCachedConnections)
        target = f"http://127.0.0.1:{backendPort.getHost().port}"
        root = buildRoot(contextFor(Backend(http, target, reactor), clock=reactor))
        site = makeSite(root, reactor, timeout=None, httpParser=httpParser)
        channels: list[Any] = []
        build = site.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            channels.append(build(addr))
            return channels[-1]

        site.buildProtocol = buildProtocol  # type: ignore[method-assign]
        proxyPort = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(proxyPort.stopListening)
        connected: Deferred[RawClient] = Deferred()
        client = RawClient(turns)

        class ClientFactory(Factory):
            def buildProtocol(self, addr: Any) -> RawClient:
                reactor.callLater(0, connected.callback, client)
                return client

        from twisted.internet.endpoints import TCP4ClientEndpoint
        await TCP4ClientEndpoint(reactor, "127.0.0.1", proxyPort.getHost().port).connect(ClientFactory())
        await connected
        self.addCleanup(lambda: client.transport.loseConnection() if client.transport else None)
        if sockets is not None:
            upstream: list[Any] = []
            made = ClientConnection.connectionMade

            def connectionMade(connection: ClientConnection) -> None:
                upstream.append(connection)
                made(connection)

            self.patch(ClientConnection, "connectionMade", connectionMade)
        # Warm: the model list is fetched and the upstream connection pooled.
        first, done = client.send()
        await first
        log.pop("finish")()
        await done
        # The fewest of three: a loaded kernel may hand a loopback segment
        # over an iteration late, but nothing makes a hop shorter than the
        # proxy's own iterations.
        requestTurns, chunkTurns = [], []
        for _ in range(3):
            first, done = client.send()
            await first
            finish: Callable[[], None] = log.pop("finish")
            requestTurns.append(log["requestAt"] - client.sentAt)
            assert client.lineAt is not None
            chunkTurns.append(client.lineAt - log["chunkAt"])
            if endWrites is not None:
                transport = channels[0].transport
                writes: list[bytes] = []
                endWrites.append(writes)

                def write(data: bytes, writes: list[bytes] = writes) -> None:
                    writes.append(data)
                    type(transport).write(transport, data)

                transport.write = write
                self.addCleanup(transport.__dict__.pop, "write", None)
            finish()
            await done
            if endWrites is not None:
                del transport.write
        if sockets is not None:
            sockets += [channels[0].transport.getHandle(), *(c.transport.getHandle() for c in upstream)]
        return min(requestTurns), min(chunkTurns)

    async def test_fastChannel(self) -> None:
        """
        C{--http-parser httptools}: the request reaches the backend two
        iterations after the client sent it; the backend's first chunk is
        the client's first line two iterations later.
        """
        self.assertEqual(await self.hops("httptools"), (2, 2))

    async def test_endInOneWrite(self) -> None:
        """
        A stream's end that arrives in one read (its last event, C{[DONE]}
        and the chunked terminator) leaves the proxy in one write, one
        send: the last line and the terminator are not sends of their own.
        """
        endWrites: list[list[bytes]] = []
        await self.hops("httptools", endWrites=endWrites)
        self.assertEqual(len(endWrites), 3)
        for writes in endWrites:
            self.assertEqual(len(writes), 1, writes)
            self.assertTrue(writes[0].endswith(b"\r\n0\r\n\r\n"), writes)
            self.assertIn(b'"done":true', writes[0])

    async def test_noDelay(self) -> None:
        """
        Both of the proxy's sockets of a stream send without Nagle's delay
        (C{TCP_NODELAY}): the client's (as twisted.web sets it) and the
        upstream connection's (Twisted's client leaves Nagle on; the
        proxy's endpoints turn it off), so no small write waits for the
        peer's delayed ACK.
        """
        sockets: list[Any] = []
        await self.hops("httptools", sockets=sockets)
        self.assertEqual(len(sockets), 2)
        for handle in sockets:
            self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), handle)

    async def test_twistedChannel(self) -> None:
        """
        C{--http-parser twisted} (Twisted's channel and client): the same.
        """
        self.assertEqual(await self.hops("twisted"), (2, 2))

    async def test_newConnection(self) -> None:
        """
        Without a pooled connection the request waits one more iteration,
        the connect's own: no thread-pool resolution of the backend's IP
        address, no buffered write after it.
        """
        self.assertEqual(await self.hops("httptools", poolSize=0), (3, 2))
