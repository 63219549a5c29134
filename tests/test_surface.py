"""
The rest of Ollama's surface through the proxy's public HTTP interface
(C{StubTreq} against a scripted backend, see L{tests.fakes}): metadata
(C{/api/show}, C{/api/ps}, C{HEAD} routes), C{/api/generate} in all its
forms, embeddings, model management, the OpenAI routes on the same base
URL, model names and CORS.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import BodyReader, ProxyHarness, delta
from ollama_proxy.upstream.cache import DEFAULT_TTL

CONTINUE_PARAMETER = re.compile(r'^(\S+)\s+((?:".*")|\S+)$')
"""Continue's parser for the lines of C{/api/show} C{parameters}."""

LITELLM_INFO = {
    "data": [
        {
            "model_name": "gpt-4o",
            "litellm_params": {"model": "openai/gpt-4o"},
            "model_info": {
                "max_input_tokens": 128000,
                "supports_function_calling": True,
                "supports_vision": True,
                "supports_reasoning": None,
                "mode": "chat",
            },
        },
        {
            "model_name": "o3",
            "model_info": {
                "max_input_tokens": 200000,
                "supports_function_calling": False,
                "supports_reasoning": True,
                "mode": "chat",
            },
        },
        {
            "model_name": "text-embedding-3-small",
            "model_info": {"max_input_tokens": 8191, "mode": "embedding", "output_vector_size": 1536},
        },
    ]
}


def body(h: ProxyHarness, response: Any) -> Any:
    """
    @return: the decoded JSON body of a response.
    """
    return codec.loads(_content(h, response))


def _content(h: ProxyHarness, response: Any) -> bytes:
    """
    @return: the whole body of a response, which must end after pumping.
    """
    chunks: list[bytes] = []
    d = h.client.collect(response, chunks.append)
    h.pump()
    assert d.called, "response body did not end"
    return b"".join(chunks)


def serveCatalog(h: ProxyHarness, data: list[Any], info: Any = None) -> None:
    """
    Answer the catalog refresh the proxy just started: C{GET /v1/models},
    then C{GET /v1/model/info} (a 404 unless C{info} is given, as on any
    backend that is not LiteLLM).
    """
    models = h.backend.received[-1]
    assert (models.method, models.path) == ("GET", "/v1/models"), models.path
    models.respond(200, {"object": "list", "data": data})
    h.pump()
    infoRequest = h.backend.received[-1]
    assert (infoRequest.method, infoRequest.path) == ("GET", "/v1/model/info"), infoRequest.path
    if info is None:
        infoRequest.respond(404, {"error": {"message": "Not Found"}})
    else:
        infoRequest.respond(200, info)
    h.pump()


