"""
Real clients against the running proxy over loopback sockets:
C{twistd -n ollama-proxy} in front of C{twistd -n fake-openai}, driven by the
official C{ollama} Python client, the C{openai} Python client on
C{<proxy>/v1}, and LangChain's C{ChatOllama}.  Every call asserts the values
it gets, computed from what the fake backend is known to answer.
"""

from __future__ import annotations

import datetime
import math
import urllib.request
from typing import Any

import ollama
import openai
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import MODEL_INFO, REPLY, embedding
from ollama_proxy.web.context import DEFAULT_VERSION
from tests.integration.servers import sharedStack

try:
    import langchain_ollama
except ImportError:  # pragma: no cover - depends on the environment
    langchain_ollama = None  # type: ignore[assignment]


class OllamaClientSurfaceTests(SynchronousTestCase):
    """
    The official C{ollama} client: every method a client library or app
    built on it calls.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()
        self.client = ollama.Client(host=self.stack.url, timeout=20)

    def test_list(self) -> None:
        """
        C{list()} returns each fake model once, tagged C{:proxy}, with
        distinct digests.
        """
        models = self.client.list().models
        names = [m.model for m in models]
        self.assertEqual(
            sorted(names),
            sorted(f"{m}:proxy" for m in MODEL_INFO),
        )
        self.assertEqual(len({m.digest for m in models}), len(models))

    def test_show(self) -> None:
        """
        C{show()} reports the capabilities and context lengths the backend
        states in its LiteLLM-style C{/v1/model/info}, with no configuration.
        """
        tools = self.client.show("fake-tools:proxy")
        self.assertEqual(tools.capabilities, ["completion", "tools"])
        info = tools.modelinfo or {}
        arch = info["general.architecture"]
        self.assertEqual(info[f"{arch}.context_length"], 131072)
        self.assertEqual(info["general.basename"], "fake-tools")
        self.assertIn("num_ctx", tools.parameters or "")
        self.assertIsNotNone(tools.modified_at)
        self.assertEqual(self.client.show("fake-model").capabilities, ["completion", "vision"])
        self.assertEqual(
            self.client.show("fake-reasoner:latest").capabilities, ["completion", "thinking"]
        )
        embed = self.client.show("fake-embed:proxy")
        self.assertEqual(embed.capabilities, ["embedding"])
        self.assertEqual((embed.modelinfo or {})[f"{arch}.embedding_length"], 8)

    def test_listDiscovery(self) -> None:
        """
        Model discovery as Ollama 0.30+ answers it.  C{ollama} 0.6 keeps only
        the pre-0.30 fields of a tag (it drops C{capabilities},
        C{details.context_length} and C{remote_host}), so those are read
        from the raw body of the same route; what the client keeps must
        agree with it.
        """
        kept = {m.model: m for m in self.client.list().models}
        with urllib.request.urlopen(self.stack.url + "/api/tags", timeout=10) as r:
            raw = {m["name"]: m for m in codec.loads(r.read())["models"]}
        self.assertEqual(set(kept), set(raw))
        for name, model in kept.items():
            self.assertEqual(model.digest, raw[name]["digest"])
            assert model.details is not None
            self.assertEqual(model.details.family, raw[name]["details"]["family"])
            self.assertEqual(raw[name]["remote_host"], self.stack.backendURL)
        tools = raw["fake-tools:proxy"]
        self.assertEqual(tools["capabilities"], ["completion", "tools"])
        self.assertEqual(tools["details"]["context_length"], 131072)
        self.assertEqual(tools["max_input_tokens"], 131072)
        self.assertEqual(tools["max_output_tokens"], 8192)
        self.assertEqual(raw["fake-model:proxy"]["capabilities"], ["completion", "vision"])
        self.assertEqual(raw["fake-reasoner:proxy"]["capabilities"], ["completion", "thinking"])
        embed = raw["fake-embed:proxy"]
        self.assertEqual(embed["capabilities"], ["embedding"])
        self.assertEqual(embed["details"]["embedding_length"], 8)

    def test_sameNumbersEverywhere(self) -> None:
        """
        For every model, C{show()} and C{ps()} (through the client) report
        the capabilities and context length the raw tags do, and the raw
        show carries C{details.context_length} and the token limits.
        """
        with urllib.request.urlopen(self.stack.url + "/api/tags", timeout=10) as r:
            raw = {m["name"]: m for m in codec.loads(r.read())["models"]}
        loaded = {m.model: m for m in self.client.ps().models}
        for name, tag in raw.items():
            context = tag["details"]["context_length"]
            show = self.client.show(name)
            self.assertEqual(show.capabilities, tag["capabilities"])
            info = show.modelinfo or {}
            self.assertEqual(info[f"{info['general.architecture']}.context_length"], context)
            self.assertEqual(loaded[name].context_length, context)
            self.assertEqual(loaded[name].digest, tag["digest"])
        request = urllib.request.Request(
            self.stack.url + "/api/show", data=codec.dumps({"model": "fake-tools:proxy"}),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            show = codec.loads(r.read())
        self.assertEqual(show["details"]["context_length"], 131072)
        self.assertEqual(show["max_output_tokens"], 8192)
        self.assertEqual(show["remote_host"], self.stack.backendURL)

    def test_startupRoutes(self) -> None:
        """
        C{/api/version}, C{/api/status} and the model recommendations are
        answered by the proxy (it runs with no fallback Ollama here).
        """
        answers = {}
        for path in ("/api/version", "/api/status", "/api/experimental/model-recommendations"):
            with urllib.request.urlopen(self.stack.url + path, timeout=10) as r:
                self.assertEqual(r.status, 200)
                answers[path] = codec.loads(r.read())
        self.assertEqual(answers["/api/version"], {"version": DEFAULT_VERSION})
        self.assertEqual(answers["/api/status"]["cloud"]["disabled"], True)
        self.assertEqual(
            [(r["model"], r["context_length"])
             for r in answers["/api/experimental/model-recommendations"]["recommendations"]],
            [("fake-tools:proxy", 131072), ("fake-agent:proxy", 131072)],
        )

    def test_showUnknown(self) -> None:
        """
        C{show()} of a model the backend lacks raises Ollama's 404.
        """
        with self.assertRaises(ollama.ResponseError) as e:
            self.client.show("nope")
        self.assertEqual(e.exception.status_code, 404)
        self.assertEqual(e.exception.error, "model 'nope' not found")

    def test_ps(self) -> None:
        """
        C{ps()} lists the served models with a future C{expires_at} and their
        context lengths.
        """
        models = {m.model: m for m in self.client.ps().models}
        self.assertEqual(set(models), {f"{m}:proxy" for m in MODEL_INFO})
        fake = models["fake-model:proxy"]
        self.assertEqual(fake.context_length, 16384)
        assert fake.expires_at is not None
        self.assertGreater(fake.expires_at, datetime.datetime.now(datetime.timezone.utc))

    def test_chat(self) -> None:
        """
        C{chat()} with C{:latest} returns the fake reply.
        """
        response = self.client.chat(
            model="fake-model:latest", messages=[{"role": "user", "content": "hello"}]
        )
        self.assertEqual(response.message.content, REPLY)
        self.assertEqual(response.model, "fake-model:latest")

    def test_generate(self) -> None:
        """
        C{generate()} non-streamed and streamed returns the reply in
        C{response}.
        """
        response = self.client.generate(model="fake-model:proxy", prompt="hello", system="be nice")
        self.assertEqual(response.response, REPLY)
        self.assertTrue(response.done)
        parts = list(self.client.generate(model="fake-model:proxy", prompt="hello", stream=True))
        self.assertGreater(len(parts), 2)
        self.assertEqual("".join(p.response or "" for p in parts), REPLY)
        self.assertTrue(parts[-1].done)
        self.assertEqual(parts[-1].done_reason, "stop")

    def test_generateRaw(self) -> None:
        """
        C{generate(raw=True)} goes through C{/v1/completions}: with
        C{num_predict} 3 the fake sends three words and C{length}.
        """
        parts = list(
            self.client.generate(
                model="fake-model:proxy", prompt="<s>", raw=True, stream=True,
                options={"num_predict": 3},
            )
        )
        self.assertEqual("".join(p.response or "" for p in parts), "Hello! I am")
        self.assertEqual(parts[-1].done_reason, "length")
        with urllib.request.urlopen(self.stack.backendURL + "/_fake/requests", timeout=10) as r:
            requests = codec.loads(r.read())["requests"]
        self.assertIn(
            {"path": "/completions", "prompt": "<s>"},
            [{"path": q["path"], "prompt": (q["body"] or {}).get("prompt")} for q in requests],
        )

    def test_generateLoad(self) -> None:
        """
        C{generate()} with an empty prompt is Ollama's load answer.
        """
        response = self.client.generate(model="fake-model:proxy", prompt="")
        self.assertEqual(response.done_reason, "load")

    def test_embed(self) -> None:
        """
        C{embed()} returns one normalised vector per input, equal to the fake
        backend's, and the token count.
        """
        response = self.client.embed(model="fake-embed:proxy", input=["alpha", "beta gamma"])
        self.assertEqual(len(response.embeddings), 2)
        for vector, text in zip(response.embeddings, ["alpha", "beta gamma"]):
            expected = embedding(text)
            self.assertEqual(len(vector), len(expected))
            for got, want in zip(vector, expected):
                self.assertAlmostEqual(got, want, places=6)
            self.assertAlmostEqual(math.sqrt(sum(x * x for x in vector)), 1.0, places=6)
        self.assertEqual(response.prompt_eval_count, 3)

    def test_embeddings(self) -> None:
        """
        The legacy C{embeddings()} returns the one vector.
        """
        response = self.client.embeddings(model="fake-embed:proxy", prompt="alpha")
        self.assertEqual(list(response.embedding), embedding("alpha"))

    def test_pull(self) -> None:
        """
        C{pull()} of a served model succeeds at once, streamed or not; of an
        unknown model (no fallback configured) it raises a 404.
        """
        self.assertEqual(self.client.pull("fake-model:proxy").status, "success")
        statuses = [p.status for p in self.client.pull("fake-embed", stream=True)]
        self.assertEqual(statuses[-1], "success")
        with self.assertRaises(ollama.ResponseError) as e:
            self.client.pull("llama3.2")
        self.assertEqual(e.exception.status_code, 404)


class OpenAIClientTests(SynchronousTestCase):
    """
    The C{openai} client pointed at C{<proxy>/v1}, as Copilot and Open WebUI
    use Ollama's OpenAI routes.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()
        self.client = openai.OpenAI(base_url=self.stack.url + "/v1", api_key="unused", timeout=20)

    def test_models(self) -> None:
        """
        C{models.list()} returns the backend's ids.
        """
        ids = sorted(m.id for m in self.client.models.list())
        self.assertEqual(ids, sorted(MODEL_INFO))

    def test_chat(self) -> None:
        """
        A non-streamed chat with an Ollama-style name returns the reply.
        """
        completion = self.client.chat.completions.create(
            model="fake-model:proxy", messages=[{"role": "user", "content": "hi"}]
        )
        self.assertEqual(completion.choices[0].message.content, REPLY)
        self.assertEqual(completion.choices[0].finish_reason, "stop")

    def test_chatStream(self) -> None:
        """
        A streamed chat yields the reply in pieces.
        """
        stream = self.client.chat.completions.create(
            model="fake-model:latest", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
        self.assertGreater(len(pieces), 2)
        self.assertEqual("".join(pieces), REPLY)

    def test_embeddings(self) -> None:
        """
        C{embeddings.create()} returns the fake vector.
        """
        response = self.client.embeddings.create(
            model="fake-embed:proxy", input="alpha", encoding_format="float"
        )
        self.assertEqual(response.data[0].embedding, embedding("alpha"))


class LangChainTests(SynchronousTestCase):
    """
    LangChain's C{ChatOllama}, which streams even for C{invoke}.
    """

    def setUp(self) -> None:
        if langchain_ollama is None:
            raise SkipTest("langchain-ollama is not installed (pip install -e '.[test]')")
        self.stack = sharedStack()

    def model(self, **kwargs: Any) -> Any:
        return langchain_ollama.ChatOllama(model="fake-model:proxy", base_url=self.stack.url, **kwargs)

    def test_invoke(self) -> None:
        """
        C{invoke()} returns the whole reply and usage from the final chunk.
        """
        message = self.model().invoke("hello there")
        self.assertEqual(message.content, REPLY)
        usage = message.usage_metadata
        assert usage is not None
        self.assertEqual(usage["output_tokens"], len(REPLY.split(" ")))

    def test_stream(self) -> None:
        """
        C{stream()} yields the reply in several pieces.
        """
        chunks = list(self.model(num_predict=4).stream("hello"))
        self.assertGreater(len(chunks), 2)
        self.assertEqual("".join(str(c.content) for c in chunks), "Hello! I am the")
