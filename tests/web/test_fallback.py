"""
Unknown paths go to the fallback Ollama, or get a JSON 404 without one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.redact import PREFIX, REDACTED
from ollama_proxy.testing.harness import (
    BodyCollector,
    ProxyHarness,
)
from tests.web.helpers import serveCatalog

BACKEND_KEY = "sk-host/ILE+backend-0123456789abcdef"
INBOUND_KEY = "in-key-ABCDEFGH12345678"


class FallbackTests(SynchronousTestCase):
    """
    Unknown paths go to the fallback Ollama.
    """

    def test_forwarded(self) -> None:
        """
        Method, path, query and body reach the fallback; its answer reaches
        the client.
        """
        h = ProxyHarness()
        d = h.post("/api/create?x=1", {"model": "new"})
        [received] = h.ollama.received
        self.assertEqual((received.method, received.path), ("POST", "/api/create"))
        self.assertEqual(received.request.uri, b"/api/create?x=1")
        self.assertEqual(received.json(), {"model": "new"})
        self.assertEqual(h.backend.received, [])
        received.respond(200, b'{"status":"success"}\n', b"application/x-ndjson")
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(self.successResultOf(h.client.content(response)), b'{"status":"success"}\n')

    def test_clientKeysNotForwarded(self) -> None:
        """
        The key a client presents to the proxy (C{Authorization} or its
        equivalent C{X-API-Key}, see L{ollama_proxy.web.auth.presentedKey}) is
        the proxy's credential and never reaches the fallback Ollama.
        """
        h = ProxyHarness()
        h.post(
            "/api/create",
            {"model": "new"},
            headers={b"Authorization": [b"Bearer client"], b"X-API-Key": [b"client-key"]},
        )
        [received] = h.ollama.received
        self.assertNotIn("authorization", received.headers)
        self.assertNotIn("x-api-key", received.headers)

    def test_disabled(self) -> None:
        """
        Without a fallback, unknown paths get a JSON 404.
        """
        h = ProxyHarness(fallback=False)
        response = self.successResultOf(h.get("/api/nothing"))
        self.assertEqual(response.code, 404)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertIn("/api/nothing", body["error"])

    def test_root(self) -> None:
        """
        C{GET /} answers like Ollama, without the fallback.
        """
        h = ProxyHarness()
        response = self.successResultOf(h.get("/"))
        self.assertEqual(self.successResultOf(h.client.content(response)), b"Ollama is running")
        self.assertEqual(h.ollama.received, [])


class SplitKeyTests(SynchronousTestCase):
    """
    A fallback that splits a key the proxy holds over the lines (or events)
    of a stream, each one clean, never gets it to the client, which joins
    the texts: the fallback may be the backend's own host.
    """

    def relayed(self, path: str, contentType: bytes, pieces: list[bytes]) -> bytes:
        h = ProxyHarness(apiKey=BACKEND_KEY, secrets=(INBOUND_KEY,))
        d = h.post(path, {"model": "elsewhere"},
                   headers={b"Authorization": [b"Bearer " + INBOUND_KEY.encode()]})
        if path == "/api/pull":
            serveCatalog(h, [{"id": "gpt-4o"}])
        [upstream] = h.ollama.received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"Content-Type", contentType)
        for piece in pieces:
            upstream.write(piece)
            h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)
        for secret in (BACKEND_KEY, INBOUND_KEY):
            self.assertNotIn(secret[1:].encode(), reader.data)
        return reader.data

    @settings(max_examples=40, deadline=None)
    @given(secret=st.sampled_from((BACKEND_KEY, INBOUND_KEY)), cut=st.integers(1, 22),
           split=st.integers(0, 600), field=st.sampled_from(["content", "thinking", "response"]),
           contentType=st.sampled_from([b"application/x-ndjson", b"application/json", b"text/plain"]))
    def test_ndjsonLines(self, secret: str, cut: int, split: int, field: str,
                         contentType: bytes) -> None:
        """
        An Ollama chat or generate stream on a path only the fallback
        serves: the key over two lines (C{"s"}, then the rest, or any other
        cut), at any split of the reads, whatever content type the fallback
        claims (Ollama's clients read lines regardless): the joined text has
        C{<redacted>} and no piece of it.
        """
        def line(text: str, done: bool = False) -> dict[str, Any]:
            if field == "response":
                return {"model": "m", "response": text, "done": done}
            return {"model": "m", "message": {"role": "assistant", field: text}, "done": done}

        texts = ["key: ", secret[:cut], secret[cut:], " done"]
        data = b"".join(codec.dumps(line(t)) + b"\n" for t in texts)
        data += codec.dumps(line("", True)) + b"\n"
        split %= len(data)
        out = self.relayed("/api/experimental/generate", contentType, [data[:split], data[split:]])
        joined = ""
        for raw in out.splitlines():
            obj = json.loads(raw)
            joined += obj["response"] if field == "response" else obj["message"].get(field, "")
        self.assertEqual(joined, f"key: {REDACTED} done")
        for secret in (BACKEND_KEY, INBOUND_KEY):
            self.assertNotIn(secret[:PREFIX], joined)

    def test_pullStatus(self) -> None:
        """
        C{/api/pull} of a model the proxy does not serve: the fallback's
        progress lines go through the same guard (their C{status} is no
        text a client joins; a whole key in one is replaced by the byte
        filter), and a clean stream passes byte for byte.
        """
        clean = b'{"status":"pulling manifest"}\n{"status":"success"}\n'
        self.assertEqual(self.relayed("/api/pull", b"application/x-ndjson", [clean]), clean)
        leaky = b'{"status":"pulling \\u0073k-host/ILE+backend-01"}\n'
        out = self.relayed("/api/pull", b"application/x-ndjson", [leaky])
        self.assertIn(REDACTED, json.loads(out)["status"])

    def test_sseEvents(self) -> None:
        """
        A fallback answering SSE (an OpenAI client on a path the fallback
        serves): the relayed routes' guard watches its deltas, whether the
        content type says SSE or (an SDK reads SSE regardless) not.
        """
        events = [{"choices": [{"index": 0, "delta": {"content": t}}]}
                  for t in ["s", "k-host/ILE+backend-0123456789abcdef", "!"]]
        data = b"".join(b"data: " + codec.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        for contentType, lead in [(b"text/event-stream", b""), (b"application/x-ndjson", b"\n"),
                                  (b"application/json", b": hi\n\n")]:
            out = self.relayed("/v1/other", contentType, [lead, data[:9], data[9:]])
            joined = "".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "")
                             for e in re.split(rb"\n\n", out) if e.startswith(b"data: {"))
            self.assertEqual(joined, f"{REDACTED}!", contentType)

    def test_wholeAnswerOverTheLineLimit(self) -> None:
        """
        A fallback's whole answer is one JSON line, megabytes long for
        C{/api/show} with C{verbose}: relayed as it is (the guard holds no
        more than a line's limit; nothing after it could join its texts).
        """
        big = b'{"model_info":{"tokenizer.ggml.tokens":[' + b'"s","k",' * 600_000 + b'"x"]}}'
        self.assertGreater(len(big), 4 * 1024 * 1024)
        out = self.relayed("/api/experimental/show", b"application/json",
                           [big[i:i + 65536] for i in range(0, len(big), 65536)])
        self.assertEqual(out, big)