class ShowTests(SynchronousTestCase):
    """
    C{POST /api/show}.
    """

    def show(self, h: ProxyHarness, request: Any, data: Any = None, info: Any = None) -> Any:
        d = h.post("/api/show", request)
        if data is not None:
            serveCatalog(h, data, info)
        return self.successResultOf(d)

    def test_defaultsForAPlainBackend(self) -> None:
        """
        A backend that says nothing but the model id (OpenAI) still gets a
        complete answer: C{model_info} with architecture, basename and
        context length (32768 by default), C{completion} and C{tools},
        C{details} with string fields, parameters Continue can parse
        (including C{num_ctx}), template, modelfile, license, modified_at.
        """
        h = ProxyHarness()
        response = self.show(h, {"model": "gpt-4o:proxy"}, [{"id": "gpt-4o", "created": 1700000000}])
        self.assertEqual(response.code, 200)
        show = body(h, response)
        info = show["model_info"]
        arch = info["general.architecture"]
        self.assertEqual(info["general.basename"], "gpt-4o")
        self.assertEqual(info[f"{arch}.context_length"], 32768)
        self.assertEqual(show["capabilities"], ["completion", "tools"])
        lines = show["parameters"].split("\n")
        parsed = {}
        for line in lines:
            match = CONTINUE_PARAMETER.match(line)
            assert match is not None, line
            parsed[match.group(1)] = match.group(2)
        self.assertEqual(parsed["num_ctx"], "32768")
        for key in ("parent_model", "format", "family", "parameter_size", "quantization_level"):
            self.assertIsInstance(show["details"][key], str)
        self.assertIn("{{ .Prompt }}", show["template"])
        self.assertNotIn(".Suffix", show["template"])
        self.assertIn("FROM gpt-4o", show["modelfile"])
        self.assertIn("PARAMETER num_ctx 32768", show["modelfile"])
        self.assertEqual(show["license"], "")
        self.assertEqual(show["modified_at"], "2023-11-14T22:13:20.000000000Z")

    def test_nameKeyAndAliases(self) -> None:
        """
        The legacy C{name} key works, and C{x}, C{x:latest} and C{x:proxy}
        all find backend id C{x}.
        """
        h = ProxyHarness()
        first = self.show(h, {"name": "gpt-4o"}, [{"id": "gpt-4o"}])
        self.assertEqual(body(h, first)["model_info"]["general.basename"], "gpt-4o")
        for name in ("gpt-4o:latest", "gpt-4o:proxy"):
            response = self.show(h, {"model": name})
            self.assertEqual(body(h, response)["model_info"]["general.basename"], "gpt-4o")

    def test_idsWithSlashAndColon(self) -> None:
        """
        Backend ids containing C{/} and C{:} are found verbatim.
        """
        h = ProxyHarness()
        ids = [{"id": "qwen/qwen3-coder:free"}, {"id": "qwen3:8b"}]
        response = self.show(h, {"model": "qwen/qwen3-coder:free"}, ids)
        self.assertEqual(body(h, response)["model_info"]["general.basename"], "qwen/qwen3-coder:free")
        response = self.show(h, {"model": "qwen3:8b"})
        self.assertEqual(body(h, response)["model_info"]["general.basename"], "qwen3:8b")

    def test_unknownModel(self) -> None:
        """
        A model the backend does not list is Ollama's 404.
        """
        h = ProxyHarness()
        response = self.show(h, {"model": "nope"}, [{"id": "gpt-4o"}])
        self.assertEqual(response.code, 404)
        self.assertEqual(body(h, response), {"error": "model 'nope' not found"})

    def test_missingModel(self) -> None:
        """
        No C{model} and no C{name} is a 400 without a backend call.
        """
        h = ProxyHarness()
        response = self.show(h, {})
        self.assertEqual(response.code, 400)
        self.assertEqual(body(h, response), {"error": "model is required"})
        self.assertEqual(h.backend.received, [])

    def test_liteLLMModelInfo(self) -> None:
        """
        LiteLLM's C{/v1/model/info} gives context length and capabilities:
        tools and vision when supported, thinking for reasoning models, and
        an embedding model is only C{embedding} with its vector size.
        """
        h = ProxyHarness()
        data = [{"id": "gpt-4o"}, {"id": "o3"}, {"id": "text-embedding-3-small"}]
        gpt = body(h, self.show(h, {"model": "gpt-4o"}, data, LITELLM_INFO))
        self.assertEqual(gpt["capabilities"], ["completion", "tools", "vision"])
        self.assertEqual(gpt["model_info"]["openai.context_length"], 128000)
        self.assertIn("num_ctx                        128000", gpt["parameters"])
        o3 = body(h, self.show(h, {"model": "o3:proxy"}))
        self.assertEqual(o3["capabilities"], ["completion", "thinking"])
        self.assertEqual(o3["model_info"]["openai.context_length"], 200000)
        embed = body(h, self.show(h, {"model": "text-embedding-3-small"}))
        self.assertEqual(embed["capabilities"], ["embedding"])
        self.assertEqual(embed["model_info"]["openai.embedding_length"], 1536)

    def test_vllmMaxModelLen(self) -> None:
        """
        vLLM's C{max_model_len} in C{/v1/models} is the context length.
        """
        h = ProxyHarness()
        show = body(h, self.show(h, {"model": "m"}, [{"id": "m", "max_model_len": 8192}]))
        self.assertEqual(show["model_info"]["openai.context_length"], 8192)

    def test_openRouterModelEntry(self) -> None:
        """
        OpenRouter's C{context_length}, C{supported_parameters} and input
        modalities: no C{tools} in the parameters means no tools capability.
        """
        h = ProxyHarness()
        entry = {
            "id": "vendor/model",
            "context_length": 1000000,
            "supported_parameters": ["temperature", "reasoning"],
            "architecture": {"input_modalities": ["text", "image"]},
        }
        show = body(h, self.show(h, {"model": "vendor/model"}, [entry]))
        self.assertEqual(show["capabilities"], ["completion", "vision", "thinking"])
        self.assertEqual(show["model_info"]["openai.context_length"], 1000000)

    def test_overrideWins(self) -> None:
        """
        A per-model override from configuration beats what the backend says,
        and C{"*"} sets defaults below the backend's facts.
        """
        h = ProxyHarness(
            overrides={
                "gpt-4o": {"context_length": 64000, "family": "gpt"},
                "*": {"context_length": 4096, "insert": True},
            },
        )
        data = [{"id": "gpt-4o"}, {"id": "plain"}]
        gpt = body(h, self.show(h, {"model": "gpt-4o"}, data, LITELLM_INFO))
        self.assertEqual(gpt["model_info"]["general.architecture"], "gpt")
        self.assertEqual(gpt["model_info"]["gpt.context_length"], 64000)
        self.assertEqual(gpt["details"]["family"], "gpt")
        plain = body(h, self.show(h, {"model": "plain"}))
        self.assertEqual(plain["model_info"]["openai.context_length"], 4096)
        self.assertIn("insert", plain["capabilities"])
        self.assertIn(".Suffix", plain["template"])

    def test_cachedForTTL(self) -> None:
        """
        The listing is fetched once and reused until the TTL has passed on
        the reactor clock; then it is fetched again.
        """
        h = ProxyHarness()
        self.show(h, {"model": "a"}, [{"id": "a"}])
        self.assertEqual(len(h.backend.received), 2)
        h.clock.advance(DEFAULT_TTL - 1)
        self.assertEqual(self.show(h, {"model": "a"}).code, 200)
        self.assertEqual(len(h.backend.received), 2)
        h.clock.advance(2)
        d = h.post("/api/show", {"model": "a"})
        self.assertEqual(len(h.backend.received), 3)
        serveCatalog(h, [{"id": "b"}])
        self.assertEqual(self.successResultOf(d).code, 404)

    def test_concurrentCallsShareOneFetch(self) -> None:
        """
        Copilot asks for every model at once: concurrent calls wait for one
        listing.
        """
        h = ProxyHarness()
        first = h.post("/api/show", {"model": "a"})
        second = h.post("/api/show", {"model": "b"})
        self.assertEqual(len(h.backend.received), 1)
        serveCatalog(h, [{"id": "a"}, {"id": "b"}])
        self.assertEqual(self.successResultOf(first).code, 200)
        self.assertEqual(self.successResultOf(second).code, 200)
        self.assertEqual(len(h.backend.received), 2)

    def test_backendFailureNotCached(self) -> None:
        """
        A failed listing is the backend's error for the client, and the next
        call tries again.
        """
        h = ProxyHarness()
        d = h.post("/api/show", {"model": "a"})
        h.backend.received[-1].respond(500, {"error": {"message": "boom"}})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 500)
        self.assertEqual(body(h, response), {"error": "boom"})
        self.assertEqual(self.show(h, {"model": "a"}, [{"id": "a"}]).code, 200)


