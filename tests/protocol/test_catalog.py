"""
Model metadata: facts from each source and their precedence.
"""

from __future__ import annotations

import datetime

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import (
    ModelMeta,
    buildCatalog,
    factsFromLiteLLM,
)
from ollama_proxy.protocol.listing import isoTimestamp
from ollama_proxy.protocol.errors import UpstreamError


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
        self.assertEqual(
            facts, {"m": {"context_length": 4096, "max_input_tokens": 4096, "vision": False}}
        )
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
