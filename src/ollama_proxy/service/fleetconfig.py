# -*- test-case-name: tests.service.test_fleetconfig -*-
"""
The configuration of several backends for one model: a backend's
C{priority} and C{weight}, and the C{[routing]} table (strategy, failover
attempts, circuits, health checks, stickiness, per-model policies), checked
into the pure L{RoutingPolicy}.  Its own module so that the file parser
(L{ollama_proxy.service.config}) stays one screenful per concern.

    [routing]
    strategy = "least-busy"        # or "round-robin", "priority"
    attempts = 3                   # members one request may try
    failures = 3                   # consecutive failures that open a circuit
    backoff = 5                    # first open period (s), doubled per reopening
    backoff_max = 60
    health_interval = 5            # active checks (GET /v1/models); 0 = off
    health_timeout = 2
    sticky = false                 # pin conversations to a member
    sticky_ttl = 1800
    sticky_size = 10000
    [routing.models."qwen3-coder"]
    strategy = "priority"
    sticky = true
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Protocol

from ollama_proxy.protocol.balance import STRATEGIES, PoolPolicy, RoutingPolicy

KeyPath = tuple[str | int, ...]
"""Where a value lives in the file: C{("backend", 1, "url")}."""


class _Checker(Protocol):
    """
    The type checks of L{ollama_proxy.service.config} these parsers use
    (named here, so that this module does not import the one that calls
    it).
    """

    def fail(self, key: KeyPath, reason: str) -> Exception:
        """@return: the error naming the key's line."""

    def table(self, value: Any, key: KeyPath) -> dict[str, Any]:
        """@return: C{value}, a table."""

    def known(self, table: Mapping[str, Any], key: KeyPath, allowed: Iterable[str]) -> None:
        """@raise Exception: for a key not in C{allowed}."""

    def string(self, value: Any, key: KeyPath) -> str:
        """@return: C{value}, a string."""

    def boolean(self, value: Any, key: KeyPath) -> bool:
        """@return: C{value}, a boolean."""

    def positiveInt(self, value: Any, key: KeyPath) -> int:
        """@return: C{value}, a positive integer."""

ROUTING_KEYS = (
    "strategy", "attempts", "failures", "backoff", "backoff_max", "health_interval",
    "health_timeout", "sticky", "sticky_ttl", "sticky_size", "models",
)
POOL_KEYS = ("strategy", "sticky")
MEMBER_KEYS = ("priority", "weight")
"""The keys a C{[[backend]]} table gains for pools."""


def _number(check: _Checker, table: dict[str, Any], name: str, key: KeyPath, default: float,
            minimum: float = 0.0) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise check.fail(key + (name,), f"must be a number of at least {minimum:g}, not {value!r}")
    return float(value)


def _count(check: _Checker, table: dict[str, Any], name: str, key: KeyPath, default: int) -> int:
    if name not in table:
        return default
    return check.positiveInt(table[name], key + (name,))


def _pool(check: _Checker, table: dict[str, Any], key: KeyPath, default: PoolPolicy) -> PoolPolicy:
    strategy = default.strategy
    if "strategy" in table:
        strategy = check.string(table["strategy"], key + ("strategy",))
        if strategy not in STRATEGIES:
            raise check.fail(key + ("strategy",),
                             f"unknown strategy (expected one of: {', '.join(STRATEGIES)})")
    sticky = check.boolean(table.get("sticky", default.sticky), key + ("sticky",))
    return PoolPolicy(strategy=strategy, sticky=sticky)


def parseRouting(check: _Checker, raw: Any) -> RoutingPolicy:
    """
    Check the C{[routing]} table.

    @param check: the file's checker (line numbers).
    @param raw: the table, C{{}} when absent.
    @return: the policy.
    @raise ollama_proxy.service.config.ConfigError: for any problem.
    """
    key: KeyPath = ("routing",)
    table = check.table(raw, key)
    check.known(table, key, ROUTING_KEYS)
    pool = _pool(check, table, key, PoolPolicy())
    modelTable = check.table(table.get("models", {}), key + ("models",))
    models = {}
    for name, value in modelTable.items():
        where = key + ("models", name)
        entry = check.table(value, where)
        check.known(entry, where, POOL_KEYS)
        models[name] = _pool(check, entry, where, pool)
    backoff = _number(check, table, "backoff", key, 5.0, 0.001)
    return RoutingPolicy(
        pool=pool,
        models=models,
        attempts=_count(check, table, "attempts", key, 3),
        failures=_count(check, table, "failures", key, 3),
        backoff=backoff,
        backoffMax=_number(check, table, "backoff_max", key, max(60.0, backoff), backoff),
        healthInterval=_number(check, table, "health_interval", key, 5.0),
        healthTimeout=_number(check, table, "health_timeout", key, 2.0, 0.001),
        stickyTTL=_number(check, table, "sticky_ttl", key, 1800.0, 0.001),
        stickySize=_count(check, table, "sticky_size", key, 10000),
    )


def parseMember(check: _Checker, table: dict[str, Any], key: KeyPath) -> tuple[int, float]:
    """
    A C{[[backend]]}'s pool keys.

    @param check: the file's checker.
    @param table: the backend's table.
    @param key: its key path.
    @return: C{(priority, weight)}: higher priorities are tried first;
        weights share a tier.
    @raise ollama_proxy.service.config.ConfigError: for a wrong type.
    """
    priority = table.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise check.fail(key + ("priority",), f"must be an integer, not {priority!r}")
    weight = _number(check, table, "weight", key, 1.0, 0.001)
    return priority, weight
