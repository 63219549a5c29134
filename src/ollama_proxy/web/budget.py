# -*- test-case-name: tests.web.test_budget -*-
"""
The memory budget for request bodies, shared by every request, and the
stepped decompression that charges it.

C{--max-body} bounds one request; nothing bounded the sum, so a hundred 2 KB
zstd bodies of 60 MB each (200 KB on the wire) took gigabytes.  Every body
byte the proxy holds is charged to one L{BodyBudget}: the raw bytes as
L{ollama_proxy.web.site.LimitedRequest} buffers them, and the decompressed
bytes as L{inflate} produces them.  A request that does not fit is answered
503 with C{Retry-After} (in the site's JSON shape before the body is in, in
the route's dialect after); what a request holds is given back when it
finishes, fails, or its client hangs up.

A decoder's own workspace (the zstd window, up to 8 MiB) is charged while
it works.  L{inflate} decodes in steps of about a megabyte (about a millisecond of
work), run by one L{Cooperator} shared by all requests, which returns to the
reactor every 10 ms: neither one bomb nor a hundred at once stall the other
connections.
"""

from __future__ import annotations

from typing import Any, Iterator

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator

from ollama_proxy.protocol.compression import Decoder, TooLarge, capped, codings
from ollama_proxy.protocol.errors import ProxyError

DEFAULT_BODY_BUDGET = 192 * 1024 * 1024
"""Default budget: one body at the default C{--max-body} (64 MiB, charged
three times: as received, decoded into JSON, re-encoded for the backend),
or hundreds of typical agent requests (tens of KB to a few MB each); with
it, a hundred 60 MB zstd bombs leave the proxy under 400 MB (bench/RESULTS.md)."""

RETRY_AFTER = 1
"""Seconds a refused client is told to wait: bodies are usually released
within a request's lifetime."""


PER_ITEM = 96
"""
Bytes charged per C{[}, C{{}, C{,} and C{:} of a body about to be parsed,
on top of twice its length (see L{parseCost})."""


def parseCost(body: bytes | bytearray) -> int:
    """
    What parsing C{body} may hold, charged before orjson allocates it.

    Twice the body covers ordinary JSON (the decoded values and their
    re-encoding for the backend are each about its size), but not JSON made
    of tiny values: C{[[],[],...]} is a 56-byte list plus an 8-byte slot per
    3 body bytes, 21 times its size (C{[[[]]],...} 27 times, C{{"k1":"v1",...}}
    8 times).  Every container and every item after the first in a
    container costs one of those bytes, so L{PER_ITEM} bytes for each (the
    worst measured is 77: a dict's slots, key and value strings) bounds the
    Python objects whatever the shape.  Counting is four C-speed scans
    without a copy; bytes inside strings are counted too, which only
    over-charges text full of commas (a few MB for a megabyte of code).

    @return: the bytes to charge before parsing C{body}.
    """
    structural = body.count(b"[") + body.count(b"{") + body.count(b",") + body.count(b":")
    return 2 * len(body) + PER_ITEM * structural


def chargeParse(request: Any, body: bytes | bytearray) -> None:
    """
    Charge what parsing C{body} may hold (L{parseCost}) before it is
    parsed, to the request's charge (L{chargeOf}): one call from the
    funnel, not one to find the charge and another to use it.

    @raise TooLarge: (413) if it could never fit, even in an idle budget:
        waiting would not help, so a 503 asking to retry would be a lie.
    @raise Busy: (503) if it does not fit now.
    """
    charge = chargeOf(request)
    if charge is None:
        return
    cost = parseCost(body)
    if cost > charge.budget.limit:
        raise TooLarge(
            f"request body would take about {cost} bytes to parse, more than --body-budget "
            f"({charge.budget.limit}); send fewer, larger JSON values"
        )
    if not charge.take(cost):
        raise Busy()


class Busy(ProxyError):
    """
    The body budget is spent (503, with C{Retry-After}).
    """

    status = 503

    def __init__(self) -> None:
        super().__init__(
            "the proxy is holding too many request bodies (--body-budget); retry shortly"
        )