class PsTests(SynchronousTestCase):
    """
    C{GET /api/ps}.
    """

    def test_servedModelsAsLoaded(self) -> None:
        """
        Every served model is listed with its tagged name, a digest, details,
        context length, integer sizes and an C{expires_at} that Python's
        C{datetime.fromisoformat} parses (Open WebUI does) and that lies in
        the future.
        """
        h = ProxyHarness()
        d = h.get("/api/ps")
        serveCatalog(h, [{"id": "gpt-4o"}, {"id": "qwen3:8b", "max_model_len": 40960}])
        ps = body(h, self.successResultOf(d))
        self.assertEqual([m["model"] for m in ps["models"]], ["gpt-4o:proxy", "qwen3:8b"])
        self.assertEqual([m["name"] for m in ps["models"]], ["gpt-4o:proxy", "qwen3:8b"])
        self.assertEqual([m["context_length"] for m in ps["models"]], [32768, 40960])
        now = datetime.datetime.fromtimestamp(h.now.value / 1e9, datetime.timezone.utc)
        for model in ps["models"]:
            expires = datetime.datetime.fromisoformat(model["expires_at"])
            self.assertGreater(expires, now)
            self.assertRegex(model["digest"], "^[0-9a-f]{64}$")
            self.assertEqual((model["size"], model["size_vram"]), (0, 0))
            self.assertEqual(model["details"]["families"], [model["details"]["family"]])

    def test_empty(self) -> None:
        """
        No models is C{{"models": []}}.
        """
        h = ProxyHarness()
        d = h.get("/api/ps")
        serveCatalog(h, [])
        self.assertEqual(body(h, self.successResultOf(d)), {"models": []})


