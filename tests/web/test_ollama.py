"""
L{ollama_proxy.web.ollama}: C{/api/embed}, C{/api/embeddings} and
C{/api/version}.  (C{/api/chat} and C{/api/generate} are generation
resources: C{tests.web.test_chat}.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.harness import ProxyHarness
from tests.web.helpers import body, embeddingData


class EmbedTests(SynchronousTestCase):
    """
    C{POST /api/embed} and the legacy C{POST /api/embeddings}.
    """

    def test_batch(self) -> None:
        """
        A list of inputs goes to C{/v1/embeddings} with the stripped model id
        and C{dimensions}; the vectors come back in input order (whatever
        order the backend used), L2-normalised, with Ollama's field names.
        """
        h = ProxyHarness()
        d = h.post(
            "/api/embed",
            {"model": "emb:latest", "input": ["a", "b"], "dimensions": 2, "truncate": True},
        )
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/embeddings")
        self.assertEqual(
            upstream.json(),
            {"model": "emb", "input": ["a", "b"], "encoding_format": "float", "dimensions": 2},
        )
        upstream.respond(200, embeddingData([[3.0, 4.0], [0.0, 2.0]], order=[1, 0]))
        h.pump()
        result = body(h, self.successResultOf(d))
        self.assertEqual(result["model"], "emb:latest")
        self.assertEqual(result["embeddings"], [[0.6, 0.8], [0.0, 1.0]])
        self.assertEqual(result["prompt_eval_count"], 6)
        self.assertEqual(result["load_duration"], 0)
        self.assertGreater(result["total_duration"], 0)

    def test_string(self) -> None:
        """
        A single string is one input.
        """
        h = ProxyHarness()
        d = h.post("/api/embed", {"model": "emb", "input": "hello"})
        self.assertEqual(h.backend.received[0].json()["input"], ["hello"])
        h.backend.received[0].respond(200, embeddingData([[1.0, 0.0]]))
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["embeddings"], [[1.0, 0.0]])

    def test_dimensionsEnforced(self) -> None:
        """
        A backend that ignores C{dimensions} returns longer vectors; they are
        cut and re-normalised, as Ollama does.
        """
        h = ProxyHarness()
        d = h.post("/api/embed", {"model": "emb", "input": "x", "dimensions": 2})
        h.backend.received[0].respond(200, embeddingData([[3.0, 4.0, 12.0]]))
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["embeddings"], [[0.6, 0.8]])

    def test_emptyInput(self) -> None:
        """
        C{""}, C{[]} or no input only "loads" the model: an empty list and no
        backend call.
        """
        h = ProxyHarness()
        for request in ({"model": "emb", "input": ""}, {"model": "emb", "input": []}, {"model": "emb"}):
            response = self.successResultOf(h.post("/api/embed", request))
            self.assertEqual(body(h, response), {"model": "emb", "embeddings": []})
        self.assertEqual(h.backend.received, [])

    def test_invalidInputType(self) -> None:
        """
        Anything but a string or a list of strings is Ollama's 400.
        """
        h = ProxyHarness()
        for value in (5, [1, 2], {"a": "b"}, ["a", None]):
            response = self.successResultOf(h.post("/api/embed", {"model": "emb", "input": value}))
            self.assertEqual(response.code, 400)
            self.assertEqual(body(h, response), {"error": "invalid input type"})
        self.assertEqual(h.backend.received, [])

    def test_backendErrorKept(self) -> None:
        """
        The backend's status and message reach the client.
        """
        h = ProxyHarness()
        d = h.post("/api/embed", {"model": "nope", "input": "x"})
        h.backend.received[0].respond(404, {"error": {"message": "The model `nope` does not exist"}})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.assertIn("nope", body(h, response)["error"])

    def test_malformedBackendAnswer(self) -> None:
        """
        Fewer vectors than inputs is a 502, not a silently short list.
        """
        h = ProxyHarness()
        d = h.post("/api/embed", {"model": "emb", "input": ["a", "b"]})
        h.backend.received[0].respond(200, embeddingData([[1.0]]))
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        self.assertIn("1 embeddings for 2 inputs", body(h, response)["error"])

    def test_legacy(self) -> None:
        """
        C{/api/embeddings} sends C{prompt} as the one input and answers
        C{embedding} exactly as computed (not normalised).
        """
        h = ProxyHarness()
        d = h.post("/api/embeddings", {"model": "emb:proxy", "prompt": "hi"})
        self.assertEqual(h.backend.received[0].json()["input"], ["hi"])
        self.assertEqual(h.backend.received[0].json()["model"], "emb")
        h.backend.received[0].respond(200, embeddingData([[3.0, 4.0]]))
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d)), {"embedding": [3.0, 4.0]})

    def test_legacyEmpty(self) -> None:
        """
        An empty legacy prompt is C{{"embedding": []}} without a backend call.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.post("/api/embeddings", {"model": "emb", "prompt": ""}))
        self.assertEqual(body(h, response), {"embedding": []})
        self.assertEqual(h.backend.received, [])


class VersionTests(SynchronousTestCase):
    """
    C{GET /api/version}: the configured version, answered at once.
    """

    def test_configured(self) -> None:
        """
        The context's version is the answer (C{--ollama-version}), with no
        backend asked.
        """
        h = ProxyHarness(version="9.8.7")
        response = self.successResultOf(h.get("/api/version"))
        self.assertEqual(response.code, 200)
        self.assertEqual(body(h, response), {"version": "9.8.7"})
        self.assertEqual(h.backend.received, [])

    def test_head(self) -> None:
        """
        C{HEAD} is served like C{GET}, without a body; other methods are
        a 405 in Ollama's shape.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.request("HEAD", "/api/version"))
        self.assertEqual(response.code, 200)
        self.assertEqual(self.successResultOf(response.content()), b"")
        refused = self.successResultOf(h.post("/api/version", {}))
        self.assertEqual(refused.code, 405)
        self.assertIn("error", body(h, refused))
