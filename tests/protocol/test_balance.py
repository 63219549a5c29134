"""
Tests for L{ollama_proxy.protocol.balance}: each strategy, priority tiers,
the circuit on a memory clock, and what makes a member routable.
"""

from __future__ import annotations

import random
from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.balance import (
    CLOSED,
    HALF_OPEN,
    LEAST_BUSY,
    OPEN,
    PRIORITY,
    ROUND_ROBIN,
    Circuit,
    MemberState,
    PoolPolicy,
    RoutingPolicy,
    choose,
)


class Clock:
    """
    A memory clock: C{clock()} is the time, C{advance} moves it.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def members(clock: Clock, *specs: tuple[str, int, float]) -> list[MemberState]:
    return [MemberState(name, clock, priority, weight, Circuit(clock))
            for name, priority, weight in specs]


def picks(pool: list[MemberState], strategy: str, n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chosen = choose(pool, strategy, rng)
        assert chosen is not None
        out.append(chosen.name)
    return out


class StrategyTests(SynchronousTestCase):
    """
    L{choose} with each strategy.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def test_leastBusyTakesFewestInFlight(self) -> None:
        """
        C{least-busy} picks the member with the fewest requests in flight.
        """
        pool = members(self.clock, ("a", 0, 1.0), ("b", 0, 1.0), ("c", 0, 1.0))
        pool[0].inFlight, pool[1].inFlight, pool[2].inFlight = 3, 1, 2
        self.assertEqual(picks(pool, LEAST_BUSY, 5), ["b"] * 5)

    def test_leastBusyWeighted(self) -> None:
        """
        In flight counts per unit of weight: a member of weight 2 with 3 in
        flight ((3+1)/2 = 2) beats one of weight 1 with 2 ((2+1)/1 = 3).
        """
        pool = members(self.clock, ("big", 0, 2.0), ("small", 0, 1.0))
        pool[0].inFlight, pool[1].inFlight = 3, 2
        self.assertEqual(picks(pool, LEAST_BUSY, 3), ["big"] * 3)

    def test_leastBusyTiesRandom(self) -> None:
        """
        Ties are broken at random: idle equal members all get picked.
        """
        pool = members(self.clock, ("a", 0, 1.0), ("b", 0, 1.0), ("c", 0, 1.0))
        counts = Counter(picks(pool, LEAST_BUSY, 300))
        self.assertEqual(set(counts), {"a", "b", "c"})
        self.assertGreater(min(counts.values()), 60)

    def test_roundRobinInterleavesByWeight(self) -> None:
        """
        C{round-robin} is smooth and weighted: 2:1 gives two of every three
        to the heavier member, never three of one in a row.
        """
        pool = members(self.clock, ("a", 0, 2.0), ("b", 0, 1.0))
        order = picks(pool, ROUND_ROBIN, 6)
        self.assertEqual(order, ["a", "b", "a", "a", "b", "a"])

    def test_roundRobinEqual(self) -> None:
        """
        Equal weights take turns.
        """
        pool = members(self.clock, ("a", 0, 1.0), ("b", 0, 1.0), ("c", 0, 1.0))
        self.assertEqual(picks(pool, ROUND_ROBIN, 6), ["a", "b", "c", "a", "b", "c"])

    def test_priorityWeightedRandomInTopTier(self) -> None:
        """
        C{priority}: only the top tier, weighted at random (3:1 here).
        """
        pool = members(self.clock, ("low", 0, 100.0), ("a", 10, 3.0), ("b", 10, 1.0))
        counts = Counter(picks(pool, PRIORITY, 400))
        self.assertNotIn("low", counts)
        self.assertGreater(counts["a"], 2 * counts["b"])

    def test_lowerTierOnlyWhenTopUnroutable(self) -> None:
        """
        Every strategy takes a lower tier only when no higher member is
        routable; an excluded (already tried) member counts as not routable.
        """
        for strategy in (LEAST_BUSY, ROUND_ROBIN, PRIORITY):
            pool = members(self.clock, ("cloud", 0, 1.0), ("local", 5, 1.0))
            pool[0].inFlight = 0
            pool[1].inFlight = 50
            self.assertEqual(picks(pool, strategy, 3), ["local"] * 3, strategy)
            chosen = choose(pool, strategy, random.Random(0), {"local"})
            self.assertEqual(chosen.name if chosen else None, "cloud")
            pool[1].misconfigured = "backend answered 401"
            self.assertEqual(picks(pool, strategy, 2), ["cloud"] * 2)

    def test_noneRoutable(self) -> None:
        """
        Nothing routable: C{None}.
        """
        pool = members(self.clock, ("a", 0, 1.0))
        self.assertIsNone(choose(pool, LEAST_BUSY, random.Random(0), {"a"}))
        self.assertIsNone(choose([], LEAST_BUSY, random.Random(0)))

    def test_rateLimitedUntilRetryAfter(self) -> None:
        """
        A member that answered 429 is skipped until its C{Retry-After}
        has passed.
        """
        pool = members(self.clock, ("a", 0, 1.0), ("b", 0, 1.0))
        pool[0].limitedUntil = self.clock() + 2
        self.assertEqual(set(picks(pool, LEAST_BUSY, 20)), {"b"})
        self.assertEqual(pool[0].whyNot(), "rate limited (429)")
        self.clock.advance(2)
        self.assertTrue(pool[0].routable())

    def test_policyFor(self) -> None:
        """
        A model's own policy wins over the default.
        """
        own = PoolPolicy(ROUND_ROBIN, True)
        policy = RoutingPolicy(models={"qwen": own})
        self.assertEqual(policy.policyFor("x", "qwen"), own)
        self.assertEqual(policy.policyFor("x"), PoolPolicy())


