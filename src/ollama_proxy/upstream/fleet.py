# -*- test-case-name: tests.upstream.test_fleet -*-
"""
Several backends for one model: failover before the first byte, passive
circuits and active health checks, sticky conversations.

The router puts every backend that offers a name into that name's L{Pool}
(one L{Route} per member).  L{Fleet.send} picks a member
(L{ollama_proxy.protocol.balance.choose}, or the conversation's pin), sends,
and on a failure that the client has not seen yet (no connection, a timeout
before the headers, a 502/503/504, a 429, a 401/403 to the proxy's own key)
moves to the next routable member, up to C{attempts}.  What it hands back
holds a L{Lease}: the request counts as in flight on its member until the
web layer releases it when the answer is finished, and a stream that broke
after its first byte is a failure of that member (the client already got
the dialect's error line; nothing is retried after the first byte).

With one backend configured there is no fleet: a route is sent as it is,
at today's cost.  A pool with one member never refuses for its circuit
(there is nowhere else to go; LiteLLM's "no deployments available" for a
single cooled-down deployment is the pain point not to copy).

Reasons given in logs, C{/health/ready} and the status snapshot are the
proxy's own words ("connection refused", "timeout", "backend answered
503"), never upstream text.
"""

from __future__ import annotations

import random
from typing import Any, Awaitable, Callable, Protocol, Sequence, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ollama_proxy.protocol.balance import (
    Circuit,
    MemberSnapshot,
    MemberState,
    PoolPolicy,
    RoutingPolicy,
    choose,
)
from ollama_proxy.protocol.errors import (
    ProxyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
    describe,
)
from ollama_proxy.protocol.sticky import StickyTable
from ollama_proxy.protocol.backends import NO_OVERRIDE, BackendConfig, ModelOverride
from ollama_proxy.upstream.backend import (
    DEFAULT_RETRY_DELAY,
    Backend,
    retryDelay,
)
from ollama_proxy.upstream.body import readBody
from ollama_proxy.upstream.cache import TTLCache

log = Logger()

T = TypeVar("T")

FAILOVER_STATUSES = frozenset({429, 502, 503, 504})
"""Statuses that move a request to the next member (before its first byte)."""

TRIP_STATUSES = frozenset({502, 503, 504})
"""Statuses that count as a failure of the member's circuit."""

MISCONFIGURED_STATUSES = frozenset({401, 403})
"""Statuses that say the proxy's key for that member is wrong."""


@attrs.frozen
class Route:
    """
    Where one request goes.

    @ivar name: the backend's name (for logs and metrics).
    @ivar backend: the upstream client.
    @ivar modelId: the id to send upstream.
    @ivar override: the configured settings of that model.
    @ivar known: whether a model list (or the configuration) named the
        model; C{False} when the request is sent on a guess.
    @ivar listed: the id the name resolved to as listed: the alias for an
        alias (whose C{modelId} is its target), else C{modelId}.
    @ivar pool: every backend that offers the name, when several do (this
        route is then the first of them); see L{Fleet.send}.
    @ivar key: the request's conversation key, when its pool is sticky.
    @ivar listing: for a route sent on a guess, the model list it was
        guessed without; C{None} for a route a list or the configuration
        named.
    @ivar listingSeen: that list's value when the guess was made: a label
        is worth looking up again only once a newer list has arrived.
    """

    name: str
    backend: Backend
    modelId: str
    override: ModelOverride = NO_OVERRIDE
    known: bool = True
    listed: str = ""
    pool: Pool | None = attrs.field(default=None, eq=False, repr=False)
    key: str = ""
    listing: TTLCache[Any] | None = attrs.field(default=None, eq=False, repr=False)
    listingSeen: object = attrs.field(default=None, eq=False, repr=False)


class Listed(Protocol):
    """
    A configured backend as the fleet sees it (the router's
    L{ollama_proxy.upstream.routing.BackendModels}, named here so that this
    module does not import the router that builds it).
    """

    config: BackendConfig
    backend: Backend

    @property
    def name(self) -> str:
        """The configured name."""

    def refreshed(self, models: object) -> None:
        """Keep the model list a health check read."""


