"""
In-memory upstream connections for the benches that run the proxy's
production upstream client without sockets (C{bench/agent.py},
C{bench/exchange.py}): an endpoint factory whose every connection is a
C{StringTransport} the bench answers by hand.  No reactor is installed
here; each bench installs its own first.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer


class Upstream(StringTransport):
    """
    An in-memory upstream connection: the bench reads what the proxy wrote
    and feeds the answer to C{protocol}.
    """

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        self.protocol: Any = None

    def abortConnection(self) -> None:
        self.loseConnection()


class Endpoint:
    """
    Connects at once, to a new L{Upstream} it adds to the shared list.
    """

    def __init__(self, upstreams: list[Upstream]) -> None:
        self.upstreams = upstreams

    def connect(self, factory: Any) -> Deferred[Any]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = Upstream()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        self.upstreams.append(transport)
        return succeed(protocol)


@implementer(IAgentEndpointFactory)
class Endpoints:
    """
    One L{Endpoint} for every URI; C{upstreams} holds every connection made,
    in order.
    """

    def __init__(self) -> None:
        self.upstreams: list[Upstream] = []

    def endpointForURI(self, uri: Any) -> Any:
        return Endpoint(self.upstreams)
