# -*- test-case-name: tests.testing.test_memory -*-
"""
L{MemoryTreq}: C{treq.testing.StubTreq}'s in-memory client, built from
public parts only (treq's C{HTTPClient}, Twisted's C{Agent} and C{iosim}),
whose connections can say whether anything moved.

Why not C{StubTreq} itself: its C{flush} returns nothing and its
connections sit in a private C{_pumps} set, so a harness cannot tell
"nothing left to deliver" from "something moved" without reaching into
treq.  Here L{MemoryAgent.flush} returns whether any byte or disconnect
moved, and L{MemoryAgent.connections} and L{MemoryAgent.pending} are
public, which is what L{ollama_proxy.testing.harness.ProxyHarness.pump}
needs to run until quiet and to say what is stuck when it is not.
"""

from __future__ import annotations

from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IConsumer, ISSLTransport, IStreamClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import URI, Agent
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgent, IAgentEndpointFactory, IBodyProducer, IResponse
from twisted.web.resource import IResource
from twisted.web.http import HTTPChannel
from twisted.web.server import Site
from zope.interface import directlyProvides, implementer


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """
    Every URI to a TCP endpoint on the agent's memory reactor (only the
    port is looked at again, as in treq's own).
    """

    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        if uri.scheme not in (b"http", b"https"):
            raise SchemeNotSupported(f"Unsupported scheme: {uri.scheme!r}")
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IBodyProducer)
class SynchronousProducer:
    """
    A request body written at once (the whole body is in memory anyway),
    so that no cooperator on the global reactor is involved.

    @ivar body: the bytes.
    """

    def __init__(self, body: bytes | str) -> None:
        if not isinstance(body, (bytes, str)):
            raise TypeError("MemoryTreq sends bytes or str bodies only")
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class _ChannelSite(Site):
    """
    A site whose connections are the C{HTTPChannel} itself rather than the
    HTTP/1-or-2 switch around it (there is no TLS here to negotiate HTTP/2
    with), so a test reaches the server's channel without a private
    attribute.
    """

    protocol = HTTPChannel  # type: ignore[assignment]


@implementer(IAgent)
class MemoryAgent:
    """
    An C{IAgent} that serves each request from a resource over an
    in-memory connection (C{iosim}), as C{treq.testing}'s
    C{RequestTraversalAgent} does.

    @ivar reactor: the connections' own memory reactor, never advanced (as
        in treq's: the server's timeouts do not run in these tests).
    @ivar site: the site around the resource; its protocol is
        C{HTTPChannel}, so each connection's C{server} is the channel.
    @ivar connections: one C{iosim.IOPump} per open connection (dropped
        once both ends have disconnected).
    """

    def __init__(self, resource: IResource) -> None:
        self.reactor = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self.reactor, _Endpoints(self.reactor))
        self.site = _ChannelSite(resource, reactor=self.reactor)
        self.connections: list[iosim.IOPump] = []

    def request(
        self, method: bytes, uri: bytes, headers: Any = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        """
        Start the request on a new in-memory connection to the site.
        """
        response: Deferred[IResponse] = self._agent.request(method, uri, headers, bodyProducer)
        if response.called:
            # Failed before connecting (a bad URL).
            return response
        _, port, factory, _, _ = self.reactor.tcpClients[-1]
        serverAddress = IPv4Address("TCP", "127.0.0.1", port)
        clientAddress = IPv4Address("TCP", "127.0.0.1", 31337)
        server = self.site.buildProtocol(clientAddress)
        serverIO = iosim.FakeTransport(server, isServer=True, hostAddress=serverAddress,
                                       peerAddress=clientAddress)
        client = factory.buildProtocol(None)
        clientIO = iosim.FakeTransport(client, isServer=False, hostAddress=clientAddress,
                                       peerAddress=serverAddress)
        if uri.startswith(b"https:"):
            directlyProvides(serverIO, ISSLTransport)
            directlyProvides(clientIO, ISSLTransport)
        self.connections.append(iosim.connect(server, serverIO, client, clientIO))
        return response

    def flush(self) -> bool:
        """
        Deliver everything buffered on every connection, both ways, until
        each is quiet.

        @return: whether anything (bytes or a disconnect) moved.
        """
        moved = False
        for connection in list(self.connections):
            moved = connection.flush() or moved
            if connection.clientIO.disconnected and connection.serverIO.disconnected:
                self.connections.remove(connection)
        return moved

    def pending(self) -> list[str]:
        """
        @return: what is still to deliver: each connection with bytes
            buffered or a disconnect not yet delivered, described.
        """
        out = []
        for connection in self.connections:
            for side, io in (("client", connection.clientIO), ("server", connection.serverIO)):
                buffered = sum(len(chunk) for chunk in io.stream)
                if buffered:
                    out.append(f"{buffered} bytes buffered on the {side} side of {io!r}")
                if io.disconnecting and not io.disconnected:
                    out.append(f"an undelivered disconnect on the {side} side of {io!r}")
        return out


class MemoryTreq:
    """
    treq's functions (C{get}, C{post}, C{request}, C{collect},
    C{json_content}, ...) against a resource, like C{StubTreq}, plus
    L{flush} that says whether anything moved.

    @ivar agent: the L{MemoryAgent}.
    """

    def __init__(self, resource: IResource) -> None:
        self.agent = MemoryAgent(resource)
        client = HTTPClient(agent=self.agent, data_to_body_producer=SynchronousProducer)
        for name in treq.__all__:
            setattr(self, name, getattr(client, name, None) or getattr(treq, name))

    def __getattr__(self, name: str) -> Any:
        # The treq functions are set per instance; this tells mypy that
        # they exist.
        raise AttributeError(name)

    def flush(self) -> bool:
        """
        @return: whether anything moved (see L{MemoryAgent.flush}).
        """
        return self.agent.flush()