class FleetObserver(Protocol):
    """
    Where the fleet reports, for metrics (L{ollama_proxy.web.metrics.Metrics}).
    """

    def fleetRequest(self, backend: str) -> None:
        """A request was sent to C{backend}."""

    def fleetFailure(self, backend: str, kind: str) -> None:
        """C{backend} failed: C{connection}, C{timeout}, C{http_429},
        C{http_5xx}, C{misconfigured}, C{stream} or C{check}."""

    def fleetFailover(self, backend: str) -> None:
        """A request left C{backend} for another member."""

    def fleetInFlight(self, backend: str, delta: int) -> None:
        """C{backend}'s requests in flight changed by C{delta}."""

    def fleetCircuit(self, backend: str, state: str) -> None:
        """C{backend}'s circuit is now C{state}."""

    def fleetSticky(self, backend: str, outcome: str) -> None:
        """A sticky lookup: C{hit}, C{miss} or C{repin}, landing on C{backend}."""


@attrs.frozen
class Pool:
    """
    The members that serve one name, in configuration order.

    @ivar name: the name, for messages.
    @ivar routes: one route per member.
    @ivar states: their balancing states, in the same order.
    @ivar policy: the pool's strategy and stickiness.
    """

    name: str
    routes: tuple[Route, ...]
    states: tuple[MemberState, ...]
    policy: PoolPolicy


@attrs.define
class Lease:
    """
    One request in flight on one member, until L{release}.
    """

    fleet: Fleet
    member: MemberState
    released: bool = False

    def release(self, failed: bool = False) -> None:
        """
        The answer is finished.

        @param failed: the backend broke it after its first byte (a stream
            that ended with an error): a failure of the member.
        """
        if self.released:
            return
        self.released = True
        self.fleet._settle(self.member, -1)
        if failed:
            self.fleet.failed(self.member, "stream", "stream broken")


def failureReason(error: Exception) -> tuple[str, str]:
    """
    An upstream failure in the proxy's own words.

    @param error: the failure.
    @return: C{(kind, reason)}: the metrics' kind and the reason
        L{describe} gives (no upstream text).
    """
    if isinstance(error, DeferredTimeout):
        return "timeout", "timeout"
    if not isinstance(error, ProxyError):
        return "protocol", "error"
    reason = describe(error)
    if isinstance(error, UpstreamTimeout):
        return "timeout", reason
    if isinstance(error, UpstreamConnectError):
        return "connection", reason
    if isinstance(error, UpstreamHTTPError):
        if error.status in MISCONFIGURED_STATUSES:
            return "misconfigured", reason
        return ("http_429" if error.status == 429 else f"http_{error.status // 100}xx"), reason
    return "protocol", reason


