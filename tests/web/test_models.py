"""
The model routes through the proxy: C{/api/tags}, C{/api/show},
C{/api/ps}, C{HEAD}, the management routes, and name resolution.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import (
    ProxyHarness,
)
from ollama_proxy.upstream.cache import DEFAULT_TTL
from tests.web.helpers import (
    CONTINUE_PARAMETER,
    LITELLM_INFO,
    _content,
    body,
    serveCatalog,
)


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
        serveCatalog(h, [{"id": "a"}])
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

    def test_malformedNeverForwarded(self) -> None:
        """
        Bodies Ollama would refuse (a field of the wrong type, an invalid
        name) get a 400 naming the problem and never reach the fallback.
        """
        cases = [
            ("POST", "/api/pull", {"model": "llama3.2", "insecure": "yes"}, "insecure must be a boolean"),
            ("POST", "/api/pull", {"model": "llama3.2", "stream": 1}, "stream must be a boolean"),
            ("POST", "/api/pull", {"model": "bad name!"}, "invalid model name"),
            ("POST", "/api/push", {"model": "u/m", "username": 5}, "username must be a string"),
            ("POST", "/api/push", {}, "model is required"),
            ("POST", "/api/create", {"model": "m", "files": ["a"]}, "files must be an object of strings"),
            ("POST", "/api/create", {"model": "-m"}, "invalid model name"),
            ("DELETE", "/api/delete", {"model": "a/b/c/d"}, 'name "a/b/c/d" is invalid'),
            ("POST", "/api/copy", {"source": "llama3.2", "destination": "x y"},
             'destination "x y" is invalid'),
            ("POST", "/api/copy", {"source": "llama3.2", "destination": 3},
             "destination must be a string"),
        ]
        h = ProxyHarness()
        for method, path, payload, message in cases:
            d = h.request(method, path, data=codec.dumps(payload))
            pending = [r for r in h.backend.received if not r.request.finished]
            if pending:
                serveCatalog(h, [{"id": "gpt-4o"}])
            response = self.successResultOf(d)
            self.assertEqual(response.code, 400, (path, payload))
            self.assertEqual(body(h, response)["error"], message)
        self.assertEqual(h.ollama.received, [])

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
        serveCatalog(h, [{"id": "openrouter/qwen:free"}, {"id": "qwen3:latest"}])
        names = [m["name"] for m in body(h, self.successResultOf(d))["models"]]
        self.assertEqual(names, ["openrouter/qwen:free", "qwen3:latest"])
        for name in names:
            h.post("/api/chat", {"model": name, "messages": [{"role": "user", "content": "hi"}]})
            h.post("/api/embed", {"model": name, "input": "x"})
            h.post("/v1/chat/completions", {"model": name, "messages": []})
        sent = [r.json()["model"] for r in h.backend.received[2:]]
        self.assertEqual(sent, ["openrouter/qwen:free"] * 3 + ["qwen3:latest"] * 3)

    def test_tagsListEachModelOnce(self) -> None:
        """
        Backend ids C{x} and C{x:proxy} would both be listed as C{x:proxy}:
        the name appears once.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        serveCatalog(h, [{"id": "x"}, {"id": "x:proxy"}, {"id": "x"}])
        names = [m["name"] for m in body(h, self.successResultOf(d))["models"]]
        self.assertEqual(names, ["x:proxy"])


class TagsTests(SynchronousTestCase):
    """
    C{GET /api/tags}.
    """

    def test_listShape(self) -> None:
        """
        Backend ids become Ollama list entries; ids without a tag get
        C{:proxy}, tagged ids stay as they are.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        [upstream] = h.backend.received
        self.assertEqual((upstream.method, upstream.path), ("GET", "/v1/models"))
        serveCatalog(h, [{"id": "gpt-4o"}, {"id": "qwen3:8b", "created": 1700000000}])
        body = codec.loads(self.successResultOf(h.client.content(self.successResultOf(d))))
        names = [m["name"] for m in body["models"]]
        self.assertEqual(names, ["gpt-4o:proxy", "qwen3:8b"])
        first = body["models"][0]
        self.assertEqual(first["model"], "gpt-4o:proxy")
        self.assertRegex(first["digest"], "^[0-9a-f]{64}$")
        self.assertIsInstance(first["size"], int)
        self.assertRegex(first["modified_at"], r"\.\d{9}Z$")
        self.assertEqual(body["models"][1]["modified_at"], "2023-11-14T22:13:20.000000000Z")
        for key in ("parent_model", "format", "family", "parameter_size", "quantization_level"):
            self.assertIsInstance(first["details"][key], str)
        self.assertEqual(first["details"]["families"], [first["details"]["family"]])



class ContentLengthTests(SynchronousTestCase):
    """
    A whole JSON answer says its length, as Ollama's does, instead of
    arriving chunked.
    """

    def test_jsonAnswerHasContentLength(self) -> None:
        """
        C{/api/version} (ready at once) and C{/api/tags} (after the backend
        answered) carry a C{Content-Length} equal to their body's length.
        """
        h = ProxyHarness()
        version = self.successResultOf(h.get("/api/version"))
        tags = h.get("/api/tags")
        serveCatalog(h, [{"id": "a"}])
        for response in (version, self.successResultOf(tags)):
            content = self.successResultOf(h.client.content(response))
            # Twisted's client keeps the length in IResponse.length (it is
            # UNKNOWN_LENGTH for a chunked body) rather than in the headers.
            self.assertEqual(response.length, len(content))
