"""
Inbound keys (L{ollama_proxy.web.auth.KeyGate}), forwarding the client's key,
and keeping secrets out of logs and error bodies.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import ProxyHarness, delta
from ollama_proxy.testing.memory import MemoryTreq
from ollama_proxy.web.auth import KeyGate, readKeys, requireKeys
from ollama_proxy.web.tree import buildRoot
from tests.web.helpers import CHAT

KEY = "in-key-7d1c0ffee"


class GatedHarness(ProxyHarness):
    """
    The proxy behind a L{KeyGate}.
    """

    def __init__(self, keys: list[str] = [KEY], **contextArgs: Any) -> None:
        super().__init__(**contextArgs)
        self.client = MemoryTreq(KeyGate(self.root, keys))


class KeyGateTests(SynchronousTestCase):
    """
    C{--require-key}: requests need the key as a bearer token or
    C{X-API-Key}; health checks and preflights do not.
    """

    def setUp(self) -> None:
        self.h = GatedHarness()

    def answer(self, d: Any) -> tuple[int, Any]:
        self.h.pump()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(self.h.client.content(response))

    def test_missingKey(self) -> None:
        """
        No key: 401 with C{{"error": "unauthorized"}}, a bearer challenge,
        and nothing sent upstream.
        """
        d = self.h.post("/api/chat", CHAT)
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="ollama-proxy"'])
        self.assertEqual(
            codec.loads(self.successResultOf(self.h.client.content(response))),
            {"error": "unauthorized"},
        )
        self.assertEqual(self.h.backend.received, [])

    def test_missingKeyInDialect(self) -> None:
        """
        The 401 takes the path's dialect: OpenAI's on the relayed C{/v1}
        routes (whose SDKs read C{error.message}), Anthropic's under
        C{/v1/messages}.
        """
        code, body = self.answer(self.h.post("/v1/chat/completions", CHAT))
        self.assertEqual(code, 401)
        self.assertEqual(codec.loads(body)["error"]["message"], "unauthorized")
        code, body = self.answer(self.h.post("/v1/messages", CHAT))
        self.assertEqual(codec.loads(body)["error"]["type"], "authentication_error")

    def test_wrongKey(self) -> None:
        """
        A wrong key (even a prefix of the right one) is refused.
        """
        for key in ["nope", KEY[:-1], KEY + "x", ""]:
            code, _ = self.answer(
                self.h.get("/api/version", headers={b"Authorization": [b"Bearer " + key.encode()]})
            )
            self.assertEqual(code, 401, key)

    def test_bearer(self) -> None:
        """
        C{Authorization: Bearer <key>} is accepted (scheme case-insensitive).
        """
        for scheme in (b"Bearer ", b"bearer "):
            code, body = self.answer(
                self.h.get("/api/version", headers={b"Authorization": [scheme + KEY.encode()]})
            )
            self.assertEqual(code, 200)
            self.assertIn("version", codec.loads(body))

    def test_xAPIKey(self) -> None:
        """
        C{X-API-Key: <key>} is accepted.
        """
        code, _ = self.answer(self.h.get("/api/version", headers={b"X-API-Key": [KEY.encode()]}))
        self.assertEqual(code, 200)

    def test_basicSchemeRefused(self) -> None:
        """
        The key in another scheme than Bearer does not count.
        """
        code, _ = self.answer(
            self.h.get("/api/version", headers={b"Authorization": [b"Basic " + KEY.encode()]})
        )
        self.assertEqual(code, 401)

    def test_healthCheckOpen(self) -> None:
        """
        C{GET /} and C{HEAD /} answer without a key (load balancers), but a
        C{POST /} does not.
        """
        code, body = self.answer(self.h.get("/"))
        self.assertEqual((code, body), (200, b"Ollama is running"))
        code, _ = self.answer(self.h.request("HEAD", "/"))
        self.assertEqual(code, 200)
        code, _ = self.answer(self.h.post("/", b"{}"))
        self.assertEqual(code, 401)

    def test_everyPathGuarded(self) -> None:
        """
        OpenAI passthrough paths and fallback paths need the key too.
        """
        for path in ("/v1/models", "/api/show", "/api/tags", "/whatever"):
            code, _ = self.answer(self.h.get(path))
            self.assertEqual(code, 401, path)

    def test_preflightOpen(self) -> None:
        """
        C{OPTIONS} (a CORS preflight, which carries no credentials) is not
        refused by the gate.
        """
        code, _ = self.answer(self.h.request("OPTIONS", "/api/chat"))
        self.assertNotEqual(code, 401)

    def test_severalKeys(self) -> None:
        """
        Any of several configured keys is accepted.
        """
        h = GatedHarness(keys=["k1", "k2"])
        for key in (b"k1", b"k2"):
            d = h.get("/api/version", headers={b"X-API-Key": [key]})
            h.pump()
            self.assertEqual(self.successResultOf(d).code, 200)

    def test_readKeys(self) -> None:
        """
        Key files hold one key per line or comma-separated keys; blank lines
        and comments are ignored.
        """
        self.assertEqual(readKeys("# team keys\nk1\n\n k2 , k3\n"), ["k1", "k2", "k3"])


class ForwardClientKeyTests(SynchronousTestCase):
    """
    C{--forward-client-key}: the client's own bearer token goes upstream
    instead of C{--api-key}.
    """

    def test_forwarded(self) -> None:
        """
        Each request carries its own client's key upstream, even when two
        are in flight at once.
        """
        h = ProxyHarness()
        h.backendClient.forwardClientKey = True
        h.post("/api/chat", CHAT, headers={b"Authorization": [b"Bearer client-a"]})
        h.post("/api/chat", CHAT, headers={b"X-API-Key": [b"client-b"]})
        a, b = h.backend.received
        self.assertEqual(a.headers["authorization"], "Bearer client-a")
        self.assertEqual(b.headers["authorization"], "Bearer client-b")

    def test_forwardedOnEveryRoute(self) -> None:
        """
        The key is passed with the upstream call of every kind of route:
        an Anthropic stream, embeddings (new and legacy), a raw text
        completion.
        """
        h = ProxyHarness()
        h.backendClient.forwardClientKey = True
        key = {b"Authorization": [b"Bearer client-c"]}
        h.post("/v1/messages", {"model": "m", "max_tokens": 5, "stream": True,
                                "messages": [{"role": "user", "content": "hi"}]}, headers=key)
        h.post("/api/embed", {"model": "m", "input": "x"}, headers=key)
        h.post("/api/embeddings", {"model": "m", "prompt": "x"}, headers=key)
        h.post("/api/generate", {"model": "m", "prompt": "x", "raw": True}, headers=key)
        paths = [r.path.rsplit("/", 1)[-1] for r in h.backend.received]
        self.assertEqual(paths, ["completions", "embeddings", "embeddings", "completions"])
        for received in h.backend.received:
            self.assertEqual(received.headers["authorization"], "Bearer client-c", received.path)

    def test_sharedCachesUseBackendKey(self) -> None:
        """
        The model list and metadata that every client then shares are
        fetched with the configured key, never with the key of the client
        whose request happened to refresh them.
        """
        h = ProxyHarness()
        h.backendClient.forwardClientKey = True
        h.get("/api/tags", headers={b"Authorization": [b"Bearer client-a"]})
        h.post("/api/show", {"model": "m"}, headers={b"Authorization": [b"Bearer client-a"]})
        fetched = [r for r in h.backend.received if r.method == "GET"]
        self.assertTrue(fetched)
        for received in fetched:
            self.assertEqual(received.headers["authorization"], "Bearer sk-secret", received.path)

    def test_fallsBackToAPIKey(self) -> None:
        """
        A client without a key gets the configured C{--api-key}.
        """
        h = ProxyHarness()
        h.backendClient.forwardClientKey = True
        h.post("/api/chat", CHAT)
        self.assertEqual(h.backend.received[0].headers["authorization"], "Bearer sk-secret")

    def test_offByDefault(self) -> None:
        """
        Without the switch the client's key never reaches the backend.
        """
        h = ProxyHarness()
        h.post("/api/chat", CHAT, headers={b"Authorization": [b"Bearer client-a"]})
        h.post("/v1/chat/completions", {"model": "m"}, headers={b"Authorization": [b"Bearer client-a"]})
        for received in h.backend.received:
            self.assertEqual(received.headers["authorization"], "Bearer sk-secret")

    def test_passthrough(self) -> None:
        """
        The switch applies to OpenAI passthrough routes too.
        """
        h = ProxyHarness()
        h.backendClient.forwardClientKey = True
        h.get("/v1/models", headers={b"Authorization": [b"Bearer client-a"]})
        self.assertEqual(h.backend.received[0].headers["authorization"], "Bearer client-a")


class SecretsTests(SynchronousTestCase):
    """
    Neither the backend key nor a client key appears in logs (even with
    C{--debug}) or in error bodies.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def logText(self) -> str:
        return "\n".join(
            (formatEvent(e) or "") + repr(sorted((k, repr(v)) for k, v in e.items()))
            for e in self.events
        )

    def test_debugLogsRedacted(self) -> None:
        """
        A debug-logged exchange that ends in an upstream error and a
        mid-stream failure never logs the backend key or the client key.
        """
        h = GatedHarness(debug=True)
        d = h.post("/api/chat", CHAT, headers={b"Authorization": [b"Bearer " + KEY.encode()]})
        upstream = h.backend.received[0]
        upstream.startSSE()
        upstream.event(delta("a"))
        upstream.write(b"data: {broken\n\n")
        h.pump()
        self.successResultOf(h.client.content(self.successResultOf(d)))
        d = h.post("/api/chat", CHAT, headers={b"X-API-Key": [KEY.encode()]})
        h.backend.received[1].respond(401, {"error": {"message": "bad key"}})
        h.pump()
        body = self.successResultOf(h.client.content(self.successResultOf(d)))
        d = h.post("/api/chat", CHAT, headers={b"Authorization": [b"Bearer wrong-" + KEY.encode()]})
        h.pump()
        body += self.successResultOf(h.client.content(self.successResultOf(d)))
        text = self.logText()
        self.assertIn("upstream chunk", text)  # debug logging really was on
        self.assertIn("<redacted>", text)
        for secret in ("sk-secret", KEY):
            self.assertNotIn(secret, text)
            self.assertNotIn(secret.encode(), body)

    def test_backendRepr(self) -> None:
        """
        The backend's repr (which may end up in a traceback) hides its key.
        """
        h = ProxyHarness()
        self.assertNotIn("sk-secret", repr(h.backendClient))
        self.assertNotIn("sk-secret", repr(h.ctx))


