"""
Model discovery through the proxy, as agent IDEs do it at start-up:
C{/api/tags} with capabilities and context lengths, C{/api/show} and
C{/api/ps} with the same numbers, C{/api/status},
C{/api/experimental/model-recommendations} and C{/api/version} (the Codex
gate), for each source of metadata: the backend, the configuration, the
defaults.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.service.config import BackendConfig, ModelOverride
from ollama_proxy.testing.harness import MultiBackendHarness, ProxyHarness
from ollama_proxy.web.context import DEFAULT_VERSION
from tests.web.helpers import LITELLM_INFO, body, serveCatalog

HOST = "http://backend.test:4000"
"""The C{remote_host} of the harness's backend (its URL's origin)."""


class SourceTests(SynchronousTestCase):
    """
    Every route reports the same capabilities, context length, embedding
    length and token limits, whichever source they come from.
    """

    def warm(self, data: list[Any], info: Any = None, **kwargs: Any) -> ProxyHarness:
        """
        A harness whose catalog was fetched by a cold C{/api/tags}.
        """
        h = ProxyHarness(**kwargs)
        d = h.get("/api/tags")
        serveCatalog(h, data, info)
        self.assertEqual(self.successResultOf(d).code, 200)
        return h

    def everyRoute(self, h: ProxyHarness, name: str) -> dict[str, Any]:
        """
        Read one model from C{/api/tags}, C{/api/show} and C{/api/ps} (the
        catalog must be warm).

        @return: C{{"tags": entry, "show": body, "ps": entry}}.
        """
        tags = body(h, self.successResultOf(h.get("/api/tags")))
        ps = body(h, self.successResultOf(h.get("/api/ps")))
        show = body(h, self.successResultOf(h.post("/api/show", {"model": name})))
        [tag] = [m for m in tags["models"] if m["name"] == name]
        [loaded] = [m for m in ps["models"] if m["name"] == name]
        return {"tags": tag, "show": show, "ps": loaded}

    def assertSame(self, routes: dict[str, Any], context: int, capabilities: list[str]) -> None:
        """
        The numbers every client reads agree: tags and show
        C{capabilities}, C{details.context_length} on all three routes,
        ps C{context_length}, show's C{model_info}, C{parameters} and
        modelfile C{num_ctx}; digests of tags and ps are equal.
        """
        tag, show, ps = routes["tags"], routes["show"], routes["ps"]
        self.assertEqual(tag["capabilities"], capabilities)
        self.assertEqual(show["capabilities"], capabilities)
        for where in (tag, show, ps):
            self.assertEqual(where["details"]["context_length"], context)
        self.assertEqual(ps["context_length"], context)
        arch = show["model_info"]["general.architecture"]
        self.assertEqual(show["model_info"][f"{arch}.context_length"], context)
        self.assertRegex(show["parameters"], rf"(?m)^num_ctx\s+{context}$")
        self.assertIn(f"PARAMETER num_ctx {context}\n", show["modelfile"])
        self.assertEqual(tag["digest"], ps["digest"])
        self.assertRegex(tag["digest"], "^[0-9a-f]{64}$")

    def test_backendLiteLLM(self) -> None:
        """
        LiteLLM's C{/v1/model/info}: context from C{max_input_tokens},
        capabilities from its flags, C{max_input_tokens} and (when at most
        half the window) C{max_output_tokens} on tags and show, the
        embedding model's C{embedding_length} in C{details} and
        C{model_info}.
        """
        info: Any = copy.deepcopy(LITELLM_INFO)
        info["data"][0]["model_info"]["max_output_tokens"] = 16384
        # A later deployment of the same model does not override the first.
        info["data"].append({"model_name": "gpt-4o", "model_info": {"max_output_tokens": 1}})
        data = [{"id": "gpt-4o"}, {"id": "o3"}, {"id": "text-embedding-3-small"}]
        h = self.warm(data, info)
        gpt = self.everyRoute(h, "gpt-4o:proxy")
        self.assertSame(gpt, 128000, ["completion", "tools", "vision"])
        for where in (gpt["tags"], gpt["show"]):
            self.assertEqual(where["max_input_tokens"], 128000)
            self.assertEqual(where["max_output_tokens"], 16384)
        o3 = self.everyRoute(h, "o3:proxy")
        self.assertSame(o3, 200000, ["completion", "thinking"])
        self.assertNotIn("max_output_tokens", o3["tags"])
        embed = self.everyRoute(h, "text-embedding-3-small:proxy")
        self.assertSame(embed, 8191, ["embedding"])
        for where in (embed["tags"], embed["show"], embed["ps"]):
            self.assertEqual(where["details"]["embedding_length"], 1536)
        self.assertEqual(embed["show"]["model_info"]["openai.embedding_length"], 1536)
        self.assertNotIn("embedding_length", gpt["tags"]["details"])

    def test_backendModelEntries(self) -> None:
        """
        vLLM's C{max_model_len}; OpenRouter's C{context_length},
        C{supported_parameters}, modalities and
        C{top_provider.max_completion_tokens}; a C{max_completion_tokens}
        as large as the window is not reported (the VS Code extension would
        leave no room for the prompt).
        """
        data = [
            {"id": "Qwen/Qwen3-8B", "max_model_len": 40960},
            {"id": "vendor/model", "context_length": 1000000,
             "supported_parameters": ["tools", "reasoning"],
             "architecture": {"input_modalities": ["text", "image"]},
             "top_provider": {"max_completion_tokens": 65536}},
            {"id": "vendor/whole", "context_length": 8192,
             "top_provider": {"max_completion_tokens": 8192}},
        ]
        h = self.warm(data)
        vllm = self.everyRoute(h, "Qwen/Qwen3-8B:proxy")
        self.assertSame(vllm, 40960, ["completion", "tools"])
        self.assertNotIn("max_output_tokens", vllm["show"])
        router = self.everyRoute(h, "vendor/model:proxy")
        self.assertSame(router, 1000000, ["completion", "tools", "vision", "thinking"])
        self.assertEqual(router["tags"]["max_output_tokens"], 65536)
        self.assertEqual(router["show"]["max_output_tokens"], 65536)
        whole = self.everyRoute(h, "vendor/whole:proxy")
        self.assertNotIn("max_output_tokens", whole["tags"])
        self.assertNotIn("max_output_tokens", whole["show"])

    def test_configOverride(self) -> None:
        """
        The C{--model-info} file: a per-model entry beats the backend, C{"*"}
        sets what the backend does not say; C{max_output_tokens} can be
        set there.
        """
        h = self.warm(
            [{"id": "gpt-4o"}, {"id": "plain"}], LITELLM_INFO,
            overrides={
                "gpt-4o": {"context_length": 64000, "embedding_length": 3072,
                           "max_output_tokens": 4000, "tools": False, "vision": True},
                "*": {"context_length": 262144, "insert": True},
            },
        )
        gpt = self.everyRoute(h, "gpt-4o:proxy")
        # "*" adds insert below the model's own entry.
        self.assertSame(gpt, 64000, ["completion", "insert", "vision"])
        self.assertEqual(gpt["tags"]["max_output_tokens"], 4000)
        self.assertEqual(gpt["tags"]["details"]["embedding_length"], 3072)
        # LiteLLM's 128000 no longer fits the overridden window.
        self.assertNotIn("max_input_tokens", gpt["tags"])
        plain = self.everyRoute(h, "plain:proxy")
        self.assertSame(plain, 262144, ["completion", "tools", "insert"])

    def test_configFileOverride(self) -> None:
        """
        The configuration file's per-model C{context_length} and
        C{capabilities} reach tags, show and ps alike, aliases included.
        """
        h = MultiBackendHarness([
            BackendConfig(name="a", url="http://a.test:4000/v1", aliases={"fast": "small"},
                          overrides={"small": ModelOverride(contextLength=4096, maxOutputTokens=1024,
                                                            capabilities=("completion", "vision"))}),
        ])
        d = h.get("/api/tags")
        h.answerModels("a", "small")
        [info] = [r for r in h.backend.received if r.path.endswith("/model/info")]
        info.respond(404, {"error": "not found"})
        h.pump()
        tags = body(h, self.successResultOf(d))["models"]
        ps = body(h, self.successResultOf(h.get("/api/ps")))["models"]
        for name in ("small:proxy", "fast:proxy"):
            [tag] = [m for m in tags if m["name"] == name]
            [loaded] = [m for m in ps if m["name"] == name]
            show = body(h, self.successResultOf(h.post("/api/show", {"model": name})))
            self.assertSame({"tags": tag, "show": show, "ps": loaded}, 4096, ["completion", "vision"])
            self.assertEqual((tag["max_output_tokens"], show["max_output_tokens"]), (1024, 1024))
            # The backend's origin: no path.
            self.assertEqual(tag["remote_host"], "http://a.test:4000")
        self.assertNotEqual(tags[0]["digest"], tags[1]["digest"])

    def test_defaults(self) -> None:
        """
        A backend that says nothing (OpenAI) gets the defaults everywhere:
        32768 tokens, C{completion} and C{tools}; an id with C{embed} is an
        embedding model; no token limits are made up.
        """
        h = self.warm([{"id": "gpt-4o"}, {"id": "nomic-embed-text"}])
        gpt = self.everyRoute(h, "gpt-4o:proxy")
        self.assertSame(gpt, 32768, ["completion", "tools"])
        for key in ("max_input_tokens", "max_output_tokens"):
            self.assertNotIn(key, gpt["tags"])
            self.assertNotIn(key, gpt["show"])
        self.assertSame(self.everyRoute(h, "nomic-embed-text:proxy"), 32768, ["embedding"])

    def test_metadataMissing(self) -> None:
        """
        A cold C{/api/tags} whose metadata request fails still lists every
        model, with what the list says and the defaults.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        h.backend.received[0].respond(200, {"data": [{"id": "m", "max_model_len": 8192}]})
        h.pump()
        h.backend.received[1].respond(500, {"error": {"message": "boom"}})
        h.pump()
        [entry] = body(h, self.successResultOf(d))["models"]
        self.assertEqual(entry["details"]["context_length"], 8192)
        self.assertEqual(entry["capabilities"], ["completion", "tools"])