class HeadTests(SynchronousTestCase):
    """
    The routes Ollama registers for C{HEAD} as well as C{GET}.
    """

    def test_version(self) -> None:
        """
        C{GET /api/version} is the configured dotted version; C{HEAD} is 200
        with no body and no backend call.
        """
        h = ProxyHarness(version="0.9.1")
        self.assertEqual(body(h, self.successResultOf(h.get("/api/version"))), {"version": "0.9.1"})
        response = self.successResultOf(h.request("HEAD", "/api/version"))
        self.assertEqual(response.code, 200)
        self.assertEqual(_content(h, response), b"")
        self.assertEqual(h.backend.received, [])

    def test_tags(self) -> None:
        """
        C{HEAD /api/tags} is 200 with no body.
        """
        h = ProxyHarness()
        d = h.request("HEAD", "/api/tags")
        h.backend.received[0].respond(200, {"data": [{"id": "a"}]})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(_content(h, response), b"")

    def test_root(self) -> None:
        """
        C{HEAD /} (the Go CLI's and OllamaKit's heartbeat) is 200.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.request("HEAD", "/"))
        self.assertEqual(response.code, 200)
        self.assertEqual(_content(h, response), b"")


COMPLETION_EVENTS = [
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "def ", "finish_reason": None}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "f():", "finish_reason": None}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [{"index": 0, "text": "", "finish_reason": "length"}]},
    {"id": "cmpl-1", "object": "text_completion", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 2}},
]


class GenerateTests(SynchronousTestCase):
    """
    C{POST /api/generate}.
    """

    def test_load(self) -> None:
        """
        An empty prompt loads the model: C{done_reason: "load"}, no backend
        call.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.post("/api/generate", {"model": "m", "prompt": ""}))
        result = body(h, response)
        self.assertEqual(
            (result["model"], result["response"], result["done"], result["done_reason"]),
            ("m", "", True, "load"),
        )
        self.assertEqual(h.backend.received, [])

    def test_unload(self) -> None:
        """
        An empty prompt with C{keep_alive: 0} (Open WebUI's unload) answers
        C{done_reason: "unload"}, no backend call.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.post("/api/generate", {"model": "m", "prompt": "", "keep_alive": 0})
        )
        self.assertEqual(body(h, response)["done_reason"], "unload")
        self.assertEqual(h.backend.received, [])

    def test_streamingThroughChat(self) -> None:
        """
        C{system} and C{prompt} become a one-turn chat; the NDJSON lines
        carry C{response}, not C{message}, and end with C{done: true}.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m:latest", "prompt": "hi", "system": "be brief"})
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/chat/completions")
        self.assertEqual(
            upstream.json()["messages"],
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        )
        self.assertEqual(upstream.json()["model"], "m")
        upstream.startSSE()
        upstream.event(delta("Hel"))
        upstream.event(delta("lo", finish_reason="stop"))
        upstream.done()
        h.pump()
        response = self.successResultOf(d)
        reader = BodyReader(h, response)
        h.pump()
        lines = reader.lines()
        self.assertEqual([l["response"] for l in lines], ["Hel", "lo", ""])
        self.assertTrue(all("message" not in l for l in lines))
        self.assertEqual([l["done"] for l in lines], [False, False, True])
        self.assertEqual(lines[-1]["model"], "m:latest")
        self.assertEqual(lines[-1]["done_reason"], "stop")

    def test_nonStreamingThroughChat(self) -> None:
        """
        With C{stream: false}, one object with the whole C{response}.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "hi", "stream": False})
        h.backend.received[0].respond(
            200,
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                          "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
        )
        h.pump()
        result = body(h, self.successResultOf(d))
        self.assertEqual((result["response"], result["done"], result["eval_count"]), ("Hello", True, 1))

    def test_rawStreamsThroughCompletions(self) -> None:
        """
        C{raw: true} sends the prompt untemplated to C{/v1/completions}; the
        text deltas stream back as generate lines with the finish reason and
        usage on the final one.
        """
        h = ProxyHarness()
        d = h.post(
            "/api/generate",
            {"model": "coder:proxy", "prompt": "<fim>", "raw": True, "options": {"num_predict": 2}},
        )
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/completions")
        self.assertEqual(
            upstream.json(),
            {"model": "coder", "prompt": "<fim>", "stream": True,
             "stream_options": {"include_usage": True}, "max_tokens": 2},
        )
        upstream.startSSE()
        for event in COMPLETION_EVENTS:
            upstream.event(event)
        upstream.done()
        h.pump()
        reader = BodyReader(h, self.successResultOf(d))
        h.pump()
        lines = reader.lines()
        self.assertEqual([l["response"] for l in lines], ["def ", "f():", ""])
        final = lines[-1]
        self.assertEqual((final["done"], final["done_reason"]), (True, "length"))
        self.assertEqual((final["prompt_eval_count"], final["eval_count"]), (4, 2))
        self.assertEqual(final["model"], "coder:proxy")

    def test_suffixNonStreaming(self) -> None:
        """
        A C{suffix} (fill-in-the-middle) goes to C{/v1/completions} with the
        suffix; the non-streamed answer is one generate object.
        """
        h = ProxyHarness()
        d = h.post(
            "/api/generate",
            {"model": "coder", "prompt": "def f(", "suffix": "\n    return x", "stream": False},
        )
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/completions")
        self.assertEqual(upstream.json()["suffix"], "\n    return x")
        self.assertIs(upstream.json()["stream"], False)
        upstream.respond(200, {"choices": [{"index": 0, "text": "x):", "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
        h.pump()
        result = body(h, self.successResultOf(d))
        self.assertEqual(result["response"], "x):")
        self.assertEqual((result["done"], result["done_reason"], result["eval_count"]), (True, "stop", 3))
        self.assertNotIn("message", result)

    def test_rawFallsBackToChat(self) -> None:
        """
        A backend without C{/v1/completions} (404) gets the raw prompt as a
        one-turn chat instead.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "hi", "raw": True, "stream": False})
        h.backend.received[0].respond(404, {"detail": "Not Found"})
        h.pump()
        second = h.backend.received[1]
        self.assertEqual(second.path, "/v1/chat/completions")
        self.assertEqual(second.json()["messages"], [{"role": "user", "content": "hi"}])
        second.respond(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "yo"},
                                          "finish_reason": "stop"}]})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["response"], "yo")

    def test_suffixWithoutCompletionsIsAnError(self) -> None:
        """
        Fill-in-the-middle cannot become a chat: the backend's 404 reaches the
        client.
        """
        h = ProxyHarness()
        d = h.post("/api/generate", {"model": "m", "prompt": "a", "suffix": "b", "stream": False})
        h.backend.received[0].respond(404, {"detail": "Not Found"})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.assertEqual(body(h, response), {"error": "Not Found"})
        self.assertEqual(len(h.backend.received), 1)

    def test_rawWithSystemRejected(self) -> None:
        """
        Ollama's 400 for C{raw} combined with C{system}.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.post("/api/generate", {"model": "m", "prompt": "a", "raw": True, "system": "s"})
        )
        self.assertEqual(response.code, 400)
        self.assertEqual(
            body(h, response), {"error": "raw mode does not support template, system, or context"}
        )


def embeddingData(vectors: list[list[float]], order: list[int] | None = None) -> Any:
    order = order if order is not None else list(range(len(vectors)))
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in order],
        "usage": {"prompt_tokens": 6, "total_tokens": 6},
    }


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


class ManagementTests(SynchronousTestCase):
    """
    C{/api/pull}, C{/api/delete}, C{/api/copy}, C{/api/create},
    C{/api/push}, C{/api/blobs}: answered for served models, forwarded to
    the fallback for others, JSON errors otherwise.
    """

    def test_pullServedStreams(self) -> None:
        """
        Pulling a served model (C{name} key, as ollama-js sends) succeeds at
        once as an NDJSON progress stream ending with C{success}.
        """
        h = ProxyHarness()
        d = h.post("/api/pull", {"name": "gpt-4o:latest"})
        serveCatalog(h, [{"id": "gpt-4o"}])
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"])
        lines = [codec.loads(l) for l in _content(h, response).splitlines()]
        self.assertEqual(lines[-1], {"status": "success"})
        self.assertEqual(h.ollama.received, [])

    def test_pullServedNonStreaming(self) -> None:
        """
        C{stream: false} gets only the last progress object.
        """
        h = ProxyHarness()
        d = h.post("/api/pull", {"model": "gpt-4o", "stream": False})
        serveCatalog(h, [{"id": "gpt-4o"}])
        self.assertEqual(body(h, self.successResultOf(d)), {"status": "success"})

    def test_pullUnknownGoesToFallback(self) -> None:
        """
        A model the backend does not serve is pulled by the fallback Ollama,
        whose progress stream is relayed.
        """
        h = ProxyHarness()
        d = h.post("/api/pull", {"model": "llama3.2"})
        serveCatalog(h, [{"id": "gpt-4o"}])
        [forwarded] = h.ollama.received
        self.assertEqual((forwarded.method, forwarded.path), ("POST", "/api/pull"))
        self.assertEqual(forwarded.json(), {"model": "llama3.2"})
        forwarded.respond(200, b'{"status":"success"}\n', b"application/x-ndjson")
        h.pump()
        self.assertEqual(_content(h, self.successResultOf(d)), b'{"status":"success"}\n')

    def test_pullUnknownWithoutFallback(self) -> None:
        """
        Without a fallback, an unknown model is a 404 JSON error.
        """
        h = ProxyHarness(fallback=False)
        d = h.post("/api/pull", {"model": "llama3.2"})
        serveCatalog(h, [{"id": "gpt-4o"}])
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        self.assertEqual(body(h, response), {"error": "model 'llama3.2' not found"})

    def test_deleteServed(self) -> None:
        """
        A served model cannot be deleted: 400 with a reason, nothing
        forwarded.
        """
        h = ProxyHarness()
        d = h.request("DELETE", "/api/delete", data=codec.dumps({"name": "gpt-4o:proxy"}))
        serveCatalog(h, [{"id": "gpt-4o"}])
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        self.assertIn("cannot be deleted", body(h, response)["error"])
        self.assertEqual(h.ollama.received, [])

    def test_deleteUnknown(self) -> None:
        """
        Other models are deleted by the fallback; without one, 404.
        """
        h = ProxyHarness()
        d = h.request("DELETE", "/api/delete", data=codec.dumps({"model": "llama3.2"}))
        serveCatalog(h, [{"id": "gpt-4o"}])
        [forwarded] = h.ollama.received
        self.assertEqual((forwarded.method, forwarded.path), ("DELETE", "/api/delete"))
        forwarded.respond(200, b"")
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 200)
        h = ProxyHarness(fallback=False)
        d = h.request("DELETE", "/api/delete", data=codec.dumps({"model": "llama3.2"}))
        serveCatalog(h, [{"id": "gpt-4o"}])
        self.assertEqual(self.successResultOf(d).code, 404)

    def test_copy(self) -> None:
        """
        Copying a served model is a 400; an unknown one without a fallback a
        404; a missing destination a 400 before any backend call.
        """
        h = ProxyHarness(fallback=False)
        response = self.successResultOf(h.post("/api/copy", {"source": "a"}))
        self.assertEqual(body(h, response), {"error": "destination is required"})
        self.assertEqual(h.backend.received, [])
        d = h.post("/api/copy", {"source": "gpt-4o", "destination": "mine"})
        serveCatalog(h, [{"id": "gpt-4o"}])
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400)
        self.assertIn("cannot be copied", body(h, response)["error"])
        response = self.successResultOf(h.post("/api/copy", {"source": "x", "destination": "y"}))
        self.assertEqual(response.code, 404)

    def test_createPushBlobsWithoutFallback(self) -> None:
        """
        Creating, pushing and uploading blobs need a real Ollama: without a
        fallback they are 501 JSON errors that say so.
        """
        h = ProxyHarness(fallback=False)
        for method, path in (
            ("POST", "/api/create"),
            ("POST", "/api/push"),
            ("POST", "/api/blobs/sha256:" + "0" * 64),
            ("HEAD", "/api/blobs/sha256:" + "0" * 64),
        ):
            response = self.successResultOf(h.request(method, path, data=b'{"model": "m"}'))
            self.assertEqual(response.code, 501, path)
            if method != "HEAD":
                self.assertIn("--fallback", body(h, response)["error"])
        self.assertEqual(h.backend.received, [])

    def test_blobsForwarded(self) -> None:
        """
        With a fallback, a blob upload reaches it with its digest path and raw
        body.
        """
        h = ProxyHarness()
        path = "/api/blobs/sha256:" + "a" * 64
        d = h.request("POST", path, data=b"GGUF\x00\x01")
        [forwarded] = h.ollama.received
        self.assertEqual((forwarded.method, forwarded.path, forwarded.body), ("POST", path, b"GGUF\x00\x01"))
        forwarded.respond(201, b"")
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 201)


class OpenAIRouteTests(SynchronousTestCase):
    """
    The OpenAI routes on the proxy's base URL, with and without C{/v1}.
    """

    def test_chatCompletionsAtRoot(self) -> None:
        """
        C{/chat/completions} (some Copilot builds) goes to the backend's
        C{/v1/chat/completions} with C{:latest} stripped, streamed as it
        arrives.
        """
        h = ProxyHarness()
        d = h.post("/chat/completions", {"model": "gpt-4o:latest", "stream": True, "messages": []})
        [upstream] = h.backend.received
        self.assertEqual(upstream.path, "/v1/chat/completions")
        self.assertEqual(upstream.json()["model"], "gpt-4o")
        upstream.startSSE()
        upstream.write(b"data: {}\n\n")
        h.pump()
        reader = BodyReader(h, self.successResultOf(d))
        h.pump()
        self.assertEqual(reader.data, b"data: {}\n\n")
        self.assertNoResult(reader.done)
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)

    def test_modelsAtRoot(self) -> None:
        """
        C{GET /models} is the backend's C{/v1/models}.
        """
        h = ProxyHarness()
        d = h.get("/models")
        self.assertEqual(h.backend.received[0].path, "/v1/models")
        h.backend.received[0].respond(200, {"data": [{"id": "a"}]})
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d)), {"data": [{"id": "a"}]})

    def test_embeddings(self) -> None:
        """
        C{/v1/embeddings} is relayed with C{:proxy} stripped.
        """
        h = ProxyHarness()
        d = h.post("/v1/embeddings", {"model": "emb:proxy", "input": "x"})
        [upstream] = h.backend.received
        self.assertEqual((upstream.path, upstream.json()["model"]), ("/v1/embeddings", "emb"))
        upstream.respond(200, embeddingData([[1.0]]))
        h.pump()
        self.assertEqual(body(h, self.successResultOf(d))["data"][0]["embedding"], [1.0])


class NameTests(SynchronousTestCase):
    """
    The names rule: C{x}, C{x:latest} and C{x:proxy} all mean backend id
    C{x}; ids with C{/} or C{:} round-trip; C{/api/tags} lists each model
    once.
    """

    def test_aliasesOnChat(self) -> None:
        """
        All three spellings reach the backend as C{x}; the reply echoes the
        client's spelling.
        """
        h = ProxyHarness()
        for name in ("x", "x:latest", "x:proxy"):
            h.post("/api/chat", {"model": name, "messages": [{"role": "user", "content": "hi"}]})
        self.assertEqual([r.json()["model"] for r in h.backend.received], ["x", "x", "x"])

    def test_exactIdsRoundTrip(self) -> None:
        """
        Listed ids containing C{/} and C{:} are sent upstream exactly as
        listed, on chat, embed and passthrough.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        h.backend.received[0].respond(
            200, {"data": [{"id": "openrouter/qwen:free"}, {"id": "qwen3:latest"}]}
        )
        h.pump()
        names = [m["name"] for m in body(h, self.successResultOf(d))["models"]]
        self.assertEqual(names, ["openrouter/qwen:free", "qwen3:latest"])
        for name in names:
            h.post("/api/chat", {"model": name, "messages": [{"role": "user", "content": "hi"}]})
            h.post("/api/embed", {"model": name, "input": "x"})
            h.post("/v1/chat/completions", {"model": name, "messages": []})
        sent = [r.json()["model"] for r in h.backend.received[1:]]
        self.assertEqual(sent, ["openrouter/qwen:free"] * 3 + ["qwen3:latest"] * 3)

    def test_tagsListEachModelOnce(self) -> None:
        """
        Backend ids C{x} and C{x:proxy} would both be listed as C{x:proxy}:
        the name appears once.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        h.backend.received[0].respond(200, {"data": [{"id": "x"}, {"id": "x:proxy"}, {"id": "x"}]})
        h.pump()
        names = [m["name"] for m in body(h, self.successResultOf(d))["models"]]
        self.assertEqual(names, ["x:proxy"])


ALLOWED_ORIGINS = [
    "http://localhost",
    "http://localhost:3000",
    "https://localhost:8443",
    "http://127.0.0.1:8080",
    "https://127.0.0.1",
    "http://0.0.0.0:5173",
    "app://obsidian.md",
    "file://",
    "tauri://localhost",
    "vscode-webview://1abc",
    "vscode-file://vscode-app",
]
DISALLOWED_ORIGINS = [
    "http://evil.example",
    "http://localhost.evil.example",
    "https://127.0.0.1.nip.io",
    "chrome-extension://abcdef",
]


class CORSTests(SynchronousTestCase):
    """
    Browser access, allowed like Ollama allows it.
    """

    def test_allowedOrigins(self) -> None:
        """
        Ollama's built-in origins get C{Access-Control-Allow-Origin} echoing
        the origin, and C{Vary: Origin}.
        """
        h = ProxyHarness()
        for origin in ALLOWED_ORIGINS:
            response = self.successResultOf(h.get("/api/version", headers={"Origin": origin}))
            self.assertEqual(
                response.headers.getRawHeaders(b"access-control-allow-origin"),
                [origin.encode()],
                origin,
            )
            self.assertIn(b"Origin", response.headers.getRawHeaders(b"vary"))

    def test_disallowedOrigins(self) -> None:
        """
        Requests from other origins are refused with a 403 JSON error and no
        CORS headers, as Ollama does.
        """
        h = ProxyHarness()
        for origin in DISALLOWED_ORIGINS:
            response = self.successResultOf(h.get("/api/version", headers={"Origin": origin}))
            self.assertEqual(response.code, 403, origin)
            self.assertIn("error", codec.loads(self.successResultOf(h.client.content(response))))
            self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"), origin)

    def test_disallowedSimplePostNeverReachesBackend(self) -> None:
        """
        A page on another origin cannot spend the backend's tokens with a
        preflight-free C{text/plain} POST: it is refused before any upstream
        call.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.post(
                "/api/chat",
                {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Origin": "http://evil.example", "Content-Type": "text/plain"},
            )
        )
        self.assertEqual(response.code, 403)
        self.assertEqual(h.backend.received, [])

    def test_preflight(self) -> None:
        """
        C{OPTIONS} from an allowed origin is a 204 with the allowed methods
        and headers (including what the OpenAI SDK sends), and no backend
        call.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.request(
                "OPTIONS",
                "/v1/chat/completions",
                headers={
                    "Origin": "app://obsidian.md",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type",
                },
            )
        )
        self.assertEqual(response.code, 204)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"app://obsidian.md"]
        )
        methods = response.headers.getRawHeaders(b"access-control-allow-methods")[0]
        self.assertIn(b"POST", methods)
        allowed = response.headers.getRawHeaders(b"access-control-allow-headers")[0].lower()
        for header in (b"authorization", b"content-type", b"x-stainless-os", b"openai-beta"):
            self.assertIn(header, allowed)
        self.assertEqual(h.backend.received, [])
        self.assertEqual(h.ollama.received, [])

    def test_preflightDisallowed(self) -> None:
        """
        A preflight from another origin is refused with a 403 and no CORS
        headers.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.request("OPTIONS", "/api/chat", headers={"Origin": "http://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
        )
        self.assertEqual(response.code, 403)
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))

    def test_extraOrigins(self) -> None:
        """
        Configured globs (C{--cors-origin}) are allowed too.
        """
        h = ProxyHarness(corsOrigins=("chrome-extension://*", "https://*.example.org"))
        for origin in ("chrome-extension://abcdef", "https://chat.example.org"):
            response = self.successResultOf(h.get("/", headers={"Origin": origin}))
            self.assertEqual(
                response.headers.getRawHeaders(b"access-control-allow-origin"), [origin.encode()]
            )
        response = self.successResultOf(h.get("/", headers={"Origin": "https://example.com"}))
        self.assertIsNone(response.headers.getRawHeaders(b"access-control-allow-origin"))

    def test_relayedResponsesKeepProxyPolicy(self) -> None:
        """
        A relayed answer (OpenAI passthrough, fallback Ollama) cannot widen
        the proxy's CORS policy: an upstream C{Access-Control-Allow-Origin:
        *} is not passed on, an allowed origin gets its own origin, and
        C{Vary: Origin} survives the upstream's C{Vary}.  (A disallowed
        origin never reaches the upstream: see
        L{test_disallowedSimplePostNeverReachesBackend}.)
        """
        for path, side in (("/v1/models", "backend"), ("/api/other", "ollama")):
            for origin, expected in (
                ("http://localhost:3000", [b"http://localhost:3000"]),
            ):
                with self.subTest(path=path, origin=origin):
                    h = ProxyHarness()
                    d = h.get(path, headers={"Origin": origin})
                    [upstream] = getattr(h, side).received
                    upstream.request.setHeader(b"Access-Control-Allow-Origin", b"*")
                    upstream.request.setHeader(b"Access-Control-Allow-Credentials", b"true")
                    upstream.request.setHeader(b"Vary", b"Accept-Encoding")
                    upstream.respond(200, {"data": []})
                    h.pump()
                    response = self.successResultOf(d)
                    self.assertEqual(response.code, 200)
                    headers = response.headers
                    self.assertEqual(
                        headers.getRawHeaders(b"access-control-allow-origin"), expected
                    )
                    self.assertIsNone(headers.getRawHeaders(b"access-control-allow-credentials"))
                    vary = b", ".join(headers.getRawHeaders(b"vary") or [])
                    self.assertIn(b"Origin", vary)
                    self.assertIn(b"Accept-Encoding", vary)

    def test_streamingResponseCarriesHeaders(self) -> None:
        """
        The CORS headers are on streamed responses too (set before the first
        byte).
        """
        h = ProxyHarness()
        d = h.post("/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Origin": "http://localhost:3000"})
        upstream = h.backend.received[0]
        upstream.startSSE()
        upstream.event(delta("x"))
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"http://localhost:3000"]
        )
