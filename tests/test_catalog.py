"""
The pure parts of model metadata (L{ollama_proxy.catalog}), the override
file and the command-line options that feed it.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import (
    ModelMeta,
    buildCatalog,
    factsFromLiteLLM,
    isoTimestamp,
    parseOverrides,
)
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.service.overrides import loadOverrides
from ollama_proxy.service.tap import Options
from ollama_proxy.upstream.cache import TTLCache


class FactsTests(SynchronousTestCase):
    """
    Reading what backends say about their models.
    """

    def test_liteLLMFirstDeploymentThatKnowsWins(self) -> None:
        """
        LiteLLM lists a model once per deployment; the first entry stating a
        value wins, C{null} means unknown, other shapes are ignored.
        """
        facts = factsFromLiteLLM(
            {
                "data": [
                    {"model_name": "m", "model_info": {"max_input_tokens": None,
                                                       "supports_vision": None}},
                    {"model_name": "m", "model_info": {"max_input_tokens": 4096,
                                                       "supports_vision": False}},
                    {"model_name": "m", "model_info": {"max_input_tokens": 9999}},
                    "junk",
                    {"model_name": 5},
                ]
            }
        )
        self.assertEqual(facts, {"m": {"context_length": 4096, "vision": False}})
        self.assertEqual(factsFromLiteLLM({"detail": "Not Found"}), {})
        self.assertEqual(factsFromLiteLLM([1, 2]), {})

    def test_llamaCppMeta(self) -> None:
        """
        llama.cpp's C{meta.n_ctx_train} and C{meta.n_embd} are read.
        """
        catalog = buildCatalog(
            {"data": [{"id": "g", "meta": {"n_ctx_train": 8192, "n_embd": 2048}}]}, None
        )
        self.assertEqual(catalog["g"].contextLength, 8192)
        self.assertEqual(catalog["g"].facts["embedding_length"], 2048)

    def test_embeddingGuessedFromId(self) -> None:
        """
        Without any source, an id containing C{embed} is an embedding model;
        a source that says otherwise wins.
        """
        self.assertEqual(ModelMeta("nomic-embed-text").capabilities(), ["embedding"])
        self.assertEqual(
            ModelMeta("embedder-chat", {"embedding": False}).capabilities(), ["completion", "tools"]
        )

    def test_badModelList(self) -> None:
        """
        A body that is not a model list is an upstream error.
        """
        self.assertRaises(UpstreamError, buildCatalog, {"nope": 1}, None)


class OverrideFileTests(SynchronousTestCase):
    """
    The C{--model-info} file.
    """

    def write(self, name: str, text: str) -> str:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_json(self) -> None:
        """
        A JSON file maps model ids to facts; a capability list sets every
        flag.
        """
        path = self.write(
            "m.json", '{"qwen/qwen3:8b": {"context_length": 40960, "capabilities": ["completion", "thinking"]}}'
        )
        self.assertEqual(
            loadOverrides(path),
            {"qwen/qwen3:8b": {"context_length": 40960, "tools": False, "vision": False,
                               "thinking": True, "embedding": False, "insert": False}},
        )

    def test_toml(self) -> None:
        """
        A C{.toml} file works the same way.
        """
        path = self.write("m.toml", '["*"]\ncontext_length = 8192\n\n["gpt-4o"]\nfamily = "gpt"\n')
        self.assertEqual(
            loadOverrides(path), {"*": {"context_length": 8192}, "gpt-4o": {"family": "gpt"}}
        )

    def test_invalid(self) -> None:
        """
        Unknown keys, wrong types and unknown capabilities are refused with a
        message naming the model.
        """
        for document, message in (
            ({"m": {"contxt_length": 5}}, "unknown key 'contxt_length'"),
            ({"m": {"context_length": "big"}}, "positive integer"),
            ({"m": {"capabilities": ["flying"]}}, "capabilities must be"),
            ({"m": 5}, "'m' must be"),
            ([1], "must contain"),
        ):
            with self.assertRaises(ValueError) as e:
                parseOverrides(document)
            self.assertIn(message, str(e.exception))
        self.assertRaises(ValueError, loadOverrides, self.write("bad.json", "{nope"))
        self.assertRaises(ValueError, loadOverrides, "/nonexistent/model-info.json")

    def test_options(self) -> None:
        """
        C{--model-info} is loaded and validated at start-up; C{--cors-origin}
        is repeatable.
        """
        path = self.write("m.json", '{"m": {"context_length": 1000}}')
        config = Options()
        config.parseOptions(
            ["--target", "http://127.0.0.1:1", "--model-info", path,
             "--cors-origin", "chrome-extension://*", "--cors-origin", "https://x.example"]
        )
        self.assertEqual(config.settings.modelOverrides, {"m": {"context_length": 1000}})
        self.assertEqual(config["cors-origin"], ["chrome-extension://*", "https://x.example"])
        bad = self.write("bad.json", '{"m": {"size": 1}}')
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--target", "http://127.0.0.1:1", "--model-info", bad])
        self.assertIn("unknown key 'size'", str(e.exception))


class TimestampTests(SynchronousTestCase):
    """
    C{expires_at} formatting.
    """

    def test_isoTimestamp(self) -> None:
        """
        Microseconds and an explicit offset, parseable by
        C{datetime.fromisoformat}.
        """
        text = isoTimestamp(1_700_000_000_123_456_789)
        self.assertEqual(text, "2023-11-14T22:13:20.123456+00:00")
        self.assertEqual(
            datetime.datetime.fromisoformat(text).timestamp(), 1_700_000_000.123456
        )


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