class ShapeTests(SynchronousTestCase):
    """
    The entries' shape: Ollama's field order, C{remote_host}, digests.
    """

    def test_tagsAndShowFieldOrder(self) -> None:
        """
        Tags entries and show bodies have Ollama's field order
        (C{ListModelResponse}, C{ShowResponse}), with C{remote_host} set to
        the backend's origin so that the VS Code extension trusts the tag
        and skips its local-GPU checks.
        """
        h = ProxyHarness()
        d = h.get("/api/tags")
        serveCatalog(h, [{"id": "m", "created": 1700000000}])
        [entry] = body(h, self.successResultOf(d))["models"]
        self.assertEqual(
            list(entry),
            ["name", "model", "remote_host", "modified_at", "size", "digest", "details",
             "capabilities"],
        )
        self.assertEqual(entry["remote_host"], HOST)
        self.assertEqual(
            list(entry["details"]),
            ["parent_model", "format", "family", "families", "parameter_size",
             "quantization_level", "context_length"],
        )
        show = body(h, self.successResultOf(h.post("/api/show", {"model": "m"})))
        self.assertEqual(
            list(show),
            ["license", "modelfile", "parameters", "template", "details", "remote_host",
             "model_info", "capabilities", "modified_at"],
        )
        self.assertEqual(show["remote_host"], HOST)
        ps = body(h, self.successResultOf(h.get("/api/ps")))["models"][0]
        self.assertNotIn("remote_host", ps)

    def test_remoteHostOff(self) -> None:
        """
        C{--remote-host ''} lists the models without C{remote_host} (for
        tools that hide remote models); a fixed value is used as given.
        """
        for setting, expected in (("", None), ("https://gateway.example", "https://gateway.example")):
            h = ProxyHarness()
            h.ctx.models.remoteHost = setting
            d = h.get("/api/tags")
            serveCatalog(h, [{"id": "m"}])
            [entry] = body(h, self.successResultOf(d))["models"]
            self.assertEqual(entry.get("remote_host"), expected)
            show = body(h, self.successResultOf(h.post("/api/show", {"model": "m"})))
            self.assertEqual(show.get("remote_host"), expected)

    def test_digestsStableDistinctAndFollowMetadata(self) -> None:
        """
        Digests are distinct per model, the same on every call and after a
        refetch that changes nothing (even C{created}), and change when the
        model's metadata changes.
        """
        h = ProxyHarness(ttl=60)

        def digests(data: list[Any] | None) -> dict[str, str]:
            d = h.get("/api/tags")
            if data is not None:
                serveCatalog(h, data)
            return {m["name"]: m["digest"] for m in body(h, self.successResultOf(d))["models"]}

        first = digests([{"id": "a", "created": 1}, {"id": "b", "created": 1}])
        self.assertNotEqual(first["a:proxy"], first["b:proxy"])
        self.assertEqual(digests(None), first)
        h.clock.advance(61)
        self.assertEqual(digests([{"id": "a", "created": 2}, {"id": "b", "created": 2}]), first)
        h.clock.advance(61)
        changed = digests([{"id": "a", "created": 2, "max_model_len": 4096},
                           {"id": "b", "created": 2}])
        self.assertNotEqual(changed["a:proxy"], first["a:proxy"])
        self.assertEqual(changed["b:proxy"], first["b:proxy"])


    def test_modifiedAtFollowsDigest(self) -> None:
        """
        Without a backend C{created}, C{modified_at} is when the proxy first
        saw the model as it is: the same on tags, show and ps, kept across
        refetches that change nothing, moved when the metadata (and so the
        digest) changes.
        """
        h = ProxyHarness(ttl=60)

        def stamps(data: list[Any] | None) -> tuple[str, str, str]:
            d = h.get("/api/tags")
            if data is not None:
                serveCatalog(h, data)
            [tag] = body(h, self.successResultOf(d))["models"]
            show = body(h, self.successResultOf(h.post("/api/show", {"model": "a"})))
            [loaded] = body(h, self.successResultOf(h.get("/api/ps")))["models"]
            self.assertEqual(tag["modified_at"], show["modified_at"])
            return tag["modified_at"], tag["digest"], loaded["digest"]

        first = stamps([{"id": "a"}])
        self.assertEqual(first[1], first[2])
        self.assertEqual(stamps(None), first)
        h.clock.advance(61)
        self.assertEqual(stamps([{"id": "a"}]), first)
        h.clock.advance(61)
        changed = stamps([{"id": "a", "max_model_len": 4096}])
        self.assertGreater(changed[0], first[0])
        self.assertNotEqual(changed[1], first[1])