class CircuitTests(SynchronousTestCase):
    """
    L{Circuit} on a memory clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.changes: list[tuple[str, str]] = []
        self.circuit = Circuit(self.clock, threshold=3, backoff=5, backoffMax=20,
                               onChange=lambda old, new: self.changes.append((old, new)))

    def test_opensAfterConsecutiveFailures(self) -> None:
        """
        N consecutive failures open it; a success in between resets the
        count.
        """
        c = self.circuit
        c.failure()
        c.failure()
        c.success()
        c.failure()
        c.failure()
        self.assertEqual(c.state, CLOSED)
        c.failure()
        self.assertEqual(c.state, OPEN)
        self.assertFalse(c.allows())
        self.assertEqual(self.changes, [(CLOSED, OPEN)])

    def test_halfOpenLetsOneTrial(self) -> None:
        """
        After the backoff, half-open lets one request through; a second
        waits until the trial ends; its success closes.
        """
        c = self.circuit
        for _ in range(3):
            c.failure()
        self.clock.advance(4.9)
        self.assertFalse(c.allows())
        self.clock.advance(0.1)
        self.assertEqual(c.state, HALF_OPEN)
        self.assertTrue(c.allows())
        c.begin()
        self.assertFalse(c.allows())
        c.success()
        self.assertEqual(c.state, CLOSED)
        self.assertTrue(c.allows())
        self.assertEqual(self.changes, [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)])

    def test_backoffGrowsToCap(self) -> None:
        """
        A failed trial reopens for twice as long, up to the cap; a success
        resets the backoff.
        """
        c = self.circuit
        for _ in range(3):
            c.failure()
        periods = []
        for _ in range(4):
            waited = 0.0
            while not c.allows():
                self.clock.advance(0.5)
                waited += 0.5
            periods.append(waited)
            c.begin()
            c.failure()
        self.assertEqual(periods, [5.0, 10.0, 20.0, 20.0])
        self.clock.advance(20)
        c.begin()
        c.success()
        for _ in range(3):
            c.failure()
        self.clock.advance(5)
        self.assertTrue(c.allows())

    def test_abandonedTrialFreesTheSlot(self) -> None:
        """
        A trial that ends without a verdict (the client left) lets another
        request try.
        """
        c = self.circuit
        for _ in range(3):
            c.failure()
        self.clock.advance(5)
        c.begin()
        self.assertFalse(c.allows())
        c.abandon()
        self.assertTrue(c.allows())

    def test_successClosesFromOpen(self) -> None:
        """
        An active check that passes closes an open circuit at once (the
        backend rejoins within one check interval, not one backoff).
        """
        c = self.circuit
        for _ in range(3):
            c.failure()
        c.success()
        self.assertEqual(c.state, CLOSED)
        self.assertIsNone(c.openedAt)


class SnapshotTests(SynchronousTestCase):
    """
    L{MemberState.snapshot}: what a status page shows.
    """

    def test_snapshot(self) -> None:
        """
        Name, routability, circuit, in flight, last check, failures and the
        reason, in the proxy's words.
        """
        clock = Clock()
        member = MemberState("a", clock, circuit=Circuit(clock, threshold=1))
        member.inFlight = 2
        member.lastCheck = 999.0
        member.reason = "connection refused"
        member.circuit.failure()
        snap = member.snapshot()
        self.assertEqual(
            (snap.name, snap.routable, snap.circuit, snap.inFlight, snap.lastCheck, snap.failures,
             snap.misconfigured),
            ("a", False, OPEN, 2, 999.0, 1, False),
        )
        self.assertEqual(snap.reason, "circuit open after connection refused")
        member.misconfigured = "backend answered 403"
        self.assertEqual(member.snapshot().reason, "backend answered 403")
        self.assertTrue(member.snapshot().misconfigured)
