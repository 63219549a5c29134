"""
The router: lists merged in configuration order, one name index, routes
with overrides.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import NotFound, UpstreamError
from ollama_proxy.service.config import BackendConfig, ModelOverride
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.cache import TTLCache
from ollama_proxy.upstream.routing import (
    MAX_GUESSED_NAME,
    MAX_GUESSES,
    BackendModels,
    Router,
    applyOverride,
)
from tests.upstream.helpers import LogCapture, ScriptedFetch


def backendModels(clock: MemoryReactorClock, fetch: ScriptedFetch, **config: Any) -> BackendModels:
    """
    @return: a L{BackendModels} whose list comes from C{fetch}.
    """
    backendConfig = BackendConfig(**config)
    backend = Backend(None, backendConfig.url, clock)
    return BackendModels(backendConfig, backend, TTLCache(fetch, clock, 60, backendConfig.name))


class RouterTests(SynchronousTestCase):
    """
    L{Router} over two backends.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.fa, self.fb = ScriptedFetch(), ScriptedFetch()
        self.a = backendModels(
            self.clock, self.fa, name="a", url="http://a:1", deny=["secret-*"],
            aliases={"fast": "small"},
            overrides={"big": ModelOverride(contextLength=8192)},
        )
        self.b = backendModels(self.clock, self.fb, name="b", url="http://b:1", models=("static",))
        self.router = Router([self.a, self.b], tag="proxy")
        self.logs = LogCapture(self)

    def route(self, name: str) -> Any:
        """
        @return: the route's (backend name, model id), with lists answered.
        """
        d = Deferred.fromCoroutine(self.router.route(name))
        if self.fa.calls and not self.fa.calls[-1].called:
            self.fa.answer("big", "small", "shared", "qwen3:8b", "secret-x")
        if self.fb.calls and not self.fb.calls[-1].called:
            self.fb.answer("shared", "other")
        route = self.successResultOf(d)
        return (route.name, route.modelId)

    def test_namesResolve(self) -> None:
        """
        Listed names (C{x:proxy}), bare ids, C{:latest}, ids with their own
        tag, aliases and static models go to the backend that offers them.
        """
        self.assertEqual(self.route("big:proxy"), ("a", "big"))
        self.assertEqual(self.route("big"), ("a", "big"))
        self.assertEqual(self.route("big:latest"), ("a", "big"))
        self.assertEqual(self.route("qwen3:8b"), ("a", "qwen3:8b"))
        self.assertEqual(self.route("other:proxy"), ("b", "other"))
        self.assertEqual(self.route("fast:latest"), ("a", "small"))
        self.assertEqual(self.route("static"), ("b", "static"))

    def test_overrideTravelsWithRoute(self) -> None:
        """
        The route carries the configured override of the model.
        """
        self.route("big")
        route = self.successResultOf(Deferred.fromCoroutine(self.router.route("big:proxy")))
        self.assertEqual(route.override.contextLength, 8192)

    def test_sharedNameIsOnePool(self) -> None:
        """
        A name both backends list is one pool: the route is the first
        backend's, its pool holds both in configuration order; one log line
        names both backends, however often the lists are read.
        """
        self.assertEqual(self.route("shared"), ("a", "shared"))
        self.clock.advance(61)
        self.assertEqual(self.route("shared:proxy"), ("a", "shared"))
        d = Deferred.fromCoroutine(self.router.route("shared:latest"))
        pool = self.successResultOf(d).pool
        assert pool is not None
        self.assertEqual([(r.name, r.modelId) for r in pool.routes], [("a", "shared"), ("b", "shared")])
        self.assertEqual([s.name for s in pool.states], ["a", "b"])
        warnings = [e for e in self.logs.observer if "offered by backends" in e["log_format"]]
        self.assertEqual(len(warnings), 1)
        self.assertEqual((warnings[0]["model"], warnings[0]["first"], warnings[0]["second"]),
                         ("shared:proxy", "a", "b"))

    def test_duplicateWarningWithoutSecrets(self) -> None:
        """
        Issue 19: the warning names a backend id without any key the proxy
        holds (an inbound key here) and with its control characters escaped.
        """
        router = Router([self.a, self.b], tag="proxy", secrets=["inbound-key-12345"])
        d = Deferred.fromCoroutine(router.route("x"))
        evil = "evil-inbound-key-12345\r\nforged"
        self.fa.answer(evil)
        self.fb.answer(evil)
        self.failureResultOf(d, NotFound)
        [warning] = [e for e in self.logs.observer if "offered by backends" in e["log_format"]]
        self.assertEqual(warning["model"], "evil-<redacted>\\r\\nforged:proxy")

    def test_deniedAndUnknown(self) -> None:
        """
        A model hidden by a deny glob, or listed nowhere, is a 404 naming it.
        """
        d = Deferred.fromCoroutine(self.router.route("secret-x"))
        self.fa.answer("secret-x")
        self.fb.answer()
        self.assertEqual(self.failureResultOf(d, NotFound).value.message,
                         'model "secret-x" not found')

    def test_unknownWhileBackendDown(self) -> None:
        """
        An unknown name while one backend cannot be listed is a 502 that says
        which backend is down (the model may be that one's), and the other
        backend's models still resolve.
        """
        d = Deferred.fromCoroutine(self.router.route("nowhere"))
        self.fa.fail("connection refused")
        self.fb.answer("other")
        failure = self.failureResultOf(d, UpstreamError)
        self.assertIn("a (connection refused)", failure.value.message)
        d = Deferred.fromCoroutine(self.router.route("other"))
        self.fa.fail("connection refused")
        self.assertEqual(self.successResultOf(d).name, "b")

    def test_mergedListSurvivesOneBackendDown(self) -> None:
        """
        The merged list keeps the first backend's last good list when it
        goes down, and still has the second backend's.
        """
        d = Deferred.fromCoroutine(self.router.models())
        self.fa.answer("big")
        self.fb.answer("other")
        self.assertEqual([e["id"] for _, e in self.successResultOf(d)],
                         ["big", "fast", "other", "static"])
        self.clock.advance(61)
        d = Deferred.fromCoroutine(self.router.models())
        self.fa.fail()
        self.fb.answer("other", "new")
        self.assertEqual([e["id"] for _, e in self.successResultOf(d)],
                         ["big", "fast", "other", "new", "static"])

    def test_mergedListReusedWhileListsUnchanged(self) -> None:
        """
        While every backend's cached list is the same, the merged list is
        the same object (aliases included); a changed list merges anew.
        """
        d = Deferred.fromCoroutine(self.router.models())
        self.fa.answer("big")
        self.fb.answer("other")
        first = self.successResultOf(d)
        again = self.successResultOf(Deferred.fromCoroutine(self.router.models()))
        self.assertIs(again, first)
        self.clock.advance(61)
        d = Deferred.fromCoroutine(self.router.models())
        self.fa.answer("big", "small")
        self.fb.answer("other")
        self.assertEqual([e["id"] for _, e in self.successResultOf(d)],
                         ["big", "small", "fast", "other", "static"])

    def test_allDown(self) -> None:
        """
        When no backend has a list at all, the merged list fails with the
        first backend's error (static models alone do not hide an outage
        of discovery).
        """
        router = Router([self.a])
        d = Deferred.fromCoroutine(router.models())
        self.fa.fail("nope")
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "nope")

    def test_singleBackendNeverLists(self) -> None:
        """
        With one backend, routing never lists models (a chat costs one
        upstream connection, as in the seed): any name is sent to it, with
        C{:proxy}/C{:latest} removed and aliases applied; names resolve
        against a list fetched earlier (by C{/api/tags}), and only then count
        as known (for the metrics' C{model} label).
        """
        router = Router([self.a])
        for name, expected, known in [("x:proxy", "x", False), ("x:latest", "x", False),
                                      ("fast", "small", True), ("qwen3:8b", "qwen3:8b", False)]:
            route = self.successResultOf(Deferred.fromCoroutine(router.route(name)))
            self.assertEqual((route.name, route.modelId, route.known), ("a", expected, known))
        self.assertEqual(self.fa.calls, [])
        d = Deferred.fromCoroutine(router.models())
        self.fa.answer("qwen3:8b")
        self.successResultOf(d)
        route = self.successResultOf(Deferred.fromCoroutine(router.route("qwen3:8b")))
        self.assertEqual((route.modelId, route.known), ("qwen3:8b", True))
        self.assertEqual(len(self.fa.calls), 1)

    def test_guessRemembersItsListing(self) -> None:
        """
        A route sent on a guess carries the model list it was guessed
        without and that list's value then, so that the caller can tell
        whether a newer list arrived meanwhile (and only then ask again);
        a route a list named carries none.
        """
        router = Router([self.a])
        guess = self.successResultOf(Deferred.fromCoroutine(router.route("qwen3:8b")))
        self.assertIs(guess.listing, self.a.cache)
        self.assertIsNone(guess.listingSeen)
        d = Deferred.fromCoroutine(router.models())
        self.fa.answer("qwen3:8b")
        self.successResultOf(d)
        assert guess.listing is not None
        self.assertIsNot(guess.listing.value, guess.listingSeen)
        self.assertEqual(router.lookup("qwen3:8b"), attrs.evolve(guess, known=True, listed="qwen3:8b"))
        named = self.successResultOf(Deferred.fromCoroutine(router.route("qwen3:8b")))
        self.assertIsNone(named.listing)

    def routeNow(self, router: Router, name: str) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(router.route(name)))

    def test_guessKeptPerNameWhileNothingChanges(self) -> None:
        """
        A single backend's guess for a name is made once while the index
        and the list are the same (the same route for the same name); a
        new list makes it anew (carrying that list), a name the list then
        has is known, and a stale list is still fetched again in the
        background by a request that guessed from the kept table.
        """
        router = Router([self.a])
        first = self.routeNow(router, "x:proxy")
        self.assertIs(self.routeNow(router, "x:proxy"), first)
        self.assertEqual((first.modelId, first.known), ("x", False))
        self.assertEqual(self.routeNow(router, "fast:latest").modelId, "small")
        self.assertIsNot(self.routeNow(router, "y"), first)
        d = Deferred.fromCoroutine(router.models())
        self.fa.answer("x", "other")
        self.successResultOf(d)
        named = self.routeNow(router, "x:proxy")
        self.assertEqual((named.modelId, named.known), ("x", True))
        guess = self.routeNow(router, "new")
        self.assertIs(guess.listingSeen, self.a.cache.value)
        self.assertEqual(len(self.fa.calls), 1)
        self.clock.advance(61)
        self.assertIs(self.routeNow(router, "new"), guess)
        self.assertEqual(len(self.fa.calls), 2)

    def test_guessThatListedIsNotKept(self) -> None:
        """
        A name only a listing could resolve (upper case, nothing listed
        yet) asks for the list again on the next request when the listing
        failed, as it did before guesses were kept.
        """
        router = Router([self.a])
        d = Deferred.fromCoroutine(router.route("PLAIN"))
        self.fa.fail()
        self.assertEqual(self.successResultOf(d).modelId, "PLAIN")
        self.clock.advance(61)
        d = Deferred.fromCoroutine(router.route("PLAIN"))
        self.assertEqual(len(self.fa.calls), 2)
        self.fa.answer("plain")
        self.assertEqual(self.successResultOf(d).modelId, "plain")

    def test_guessesBounded(self) -> None:
        """
        Clients choose the names: the kept guesses never pass
        L{MAX_GUESSES}, a name longer than L{MAX_GUESSED_NAME} is never
        kept, and every name is still routed.
        """
        router = Router([self.a])
        for n in range(MAX_GUESSES + 5):
            self.assertEqual(self.routeNow(router, f"m{n}").modelId, f"m{n}")
        self.assertLessEqual(len(router._guesses), MAX_GUESSES)
        self.assertEqual(self.fa.calls, [])
        long = "x" * (MAX_GUESSED_NAME + 1)
        router._guesses.clear()
        self.assertEqual(self.routeNow(router, long).modelId, long)
        self.assertEqual(router._guesses, {})


class OverrideTests(SynchronousTestCase):
    """
    L{applyOverride}.
    """

    def test_defaultOptionsLoseToClient(self) -> None:
        """
        Configured options fill in; the client's options win.
        """
        override = ModelOverride(options={"temperature": 0.2, "num_ctx": 8192})
        body = applyOverride({"model": "m", "options": {"temperature": 0.9}}, override)
        self.assertEqual(body["options"], {"temperature": 0.9, "num_ctx": 8192})
        self.assertEqual(applyOverride({"model": "m"}, override)["options"],
                         {"temperature": 0.2, "num_ctx": 8192})
