"""
The one TTL cache behind model lists and metadata: freshness, sharing one
fetch, failures, a caller that leaves.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import (
    ModelMeta,
)
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.upstream.cache import TTLCache
from tests.upstream.helpers import LogCapture, ScriptedFetch, get, ids


class TTLCacheSharingTests(SynchronousTestCase):
    """
    The one TTL cache (L{TTLCache}) in front of a backend's listing and
    metadata: sharing, failures and expiry.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.catalog: TTLCache[dict[str, ModelMeta]] = TTLCache(self.fetch, self.clock, ttl=10)
        self.fetches: list[Deferred[dict[str, ModelMeta]]] = []
        self.addCleanup(self.settle)

    def settle(self) -> None:
        """
        Finish the fetches a test left pending, so that no suspended
        coroutine is garbage-collected (and reported) during a later test.
        """
        for d in self.fetches:
            if not d.called:
                d.callback({})

    async def fetch(self) -> dict[str, ModelMeta]:
        d: Deferred[dict[str, ModelMeta]] = Deferred()
        self.fetches.append(d)
        return await d

    def get(self) -> Deferred[dict[str, ModelMeta]]:
        return Deferred.fromCoroutine(self.catalog.get())

    def test_storedValueIsACheck(self) -> None:
        """
        A value an active health check stored counts as the last check
        (the status page shows its age), not only as fresh.
        """
        self.clock.advance(100)
        self.catalog.store({"a": ModelMeta("a")})
        self.assertEqual(self.catalog.lastCheck, 100)
        self.assertEqual(self.successResultOf(self.get()), {"a": ModelMeta("a")})
        self.assertEqual(self.fetches, [])

    def test_waiterCancelledOthersServed(self) -> None:
        """
        A caller that goes away (its request was cancelled) does not cancel
        the shared fetch; the other callers and the cache still get it.
        """
        first, second = self.get(), self.get()
        self.assertEqual(len(self.fetches), 1)
        first.cancel()
        self.failureResultOf(first, CancelledError)
        result = {"a": ModelMeta("a")}
        self.fetches[0].callback(result)
        self.assertEqual(self.successResultOf(second), result)
        self.assertEqual(self.successResultOf(self.get()), result)
        self.assertEqual(len(self.fetches), 1)

    def test_failureSharedNotCached(self) -> None:
        """
        A failed fetch fails every waiter and is retried by the next call.
        """
        first, second = self.get(), self.get()
        self.fetches[0].errback(UpstreamError("down"))
        self.failureResultOf(first, UpstreamError)
        self.failureResultOf(second, UpstreamError)
        self.get()
        self.assertEqual(len(self.fetches), 2)

    def test_ttl(self) -> None:
        """
        The listing is reused for C{ttl} seconds of the injected clock.
        """
        d = self.get()
        self.fetches[0].callback({})
        self.successResultOf(d)
        self.clock.advance(9.9)
        self.successResultOf(self.get())
        self.assertEqual(len(self.fetches), 1)
        self.clock.advance(0.2)
        self.assertNoResult(self.get())
        self.assertEqual(len(self.fetches), 2)


class TTLCacheTests(SynchronousTestCase):
    """
    L{TTLCache}.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.fetch = ScriptedFetch()
        self.cache = TTLCache(self.fetch, self.clock, ttl=60, name="a")
        self.logs = LogCapture(self)

    def test_reusedWithinTTL(self) -> None:
        """
        A second call within C{ttl} seconds is answered without fetching;
        after C{ttl} the list is fetched again.
        """
        d = get(self.cache)
        self.fetch.answer("m1")
        self.assertEqual(ids(self.successResultOf(d)), ["m1"])
        self.clock.advance(59)
        self.assertEqual(ids(self.successResultOf(get(self.cache))), ["m1"])
        self.assertEqual(len(self.fetch.calls), 1)
        self.clock.advance(1)
        d = get(self.cache)
        self.assertEqual(len(self.fetch.calls), 2)
        self.fetch.answer("m1", "m2")
        self.assertEqual(ids(self.successResultOf(d)), ["m1", "m2"])

    def test_concurrentCallersShareOneFetch(self) -> None:
        """
        Callers that arrive while a fetch runs wait for it instead of
        starting their own.
        """
        first, second = get(self.cache), get(self.cache)
        self.assertEqual(len(self.fetch.calls), 1)
        self.assertNoResult(first)
        self.fetch.answer("m")
        self.assertEqual(ids(self.successResultOf(first)), ["m"])
        self.assertEqual(ids(self.successResultOf(second)), ["m"])

    def test_cancelledCallerDoesNotCancelFetch(self) -> None:
        """
        A caller that goes away (client disconnect) leaves the shared fetch
        running for the others.
        """
        first, second = get(self.cache), get(self.cache)
        first.cancel()
        self.failureResultOf(first)
        self.fetch.answer("m")
        self.assertEqual(ids(self.successResultOf(second)), ["m"])

    def test_failureKeepsLastList(self) -> None:
        """
        When a later fetch fails, the last good list is served, the error is
        logged with the backend's name, and no new fetch is tried before
        C{ttl} has passed again.
        """
        d = get(self.cache)
        self.fetch.answer("m1")
        self.successResultOf(d)
        self.clock.advance(60)
        d = get(self.cache)
        self.fetch.fail()
        self.assertEqual(ids(self.successResultOf(d)), ["m1"])
        self.assertIsInstance(self.cache.error, UpstreamError)
        (event,) = self.logs.errors()
        self.assertEqual((event["backend"], event["error"]), ("a", "connection refused"))
        self.clock.advance(30)
        self.assertEqual(ids(self.successResultOf(get(self.cache))), ["m1"])
        self.assertEqual(len(self.fetch.calls), 2)

    def test_failureWithoutListRaisesAndRetries(self) -> None:
        """
        Without an earlier list the error reaches the caller, and the next
        call tries again at once.
        """
        d = get(self.cache)
        self.fetch.fail("boom")
        self.assertEqual(self.failureResultOf(d, UpstreamError).value.message, "boom")
        get(self.cache)
        self.assertEqual(len(self.fetch.calls), 2)

    def test_zeroTTLAlwaysFetches(self) -> None:
        """
        C{ttl = 0} fetches on every call.
        """
        cache = TTLCache(self.fetch, self.clock, ttl=0)
        get(cache)
        self.fetch.answer("m")
        get(cache)
        self.assertEqual(len(self.fetch.calls), 2)
