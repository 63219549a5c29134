# -*- test-case-name: tests.upstream.test_routing -*-
"""
Which backend serves which model: the per-backend model-list cache and the
router that maps a client's model name to a backend, a backend model id and
that model's configured overrides.

Each backend's C{/v1/models} list is cached for C{ttl} seconds
(L{TTLCache}), so C{/api/tags}, C{/api/show} and every chat request do
not each cost an upstream round trip.  A backend that fails keeps serving
its last good list (and is retried only after C{ttl}), so one backend that
is down never empties the list of the others.

The L{Router} merges the lists in configuration order.  Every backend that
offers a name (listed, configured or aliased) is a member of that name's
pool (L{ollama_proxy.upstream.fleet.Pool}): with several backends the
router's L{Fleet} balances each request among the members and fails over
before the first byte.  With one backend there is no fleet and a route is
what it always was.
"""

from __future__ import annotations

import random
from typing import Awaitable, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ollama_proxy.protocol.balance import CLOSED, DEFAULT_ROUTING, MemberSnapshot, RoutingPolicy
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import NotFound, ProxyError, UpstreamError
from ollama_proxy.protocol.names import NameIndex, clientModelName, modelIds
from ollama_proxy.protocol.redact import Redactor, printable
from ollama_proxy.protocol.backends import BackendConfig, ModelOverride
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.cache import TTLCache
from ollama_proxy.upstream.fleet import Fleet, Pool, Route, failureReason

log = Logger()

Entry = JSON
"""One entry of an OpenAI model list: C{{"id": ..., "created": ..., ...}}."""

MAX_GUESSES = 1024
"""The most guessed routes a single backend's router keeps (names are the
clients' text: beyond this the table starts again, so no sequence of names
can grow it)."""

MAX_GUESSED_NAME = 256
"""The longest name whose guess is kept (a body may name a megabyte-long
model: such a guess is made per request and never held)."""


@attrs.define
class BackendModels:
    """
    One configured backend with its client and its list cache.
    """

    config: BackendConfig
    backend: Backend
    cache: TTLCache[list[Entry]]
    info: TTLCache[object] = attrs.field(
        default=attrs.Factory(
            lambda self: TTLCache(
                makeInfoFetcher(self.backend, self.config), self.cache.clock,
                self.cache.ttl, self.config.name, "the model metadata",
            ),
            takes_self=True,
        )
    )
    _offeredFrom: list[Entry] | None = attrs.field(default=None, init=False)
    _offered: list[Entry] | None = attrs.field(default=None, init=False)

    @property
    def name(self) -> str:
        """
        @return: the configured name.
        """
        return self.config.name

    def offered(self, entries: list[Entry] | None) -> list[Entry] | None:
        """
        Apply the allow/deny globs to a discovered list and append the static
        models.  The result is reused while the cache returns the same list,
        so that the router re-indexes only when a list really changed.

        @param entries: the entries from C{/v1/models}, or C{None} when the
            backend could not be listed.
        @return: the entries to offer, without duplicates, in order; C{None}
            when nothing is known (no list and no static models).
        """
        if entries is None:
            if not self.config.models:
                return None
            entries = []
        if entries is self._offeredFrom and self._offered is not None:
            return self._offered
        out: dict[str, Entry] = {}
        for entry in entries:
            modelId = entry["id"]
            if self.config.offers(modelId):
                out.setdefault(modelId, entry)
        for modelId in self.config.models:
            out.setdefault(modelId, {"id": modelId, "object": "model", "owned_by": self.name})
        self._offeredFrom, self._offered = entries, list(out.values())
        return self._offered

    def known(self) -> list[Entry] | None:
        """
        @return: what the backend offers as far as known now, without
            fetching.
        """
        return self.offered(self.cache.value)

    def refreshed(self, models: object) -> None:
        """
        An active health check read the model list: keep it (a backend
        that comes back rejoins with what it serves now).

        @param models: the decoded C{/v1/models} body.
        """
        if not self.config.discover:
            return
        try:
            entries = discoveredEntries(models)
        except UpstreamError:
            return
        # The same list keeps its object, so nothing is re-indexed.
        self.cache.store(self.cache.value if entries == self.cache.value else entries)


def discoveredEntries(models: object) -> list[Entry]:
    """
    The usable entries of a C{/v1/models} body, in order, one per id.

    @param models: the decoded body.
    @return: entry dicts with a string C{id}.
    @raise UpstreamError: if the body is not a model list.
    """
    ids = set(modelIds(models))
    out: dict[str, Entry] = {}
    data = models.get("data") if isinstance(models, dict) else None
    for entry in data or []:
        if isinstance(entry, dict) and entry.get("id") in ids:
            out.setdefault(entry["id"], entry)
    return list(out.values())


