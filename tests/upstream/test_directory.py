"""
The model directory: the catalog built from the one TTL cache of lists and
metadata, never older than the TTL.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import ModelMeta
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.upstream.directory import METADATA_WAIT
from tests.web.helpers import LITELLM_INFO


class CatalogAgeTests(SynchronousTestCase):
    """
    Metadata is as fresh as the cache that holds it.
    """

    def served(self, h: ProxyHarness, name: str) -> Deferred[ModelMeta | None]:
        return Deferred.fromCoroutine(h.ctx.models.served(name))

    def answer(self, h: ProxyHarness, path: str, status: int, body: Any) -> None:
        """
        Answer the pending request for C{path}, which must exist.
        """
        [pending] = [r for r in h.backend.received
                     if r.path == path and not r.request.finished]
        pending.respond(status, body)
        h.pump()

    def test_metadataNeverOlderThanTTL(self) -> None:
        """
        Regression: the catalog was a second TTL cache on top of the model
        list cache, so metadata built at t=59 from a list fetched at t=0
        was served until t=119.  Now a list older than the TTL is fetched
        again whatever asks for it, and the catalog follows it.
        """
        h = ProxyHarness(ttl=60)
        # The list alone, without metadata (as the merged /v1/models does;
        # /api/tags now fetches the metadata too, see below).
        listing = Deferred.fromCoroutine(h.ctx.models.listModels())
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a", "max_model_len": 1000}]})
        self.assertEqual(len(self.successResultOf(listing)["data"]), 1)
        h.clock.advance(59)
        first = self.served(h, "a")
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        meta = self.successResultOf(first)
        assert meta is not None
        self.assertEqual(meta.contextLength, 1000)
        self.assertEqual(len(h.backend.received), 2)
        h.clock.advance(2)
        second = self.served(h, "a")
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a", "max_model_len": 2000}]})
        meta = self.successResultOf(second)
        assert meta is not None
        self.assertEqual(meta.contextLength, 2000)
        # The metadata fetched at t=59 is still within its TTL.
        self.assertEqual([r.path for r in h.backend.received],
                         ["/v1/models", "/v1/model/info", "/v1/models"])

    def test_tagsFetchMetadataOncePerTTL(self) -> None:
        """
        A cold C{/api/tags} waits for the list and then one metadata
        request; warm ones within the TTL ask the backend nothing, and
        after the TTL both are fetched once more.
        """
        h = ProxyHarness(ttl=60)
        tags = h.get("/api/tags")
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a", "max_model_len": 1000}]})
        self.assertNoResult(tags)
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        self.assertEqual(self.successResultOf(tags).code, 200)
        for _ in range(3):
            h.clock.advance(19)
            self.assertEqual(self.successResultOf(h.get("/api/tags")).code, 200)
        self.assertEqual([r.path for r in h.backend.received], ["/v1/models", "/v1/model/info"])
        h.clock.advance(4)
        tags = h.get("/api/tags")
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a"}]})
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        self.assertEqual(self.successResultOf(tags).code, 200)
        self.assertEqual([r.path for r in h.backend.received],
                         ["/v1/models", "/v1/model/info"] * 2)

    def test_catalogReusedWhileNothingChanged(self) -> None:
        """
        While the list and the metadata are fresh, the catalog object is
        the same one (rebuilt only when a source changed).
        """
        h = ProxyHarness(ttl=60)
        first = Deferred.fromCoroutine(h.ctx.models.catalog())
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a"}]})
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        catalog = self.successResultOf(first)
        self.assertEqual(list(catalog), ["a"])
        self.assertIs(self.successResultOf(Deferred.fromCoroutine(h.ctx.models.catalog())), catalog)

    def test_readyCatalogFollowsNewLists(self) -> None:
        """
        L{readyCatalog} answers while the sources are the ones it was
        built from (asked repeatedly, it keeps answering the same
        catalog), and not once a new list arrived that the catalog was
        not built from, nor once the list is stale; after the rebuild it
        answers the new catalog.
        """
        h = ProxyHarness(ttl=60)
        models = h.ctx.models
        self.assertIsNone(models.readyCatalog())
        first = Deferred.fromCoroutine(models.catalog())
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a"}]})
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        catalog = self.successResultOf(first)
        for _ in range(3):
            self.assertIs(models.readyCatalog(), catalog)
        h.clock.advance(61)
        self.assertIsNone(models.readyCatalog())
        listing = Deferred.fromCoroutine(models.listModels())
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a"}, {"id": "b"}]})
        self.successResultOf(listing)
        # A fresh list the catalog was not built from: no warm answer.
        self.assertIsNone(models.readyCatalog())
        second = Deferred.fromCoroutine(models.catalog())
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        rebuilt = self.successResultOf(second)
        self.assertEqual(list(rebuilt), ["a", "b"])
        self.assertIs(models.readyCatalog(), rebuilt)
        self.assertIs(models.readyCatalog(), rebuilt)

    def test_readyCatalogFollowsAListReplacedWithinTTL(self) -> None:
        """
        A list replaced while fresh (an active health check's read, which
        keeps what the backend serves now) ends the warm answers at once,
        even right after warm ones; the same list read again does not.
        """
        h = ProxyHarness(ttl=60)
        models = h.ctx.models
        first = Deferred.fromCoroutine(models.catalog())
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a"}]})
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        catalog = self.successResultOf(first)
        [backend] = h.router.backends
        for _ in range(2):
            self.assertIs(models.readyCatalog(), catalog)
        backend.refreshed({"data": [{"id": "a"}]})
        self.assertIs(models.readyCatalog(), catalog)
        h.clock.advance(30)
        backend.refreshed({"data": [{"id": "a"}, {"id": "c"}]})
        self.assertIsNone(models.readyCatalog())
        # The metadata is still fresh: the catalog is rebuilt from it.
        second = Deferred.fromCoroutine(models.catalog())
        rebuilt: dict[str, ModelMeta] = self.successResultOf(second)
        self.assertEqual(list(rebuilt), ["a", "c"])
        self.assertEqual(list(models.readyCatalog() or {}), ["a", "c"])

    def test_readyCatalogEndsWithItsTTL(self) -> None:
        """
        Warm answers end when the list they were read from is older than
        the TTL, though nothing else changed.
        """
        h = ProxyHarness(ttl=60)
        models = h.ctx.models
        first = Deferred.fromCoroutine(models.catalog())
        self.answer(h, "/v1/models", 200, {"data": [{"id": "a"}]})
        self.answer(h, "/v1/model/info", 404, {"error": "not found"})
        catalog = self.successResultOf(first)
        h.clock.advance(59)
        self.assertIs(models.readyCatalog(), catalog)
        h.clock.advance(1)
        self.assertIsNone(models.readyCatalog())

    def test_slowMetadataDoesNotHoldTags(self) -> None:
        """
        A backend that does not answer its metadata request within
        C{METADATA_WAIT} seconds: C{/api/tags} answers with what the list
        says; the request runs on, and the next call (no new request) has
        its metadata.
        """
        h = ProxyHarness(ttl=60)
        tags = h.get("/api/tags")
        self.answer(h, "/v1/models", 200, {"data": [{"id": "gpt-4o", "max_model_len": 1000}]})
        h.clock.advance(METADATA_WAIT - 0.1)
        self.assertNoResult(tags)
        h.clock.advance(0.1)
        h.pump()
        [entry] = codec.loads(self.successResultOf(h.client.content(self.successResultOf(tags))))[
            "models"]
        self.assertEqual((entry["details"]["context_length"], entry["capabilities"]),
                         (1000, ["completion", "tools"]))
        self.answer(h, "/v1/model/info", 200, LITELLM_INFO)
        later = h.get("/api/tags")
        [entry] = codec.loads(self.successResultOf(h.client.content(self.successResultOf(later))))[
            "models"]
        self.assertEqual((entry["details"]["context_length"], entry["capabilities"]),
                         (128000, ["completion", "tools", "vision"]))
        self.assertEqual([r.path for r in h.backend.received], ["/v1/models", "/v1/model/info"])