class Fleet:
    """
    The balancing state of every backend of one router, and the checks.

    @ivar members: backend name to its state.
    @ivar sticky: the conversation pins.
    @ivar observer: metrics, if any.
    """

    def __init__(
        self,
        backends: Sequence[Listed],
        policy: RoutingPolicy,
        clock: IReactorTime,
        rng: random.Random | None = None,
    ) -> None:
        """
        @param backends: the router's backends (their C{priority} and
            C{weight} from the configuration).
        @param policy: the C{[routing]} table.
        @param clock: the reactor's clock: circuits, pins, checks.
        @param rng: randomness for ties and weighted picks.
        """
        self.policy = policy
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.backends = backends
        self.observer: FleetObserver | None = None
        self.members: dict[str, MemberState] = {}
        for entry in backends:
            name = entry.name
            circuit = Circuit(clock.seconds, policy.failures, policy.backoff, policy.backoffMax,
                              onChange=self._changed(name))
            self.members[name] = MemberState(name, clock.seconds, entry.config.priority,
                                             entry.config.weight, circuit)
        self.sticky = StickyTable(clock.seconds, policy.stickySize, policy.stickyTTL)
        self._checks: dict[str, IDelayedCall] = {}
        self._checking: set[str] = set()
        self._running = False

    # -- selection and failover ---------------------------------------

    async def send(
        self, route: Route, call: Callable[[Route], Awaitable[T]], key: str = "", *,
        clientKey: bytes | None,
    ) -> tuple[Route, T, Lease | None]:
        """
        Send a request to the best member of C{route}'s pool, failing over
        before the first byte.

        @param route: what the router resolved (its pool, if any).
        @param call: sends the request to one member and returns its
            answer (its response headers: nothing has reached the client).
        @param key: the conversation's sticky key (C{""}: none).
        @param clientKey: the key the client presented (C{call} sends it
            to a backend that forwards client keys): a backend refusing a
            client's own key is the client's business, not the member's.
        @return: the member that answered, its answer, and the lease to
            release when the answer is finished.
        @raise ProxyError: the last member's error when every attempt
            failed, or a 503 naming why no member is routable.
        """
        pool = route.pool
        if pool is None:
            member = self.members.get(route.name)
            if member is None:
                return route, await call(route), None
            pool = Pool(route.listed or route.modelId, (route,), (member,), self.policy.pool)
        tried: set[str] = set()
        limit = min(self.policy.attempts, len(pool.states))
        sticky = pool.policy.sticky and bool(key)
        last: ProxyError | None = None
        while True:
            index = self._pick(pool, tried, key if sticky and not tried else "")
            if index is None:
                if last is not None:
                    raise last
                if len(pool.states) == 1:
                    index = 0  # the only member: let it answer for itself
                else:
                    raise UpstreamError(
                        f'no backend can serve model "{pool.name}" now: '
                        + "; ".join(f"{m.name}: {m.whyNot()}" for m in pool.states), 503,
                    )
            member, target = pool.states[index], pool.routes[index]
            tried.add(member.name)
            member.circuit.begin()
            self._settle(member, +1)
            if self.observer is not None:
                self.observer.fleetRequest(member.name)
            more = len(tried) < limit
            member.waiting += 1
            try:
                result = await call(target)
            except CancelledError:
                member.waiting -= 1
                self._settle(member, -1)
                member.circuit.abandon()
                raise
            except ProxyError as e:
                member.waiting -= 1
                self._settle(member, -1)
                if isinstance(e, UpstreamHTTPError):
                    e.backend = member.name
                if self._failedWith(member, target, e, clientKey) and more:
                    last = e
                    self._failover(member)
                    continue
                member.circuit.abandon()
                raise
            member.waiting -= 1
            code = getattr(result, "code", None)
            if isinstance(code, int) and (code in FAILOVER_STATUSES or self._keyRefused(target, code, clientKey)):
                error = UpstreamHTTPError(f"backend answered {code}", code)
                error.retryAfter = retryDelay(result, self.clock.seconds())  # type: ignore[arg-type]
                if self._failedWith(member, target, error, clientKey) and more and self._another(pool, tried):
                    self._settle(member, -1)
                    # Drained on the side (capped, idle-timed): the next
                    # member is asked at once.
                    Deferred.fromCoroutine(_discard(result, self.clock))
                    last = error
                    self._failover(member)
                    continue
            else:
                member.circuit.success()
                if member.reason:
                    member.reason = ""
            if sticky:
                self.sticky.put(key, member.name)
            return target, result, Lease(self, member)

    def _pick(self, pool: Pool, tried: set[str], key: str) -> int | None:
        """
        @return: the index of the member to try next, or C{None}.
        """
        if key:
            pinned = self.sticky.get(key)
            if pinned is not None and pinned not in tried:
                for i, state in enumerate(pool.states):
                    if state.name == pinned and state.routable():
                        self._stickyOutcome(pinned, "hit")
                        return i
            chosen = choose(pool.states, pool.policy.strategy, self.rng, tried)
            if chosen is not None:
                self._stickyOutcome(chosen.name, "miss" if pinned is None else "repin")
                return pool.states.index(chosen)
            return None
        chosen = choose(pool.states, pool.policy.strategy, self.rng, tried)
        return None if chosen is None else pool.states.index(chosen)

    def _another(self, pool: Pool, tried: set[str]) -> bool:
        return choose(pool.states, pool.policy.strategy, self.rng, tried) is not None

    def _stickyOutcome(self, name: str, outcome: str) -> None:
        if self.observer is not None:
            self.observer.fleetSticky(name, outcome)

    def _failover(self, member: MemberState) -> None:
        if self.observer is not None:
            self.observer.fleetFailover(member.name)

    def _keyRefused(self, target: Route, code: int, clientKey: bytes | None) -> bool:
        """
        @return: whether C{code} says the proxy's own key is refused (not a
            client's forwarded one, which is the client's business).
        """
        return code in MISCONFIGURED_STATUSES and not (
            target.backend.forwardClientKey and clientKey is not None
        )

    def _failedWith(
        self, member: MemberState, target: Route, error: ProxyError, clientKey: bytes | None
    ) -> bool:
        """
        Record a failure before the first byte.

        @return: whether it moves the request to another member.
        """
        if isinstance(error, UpstreamHTTPError):
            status = error.status
            if status == 429:
                wait = error.retryAfter
                self.limited(member, DEFAULT_RETRY_DELAY if wait is None else wait)
                return True
            if status in MISCONFIGURED_STATUSES:
                if not self._keyRefused(target, status, clientKey):
                    return False
                self.misconfigured(member, f"backend answered {status}")
                return True
            if status >= 500 and status not in TRIP_STATUSES:
                # A backend failing every request is ejected, but a 500 may
                # be this request's doing: no failover.
                self.failed(member, "http_5xx", describe(error))
                return False
            if status not in TRIP_STATUSES:
                member.circuit.success()  # it answered: the client's problem
                return False
        elif not isinstance(error, (UpstreamConnectError, UpstreamTimeout)):
            return False
        kind, reason = failureReason(error)
        self.failed(member, kind, reason)
        return True

    def _settle(self, member: MemberState, delta: int) -> None:
        member.inFlight += delta
        if self.observer is not None:
            self.observer.fleetInFlight(member.name, delta)

    # -- state changes ------------------------------------------------

    def failed(self, member: MemberState, kind: str, reason: str) -> None:
        """
        A failure of C{member}: its circuit counts it.

        @param member: the member.
        @param kind: the metrics' kind.
        @param reason: in the proxy's words.
        """
        member.reason = reason
        if self.observer is not None:
            self.observer.fleetFailure(member.name, kind)
        member.circuit.failure()

    def limited(self, member: MemberState, seconds: float) -> None:
        """
        C{member} answered 429: no request before C{seconds} have passed
        (at most C{backoff_max}: a backend cannot take itself out for a
        day with one header).
        """
        seconds = min(max(0.0, seconds), self.policy.backoffMax)
        member.limitedUntil = self.clock.seconds() + seconds
        member.circuit.abandon()  # not a verdict on a half-open trial
        member.reason = "backend answered 429"
        if self.observer is not None:
            self.observer.fleetFailure(member.name, "http_429")
        log.warn("backend {backend} is rate limited for {seconds:.1f} s (429)",
                 backend=member.name, seconds=seconds)

    def misconfigured(self, member: MemberState, reason: str) -> None:
        """
        C{member} refused the proxy's key: not routable until a check
        passes.
        """
        if self.observer is not None:
            self.observer.fleetFailure(member.name, "misconfigured")
        member.circuit.abandon()
        if member.misconfigured != reason:
            member.misconfigured = reason
            log.error("backend {backend} is misconfigured ({reason}): not routable until a "
                      "check succeeds", backend=member.name, reason=reason)

    def recovered(self, member: MemberState) -> None:
        """
        An active check passed: misconfiguration and circuit cleared.
        """
        if member.misconfigured is not None:
            member.misconfigured = None
            log.info("backend {backend} accepts the proxy's key again: routable",
                     backend=member.name)
        member.reason = ""
        member.circuit.success()

    def _changed(self, name: str) -> Callable[[str, str], None]:
        def changed(old: str, new: str) -> None:
            member = self.members.get(name)
            why = f" after {member.reason}" if member is not None and member.reason else ""
            log.info("backend {backend}: circuit {old} -> {new}{why}",
                     backend=name, old=old, new=new, why=why)
            if self.observer is not None:
                self.observer.fleetCircuit(name, new)
        return changed

    # -- active checks ------------------------------------------------

    def start(self) -> None:
        """
        Check every backend now and then every C{healthInterval} seconds
        (nothing when the interval is 0).
        """
        if self._running or self.policy.healthInterval <= 0:
            return
        self._running = True
        for entry in self.backends:
            self._schedule(entry, 0.0)

    def stop(self) -> None:
        """
        Stop checking (a reload replaced this fleet, or shutdown).
        """
        self._running = False
        for call in self._checks.values():
            if call.active():
                call.cancel()
        self._checks.clear()

    def _schedule(self, entry: Listed, delay: float) -> None:
        if self._running:
            self._checks[entry.name] = self.clock.callLater(delay, self._startCheck, entry)

    def _startCheck(self, entry: Listed) -> None:
        # At a fixed rate (one interval after the last check began), so a
        # backend that comes back is seen within one interval.
        began = self.clock.seconds()
        d = Deferred.fromCoroutine(self.check(entry))
        d.addErrback(lambda f: log.failure("checking backend {backend} failed", f,
                                           backend=entry.name))
        d.addBoth(lambda _: self._schedule(
            entry, max(0.0, began + self.policy.healthInterval - self.clock.seconds())))

    async def check(self, entry: Listed) -> bool:
        """
        One active check: C{GET /v1/models} within C{healthTimeout}.  A
        success closes the circuit, clears a misconfiguration and refreshes
        the model list (a recovered backend rejoins with what it serves
        now); a 401/403 marks it misconfigured; anything else is a failure
        of its circuit.

        @param entry: the backend.
        @return: whether it passed.
        """
        member = self.members[entry.name]
        if entry.name in self._checking:
            return False
        self._checking.add(entry.name)
        try:
            wait = Deferred.fromCoroutine(entry.backend.getJSON("models"))
            wait.addTimeout(self.policy.healthTimeout, self.clock)
            body = await wait
        except (ProxyError, DeferredTimeout) as e:
            if isinstance(e, UpstreamHTTPError) and e.status in MISCONFIGURED_STATUSES:
                self.misconfigured(member, f"backend answered {e.status}")
            elif isinstance(e, UpstreamHTTPError) and e.status == 429:
                self.limited(member, DEFAULT_RETRY_DELAY)
            elif isinstance(e, UpstreamHTTPError) and e.status not in TRIP_STATUSES:
                # It answered (a backend without /v1/models): alive.
                self.recovered(member)
                return True
            else:
                self.failed(member, "check", failureReason(e)[1])
            return False
        finally:
            self._checking.discard(entry.name)
            member.lastCheck = self.clock.seconds()
        self.recovered(member)
        entry.refreshed(body)
        return True

    # -- reports --------------------------------------------------------

    def snapshot(self) -> list[MemberSnapshot]:
        """
        @return: every backend's state now, in configuration order
            (read-only; a status page renders it).
        """
        return [self.members[entry.name].snapshot() for entry in self.backends]


async def _discard(response: object, clock: IReactorTime) -> None:
    """
    Read and drop the body of an answer that is failed over, so that its
    connection can be reused.
    """
    try:
        await readBody(response, clock, 5.0)  # type: ignore[arg-type]
    except Exception:
        pass
