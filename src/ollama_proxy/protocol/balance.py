# -*- test-case-name: tests.protocol.test_balance -*-
"""
Pools of backends that serve one model: which member takes a request, and
when a member is routable at all.

Pure: the clock is a function passed in (the reactor's C{seconds} in
production, a memory clock in tests), randomness is an injected
C{random.Random}, and nothing here does I/O.  L{ollama_proxy.upstream.fleet}
wires it to the backends.

Each configured backend has one L{MemberState}, shared by every pool it is a
member of (its requests in flight and its circuit are the backend's, not the
model's).  A member is routable unless:

  - an operator must act: it answered 401 or 403 (C{misconfigured}; not a
    circuit trip, a probe that succeeds clears it);
  - it asked for a pause: a 429's C{Retry-After} (C{limitedUntil});
  - its L{Circuit} is open (consecutive failures), or half-open with its
    one trial request already out.

Selection (L{choose}) takes the highest C{priority} tier that has a routable
member, then picks within the tier by strategy:

  - C{least-busy} (default): fewest requests in flight per unit of weight,
    ties broken at random; a request still waiting for its response
    headers counts twice, because waiting is what a busy backend does
    (vLLM queues a request before its prefill): a backend 200 ms slower
    to answer is shunned more than its share of streams alone would say;
  - C{round-robin}: smooth weighted round robin (nginx's), so that weights
    2:1 give A A B, interleaved;
  - C{priority}: weighted random within the top tier.

Why not C{pybreaker}: its open period is read from C{datetime.now()}
(not injectable, so no memory-clock tests), its reset timeout is fixed (no
backoff that grows to a cap), its half-open state lets every concurrent
call through rather than one trial (a Twisted proxy has many requests in
flight at once), it wraps a call and learns the outcome from exceptions
(the proxy must classify 401/429/5xx itself: two of those are not trips),
its async support needs Tornado, and it takes a thread lock per call on
the hot path.  The state machine below is forty lines.
"""

from __future__ import annotations

import random
from typing import Callable, Mapping, Sequence

import attrs

LEAST_BUSY = "least-busy"
ROUND_ROBIN = "round-robin"
PRIORITY = "priority"
STRATEGIES = (LEAST_BUSY, ROUND_ROBIN, PRIORITY)
"""The strategy names C{[routing]} accepts."""

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half-open"

Clock = Callable[[], float]


@attrs.frozen
class PoolPolicy:
    """
    How one model's pool balances (C{[routing]}, or a model's
    C{[routing.models."name"]} table).

    @ivar strategy: one of L{STRATEGIES}.
    @ivar sticky: pin a conversation to the member that served its first
        turn (see L{ollama_proxy.protocol.sticky}).
    """

    strategy: str = LEAST_BUSY
    sticky: bool = False


@attrs.frozen
class RoutingPolicy:
    """
    The C{[routing]} table: balancing, failover, circuits, health checks and
    stickiness for every pool.

    @ivar pool: the default for every model.
    @ivar models: per model (an id or alias as a backend lists it): its own
        policy.
    @ivar attempts: members one request may try before the client gets the
        last error (failover happens only before the first byte).
    @ivar failures: consecutive failures that open a member's circuit.
    @ivar backoff: seconds the circuit stays open the first time; doubled
        at each reopening, up to L{backoffMax}.
    @ivar backoffMax: the cap of the open period.
    @ivar healthInterval: seconds between active checks (the model list)
        of each backend; 0 turns them off.
    @ivar healthTimeout: seconds an active check may take.
    @ivar stickyTTL: seconds a conversation stays pinned after its last turn.
    @ivar stickySize: conversations remembered (least recently used go first).
    """

    pool: PoolPolicy = PoolPolicy()
    models: Mapping[str, PoolPolicy] = attrs.field(factory=dict)
    attempts: int = 3
    failures: int = 3
    backoff: float = 5.0
    backoffMax: float = 60.0
    healthInterval: float = 5.0
    healthTimeout: float = 2.0
    stickyTTL: float = 1800.0
    stickySize: int = 10000

    def policyFor(self, *names: str) -> PoolPolicy:
        """
        @param names: the names a model is known by (its listed id, its id).
        @return: the first one's own policy, else the default.
        """
        for name in names:
            found = self.models.get(name)
            if found is not None:
                return found
        return self.pool


