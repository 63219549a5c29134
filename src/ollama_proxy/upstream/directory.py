# -*- test-case-name: tests.upstream.test_directory -*-
"""
What the backends serve, as the resources ask for it: the merged model
list, the metadata catalog, and the route for a name.

Everything comes from the per-backend L{ollama_proxy.upstream.cache.TTLCache}s
held by the L{Router}'s L{BackendModels}: the model lists and LiteLLM's
C{/v1/model/info}.  The catalog is a pure function of those values and the
configured overrides (L{ollama_proxy.protocol.catalog.buildCatalog}), plus
each model's C{remote_host} (its backend's origin); it is rebuilt only when
one of them changed, and is never older than the TTL.
Names are resolved by the router's one L{ollama_proxy.protocol.names.NameIndex}.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import attrs
from twisted.internet.defer import Deferred, TimeoutError

from ollama_proxy.protocol.catalog import Facts, ModelMeta, buildCatalog
from ollama_proxy.protocol.clock import Clock, wallClock
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import ProxyError, describe
from ollama_proxy.protocol.listing import modelDigest, remoteHost
from ollama_proxy.protocol.names import clientModelName
from ollama_proxy.protocol.sticky import stickyKey
from ollama_proxy.protocol.backends import CAPABILITIES, ModelOverride
from ollama_proxy.upstream.routing import BackendModels, Entry, Route, Router

AUTO = "auto"
"""C{--remote-host auto}: each backend's own origin."""


METADATA_WAIT = 5.0
"""
Seconds a catalog build waits for the metadata requests before it goes on
with what is known: C{/api/tags} must not hang on a backend that is slow to
describe its models (the VS Code extension, Zed and Copilot give up on the
list).  The request itself runs on and fills the cache for the next call.
"""


def overrideFacts(override: ModelOverride) -> Facts:
    """
    The catalog facts (L{ollama_proxy.protocol.catalog.Facts}) of a
    configuration file's per-model override.

    @param override: the model's settings.
    @return: C{context_length}, C{max_output_tokens} and the capability
        flags it sets.
    """
    facts: Facts = {}
    if override.contextLength is not None:
        facts["context_length"] = override.contextLength
    if override.maxOutputTokens is not None:
        facts["max_output_tokens"] = override.maxOutputTokens
    if override.capabilities is not None:
        for flag in sorted(CAPABILITIES - {"completion"}):
            facts[flag] = flag in override.capabilities
    return facts


def _sources(merged: list[tuple[BackendModels, Entry]], infos: list[Any]) -> tuple[Any, ...]:
    """
    What a catalog was built from, by identity: the cached list entries and
    metadata answers (a cache hands out the same objects until it refetches).
    """
    return (tuple(id(entry) for _, entry in merged), tuple(id(info) for info in infos))


def _unchanged(watched: tuple[tuple[Any, Any, Any], ...]) -> bool:
    """
    @param watched: from L{ModelDirectory._watched}.
    @return: whether every cache still holds the same value and error (the
        same objects: a cache hands out what it fetched until it fetches
        again) and is still fresh.
    """
    for cache, value, error in watched:
        if cache.value is not value or cache.error is not error or not cache.fresh():
            return False
    return True