class CORSOrderTests(SynchronousTestCase):
    """
    L{requireKeys} puts the gate behind the CORS layer.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness(corsOrigins=("https://app.example",))
        self.h.client = MemoryTreq(requireKeys(buildRoot(self.h.ctx), [KEY]))

    def test_unauthorizedCarriesCORS(self) -> None:
        """
        A cross-origin request without a key gets a 401 that the browser
        can read (C{Access-Control-Allow-Origin} is set).
        """
        d = self.h.get("/api/tags", headers={b"Origin": [b"https://app.example"]})
        self.h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 401)
        self.assertEqual(
            response.headers.getRawHeaders(b"access-control-allow-origin"), [b"https://app.example"]
        )

    def test_preflightAnsweredWithoutKey(self) -> None:
        """
        A preflight (no credentials) is answered by the CORS layer and
        allows the C{Authorization} header.
        """
        d = self.h.request(
            "OPTIONS",
            "/api/chat",
            headers={
                b"Origin": [b"https://app.example"],
                b"Access-Control-Request-Method": [b"POST"],
                b"Access-Control-Request-Headers": [b"authorization"],
            },
        )
        self.h.pump()
        response = self.successResultOf(d)
        self.assertLess(response.code, 300)
        [allowed] = response.headers.getRawHeaders(b"access-control-allow-headers")
        self.assertIn(b"Authorization", allowed)

    def test_keyedRequestServed(self) -> None:
        """
        With the key, the request goes through both layers.
        """
        d = self.h.get("/api/version", headers={b"Origin": [b"https://app.example"], b"X-API-Key": [KEY.encode()]})
        self.h.pump()
        self.assertEqual(self.successResultOf(d).code, 200)
