"""
Issue 19, findings 1, 4 and 5 over real loopback sockets: a hostile
gateway that echoes the key it was sent everywhere it can (its model-list
401, generated text split across socket writes and deltas, JSON-escaped
text, response headers).  Neither the client nor the proxy's log (with
C{--debug}) ever receives the key.  Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import quote, unquote
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Twistd, freePort

BACKEND_KEY = "sk-backend-0123456789abcdef"
INBOUND_KEY = "inbound-key-fedcba9876543210"


def escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


class HostileGateway(BaseHTTPRequestHandler):
    """
    Echoes the bearer token it received: in a 401 to the model list (when
    C{refuseList}), in every response header it can, and in streamed text
    split over two deltas written in two socket writes.
    """

    protocol_version = "HTTP/1.1"
    refuseList = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def key(self) -> str:
        return (self.headers.get("Authorization") or "").partition(" ")[2]

    def _start(self, status: int, contentType: str, length: int | None = None) -> None:
        key = self.key()
        self.send_response(status, f"Bad key {key}" if status >= 400 else None)
        self.send_header("Content-Type", contentType)
        self.send_header("Set-Cookie", f"sid={key}")
        self.send_header("X-Api-Key", key)
        self.send_header("X-Request-Id", "req-7")
        self.send_header("Server", f"hostile/{key}")
        # Allow-listed names carrying the key percent-encoded, or a prefix
        # of it (a gateway's masked echo).
        self.send_header("Content-Disposition",
                         "attachment; filename*=UTF-8''" + quote(key, safe=""))
        self.send_header("X-Ratelimit-Remaining-Key", key[:8] + "****" + key[-4:])
        self.send_header("X-Ratelimit-Limit-Requests", "100")
        if length is None:
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, body: bytes) -> None:
        self._start(status, "application/json", len(body))
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.endswith("/models") and self.refuseList:
            self._send(401, json.dumps({"error": {
                "message": f"Incorrect API key provided: {self.key()}"}}).encode())
        elif self.path.endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [
                {"id": "m", "object": "model"}]}).encode())
        else:
            self._send(404, json.dumps({"error": f"no route for {self.key()}"}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.key()
        half = len(key) // 2

        def event(fields: str) -> bytes:
            return (b'data: {"choices": [{"index": 0, "delta": {' + fields.encode()
                    + b'}, "finish_reason": null}]}\n\n')

        self._start(200, "text/event-stream")
        # The key split over two deltas and two socket writes, then again
        # JSON-escaped, then the end.
        self.wfile.write(event(f'"content": "key {key[:half]}"') + b'data: {"choices": [{"ind')
        self.wfile.flush()
        time.sleep(0.05)
        self.wfile.write(b'ex": 0, "delta": {"content": "' + key[half:].encode()
                         + b' and "}, "finish_reason": null}]}\n\n')
        self.wfile.write(event(f'"content": "{escaped(key)}"'))
        self.wfile.write(b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
                         b"\n\ndata: [DONE]\n\n")
        self.wfile.flush()


class SecretsTests(SynchronousTestCase):
    """
    The proxy in front of L{HostileGateway}, as backend and fallback.
    """

    refuseList = False

    def setUp(self) -> None:
        handler = type("Gateway", (HostileGateway,), {"refuseList": self.refuseList})
        self.gateway = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=self.gateway.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(self.gateway.server_close)
        self.addCleanup(self.gateway.shutdown)
        url = f"http://127.0.0.1:{self.gateway.server_address[1]}"
        self.port = freePort()
        self.proxy = Twistd(
            "ollama-proxy",
            ["--listen", f"tcp:{self.port}:interface=127.0.0.1", "--target", url,
             "--fallback", url, "--api-key", BACKEND_KEY, "--require-key", INBOUND_KEY,
             "--debug"],
            self.port,
        )
        self.addCleanup(self.proxy.stop)

    def call(self, method: str, path: str, body: Any = None,
             key: str | None = INBOUND_KEY) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=codec.dumps(body) if body is not None else None,
                               headers={"Authorization": f"Bearer {key}"} if key else {})
            response = connection.getresponse()
            data = response.read()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, data
        finally:
            connection.close()

    def assertNoKey(self, data: bytes) -> None:
        with open(self.proxy.logPath, "rb") as f:
            logged = f.read()
        for secret in (BACKEND_KEY, INBOUND_KEY):
            for form in (secret, escaped(secret), secret[: len(secret) // 2 + 1]):
                self.assertNotIn(form.encode(), data)
                self.assertNotIn(form.encode(), logged)


class TranslatedTests(SecretsTests):
    def test_translatedStreams(self) -> None:
        """
        Finding 4: the key in generated text, split across reads and
        deltas and JSON-escaped, reaches no client of any dialect, nor the
        C{--debug} log (C{upstream chunk} lines included).
        """
        user = [{"role": "user", "content": "hi"}]
        for path, body in [
            ("/api/chat", {"model": "m", "messages": user}),
            ("/api/generate", {"model": "m", "prompt": "hi"}),
            ("/v1/messages", {"model": "m", "max_tokens": 9, "messages": user, "stream": True}),
            ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
            ("/v1/chat/completions", {"model": "m", "messages": user, "stream": True}),
        ]:
            code, _, data = self.call("POST", path, body)
            self.assertEqual(code, 200, (path, data))
            self.assertIn(b"<redacted>", data, path)
            self.assertNoKey(data)

    def test_relayedHeaders(self) -> None:
        """
        Finding 5: passthrough and fallback answers keep the backend's
        content type and request id, never its C{Set-Cookie}, C{Server},
        key-carrying headers or status reason.
        """
        user = [{"role": "user", "content": "hi"}]
        for method, path, body in [
            ("POST", "/v1/chat/completions", {"model": "m", "messages": user, "stream": True}),
            ("GET", "/v1/models", None),
            ("POST", "/api/create", {"model": "x"}),
        ]:
            code, headers, data = self.call(method, path, body)
            self.assertEqual(headers.get("x-request-id"), "req-7", path)
            for name in ("set-cookie", "x-api-key"):
                self.assertNotIn(name, headers, path)
            self.assertNotIn("hostile", headers.get("server", ""), path)
            self.assertEqual(headers.get("x-ratelimit-limit-requests"), "100", path)
            if path != "/api/create":  # the fallback is sent no key to echo
                for name in ("content-disposition", "x-ratelimit-remaining-key"):
                    self.assertNotIn(name, headers, path)
            self.assertNoKey(data + json.dumps(headers).encode())
            for secret in (BACKEND_KEY, INBOUND_KEY):
                self.assertNotIn(secret[:6], unquote(json.dumps(headers)), path)


class HealthTests(SecretsTests):
    refuseList = True

    def test_readyWithoutUpstreamText(self) -> None:
        """
        Finding 1: C{/health/ready}, open without a key, says the backend
        answered 401, not what it said (the key); the error line of the
        list refresh does not carry it either.
        """
        deadline = time.monotonic() + 10
        while True:
            code, _, data = self.call("GET", "/health/ready", key=None)
            if b"401" in data or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(code, 503)
        answer = json.loads(data)
        self.assertEqual(answer["backends"], {"default": "backend answered 401"})
        self.assertNoKey(data)