DEFAULT_ROUTING = RoutingPolicy()


class Circuit:
    """
    A passive-health circuit breaker for one backend.

    Closed: requests flow; C{threshold} consecutive failures open it.
    Open: no request for C{backoff} seconds (doubling at each reopening, up
    to C{backoffMax}); then half-open.  Half-open: one trial (a request or
    an active check) goes through; its success closes the circuit and
    resets the backoff, its failure opens it again for longer.

    @ivar failures: consecutive failures counted so far.
    @ivar openedAt: when it last opened (C{None} while closed).
    """

    def __init__(
        self, clock: Clock, threshold: int = 3, backoff: float = 5.0, backoffMax: float = 60.0,
        onChange: Callable[[str, str], None] | None = None,
    ) -> None:
        """
        @param clock: seconds, monotonic enough.
        @param threshold: consecutive failures that open it.
        @param backoff: the first open period.
        @param backoffMax: the longest open period.
        @param onChange: called with C{(old, new)} on every state change
            (the log line and the metrics).
        """
        self.clock = clock
        self.threshold = max(1, threshold)
        self.backoff = backoff
        self.backoffMax = max(backoff, backoffMax)
        self.onChange = onChange
        self.failures = 0
        self.openedAt: float | None = None
        self._state = CLOSED
        self._period = backoff
        self._trial = False

    @property
    def state(self) -> str:
        """
        @return: L{CLOSED}, L{OPEN} or L{HALF_OPEN} (an open circuit whose
            period is over reads as half-open).
        """
        if self._state == OPEN and self.openedAt is not None and (
            self.clock() - self.openedAt >= self._period
        ):
            self._set(HALF_OPEN)
        return self._state

    def allows(self) -> bool:
        """
        @return: whether a request may go now (does not take the trial).
        """
        if self._state == CLOSED:
            return True
        return self.state == HALF_OPEN and not self._trial

    def begin(self) -> None:
        """
        A request goes to the backend now: in half-open, it is the trial.
        """
        if self.state == HALF_OPEN:
            self._trial = True

    def success(self) -> None:
        """
        The backend answered: close (from any state) and reset the backoff.
        """
        self.failures = 0
        self._trial = False
        self._period = self.backoff
        if self._state != CLOSED:
            self.openedAt = None
            self._set(CLOSED)

    def failure(self) -> None:
        """
        The backend failed (no connection, a timeout, a 5xx, a broken
        stream): count it; open at the threshold, or again at once from
        half-open, for twice as long as last time.
        """
        self.failures += 1
        state = self.state
        if state == HALF_OPEN:
            self._trial = False
            self._period = min(self._period * 2, self.backoffMax)
            self._open()
        elif state == CLOSED and self.failures >= self.threshold:
            self._open()

    def abandon(self) -> None:
        """
        A trial ended with no verdict (the client left): let another try.
        """
        self._trial = False

    def _open(self) -> None:
        self.openedAt = self.clock()
        self._set(OPEN)

    def _set(self, state: str) -> None:
        old, self._state = self._state, state
        if old != state and self.onChange is not None:
            self.onChange(old, state)


@attrs.frozen
class MemberSnapshot:
    """
    One backend's state, read-only, for a status page or C{/health/ready}.

    @ivar name: the configured name.
    @ivar routable: whether a request could go to it now.
    @ivar circuit: L{CLOSED}, L{OPEN} or L{HALF_OPEN}.
    @ivar inFlight: requests sent and not finished.
    @ivar lastCheck: when an active check last ended (clock seconds), or
        C{None}.
    @ivar failures: consecutive failures.
    @ivar reason: why it is not routable, or its last failure; never
        upstream text ("backend answered 401", "connection refused",
        "timeout"); C{""} when healthy.
    @ivar misconfigured: it answered 401/403: an operator must act.
    """

    name: str
    routable: bool
    circuit: str
    inFlight: int
    lastCheck: float | None
    failures: int
    reason: str
    misconfigured: bool