def makeFetcher(backend: Backend, config: BackendConfig) -> Callable[[], Awaitable[list[Entry]]]:
    """
    @param backend: the upstream client.
    @param config: its configuration.
    @return: the fetch function for its L{TTLCache}: C{GET /v1/models}
        when discovery is on, else the static list alone.
    """

    async def fetch() -> list[Entry]:
        if not config.discover:
            return []
        return discoveredEntries(await backend.getJSON("models"))

    return fetch


def makeInfoFetcher(backend: Backend, config: BackendConfig) -> Callable[[], Awaitable[object]]:
    """
    @param backend: the upstream client.
    @param config: its configuration.
    @return: the fetch function for its metadata L{TTLCache}: LiteLLM's
        C{GET /v1/model/info}, or C{{}} when the backend has none (any
        failure just means "not LiteLLM") or discovery is off.
    """

    async def fetch() -> object:
        if not config.discover:
            return {}
        try:
            return await backend.getJSON("model/info")
        except ProxyError:
            return {}

    return fetch


class Router:
    """
    Maps client model names to backends.

    A name is looked up, in this order, among: the names C{/api/tags} lists
    (C{id}, or C{id:tag} for ids without a colon), the bare ids, the ids
    with C{:latest}, and the aliases (bare, C{:latest} or C{:tag}).  The
    backends that offer a name share it (a pool, first one first).
    """

    def __init__(
        self, backends: Sequence[BackendModels], tag: str = "proxy", secrets: Sequence[str] = (),
        routing: RoutingPolicy = DEFAULT_ROUTING, rng: random.Random | None = None,
    ) -> None:
        """
        @param backends: in configuration order; at least one.
        @param tag: the suffix added to untagged ids in C{/api/tags}.
        @param routing: the C{[routing]} table (used with several backends).
        @param rng: the fleet's randomness (tests pass a seeded one).
        """
        if not backends:
            raise ValueError("a router needs at least one backend")
        self.backends = list(backends)
        self.tag = tag
        # Backend ids are upstream text: the clash warning names them
        # without any key the proxy holds (backend keys, C{secrets}: the
        # inbound keys), and without control characters.
        self._redactor = Redactor([*(b.backend.apiKey for b in self.backends), *secrets])
        self.routing = routing
        self.fleet: Fleet | None = None
        if len(self.backends) > 1:
            self.fleet = Fleet(self.backends, routing, self.backends[0].cache.clock, rng)
        self._reported: set[tuple[str, str, str]] = set()
        self._index: NameIndex[Route] = NameIndex(tag)
        self._indexedFrom: list[list[Entry] | None] = []
        self._merged: tuple[list[list[Entry] | None], list[tuple[BackendModels, Entry]]] | None = None
        # A single backend's guesses (names no list has), per name, for the
        # index and the list value they were made with (L{route}).
        self._guesses: dict[str, Route] = {}
        self._guessesOf: NameIndex[Route] | None = None
        self._guessesSeen: object = None
        # The names the configuration gives (aliases, static models) and
        # any list already known are indexed now, with the router: a
        # request re-indexes only when a list changed since.
        self._reindex([(backend, backend.known()) for backend in self.backends])

    @classmethod
    def single(cls, backend: Backend, clock: IReactorTime, ttl: float = 0.0, tag: str = "proxy",
               name: str = "default") -> Router:
        """
        A router for one backend with no configuration file (C{--target}).

        @param backend: the upstream client.
        @param clock: for the cache.
        @param ttl: the cache lifetime.
        @param tag: the C{/api/tags} suffix.
        @param name: the backend's name in logs and metrics.
        @return: the router.
        """
        config = BackendConfig(name=name, url=backend.target)
        cache = TTLCache(makeFetcher(backend, config), clock, ttl, name)
        return cls([BackendModels(config, backend, cache)], tag)

    async def lists(self) -> list[tuple[BackendModels, list[Entry] | None]]:
        """
        Every backend's offered entries, fetching those that are stale.

        @return: C{(backend, entries)} in configuration order; C{entries}
            is C{None} for a backend that failed and has no earlier list.
        """
        waits = [Deferred.fromCoroutine(b.cache.get()) for b in self.backends]
        out: list[tuple[BackendModels, list[Entry] | None]] = []
        for backend, wait in zip(self.backends, waits):
            entries: list[Entry] | None
            try:
                entries = backend.offered(await wait)
            except ProxyError:
                entries = backend.known()
            out.append((backend, entries))
        self._reindex(out)
        return out

    async def models(self) -> list[tuple[BackendModels, Entry]]:
        """
        The merged model list for C{/api/tags} and C{/v1/models}: every
        backend's entries and aliases, each client name once (first backend
        wins).

        @return: C{(backend, entry)} pairs; an alias appears as an entry
            whose C{id} is the alias.
        @raise ProxyError: the first backend's error when no backend has a
            list at all.
        """
        lists = await self.lists()
        current = [entries for _, entries in lists]
        last = self._merged
        if last is not None and len(last[0]) == len(current) and all(
            a is b for a, b in zip(current, last[0])
        ):
            # The same lists as last time (the caches' own objects): the
            # same merge.  Callers do not modify it.
            return last[1]
        if all(entries is None for _, entries in lists):
            error = self.backends[0].cache.error
            raise error if error is not None else UpstreamError("no backend could be listed")
        out: list[tuple[BackendModels, Entry]] = []
        seen: set[str] = set()
        for backend, entries in lists:
            if entries is None:
                # Down and never listed: its aliases would only fail.
                continue
            for entry in entries:
                name = clientModelName(entry["id"], self.tag)
                if name not in seen:
                    seen.add(name)
                    out.append((backend, entry))
            for alias, target in backend.config.aliases.items():
                name = clientModelName(alias, self.tag)
                if name not in seen:
                    seen.add(name)
                    out.append((backend, {"id": alias, "object": "model", "owned_by": backend.name,
                                          "alias_of": target}))
        self._merged = (current, out)
        return out

    def readyModels(self) -> list[tuple[BackendModels, Entry]] | None:
        """
        L{models} without waiting, when it would not wait either: every
        backend's list is fresh and already merged.

        @return: what L{models} would return now, or C{None} when it has
            to fetch or merge.
        """
        current: list[list[Entry] | None] = []
        for backend in self.backends:
            cache = backend.cache
            if cache.value is None or not cache.fresh():
                return None
            current.append(backend.offered(cache.value))
        last = self._merged
        if last is None or len(last[0]) != len(current) or not all(
            a is b for a, b in zip(current, last[0])
        ):
            return None
        self._reindex(list(zip(self.backends, current)))
        return last[1]

    async def route(self, name: str) -> Route:
        """
        Find the backend for a client's model name.

        @param name: the C{model} the client sent.
        @return: the route.
        @raise NotFound: when no backend offers the name (with several
            backends; a single backend is sent any name, as the seed did, and
            answers for itself).
        @raise UpstreamError: when the name is unknown and some backend could
            not be listed, so it may be that one's.
        """
        if len(self.backends) == 1:
            # One backend: no listing is needed to choose it, so none is
            # made; what is known from earlier listings still resolves
            # names such as "x:proxy" or an id that contains a colon.
            only = self.backends[0]
            known = only.known()
            indexed = self._indexedFrom
            if len(indexed) != 1 or indexed[0] is not known:
                self._reindex([(only, known)])
            index, value = self._index, only.cache.value
            if self._guessesOf is not index or self._guessesSeen is not value:
                self._guesses, self._guessesOf, self._guessesSeen = {}, index, value
            guess = self._guesses.get(name)
            if guess is None:
                found, modelId = index.find(name)
                listing = value is None and name != name.lower()
                if found is None and listing:
                    # Only a listing can tell that "PLAIN" is the backend's
                    # "plain" (names are case-insensitive, as in Ollama).
                    await self.lists()
                    found, modelId = self._index.find(name)
                if found is not None:
                    return found
                self._relist(only)
                modelId = only.config.aliases.get(modelId, modelId)
                guess = Route(only.name, only.backend, modelId, only.config.override(modelId), False,
                              listing=only.cache, listingSeen=only.cache.value)
                if (not listing and len(name) <= MAX_GUESSED_NAME and self._index is index
                        and only.cache.value is value):
                    # The same name, index and list give the same guess
                    # (a Route is immutable): the next request for it is
                    # one lookup, not the index's misses and a new Route.
                    # (A name that asked for a listing asks again.)
                    if len(self._guesses) >= MAX_GUESSES:
                        self._guesses.clear()
                    self._guesses[name] = guess
            else:
                self._relist(only)
            return guess
        fresh: list[tuple[BackendModels, list[Entry] | None]] = []
        for backend in self.backends:
            cache = backend.cache
            if cache.value is None or not cache.fresh():
                break
            fresh.append((backend, backend.offered(cache.value)))
        else:
            # Every list is fresh: what lists() would return, without a
            # coroutine per backend on every request.
            self._reindex(fresh)
            found = self._index.resolve(name)
            if found is not None:
                return found
        lists = await self.lists()
        found = self._index.resolve(name)
        if found is not None:
            return found
        down = [b for b, entries in lists if entries is None]
        if down:
            raise UpstreamError(
                f'model "{name}" not found; backend(s) '
                + ", ".join(
                    f"{b.name} ({b.cache.error.message if b.cache.error else 'unlisted'})"
                    for b in down
                )
                + " could not be listed"
            )
        raise NotFound(f'model "{name}" not found')

    @staticmethod
    def _relist(only: BackendModels) -> None:
        """
        A name the last list did not have: list again (in the background,
        the request does not wait), so that a model the backend added gets
        its own metrics label soon.
        """
        if only.cache.value is not None and not only.cache.fresh():
            Deferred.fromCoroutine(only.cache.get()).addErrback(lambda _: None)

    def lookup(self, name: str) -> Route | None:
        """
        Resolve a name against the lists as last fetched (no fetching).

        @param name: the client's model name.
        @return: the route, or C{None} when no listed model has the name.
        """
        # A background listing may have brought a new list since the last
        # index (rebuilt only when a list really changed).
        self._reindex([(backend, backend.known()) for backend in self.backends])
        return self._index.resolve(name)

    def _reindex(self, lists: list[tuple[BackendModels, list[Entry] | None]]) -> None:
        """
        Rebuild the name index when any list changed, and warn once about
        every name that two backends offer.

        @param lists: from L{lists}.
        """
        current = [entries for _, entries in lists]
        if len(current) == len(self._indexedFrom) and all(
            a is b for a, b in zip(current, self._indexedFrom)
        ):
            return
        self._indexedFrom = current
        backends = [backend for backend, _ in lists]

        def make(position: int, listed: str, modelId: str) -> Route:
            backend = backends[position]
            return Route(
                backend.name, backend.backend, modelId, backend.config.override(modelId),
                listed=listed,
            )

        def combine(first: Route, other: Route) -> Route:
            fleet = self.fleet
            assert fleet is not None
            pool = first.pool
            if pool is None:
                pool = Pool(first.listed, (first,), (fleet.members[first.name],),
                            self.routing.policyFor(first.listed, first.modelId))
            pool = attrs.evolve(pool, routes=pool.routes + (other,),
                                states=pool.states + (fleet.members[other.name],))
            return attrs.evolve(first, pool=pool)

        def clash(name: str, first: str, second: str) -> None:
            if (name, first, second) not in self._reported:
                self._reported.add((name, first, second))
                log.info(
                    "model {model} is offered by backends {first} and {second}: one pool",
                    model=printable(self._redactor.text(name)), first=first, second=second,
                )

        self._index = NameIndex.build(
            [
                (backend.name, [entry["id"] for entry in entries or []], backend.config.aliases)
                for backend, entries in lists
            ],
            make,
            self.tag,
            clash,
            combine if self.fleet is not None else None,
        )

    def snapshot(self) -> list[MemberSnapshot]:
        """
        Every backend's state now, read-only, in configuration order: what
        a status page renders.  With one backend (no fleet: nothing is
        balanced, so nothing is counted) it is always routable and its
        reason is its last listing's failure, if any.

        @return: one L{MemberSnapshot} per backend.
        """
        if self.fleet is not None:
            return self.fleet.snapshot()
        only = self.backends[0]
        error = only.cache.error
        return [MemberSnapshot(
            name=only.name, routable=True, circuit=CLOSED, inFlight=0, lastCheck=None,
            failures=0, reason=failureReason(error)[1] if error is not None else "",
            misconfigured=False,
        )]

    def pools(self) -> list[Pool]:
        """
        @return: the pools of the names listed now (each once).
        """
        seen: dict[int, Pool] = {}
        for backend in self.backends:
            for entry in backend.known() or []:
                found = self._index.resolve(entry["id"])
                if found is not None and found.pool is not None:
                    seen.setdefault(id(found.pool), found.pool)
        return list(seen.values())


def applyOverride(body: JSON, override: ModelOverride) -> JSON:
    """
    Merge a model's default options into an Ollama request body (the
    client's own options win).

    @param body: the decoded Ollama request.
    @param override: the model's settings.
    @return: C{body}, or a copy with the merged C{options}.
    """
    if not override.options:
        return body
    options = body.get("options")
    merged = dict(override.options)
    if isinstance(options, dict):
        merged.update(options)
    return {**body, "options": merged}
