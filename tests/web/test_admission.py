"""
A burst of requests starts a hundred per reactor turn, the rest after the
next polls, in arrival order; fewer start at once, as before (issue 23).
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ollama_proxy.web.admission import (
    ACCEPT_FLOOR,
    PER_TURN,
    Admission,
    EagerAcceptPort,
    acceptEagerly,
)
from ollama_proxy.web.site import makeSite
from tests.upstream.test_compat import waitFor
from tests.web.test_fastchannel import MAX_BODY, Recording

reactor: Any = _reactor


class Turns:
    """
    The reactor's timed calls as C{runUntilCurrent} runs them: a call made
    while the calls of a turn's end run waits for the next turn's end
    (after the next poll).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def callLater(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        assert delay == 0
        self.pending.append((f, args))

    def endTurn(self) -> None:
        due, self.pending = self.pending, []
        for f, args in due:
            f(*args)


class AdmissionTests(SynchronousTestCase):
    """
    L{Admission} on its own, against the reactor's turn structure.
    """

    def setUp(self) -> None:
        self.turns = Turns()
        self.admission = Admission(self.turns.callLater)
        self.started: list[int] = []

    def admit(self, n: int, alive: Callable[[], bool] = lambda: True) -> None:
        self.admission.admit(lambda: self.started.append(n), alive)

    def test_burstInBatchesAfterEachPoll(self) -> None:
        """
        250 requests in one turn: 100 start at once, the next 100 at the
        end of the turn after the next (after a poll that serves the first
        ones' next steps), then the last 50, in arrival order.
        """
        for n in range(250):
            self.admit(n)
        self.assertEqual(self.started, list(range(PER_TURN)))
        self.assertEqual(self.admission.waiting(), 150)
        self.turns.endTurn()
        self.assertEqual(len(self.started), 100)
        self.turns.endTurn()
        self.assertEqual(self.started, list(range(200)))
        self.turns.endTurn()
        self.turns.endTurn()
        self.assertEqual(self.started, list(range(250)))
        self.assertEqual(self.admission.waiting(), 0)
        self.turns.endTurn()
        self.assertEqual(self.turns.pending, [])

    def test_fewStartAtOnce(self) -> None:
        """
        Up to 90 requests a turn, turn after turn, each starts in the call
        that admitted it: nothing waits.
        """
        for turn in range(20):
            for n in range(90):
                self.admit(turn * 90 + n)
            self.assertEqual(len(self.started), (turn + 1) * 90)
            self.turns.endTurn()
        self.assertEqual(self.admission.waiting(), 0)

    def test_newArrivalsQueueBehind(self) -> None:
        """
        While requests wait, a new one waits behind them (arrival order),
        even in a turn that started none.
        """
        for n in range(150):
            self.admit(n)
        self.turns.endTurn()
        self.admit(150)
        self.assertEqual(len(self.started), 100)
        self.turns.endTurn()
        self.assertEqual(self.started, list(range(151)))

    def test_goneDropped(self) -> None:
        """
        A request whose client left while it waited never starts and does
        not take a start of its turn.
        """
        for n in range(100):
            self.admit(n)
        self.admit(100, lambda: False)
        for n in range(101, 201):
            self.admit(n)
        self.turns.endTurn()
        self.turns.endTurn()
        self.assertEqual(self.started, [n for n in range(201) if n != 100])


class ChannelTests(SynchronousTestCase):
    """
    Through the site: a burst of connections whose requests complete in
    one turn reach the resource a hundred per turn; a client gone while its
    request waited is never rendered.
    """

    def test_burstThroughTheSite(self) -> None:
        resource = Recording()
        clock = MemoryReactorClock()
        site = makeSite(resource, clock, timeout=None, headerTimeout=None,
                        maxBody=MAX_BODY, httpParser="httptools")
        transports = []
        channels = []
        for n in range(150):
            channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + n))
            transport = StringTransport()
            channel.makeConnection(transport)
            transports.append(transport)
            channels.append(channel)
        for n, channel in enumerate(channels):
            channel.dataReceived(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
        self.assertEqual(len(resource.seen), PER_TURN)
        self.assertEqual([uri for _, uri, *_ in resource.seen],
                         [b"/%d" % n for n in range(PER_TURN)])
        self.assertIn(b"200 OK", transports[0].value())
        self.assertEqual(transports[120].value(), b"")
        channels[120].connectionLost(Failure(ConnectionDone()))
        clock.advance(0)
        self.assertEqual(sorted(int(uri[1:]) for _, uri, *_ in resource.seen),
                         [n for n in range(150) if n != 120])
        self.assertIn(b"200 OK", transports[149].value())
        self.assertEqual(transports[120].value(), b"")
        for channel in channels:
            channel.connectionLost(Failure(ConnectionDone()))


class EagerAcceptTests(TestCase):
    """
    L{EagerAcceptPort}: the port a L{FastChannel} connection came in on
    accepts a burst waiting in its queue in few turns, whatever the turns
    before it found.
    """

    async def test_burstAcceptedInOneTurn(self) -> None:
        """
        After a turn that accepted one connection (Twisted then accepts at
        most one per turn), the site's port is an L{EagerAcceptPort} and one
        C{doRead} accepts L{ACCEPT_FLOOR} of the 150 connections waiting;
        the rest come in the next turns.
        """
        site = makeSite(Recording(), reactor, timeout=None, headerTimeout=None,
                        maxBody=MAX_BODY, httpParser="httptools")
        port = reactor.listenTCP(0, site, backlog=512, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)
        clients: list[socket.socket] = []

        def close() -> Deferred[None]:
            for c in clients:
                c.close()
            for channel in list(site.connections):
                channel.transport.abortConnection()
            return deferLater(reactor, 0.05, lambda: None)

        self.addCleanup(close)
        clients.append(socket.create_connection(address))
        await waitFor(lambda: site.connections, "the first accept")
        self.assertIs(type(port), EagerAcceptPort)
        self.assertEqual(port.numberAccepts, ACCEPT_FLOOR)
        for _ in range(150):
            clients.append(socket.create_connection(address))
        port.doRead()
        self.assertEqual(len(site.connections), 1 + ACCEPT_FLOOR)
        self.assertEqual(port.numberAccepts, ACCEPT_FLOOR + 20)
        await waitFor(lambda: len(site.connections) == 151, "the rest")
        port.doRead()
        self.assertEqual(port.numberAccepts, ACCEPT_FLOOR)

    def test_otherPortsUntouched(self) -> None:
        """
        Only a plain listening C{tcp.Port} changes class: no port (a test
        transport), or anything else, is left as it is.
        """

        class NotAPort:
            numberAccepts = 1

        other = NotAPort()
        self.assertFalse(acceptEagerly(other))
        self.assertFalse(acceptEagerly(None))
        self.assertIs(type(other), NotAPort)