class MemberState:
    """
    The balancing state of one backend.

    @ivar name: the backend's name.
    @ivar priority: higher tiers first.
    @ivar weight: its share within a tier.
    @ivar inFlight: requests sent and not finished.
    @ivar waiting: those of them still waiting for their response headers.
    @ivar circuit: its L{Circuit}.
    @ivar misconfigured: the reason when it answered 401/403, else C{None}.
    @ivar limitedUntil: clock seconds before which it asked not to be sent
        anything (a 429's C{Retry-After}).
    @ivar lastCheck: when an active check last ended.
    @ivar reason: the last failure, for reports.
    """

    def __init__(
        self, name: str, clock: Clock, priority: int = 0, weight: float = 1.0,
        circuit: Circuit | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self.priority = priority
        self.weight = weight if weight > 0 else 1.0
        self.inFlight = 0
        self.waiting = 0
        self.circuit = circuit if circuit is not None else Circuit(clock)
        self.misconfigured: str | None = None
        self.limitedUntil = 0.0
        self.lastCheck: float | None = None
        self.reason = ""
        self.current = 0.0  # smooth round robin's running weight

    def routable(self) -> bool:
        """
        @return: whether a request may go to it now.
        """
        if self.misconfigured is not None:
            return False
        if self.limitedUntil:
            if self.clock() < self.limitedUntil:
                return False
            self.limitedUntil = 0.0
        return self.circuit.allows()

    def whyNot(self) -> str:
        """
        @return: why it is not routable (C{""} when it is).
        """
        if self.misconfigured is not None:
            return self.misconfigured
        if self.limitedUntil and self.clock() < self.limitedUntil:
            return "rate limited (429)"
        if not self.circuit.allows():
            return f"circuit {self.circuit.state}" + (f" after {self.reason}" if self.reason else "")
        return ""

    def snapshot(self) -> MemberSnapshot:
        """
        @return: its state now, read-only.
        """
        why = self.whyNot()
        return MemberSnapshot(
            name=self.name, routable=not why, circuit=self.circuit.state,
            inFlight=self.inFlight, lastCheck=self.lastCheck,
            failures=self.circuit.failures, reason=why or self.reason,
            misconfigured=self.misconfigured is not None,
        )


def choose(
    members: Sequence[MemberState],
    strategy: str,
    rng: random.Random,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> MemberState | None:
    """
    The member for the next request.

    @param members: the pool, in configuration order.
    @param strategy: one of L{STRATEGIES}.
    @param rng: the randomness (ties, weighted picks).
    @param exclude: names already tried for this request.
    @return: the member, or C{None} when none is routable.
    """
    tier: list[MemberState] = []
    top = 0
    for member in members:
        if member.name in exclude or not member.routable():
            continue
        if not tier or member.priority > top:
            tier, top = [member], member.priority
        elif member.priority == top:
            tier.append(member)
    if len(tier) <= 1:
        return tier[0] if tier else None
    if strategy == ROUND_ROBIN:
        total = 0.0
        best = tier[0]
        for member in tier:
            member.current += member.weight
            total += member.weight
            if member.current > best.current:
                best = member
        best.current -= total
        return best
    if strategy == PRIORITY:
        pick = rng.random() * sum(m.weight for m in tier)
        for member in tier:
            pick -= member.weight
            if pick < 0:
                return member
        return tier[-1]
    # One pass; ties broken uniformly (reservoir sampling).
    best = tier[0]
    lowest = (best.inFlight + best.waiting + 1) / best.weight
    ties = 1
    for member in tier[1:]:
        load = (member.inFlight + member.waiting + 1) / member.weight
        if load < lowest:
            best, lowest, ties = member, load, 1
        elif load == lowest:
            ties += 1
            if rng.random() * ties < 1:
                best = member
    return best
