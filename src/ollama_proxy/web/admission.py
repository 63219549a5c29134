# -*- test-case-name: tests.web.test_admission -*-
"""
How many new requests start in one reactor turn.

A thousand clients that send their requests at once are read in one turn.
Started all in that turn, every stream then takes each of its next steps
(the upstream connect, the request sent, the answer's head) in turns
that each serve all thousand, so every client waits for the setup of all
of them before its first byte (issue 23: TTFB p50 and p99 both at the end
of the whole setup).  L{Admission} starts at most L{PER_TURN} requests
per turn and the rest, in arrival order, L{PER_TURN} per turn after the
reactor's next poll: the first ones go through their turns while the later
ones wait, and the median client's first byte comes after about half the
setups instead of all of them.  Below L{PER_TURN} requests per turn
(everything but a burst) a request starts in the call that completed it,
as before.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable
from weakref import WeakKeyDictionary

from twisted.internet import tcp

PER_TURN = 100
"""The most requests started in one reactor turn before the rest wait for
the next turns (the listening port's accept floor, L{ACCEPT_FLOOR})."""

ACCEPT_FLOOR = 100
"""The fewest connections a listening port accepts in one reactor turn
(Twisted's own starting C{numberAccepts})."""


class EagerAcceptPort(tcp.Port):
    """
    A listening TCP port whose accepts per reactor turn never fall below
    L{ACCEPT_FLOOR}.  Twisted's C{Port.doRead} accepts at most
    C{numberAccepts} connections per turn and, after a turn that found
    fewer waiting, lowers it to that number (down to 1), raising it by 20
    per full turn after.  When a thousand clients connect at once after a
    quiet moment, the queue was drained one, then 21, 41 ... per turn,
    each turn long with the relaying of the streams already started
    (issue 23).  An C{accept} that finds nothing ends the loop at once, so
    the floor costs nothing when few are waiting.
    """

    @property
    def numberAccepts(self) -> int:
        value: int = self.__dict__.get("numberAccepts", ACCEPT_FLOOR)
        return value

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        self.__dict__["numberAccepts"] = max(value, ACCEPT_FLOOR)


def acceptEagerly(port: object) -> bool:
    """
    Make a plain listening TCP port (exactly C{tcp.Port}, the one an
    accepted C{tcp.Server} names as its C{server}) an L{EagerAcceptPort}:
    same state, C{numberAccepts} floored.  Anything else is left as it is.

    @param port: a connection's listening port, if any.
    @return: whether it now accepts eagerly.
    """
    if type(port) is tcp.Port and "numberAccepts" in port.__dict__:
        port.__class__ = EagerAcceptPort
        return True
    return type(port) is EagerAcceptPort


RESET_AFTER = 10
"""The start that asks for the count to be reset at the end of its turn."""


class Admission:
    """
    Start requests now, or, past L{PER_TURN} in this turn, in later turns.

    @ivar perTurn: the requests started per turn.
    """

    def __init__(self, callLater: Callable[..., Any], perTurn: int = PER_TURN) -> None:
        """
        @param callLater: the reactor's C{callLater} (the channel's clock).
        @param perTurn: see L{PER_TURN}.
        """
        self._callLater = callLater
        self.perTurn = perTurn
        self._started = 0
        self._queue: deque[tuple[Callable[[], bool], Callable[[], None]]] = deque()
        self._draining = False

    def admit(self, start: Callable[[], None], alive: Callable[[], bool]) -> None:
        """
        Start a request now, or queue it for a later turn.

        @param start: starts the request (hands it to the resource tree).
        @param alive: whether it is still wanted when its turn comes (its
            client may have left while it waited: it is then dropped).
        """
        if not self._queue and self._started < self.perTurn:
            self._started += 1
            if self._started == RESET_AFTER:
                # Made in this turn's reads: runs at this turn's end.  Not
                # one call per turn (a request alone in its turn would pay
                # a timed call): the count may carry up to RESET_AFTER - 1
                # starts of earlier turns, a cap of 91 to 100 per turn.
                self._callLater(0, self._turnEnded)
            start()
            return
        self._queue.append((alive, start))
        if not self._draining:
            self._draining = True
            self._callLater(0, self._hop)

    def waiting(self) -> int:
        """
        @return: the requests queued for a later turn.
        """
        return len(self._queue)

    def _turnEnded(self) -> None:
        self._started = 0

    def _hop(self) -> None:
        # Run among the reactor's timed calls at the end of a turn, a call
        # made now runs at the end of the next turn: after the next poll
        # has served what the started requests wait for.
        self._callLater(0, self._drain)

    def _drain(self) -> None:
        queue, started = self._queue, 0
        while queue and started < self.perTurn:
            alive, start = queue.popleft()
            if alive():
                started += 1
                start()
        if queue:
            self._callLater(0, self._hop)
        else:
            self._draining = False


_sites: WeakKeyDictionary[Any, Admission] = WeakKeyDictionary()


def admissionFor(site: Any, callLater: Callable[..., Any]) -> Admission | None:
    """
    @param site: a channel's site (the requests of all its connections
        share one L{Admission}); C{None} for a channel without one.
    @param callLater: the channel's clock.
    @return: the site's L{Admission}, made on first use; C{None} without a
        site.
    """
    if site is None:
        return None
    admission = _sites.get(site)
    if admission is None:
        admission = _sites[site] = Admission(callLater)
    return admission