class StartupRouteTests(SynchronousTestCase):
    """
    The other routes clients call at start-up are answered by the proxy,
    with or without a fallback Ollama, never forwarded.
    """

    def test_status(self) -> None:
        """
        C{GET /api/status}: cloud disabled by configuration, so C{ollama
        launch} does not ask C{/api/me}; no backend call.
        """
        for fallback in (True, False):
            h = ProxyHarness(fallback=fallback)
            response = self.successResultOf(h.get("/api/status"))
            self.assertEqual(response.code, 200)
            self.assertEqual(body(h, response), {"cloud": {"disabled": True, "source": "config"}})
            self.assertEqual((h.backend.received, h.ollama.received), ([], []))

    def test_recommendations(self) -> None:
        """
        C{GET /api/experimental/model-recommendations}: the served tool
        models with at least 64K of context, with their context length and
        (when known and sane) C{max_output_tokens}; never the fallback's.
        """
        for fallback in (True, False):
            h = ProxyHarness(fallback=fallback)
            d = h.get("/api/experimental/model-recommendations")
            info = {"data": [
                {"model_name": "big", "model_info": {"max_input_tokens": 131072,
                                                     "max_output_tokens": 8192,
                                                     "supports_function_calling": True}},
                {"model_name": "notools", "model_info": {"max_input_tokens": 131072,
                                                         "supports_function_calling": False}},
            ]}
            serveCatalog(h, [{"id": "big"}, {"id": "small"}, {"id": "notools"},
                             {"id": "vendor/m", "context_length": 65536}], info)
            response = self.successResultOf(d)
            self.assertEqual(response.code, 200)
            recommended = body(h, response)["recommendations"]
            self.assertEqual([r["model"] for r in recommended], ["big:proxy", "vendor/m:proxy"])
            self.assertEqual(recommended[0]["context_length"], 131072)
            self.assertEqual(recommended[0]["max_output_tokens"], 8192)
            self.assertNotIn("max_output_tokens", recommended[1])
            for entry in recommended:
                self.assertIsInstance(entry["description"], str)
            self.assertEqual(h.ollama.received, [])

    def test_recommendationsEmpty(self) -> None:
        """
        No model qualifies: an empty list, not an error.
        """
        h = ProxyHarness(fallback=False)
        d = h.get("/api/experimental/model-recommendations")
        serveCatalog(h, [{"id": "small"}])
        self.assertEqual(body(h, self.successResultOf(d)), {"recommendations": []})


SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def codexUsesResponses(version: str) -> bool | None:
    """
    Codex's gate (C{codex-rs/ollama/src/lib.rs}, C{client.rs}): strip a
    leading C{v}, parse as semver; C{0.0.0} (a dev build) or at least
    C{0.13.4} means "use the Responses API".

    @return: the decision, or C{None} when Codex cannot parse the version
        (newer Codex refuses to start then).
    """
    match = SEMVER.match(version.removeprefix("v"))
    if match is None:
        return None
    core = tuple(int(part) for part in match.group(1, 2, 3))
    released = match.group(4) is None
    if core == (0, 0, 0):
        return True
    # Semver: 0.13.4-rc1 < 0.13.4.
    return (core, released) >= ((0, 13, 4), True)


class VersionTests(SynchronousTestCase):
    """
    C{/api/version} and what clients decide from it.
    """

    def test_gate(self) -> None:
        """
        The gate as Codex computes it.
        """
        cases = [("0.13.3", False), ("0.13.4", True), ("v0.13.4", True), ("0.0.0", True),
                 ("0.13.4-rc1", False), ("0.33.0-rc2", True), ("0.33", None), ("", None)]
        for version, expected in cases:
            self.assertEqual(codexUsesResponses(version), expected, version)

    def test_defaultVersion(self) -> None:
        """
        The default is the newest Ollama whose discovery surface the proxy
        serves, plain C{MAJOR.MINOR.PATCH} (Open WebUI and Copilot split it
        on dots and parse integers), and it sends Codex to C{/v1/responses}.
        """
        h = ProxyHarness()
        version = body(h, self.successResultOf(h.get("/api/version")))["version"]
        self.assertEqual(version, DEFAULT_VERSION)
        self.assertEqual(version, "0.32.15")
        self.assertRegex(version, r"^\d+\.\d+\.\d+$")
        self.assertGreaterEqual(tuple(int(p) for p in version.split(".")), (0, 6, 4))
        self.assertIs(codexUsesResponses(version), True)

    def test_responsesServedWhenCodexIsSentThere(self) -> None:
        """
        A version that passes Codex's gate is only honest if the proxy
        itself answers C{POST /v1/responses}; it must not reach the
        fallback Ollama (or be a 502 without one).
        """
        h = ProxyHarness()
        version = body(h, self.successResultOf(h.get("/api/version")))["version"]
        self.assertIs(codexUsesResponses(version), True)
        h.post("/v1/responses", {"model": "m", "input": "hi", "stream": False})
        self.assertEqual(h.ollama.received, [])
        self.assertEqual([r.path for r in h.backend.received], ["/v1/chat/completions"])