@attrs.define
class ModelDirectory:
    """
    The served models, for the resources.

    @ivar router: the backends and their caches.
    @ivar overrides: the validated C{--model-info} file (model id, or
        C{"*"}, to facts).
    @ivar remoteHost: C{--remote-host}: L{AUTO} for each backend's own
        scheme, host and port, C{""} for none, else this value for every
        model.
    @ivar metadataWait: see L{METADATA_WAIT}.
    @ivar now: the wall clock, for when a model was first seen.
    """

    router: Router
    overrides: Mapping[str, Facts] = attrs.field(factory=dict)
    remoteHost: str = AUTO
    metadataWait: float = METADATA_WAIT
    now: Clock = wallClock
    _seen: dict[str, tuple[str, int]] = attrs.field(factory=dict, init=False)
    _builtFrom: tuple[Any, ...] | None = attrs.field(default=None, init=False)
    _catalog: dict[str, ModelMeta] = attrs.field(factory=dict, init=False)
    _ready: tuple[Any, list[Any], dict[str, ModelMeta]] | None = attrs.field(
        default=None, init=False)
    _warm: tuple[Any, dict[str, ModelMeta], tuple[tuple[Any, Any, Any], ...]] | None = (
        attrs.field(default=None, init=False))

    @property
    def tag(self) -> str:
        """
        The suffix added to untagged ids in C{/api/tags}.
        """
        return self.router.tag

    async def route(
        self, name: str, header: Callable[[bytes], bytes | None] | None = None, body: Any = None
    ) -> Route:
        """
        @param name: the client's model name.
        @param header: the request's headers by name (for the conversation's
            key when the name's pool is sticky: L{ollama_proxy.protocol.sticky}).
        @param body: the request's decoded body (the same).
        @return: where a request for it goes.
        @raise ProxyError: when no backend offers the name.
        """
        route = await self.router.route(name)
        pool = route.pool
        if pool is not None and pool.policy.sticky and header is not None:
            route = attrs.evolve(route, key=stickyKey(header, body, pool.name))
        return route

    async def listModels(self) -> JSON:
        """
        Every backend's models (each list cached per C{--models-ttl}),
        merged in configuration order, aliases included, in the shape of an
        OpenAI C{/v1/models} body.

        @return: C{{"object": "list", "data": [...]}}.
        @raise ProxyError: when no backend can be listed.
        """
        merged = await self.router.models()
        return {"object": "list", "data": [entry for _, entry in merged]}

    async def catalog(self) -> dict[str, ModelMeta]:
        """
        The served models with their metadata: each backend's list, then
        its LiteLLM C{/v1/model/info} (asked only of backends whose list is
        good: one that is down would cost a connect timeout for nothing),
        merged with the overrides: the C{--model-info} file, then the
        configuration file's per-model C{context_length} and
        C{capabilities}.  An alias gets the metadata of its model.  A
        metadata request that fails, or takes longer than C{metadataWait},
        leaves that backend's last known metadata (or none).

        @return: metadata per model id (aliases included), in listing order.
        @raise ProxyError: if no backend's model list can be fetched.
        """
        merged = await self.router.models()
        asking = [
            candidate for candidate in self.router.backends
            if candidate.config.discover and candidate.cache.error is None
            and candidate.cache.value is not None
        ]
        clock = self.router.backends[0].cache.clock
        asks = [Deferred.fromCoroutine(candidate.info.get()) for candidate in asking]
        for ask in asks:
            if not ask.called:  # a warm cache answers at once: no timer needed
                ask.addTimeout(self.metadataWait, clock)
        infos: list[Any] = []
        for candidate, ask in zip(asking, asks):
            try:
                infos.append(await ask)
            except (ProxyError, TimeoutError):
                infos.append(candidate.info.value)
        key = _sources(merged, infos)
        if key != self._builtFrom:
            self._catalog = self._build(merged, infos)
            self._builtFrom = key
        return self._catalog

    def readyCatalog(self) -> dict[str, ModelMeta] | None:
        """
        L{catalog} without waiting, when it would not wait either: every
        list and every metadata answer it reads is fresh, and the catalog
        was already built from them.

        @return: what L{catalog} would return now, or C{None} when it has
            to fetch or build.
        """
        warm = self._warm
        if warm is not None and warm[0] is self.router and warm[1] is self._catalog and _unchanged(warm[2]):
            # Every cache the last warm answer read still holds the value
            # and error it held then, and is still fresh: the same answer,
            # without merging the lists again (a third of a warm
            # C{/api/tags}'s own work, bench/RESULTS.md "srvfloor2").
            return self._catalog
        merged = self.router.readyModels()
        if merged is None:
            return None
        infos: list[Any] = []
        for candidate in self.router.backends:
            if not candidate.config.discover or candidate.cache.error is not None:
                continue
            info = candidate.info
            if not info.fresh() or (info.value is None and info.error is None):
                return None
            infos.append(info.value)
        ready = self._ready
        if (ready is not None and ready[0] is merged and ready[2] is self._catalog
                and len(ready[1]) == len(infos) and all(a is b for a, b in zip(ready[1], infos))):
            # The very objects the last warm answer was checked against: a
            # merged list is never changed in place, so its entries are
            # too (no id per model on every warm request).
            self._warm = (self.router, self._catalog, self._watched())
            return self._catalog
        if _sources(merged, infos) != self._builtFrom:
            return None
        self._ready = (merged, infos, self._catalog)
        self._warm = (self.router, self._catalog, self._watched())
        return self._catalog

    def _watched(self) -> tuple[tuple[Any, Any, Any], ...]:
        """
        @return: every cache a warm answer reads (each backend's list, and
            the metadata of those whose list is good and that discover),
            with the value and the error it holds now.
        """
        watched: list[tuple[Any, Any, Any]] = []
        for candidate in self.router.backends:
            cache = candidate.cache
            watched.append((cache, cache.value, cache.error))
            if candidate.config.discover and cache.error is None:
                info = candidate.info
                watched.append((info, info.value, info.error))
        return tuple(watched)

    def _build(
        self, merged: list[tuple[BackendModels, Entry]], infos: list[Any]
    ) -> dict[str, ModelMeta]:
        """
        The merge behind L{catalog}, and when each model was first seen
        with its current metadata.
        """
        models = {"object": "list", "data": [entry for _, entry in merged]}
        info: Any = None
        present = [one for one in infos if isinstance(one, dict)]
        if present:
            info = {"data": [item for one in present if isinstance(one.get("data"), list)
                             for item in one["data"]]}
        overrides = dict(self.overrides)
        for backend, entry in merged:
            target = entry.get("alias_of", entry["id"])
            facts = overrideFacts(backend.config.override(str(target)))
            if facts:
                overrides[entry["id"]] = {**overrides.get(entry["id"], {}), **facts}
        catalog = buildCatalog(models, info, overrides)
        for backend, entry in merged:
            target = entry.get("alias_of")
            if target is not None and target in catalog:
                catalog[entry["id"]] = ModelMeta(
                    entry["id"], {**catalog[target].facts, **overrides.get(entry["id"], {})}
                )
        hosts: dict[str, str] = {}
        for backend, entry in merged:
            hosts.setdefault(entry["id"], self.hostOf(backend))
        nowNs = self.now()
        seen: dict[str, tuple[str, int]] = {}
        for modelId, meta in catalog.items():
            meta = attrs.evolve(meta, remoteHost=hosts.get(modelId, ""))
            digest = modelDigest(meta, clientModelName(modelId, self.tag))
            previous = self._seen.get(modelId)
            seenNs = previous[1] if previous is not None and previous[0] == digest else nowNs
            seen[modelId] = (digest, seenNs)
            catalog[modelId] = attrs.evolve(meta, seenNs=seenNs)
        self._seen = seen
        return catalog

    def hostOf(self, backend: BackendModels) -> str:
        """
        @param backend: a configured backend.
        @return: the C{remote_host} of its models.
        """
        if self.remoteHost == AUTO:
            return remoteHost(backend.config.url)
        return self.remoteHost

    async def served(self, name: str) -> ModelMeta | None:
        """
        @param name: a client's model name.
        @return: the model's metadata if a backend serves it, else C{None}.
        """
        catalog = await self.catalog()
        route = self.router.lookup(name)
        if route is None:
            return None
        return catalog.get(route.listed or route.modelId)

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """
        Whether the proxy can serve: at least one backend answered its model
        list at its last check (checks are made at most one C{--models-ttl}
        apart), and, with several backends, every served model has a
        routable member (a backend whose circuit is open, that refused the
        proxy's key or asked for a pause is not "ok"; its state says why, in
        the proxy's words).  Lists older than the TTL are fetched again in the
        background, so a probe never waits for a backend (a down one would
        cost it a connect timeout), and the answer follows within one probe.

        @return: C{(ready, state per backend)}; a state is C{"ok"}, what
            went wrong at the last check (L{describe}: a status code,
            C{"connection refused"}, C{"timeout"}), or C{"not listed yet"}.
        """
        states: dict[str, str] = {}
        fleet = self.router.fleet
        for entry in self.router.backends:
            cache = entry.cache
            if not cache.fresh():
                Deferred.fromCoroutine(cache.get()).addErrback(lambda _: None)
            why = fleet.members[entry.name].whyNot() if fleet is not None else ""
            if why:
                states[entry.name] = why
            elif cache.error is not None:
                # Never the backend's own words: this answer is open to
                # anyone, and a gateway's 401 body may quote the key.
                states[entry.name] = describe(cache.error)
            elif cache.value is None:
                states[entry.name] = "not listed yet"
            else:
                states[entry.name] = "ok"
        if fleet is not None and self.unserved(states):
            return False, states
        return any(state == "ok" for state in states.values()), states

    def unserved(self, states: dict[str, str]) -> list[str]:
        """
        The served models none of whose backends is routable now (several
        backends: the proxy is ready only while every model has one).

        @param states: from L{readiness}, per backend (C{"ok"} routable).
        @return: their client names, sorted.
        """
        served: set[str] = set()
        every: set[str] = set()
        for entry in self.router.backends:
            names = {clientModelName(e["id"], self.tag) for e in entry.known() or []}
            every |= names
            if states.get(entry.name) == "ok":
                served |= names
        return sorted(every - served)
