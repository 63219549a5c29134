"""
Ollama's CORS policy: allowed and refused origins, preflights.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import ProxyHarness, delta

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
