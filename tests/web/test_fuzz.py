"""
Property tests: whatever body a client POSTs to whatever route, the proxy
answers with a well-formed response and a client-error status, never a 500
or a traceback, and never hangs.

The routes are discovered from the resource tree that
L{ollama_proxy.web.tree.buildRoot} builds, so endpoints added later are
fuzzed without touching this file.  The backend is a canned responder that
answers every request at once with a valid completion (streamed or not, as
asked), so the outcome depends only on the generated body.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from typing import Any, Iterator

import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import FakeOpenAI
from ollama_proxy.testing.harness import TARGET, Counter, contextFor, pumpUntilQuiet
from ollama_proxy.testing.memory import MemoryTreq
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.bridge import ProxyResource
from ollama_proxy.web.passthrough import Passthrough
from ollama_proxy.web.tree import buildRoot


def postRoutes(resource: IResource, prefix: bytes = b"") -> Iterator[tuple[str, ProxyResource]]:
    """
    Every path in the tree served by a L{ProxyResource} that accepts POST.

    @param resource: where to start.
    @param prefix: the path so far.
    @return: C{(path, resource)} pairs.
    """
    while hasattr(resource, "wrapped"):  # CORS (or key) wrappers
        resource = resource.wrapped
    children: dict[bytes, IResource] = getattr(resource, "children", {})
    for name, child in sorted(children.items()):
        path = prefix + b"/" + name
        if isinstance(child, ProxyResource) and hasattr(child, "handle_POST"):
            yield path.decode("ascii"), child
        yield from postRoutes(child, path)


def makeProxy() -> tuple[Any, Any, MemoryReactorClock, Any]:
    """
    @return: a client for a fresh proxy in front of the built-in fake backend
        (L{FakeOpenAI}, the one every test uses), its root, its clock, and
        the proxy's client to the backend.
    """
    clock = MemoryReactorClock()
    upstream = MemoryTreq(FakeOpenAI(clock))
    ctx = contextFor(Backend(upstream, TARGET, clock, apiKey="sk-secret"),
        clock=clock,
        now=Counter(),
    )
    root = buildRoot(ctx)
    return MemoryTreq(root), root, clock, upstream


GEMINI = (
    "/v1beta/models/fake-model:generateContent",
    "/v1beta/models/fake-tools:streamGenerateContent?alt=sse",
    "/v1beta/models/fake-reasoner:streamGenerateContent",
    "/v1beta/models/fake-model:countTokens?key=%C2%B2&pageSize=%FF",
    "/v1/models/fake-model:streamGenerateContent?alt=sse",
)
"""The Gemini API's model methods (C{/v1beta}, and Google's C{v1} on
C{/v1/models}): one resource serves C{/v1beta}, so the tree walk finds only
C{/v1beta} itself."""
ROUTES = sorted([*(path for path, _ in postRoutes(makeProxy()[1])), *GEMINI])
NATIVE = sorted(path for path, r in postRoutes(makeProxy()[1]) if not isinstance(r, Passthrough))
AGENTS = ("/v1/messages", "/v1/messages/count_tokens", "/v1/responses", "/v1beta", *GEMINI)
"""The translated agent dialects: their errors are objects with a
C{message}, their streams named SSE events."""
TERMINAL = (b"event: message_stop\n", b"event: error\n", b"event: response.completed\n",
            b"event: response.incomplete\n", b"event: response.failed\n")

def dumps(value: Any) -> bytes:
    """
    Encode with the standard library, which (unlike orjson) also writes
    integers beyond 64 bits, so the proxy's decoder meets them too.
    """
    return json.dumps(value).encode("utf-8")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
jsonValues = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
images = st.one_of(
    st.binary(max_size=30).map(lambda b: base64.b64encode(b).decode()),
    st.text(max_size=30),
    jsonValues,
)
messages = st.one_of(
    jsonValues,
    st.lists(
        st.one_of(
            jsonValues,
            st.fixed_dictionaries(
                {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), jsonValues)},
                optional={
                    "content": st.one_of(st.text(max_size=30), jsonValues),
                    "images": st.one_of(st.lists(images, max_size=2), jsonValues),
                    "tool_calls": jsonValues,
                    "thinking": jsonValues,
                    "tool_name": jsonValues,
                },
            ),
        ),
        max_size=3,
    ),
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "model": st.one_of(st.sampled_from(["fake-model", "fake-model:proxy", "fake-tools:latest", "fake-agent", "fake-reasoner", ""]), jsonValues),
        "messages": messages,
        "prompt": st.one_of(st.text(max_size=30), jsonValues),
        "system": jsonValues,
        "suffix": jsonValues,
        "images": st.one_of(st.lists(images, max_size=2), jsonValues),
        "stream": st.one_of(st.booleans(), jsonValues),
        "think": st.one_of(st.sampled_from([True, False, "low", "high"]), jsonValues),
        "format": st.one_of(st.just("json"), jsonValues),
        "options": st.one_of(
            st.dictionaries(
                st.sampled_from(["temperature", "num_predict", "seed", "stop", "top_p", "num_ctx"]),
                jsonValues,
                max_size=3,
            ),
            jsonValues,
        ),
        "tools": jsonValues,
        "keep_alive": jsonValues,
        "raw": jsonValues,
        "template": jsonValues,
        "input": jsonValues,
        "max_tokens": st.one_of(st.integers(min_value=1, max_value=50), jsonValues),
        "tool_choice": jsonValues,
        "instructions": jsonValues,
        "reasoning": jsonValues,
        "thinking": jsonValues,
        "unknown_field": jsonValues,
    },
)
parts = st.lists(
    st.one_of(
        jsonValues,
        st.fixed_dictionaries({}, optional={
            "text": st.one_of(st.text(max_size=20), jsonValues),
            "thought": jsonValues,
            "inlineData": st.one_of(st.fixed_dictionaries({
                "mimeType": st.one_of(st.sampled_from(["image/png", "audio/wav"]), jsonValues),
                "data": images}), jsonValues),
            "functionCall": st.one_of(st.fixed_dictionaries(
                {"name": st.one_of(st.just("get_weather"), jsonValues)},
                optional={"args": jsonValues, "id": jsonValues}), jsonValues),
            "functionResponse": st.one_of(st.fixed_dictionaries(
                {"name": st.one_of(st.just("get_weather"), jsonValues)},
                optional={"response": jsonValues, "id": jsonValues}), jsonValues),
            "thoughtSignature": jsonValues,
        }),
    ),
    max_size=3,
)
geminiRequests = st.fixed_dictionaries(
    {},
    optional={
        "contents": st.one_of(jsonValues, st.lists(st.one_of(jsonValues, st.fixed_dictionaries(
            {"parts": st.one_of(parts, jsonValues)},
            optional={"role": st.one_of(st.sampled_from(["user", "model", "function"]), jsonValues)},
        )), max_size=3)),
        "systemInstruction": st.one_of(st.fixed_dictionaries({"parts": parts}), jsonValues),
        "tools": st.one_of(jsonValues, st.lists(st.fixed_dictionaries({}, optional={
            "functionDeclarations": st.one_of(jsonValues, st.lists(st.fixed_dictionaries(
                {"name": st.one_of(st.just("get_weather"), jsonValues)},
                optional={"parameters": jsonValues, "parametersJsonSchema": jsonValues}),
                max_size=2)),
            "googleSearch": jsonValues}), max_size=2)),
        "toolConfig": st.one_of(jsonValues, st.fixed_dictionaries({"functionCallingConfig": st.one_of(
            jsonValues, st.fixed_dictionaries({}, optional={
                "mode": st.one_of(st.sampled_from(["AUTO", "ANY", "NONE"]), jsonValues),
                "allowedFunctionNames": jsonValues}))})),
        "generationConfig": st.one_of(jsonValues, st.dictionaries(st.sampled_from([
            "temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "candidateCount",
            "responseMimeType", "responseSchema", "responseJsonSchema", "seed",
            "max_output_tokens"]), jsonValues, max_size=4).flatmap(
            lambda config: st.fixed_dictionaries({**{k: st.just(v) for k, v in config.items()}},
                                                 optional={"thinkingConfig": jsonValues}))),
        "generateContentRequest": jsonValues,
        "safetySettings": jsonValues,
    },
)
bodies = st.one_of(
    requests.map(dumps),
    geminiRequests.map(dumps),
    jsonValues.map(dumps),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8")),
)


EXAMPLES = int(os.environ.get("OLLAMA_PROXY_FUZZ_EXAMPLES", "300"))
"""Examples per property: small by default to keep the suite fast; set
C{OLLAMA_PROXY_FUZZ_EXAMPLES=4000} for a deep run (see docs/reliability.md)."""
DERANDOMIZE = "OLLAMA_PROXY_FUZZ_EXAMPLES" not in os.environ
"""The default run draws the same examples every time (a CI run cannot flake);
a deep run explores new ones."""


class ProxyChecks(SynchronousTestCase):
    """
    A fresh proxy per test, and the check every generated body must pass.
    """

    def setUp(self) -> None:
        self.client, _, self.clock, self.upstream = makeProxy()

    def check(self, path: str, body: bytes, encoding: bytes | None = None) -> None:
        client = self.client
        headers = {b"Content-Type": [b"application/json"]}
        if encoding is not None:
            headers[b"Content-Encoding"] = [encoding]
        d = client.post("http://proxy.test" + path, data=body, headers=headers)
        # A compressed body is decoded in steps between reactor turns.
        pumpUntilQuiet(self.clock, [client, self.upstream])
        response = self.successResultOf(d)
        data = self.successResultOf(client.content(response))
        # 501 is a deliberate answer (management routes the proxy does not
        # serve without --fallback); anything else 5xx is a proxy failure.
        self.assertTrue(response.code < 500 or response.code == 501, (path, body[:300], data))
        self.assertNotIn(b"Traceback", data)
        self.assertNotIn(b"sk-secret", data)
        [contentType] = response.headers.getRawHeaders(b"content-type", [b""])
        if contentType.startswith(b"application/json"):
            decoded = codec.loads(data)
            if response.code >= 400:
                error = decoded.get("error")
                if (path not in NATIVE or path in AGENTS) and isinstance(error, dict):
                    # An OpenAI route: the backend's error object, relayed;
                    # an agent dialect: its own error object.
                    error = error.get("message")
                self.assertIsInstance(error, str, repr((path, body, data)))
                self.assertTrue(error)
        elif contentType.startswith(b"application/x-ndjson"):
            self.assertEqual(response.code, 200)
            lines = [codec.loads(line) for line in data.splitlines()]
            self.assertTrue(lines)
            last = lines[-1]
            # A generation ends with done:true, a progress stream (pull,
            # push, create) with status "success"; or either with an error.
            self.assertTrue(
                last.get("done") is True or last.get("status") == "success" or "error" in last,
                (path, body, data),
            )
        elif path in GEMINI:
            # Gemini's data-only events end with the finish or an error.
            self.assertEqual(response.code, 200)
            self.assertEqual(contentType, b"text/event-stream")
            last = codec.loads(data.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: "))
            self.assertTrue("error" in last or last["candidates"][0].get("finishReason"),
                            (path, body, data))
        elif path in AGENTS:
            # A translated stream ends with the dialect's end or error event.
            self.assertEqual(contentType, b"text/event-stream; charset=utf-8")
            last = data.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
            self.assertTrue(last.startswith(TERMINAL), (path, body, data))
        else:
            # Only an OpenAI passthrough relays a non-JSON body (the
            # backend's event stream) as it is.
            self.assertNotIn(path, NATIVE, (path, body, data, contentType))
            self.assertEqual(contentType, b"text/event-stream")



class FuzzTests(ProxyChecks):
    """
    Generated bodies against every POST route.
    """

    def test_routesDiscovered(self) -> None:
        """
        The route walk finds the core endpoints (so the property below
        really covers them).
        """
        for path in ("/api/chat", "/api/generate", "/v1/chat/completions"):
            self.assertIn(path, ROUTES)
        self.assertIn("/api/chat", NATIVE)
        self.assertNotIn("/v1/chat/completions", NATIVE)

    @settings(max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(ROUTES), body=bodies)
    def test_neverServerError(self, path: str, body: bytes) -> None:
        """
        Any body, any route: the status is below 500 (or the deliberate 501
        of unsupported management routes); JSON errors carry a
        non-empty C{error} string; NDJSON streams are whole lines ending in
        C{done: true}, a progress C{success} or an error; nothing leaks a
        traceback or the key.
        """
        self.check(path, body)

    @settings(max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(GEMINI), body=geminiRequests.map(dumps))
    def test_geminiStructured(self, path: str, body: bytes) -> None:
        """
        Near-valid Gemini requests (Google's keys, any value types) against
        the Gemini API's methods: a 4xx in Google's shape with a precise
        message, or a real answer ending with its finish or an error.
        """
        self.check(path, body)

    @settings(max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(NATIVE), body=requests.map(dumps))
    def test_nativeRoutesStructured(self, path: str, body: bytes) -> None:
        """
        Near-valid Ollama requests (right keys, any value types) against the
        native routes: a 4xx with a precise message, or a real answer.
        """
        self.check(path, body)


def nestedText(depth: int, kinds: list[bool]) -> bytes:
    """
    @return: JSON text nested C{depth} deep, arrays or objects level by
        level as C{kinds} says (cycled), written by hand: orjson encodes no
        deeper than 254.
    """
    opening, closing = [], []
    for i in range(depth):
        if kinds[i % len(kinds)]:
            opening.append(b'{"k":')
            closing.append(b"}")
        else:
            opening.append(b"[")
            closing.append(b"]")
    return b"".join(opening) + b"1" + b"".join(reversed(closing))


AGENT_SHAPES = [
    b'{"model":"fake-model","max_tokens":8,"messages":[{"role":"user","content":"hi"}],'
    b'"tools":[{"name":"t","input_schema":DEEP}]}',
    b'{"model":"fake-model","input":"hi","tools":[{"type":"function","name":"t",'
    b'"parameters":DEEP}]}',
    b'{"model":"fake-model","messages":[{"role":"user","content":"hi"}],"format":DEEP,'
    b'"tools":[{"type":"function","function":{"name":"t","parameters":DEEP}}]}',
    b'{"contents":[{"role":"model","parts":[{"functionCall":{"name":"t","args":DEEP}}]},'
    b'{"parts":[{"functionResponse":{"name":"t","response":DEEP}}]}]}',
    b'{"contents":[{"parts":[{"text":"hi"}]}],"tools":[{"functionDeclarations":['
    b'{"name":"t","parametersJsonSchema":DEEP},{"name":"u","parameters":DEEP}]}],'
    b'"generationConfig":{"responseMimeType":"application/json","responseSchema":DEEP}}',
    b"DEEP",
]

deepBodies = st.builds(
    lambda shape, depth, kinds: shape.replace(b"DEEP", nestedText(depth, kinds)),
    st.sampled_from(AGENT_SHAPES),
    st.one_of(st.integers(min_value=1, max_value=140), st.integers(min_value=120, max_value=1100)),
    st.lists(st.booleans(), min_size=1, max_size=4),
)
"""Arrays and objects mixed, around the nesting limit and past orjson's
encoding (254) and parsing (1024) limits, where real requests put them."""


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: max(0, len(data) - 3)]
    if how == "trailing":
        return data + b"\x00junk"
    if how == "twice":
        return data + data
    return data


compressed = st.builds(
    lambda body, coding, how: (
        _damage((_zstd if coding == b"zstd" else gzip.compress)(body), how), coding),
    st.one_of(requests.map(dumps), deepBodies, st.binary(max_size=32),
              st.just(b"[" * 100_000), st.just(b" " * 3_000_000)),
    st.sampled_from([b"zstd", b"gzip", b"x-gzip", b"gzip, zstd", b"identity", b"br", b"ZSTD"]),
    st.sampled_from(["whole", "truncated", "trailing", "twice"]),
)
"""Compressed bodies: valid, truncated, with trailing bytes, concatenated
frames, a 100,000-deep bracket bomb, a 3 MB whitespace bomb, unknown and
chained codings (C{gzip, zstd} applied to a single-coded body is corrupt)."""

oddText = st.builds(
    lambda body, codec_: codec_(body),
    requests.map(lambda r: json.dumps(r)),
    st.sampled_from([
        lambda t: t.encode("utf-16"),
        lambda t: t.encode("utf-16-le"),
        lambda t: t.encode("utf-32"),
        lambda t: b"\xef\xbb\xbf" + t.encode("utf-8"),
        lambda t: t.encode("utf-8").replace(b'"', b'"\xff', 1),
        lambda t: t.encode("utf-8") + b"\xc3",
        lambda t: t.encode("utf-8").replace(b":", b":\xed\xa0\x80", 1),
    ]),
)
"""Odd encodings: UTF-16/32 (with and without a BOM), a UTF-8 BOM, invalid
UTF-8 (a stray byte, a cut sequence, a surrogate)."""

HOSTILE_EXAMPLES = max(EXAMPLES // 3, 20)
"""Hostile bodies are larger (bombs, deep text): a third as many examples
per property, scaled by the same setting."""

HOSTILE_ROUTES = sorted(set(AGENTS) | {"/v1/chat/completions", "/api/chat", "/api/generate",
                                       "/api/embed", "/api/show"})


class HostileBodyTests(ProxyChecks):
    """
    Issue 19: deep nesting, compressed bodies and odd encodings against the
    agent routes, passthrough and the Ollama routes: never a 5xx.
    """

    @settings(max_examples=HOSTILE_EXAMPLES, derandomize=DERANDOMIZE, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(path=st.sampled_from(HOSTILE_ROUTES), body=deepBodies)
    def test_deepNesting(self, path: str, body: bytes) -> None:
        """
        Any nesting depth, any mix: an answer or a 400, never a 500.
        """
        self.check(path, body)

    @settings(max_examples=HOSTILE_EXAMPLES, derandomize=DERANDOMIZE, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(path=st.sampled_from(HOSTILE_ROUTES), sent=compressed)
    def test_compressed(self, path: str, sent: tuple[bytes, bytes]) -> None:
        """
        Any compressed body (valid, cut, trailing bytes, several frames,
        bombs, unknown codings): an answer, a 400, 413 or 415.
        """
        self.check(path, sent[0], sent[1])

    @settings(max_examples=HOSTILE_EXAMPLES, derandomize=DERANDOMIZE, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(path=st.sampled_from(HOSTILE_ROUTES), body=oddText)
    def test_oddEncodings(self, path: str, body: bytes) -> None:
        """
        UTF-16, BOMs, invalid UTF-8: an answer or a 400, never a 500.
        """
        self.check(path, body)