class BodyBudget:
    """
    Bytes of request bodies held by the whole process, against a limit.

    @ivar limit: the most bytes held at once.
    @ivar used: the bytes held now.
    """

    def __init__(self, limit: int = DEFAULT_BODY_BUDGET) -> None:
        self.limit = limit
        self.used = 0

    def charge(self) -> Charge:
        """
        @return: a new, empty charge for one request.
        """
        return Charge(self)


class Charge:
    """
    What one request holds of a L{BodyBudget}; L{release} gives it all back
    (idempotent, so every way a request can end may call it).
    """

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.held = 0
        self.closed = False

    def take(self, size: int) -> bool:
        """
        @param size: more bytes this request is about to hold.
        @return: whether they fit (if not, nothing is charged).
        """
        budget = self.budget
        if self.closed or budget.used + size > budget.limit:
            return False
        budget.used += size
        self.held += size
        return True

    def give(self, size: int) -> None:
        """
        Give back part of what this request holds (a decoder's workspace
        once it is done).
        """
        size = min(size, self.held)
        self.budget.used -= size
        self.held -= size

    def release(self) -> None:
        """
        Give back everything this request holds; it can take no more (its
        request is over, whatever may still be running for it).
        """
        self.budget.used -= self.held
        self.held = 0
        self.closed = True


CHARGE = "ollamaProxyBodyCharge"
"""The attribute of a twisted.web request that holds its L{Charge}."""


def chargeOf(request: Any) -> Charge | None:
    """
    @return: the request's charge, or C{None} for a request made outside a
        L{ollama_proxy.web.site.ProxySite} (tests' in-memory sites).
    """
    charge: Charge | None = getattr(request, CHARGE, None)
    return charge


def cooperator(clock: IReactorTime) -> Cooperator:
    """
    @return: a cooperator that runs its tasks' steps round-robin for at
        most 10 ms per reactor turn (Twisted's default slice), scheduled on
        C{clock}: however many bodies are being decoded at once, the other
        connections wait at most one slice plus one step.
    """
    return Cooperator(scheduler=lambda work: clock.callLater(0, work))


async def inflate(
    body: bytes, encoding: str | None, limit: int, charge: Charge | None, steps: Cooperator
) -> bytes:
    """
    Decode a compressed body in bounded steps, run by C{steps} between
    other work, charging every decoded byte to C{charge} and stopping as
    soon as the cap is passed.

    @param body: the body as received.
    @param encoding: the C{Content-Encoding} header value.
    @param limit: the largest decoded body accepted (C{--max-body}).
    @param charge: the request's share of the budget, or C{None}.
    @param steps: the cooperator shared by every request.
    @return: the decoded body.
    @raise ProxyError: 413 over the cap, 415 for an unknown coding, 400 for a
        corrupt or truncated body, 503 when the budget is spent.
    """
    for coding in codings(encoding):
        decoder = Decoder(coding, body)
        if charge is not None and not charge.take(decoder.workspace):
            raise Busy()
        pieces: list[bytes] = []
        task = steps.cooperate(_decode(decoder, pieces, limit, charge))
        try:
            await task.whenDone()
        except BaseException as e:
            if isinstance(e, CancelledError):
                # The client left: no more steps for it.
                task.stop()
            # The exception's traceback keeps this frame (and a cycle
            # keeps it until the garbage collector runs): drop the decoded
            # megabytes and the decoder's window now, not then.
            pieces.clear()
            decoder.close()
            raise
        # Joining holds the pieces and the whole at once: charged too.
        size = sum(len(piece) for piece in pieces)
        if charge is not None and not charge.take(size):
            pieces.clear()
            raise Busy()
        body = b"".join(pieces)
        del pieces
        if charge is not None:
            charge.give(decoder.workspace + size)
    return body


def _decode(
    decoder: Decoder, pieces: list[bytes], limit: int, charge: Charge | None
) -> Iterator[None]:
    """
    The steps of one decoding, for a L{Cooperator}: each decodes about a
    megabyte into C{pieces}.
    """
    size = 0
    while not decoder.done:
        piece = decoder.step()
        size += len(piece)
        if size > limit:
            raise capped(limit)
        if charge is not None and not charge.take(len(piece)):
            raise Busy()
        pieces.append(piece)
        yield None
