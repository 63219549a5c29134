"""
Model names: the tag and C{:latest} forms, and C{/api/tags} names.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import buildCatalog
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.listing import tagsResponse
from ollama_proxy.protocol.names import backendModel, clientModelName
from tests.protocol.helpers import T0


def tagsFromModels(models: Any) -> Any:
    """
    The C{/api/tags} body for an OpenAI model list, at L{T0}.
    """
    return tagsResponse(buildCatalog(models, None).values(), T0)


class NameTests(SynchronousTestCase):
    """
    Client names to backend ids and back.
    """

    def test_backendModel(self) -> None:
        """
        The proxy's tag and C{:latest} are stripped; real tags and ids known
        to the backend are kept.
        """
        cases = [
            ("gpt-4o:proxy", None, "gpt-4o"),
            ("gpt-4o:latest", None, "gpt-4o"),
            ("gpt-4o", None, "gpt-4o"),
            ("qwen3:8b", None, "qwen3:8b"),
            ("openrouter/deepseek:free", None, "openrouter/deepseek:free"),
            ("llama:latest", {"llama:latest"}, "llama:latest"),
            (":proxy", None, ":proxy"),
        ]
        for name, known, expected in cases:
            self.assertEqual(backendModel(name, known), expected, name)

    def test_clientModelName(self) -> None:
        """
        Untagged ids get the tag; tagged ids are listed as they are.
        """
        self.assertEqual(clientModelName("gpt-4o"), "gpt-4o:proxy")
        self.assertEqual(clientModelName("qwen3:8b"), "qwen3:8b")
        self.assertEqual(clientModelName("a/b", "latest"), "a/b:latest")

    def test_tagsOncePerModel(self) -> None:
        """
        Duplicate ids from the backend are listed once (and ids C{b} and
        C{b:proxy}, both listed as C{b:proxy}, once), with distinct digests
        per model.
        """
        tags = tagsFromModels({"data": [{"id": "a"}, {"id": "a"}, {"id": "b"}, {"id": "b:proxy"}]})
        self.assertEqual([m["name"] for m in tags["models"]], ["a:proxy", "b:proxy"])
        self.assertNotEqual(tags["models"][0]["digest"], tags["models"][1]["digest"])

    def test_tagsRejectsGarbage(self) -> None:
        """
        A backend answer that is not a model list is an upstream error.
        """
        self.assertRaises(UpstreamError, tagsFromModels, {"nope": 1})
        self.assertEqual(tagsFromModels({"data": None}), {"models": []})


class CaseTests(SynchronousTestCase):
    """
    Names resolve ignoring case when that is unambiguous, as in Ollama.
    """

    def index(self, *ids: str) -> Any:
        from ollama_proxy.protocol.names import NameIndex

        return NameIndex.build([("a", ids, {})], lambda position, listed, modelId: modelId)

    def test_caseInsensitive(self) -> None:
        """
        C{PLAIN}, C{Plain:Latest} and C{PLAIN:PROXY} find C{plain}.
        """
        index = self.index("plain", "Qwen/Qwen3-8B")
        for name in ("PLAIN", "Plain:Latest", "PLAIN:proxy", "plain"):
            self.assertEqual(index.resolve(name), "plain", name)
        self.assertEqual(index.resolve("qwen/qwen3-8b"), "Qwen/Qwen3-8B")

    def test_exactWinsAmbiguousRefused(self) -> None:
        """
        An exact match wins; a name that matches two ids only ignoring case
        is not resolved.
        """
        index = self.index("Plain", "plain")
        self.assertEqual(index.resolve("Plain"), "Plain")
        self.assertEqual(index.resolve("plain"), "plain")
        self.assertIsNone(index.resolve("PLAIN"))

    def test_findAnswersOwnerAndGuess(self) -> None:
        """
        L{NameIndex.find} answers in one question who owns a name (as
        L{NameIndex.resolve}) and the backend id to try when no one does:
        the name without C{:proxy} or C{:latest}, an id with its own tag
        kept.
        """
        index = self.index("plain")
        self.assertEqual(index.find("PLAIN:proxy"), ("plain", "PLAIN"))
        self.assertEqual(index.find("other:latest"), (None, "other"))
        self.assertEqual(index.find("qwen3:8b"), (None, "qwen3:8b"))
