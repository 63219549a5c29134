"""
The discovery answers built from the catalog: C{remote_host}, digests,
token limits, recommendations.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import ModelMeta, parseOverrides
from ollama_proxy.protocol.listing import (
    modelDigest,
    psResponse,
    recommendations,
    remoteHost,
    showResponse,
    tagsResponse,
)
from tests.protocol.helpers import T0


class RemoteHostTests(SynchronousTestCase):
    """
    C{remote_host} is the backend's origin and nothing more.
    """

    def test_origin(self) -> None:
        """
        User, password, path and query (which may carry keys) are dropped;
        ports and IPv6 hosts kept.
        """
        cases = [
            ("http://127.0.0.1:4000", "http://127.0.0.1:4000"),
            ("https://user:sk-secret@gw.example/v1?api_key=sk-x", "https://gw.example"),
            ("https://openrouter.ai/api/v1", "https://openrouter.ai"),
            ("http://[::1]:8000/v1", "http://[::1]:8000"),
            ("HTTP://Gw.Example:80", "http://gw.example:80"),
        ]
        for url, expected in cases:
            self.assertEqual(remoteHost(url), expected, url)

    def test_none(self) -> None:
        """
        No host, a bad port, or ollama.com (where the Ollama CLI would ask
        to sign in): no C{remote_host}.
        """
        for url in ("", "not a url", "http://host:99999", "https://ollama.com/v1",
                    "https://api.ollama.com"):
            self.assertEqual(remoteHost(url), "", url)


class DigestTests(SynchronousTestCase):
    """
    Digests follow what clients are shown.
    """

    def test_followsMetadata(self) -> None:
        """
        Same metadata, same digest; another name, context, capability or
        host, another digest; C{created} (only C{modified_at}) does not
        count.
        """
        base = ModelMeta("m", {"context_length": 8192, "created": 1}, "http://a:1")
        digest = modelDigest(base, "m:proxy")
        self.assertRegex(digest, "^[0-9a-f]{64}$")
        self.assertEqual(modelDigest(ModelMeta("m", {"context_length": 8192, "created": 2},
                                               "http://a:1"), "m:proxy"), digest)
        others = [
            modelDigest(base, "alias:proxy"),
            modelDigest(attrs.evolve(base, facts={"context_length": 4096}), "m:proxy"),
            modelDigest(attrs.evolve(base, facts={**base.facts, "vision": True}), "m:proxy"),
            modelDigest(attrs.evolve(base, remoteHost=""), "m:proxy"),
            modelDigest(attrs.evolve(base, facts={**base.facts, "max_output_tokens": 100}),
                        "m:proxy"),
        ]
        self.assertEqual(len({digest, *others}), len(others) + 1)


class LimitsTests(SynchronousTestCase):
    """
    C{max_input_tokens} and C{max_output_tokens}.
    """

    def test_outputAtMostHalfTheWindow(self) -> None:
        """
        The VS Code extension gives the prompt C{context - max_output}: a
        limit above half the window is left out rather than starving the
        prompt.
        """
        for output, shown in ((4096, 4096), (16384, 16384), (16385, None), (32768, None)):
            meta = ModelMeta("m", {"context_length": 32768, "max_output_tokens": output})
            self.assertEqual(meta.maxOutputTokens, shown, output)
            entry = tagsResponse([meta], T0)["models"][0]
            self.assertEqual(entry.get("max_output_tokens"), shown)
            self.assertEqual(showResponse(meta, T0).get("max_output_tokens"), shown)

    def test_inputWithinTheWindow(self) -> None:
        """
        A C{max_input_tokens} larger than the (overridden) window is left
        out.
        """
        self.assertEqual(
            ModelMeta("m", {"context_length": 8192, "max_input_tokens": 8192}).maxInputTokens, 8192
        )
        self.assertIsNone(
            ModelMeta("m", {"context_length": 4096, "max_input_tokens": 8192}).maxInputTokens
        )

    def test_overrideKey(self) -> None:
        """
        C{max_output_tokens} is a key of the C{--model-info} file, a
        positive integer.
        """
        self.assertEqual(parseOverrides({"m": {"max_output_tokens": 8192}}),
                         {"m": {"max_output_tokens": 8192}})
        with self.assertRaises(ValueError) as e:
            parseOverrides({"m": {"max_output_tokens": 0}})
        self.assertIn("max_output_tokens must be a positive integer", str(e.exception))


class SameNumbersTests(SynchronousTestCase):
    """
    Tags, show and ps agree for one model.
    """

    def test_sameNumbers(self) -> None:
        """
        Context length, embedding length, capabilities and digest.
        """
        meta = ModelMeta("e", {"context_length": 512, "embedding_length": 768, "embedding": True},
                         "http://a:1")
        tag = tagsResponse([meta], T0)["models"][0]
        show = showResponse(meta, T0)
        ps = psResponse([meta], T0)["models"][0]
        for where in (tag, show, ps):
            self.assertEqual(where["details"]["context_length"], 512)
            self.assertEqual(where["details"]["embedding_length"], 768)
        self.assertEqual(ps["context_length"], 512)
        self.assertEqual(tag["capabilities"], show["capabilities"])
        self.assertEqual(tag["capabilities"], ["embedding"])
        self.assertEqual(tag["digest"], ps["digest"])
        self.assertEqual(show["model_info"]["openai.embedding_length"], 768)

    def test_recommendationsSkipEmbedding(self) -> None:
        """
        Embedding models, models without tools and small windows are not
        recommended.
        """
        catalog = [
            ModelMeta("e", {"context_length": 131072, "embedding": True}),
            ModelMeta("t", {"context_length": 131072, "tools": False}),
            ModelMeta("s", {"context_length": 32768}),
            ModelMeta("ok", {"context_length": 65536}),
        ]
        self.assertEqual(
            recommendations(catalog),
            {"recommendations": [{"model": "ok:proxy",
                                  "description": "completion, tools; 64K context",
                                  "context_length": 65536}]},
        )
