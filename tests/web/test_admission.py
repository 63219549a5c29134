"""
A burst of requests starts a hundred per reactor turn, the rest after the
next polls, in arrival order; fewer start at once, as before (issue 23).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.web.admission import PER_TURN, Admission
from ollama_proxy.web.site import makeSite
from tests.web.test_fastchannel import MAX_BODY, Recording


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
