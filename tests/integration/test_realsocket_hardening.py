"""
Hardening over real loopback sockets: a burst of connections waits in the
accept queue instead of SYN retransmits, and no secret the proxy holds
reaches a client through upstream text (a gateway that echoes the
request's C{Authorization} header in its errors).  Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.service.listen import somaxconn
from tests.integration.servers import (
    RecordingBackend,
    Twistd,
    bomb,
    freePort,
    rss,
    startGateway,
)

BACKEND_KEY = "sk-backend-0123456789abcdef"
INBOUND_KEY = "inbound-key-fedcba9876543210"
CLIENT_KEY = "sk-client-5555aaaa5555aaaa"


class EchoingGateway(BaseHTTPRequestHandler):
    """
    A gateway that answers every generation with a 401 (or, for a
    C{stream-error} model, a stream that fails) whose text quotes the
    request's headers, as some gateways and debugging proxies do.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _headers(self) -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.headers.items())

    def _send(self, status: int, body: bytes, contentType: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", contentType)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.endswith("/models"):
            data = [{"id": "echo", "object": "model"}, {"id": "stream-error", "object": "model"}]
            self._send(200, json.dumps({"object": "list", "data": data}).encode(),
                       "application/json")
            return
        self._send(404, json.dumps({"error": f"no route; got {self._headers()}"}).encode(),
                   "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        message = f"invalid request; headers were {self._headers()}"
        if body.get("model") == "stream-error":
            chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
            events = (
                b"data: " + json.dumps(chunk).encode() + b"\n\n"
                + b"data: " + json.dumps({"error": {"message": message}}).encode() + b"\n\n"
            )
            self._send(200, events, "text/event-stream")
            return
        error = {"error": {"message": message, "type": "invalid_request_error"}}
        self._send(401, json.dumps(error).encode(), "application/json")

    do_DELETE = do_POST


class RedactionTests(SynchronousTestCase):
    """
    The proxy in front of L{EchoingGateway} (as backend and as fallback
    Ollama): whatever the route and dialect, the client's answer names no
    key.
    """

    keyOptions: tuple[str, ...] = ("--require-key", INBOUND_KEY)
    """How clients present keys: an inbound key the proxy checks."""

    def setUp(self) -> None:
        self.gateway = ThreadingHTTPServer(("127.0.0.1", 0), EchoingGateway)
        thread = threading.Thread(target=self.gateway.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(thread.join, 5)
        self.addCleanup(self.gateway.server_close)
        self.addCleanup(self.gateway.shutdown)
        gatewayURL = f"http://127.0.0.1:{self.gateway.server_address[1]}"
        self.port = freePort()
        self.proxy = Twistd(
            "ollama-proxy",
            ["--listen", f"tcp:{self.port}:interface=127.0.0.1", "--target", gatewayURL,
             "--fallback", gatewayURL, "--api-key", BACKEND_KEY, *self.keyOptions],
            self.port,
        )
        self.addCleanup(self.proxy.stop)

    def call(self, method: str, path: str, body: Any = None, key: str = INBOUND_KEY,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(
                method, path, body=codec.dumps(body) if body is not None else None,
                headers={"Authorization": f"Bearer {key}", **(headers or {})},
            )
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def assertClean(self, data: bytes) -> None:
        self.assertIn(b"<redacted>", data)
        for secret in (BACKEND_KEY, INBOUND_KEY, CLIENT_KEY):
            self.assertNotIn(secret.encode(), data)

    def test_everyRoute(self) -> None:
        """
        The backend's echoed C{Authorization: Bearer <backend key>} is
        redacted in the JSON error of C{/api/chat} and C{/api/generate}
        (streamed or not), the relayed 401 of C{/v1/chat/completions}, the
        NDJSON error line after a stream began, and an error event inside a
        relayed (2xx) passthrough stream.
        """
        messages = [{"role": "user", "content": "hi"}]
        cases: list[tuple[str, Any, int]] = [
            ("/api/chat", {"model": "echo", "messages": messages}, 401),
            ("/api/chat", {"model": "echo", "messages": messages, "stream": False}, 401),
            ("/api/generate", {"model": "echo", "prompt": "hi"}, 401),
            ("/api/generate", {"model": "echo", "prompt": "hi", "stream": False}, 401),
            ("/v1/chat/completions", {"model": "echo", "messages": messages}, 401),
            ("/v1/chat/completions", {"model": "echo", "messages": messages, "stream": True}, 401),
            ("/api/chat", {"model": "stream-error", "messages": messages}, 200),
            ("/v1/chat/completions",
             {"model": "stream-error", "messages": messages, "stream": True}, 200),
        ]
        for path, body, status in cases:
            code, data = self.call("POST", path, body)
            self.assertEqual(code, status, (path, body, data))
            self.assertClean(data)

    def test_fallback(self) -> None:
        """
        A relayed non-2xx answer of the fallback Ollama that quotes an
        inbound key (here the client sent it in a header of its own) is
        redacted too.
        """
        code, data = self.call(
            "POST", "/api/create", {"model": "x"}, headers={"X-Debug": INBOUND_KEY}
        )
        self.assertEqual(code, 401)
        self.assertClean(data)


class ForwardedKeyRedactionTests(RedactionTests):
    """
    With C{--forward-client-key}, the client's own key goes upstream and
    is what the gateway echoes: redacted as well.
    """

    keyOptions = ("--forward-client-key",)
    """The client's own key, sent upstream."""

    def call(self, method: str, path: str, body: Any = None, key: str = CLIENT_KEY,
             headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        return super().call(method, path, body, key, headers)

    def test_fallback(self) -> None:
        """
        The client's key sent in a header the fallback echoes.
        """
        code, data = self.call(
            "POST", "/api/create", {"model": "x"}, headers={"X-Debug": CLIENT_KEY}
        )
        self.assertEqual(code, 401)
        self.assertClean(data)


def connectedWithin(sockets: list[socket.socket], seconds: float) -> int:
    """
    @param sockets: non-blocking sockets with a C{connect} in progress.
    @param seconds: how long to wait for the handshakes.
    @return: how many completed (the kernel queued them for C{accept}).
    """
    pending, done = list(sockets), 0
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        _, writable, _ = select.select([], pending, [], max(0.0, deadline - time.monotonic()))
        for sock in writable:
            pending.remove(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                done += 1
    return done


class BurstTests(SynchronousTestCase):
    """
    The proxy with its default C{--listen} description, frozen (C{SIGSTOP})
    so that it accepts nothing while a burst of clients connects, as when
    a reactor turn is busy: every handshake must still complete (the
    kernel queues it), not only the first 50.
    """

    BURST = 300

    def test_burstQueued(self) -> None:
        """
        300 connections made at once while the proxy cannot accept: all of
        them are established (strports' default backlog of 50 held 51).
        """
        if somaxconn() < self.BURST:
            raise self.skipTest(f"net.core.somaxconn is below {self.BURST}")
        port = freePort()
        proxy = Twistd(
            "ollama-proxy",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--target", "http://127.0.0.1:9",
             "--fallback", ""],
            port,
        )
        self.addCleanup(proxy.stop)
        os.kill(proxy.process.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, proxy.process.pid, signal.SIGCONT)
        sockets = []
        for _ in range(self.BURST):
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        self.assertEqual(connectedWithin(sockets, 2.0), self.BURST)

    def test_explicitBacklogWins(self) -> None:
        """
        A C{backlog=} in C{--listen} is used as it is.
        """
        port = freePort()
        proxy = Twistd(
            "ollama-proxy",
            ["--listen", f"tcp:{port}:interface=127.0.0.1:backlog=8", "--target",
             "http://127.0.0.1:9", "--fallback", ""],
            port,
        )
        self.addCleanup(proxy.stop)
        os.kill(proxy.process.pid, signal.SIGSTOP)
        self.addCleanup(os.kill, proxy.process.pid, signal.SIGCONT)
        sockets = []
        for _ in range(40):
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        # The kernel queues backlog + 1 completed handshakes.
        self.assertLess(connectedWithin(sockets, 0.5), 20)


ALLOWED_UPSTREAM = {"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"}
"""The backend paths the relayed routes may reach (and C{/v1/models/{id}})."""

ATTACKS = [
    (b"GET", b"/v1/models/../../admin/keys"),
    (b"GET", b"/v1/models/%2e%2e/%2e%2e/admin/keys"),
    (b"GET", b"/v1/models/..%2f..%2fadmin%2fkeys"),
    (b"POST", b"/v1/chat/completions/../../key/generate"),
    (b"GET", b"/v1/models/%2E%2e/%2e./spend/logs"),
    (b"GET", b"/v1/models/%252e%252e/%252e%252e/admin"),
    (b"GET", b"/v1/models/..;/..;/admin"),
    (b"GET", b"/v1/models/..%5c..%5cadmin"),
    (b"GET", b"/v1/models/..\\..\\admin"),
    (b"GET", b"/v1/models/%c0%ae%c0%ae/admin"),
    (b"POST", b"/v1/chat/completions/x"),
    (b"GET", b"/v1/chat/completions"),
    (b"POST", b"/chat/completions/../../key/generate"),
    (b"GET", b"http://evil/v1/models"),
    (b"CONNECT", b"127.0.0.1:1"),
    (b"GET", b"@127.0.0.1:1/x"),
    (b"GET", b"/api/../../admin"),
]


class RouteTests(SynchronousTestCase):
    """
    Finding 2 over real sockets: a hostile backend on 127.0.0.1 that serves
    every path records what it receives; the proxy in front of it (as
    backend and as fallback), sent hand-made request lines, never lets a
    dot segment, an encoded slash or an unnamed route through.
    """

    def setUp(self) -> None:
        self.backend = RecordingBackend()
        self.addCleanup(self.backend.close)
        self.fallback = RecordingBackend()
        self.addCleanup(self.fallback.close)
        self.port = freePort()
        self.proxy = Twistd(
            "ollama-proxy",
            ["--listen", f"tcp:{self.port}:interface=127.0.0.1", "--target", self.backend.url,
             "--fallback", self.fallback.url, "--api-key", BACKEND_KEY],
            self.port,
        )
        self.addCleanup(self.proxy.stop)

    def raw(self, method: bytes, target: bytes, host: bytes = b"127.0.0.1") -> tuple[int, bytes]:
        """
        Send one request line as it is; read the answer to the end.
        """
        body = b'{"model": "m", "messages": []}'
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(
                b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (method, target, host, len(body), body)
            )
            data = b""
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        return int(head.split(b" ")[1]), rest

    def test_attacksNeverReachUpstream(self) -> None:
        """
        Every attack is answered with a JSON 4xx, and neither the backend
        nor the fallback received anything but the proxy's own model list.
        """
        for method, target in ATTACKS:
            status, body = self.raw(method, target)
            self.assertIn(status, (400, 404, 405), target)
            self.assertIn(b'"error"', body, target)
        self.assertEqual(self.fallback.received, [])
        for verb, path in self.backend.received:
            self.assertIn(path, ALLOWED_UPSTREAM, (verb, path))
            self.assertNotIn("..", path)
            self.assertNotIn("%2", path.lower())

    def test_namedRoutesStillRelayed(self) -> None:
        """
        The named routes still reach the backend, and an unknown path the
        fallback, with their paths as sent.
        """
        self.assertEqual(self.raw(b"GET", b"/v1/models/qwen/qwen3-coder")[0], 200)
        # The openai SDK's models.retrieve("qwen/qwen3"), as it sends it.
        self.assertEqual(self.raw(b"GET", b"/v1/models/qwen%2Fqwen3")[0], 200)
        self.assertIn(("GET", "/v1/models/qwen%2Fqwen3"), self.backend.received)
        self.assertEqual(self.raw(b"POST", b"/v1/chat/completions")[0], 200)
        self.assertEqual(self.raw(b"GET", b"/api/unknown?x=1")[0], 200)
        self.assertIn(("GET", "/v1/models/qwen/qwen3-coder"), self.backend.received)
        self.assertIn(("POST", "/v1/chat/completions"), self.backend.received)
        self.assertEqual(self.fallback.received, [("GET", "/api/unknown?x=1")])

    def test_hostGrammar(self) -> None:
        """
        Malformed C{Host} values are a 400, local trailing-dot names are
        served.
        """
        for host in (b"[::1]evil.com", b"[::1].evil.com", b"[localhost]:1", b"localhost:evil"):
            self.assertEqual(self.raw(b"GET", b"/api/version", host)[0], 400, host)
        for host in (b"localhost.", b"foo.localhost.", b"127.0.0.1."):
            self.assertEqual(self.raw(b"GET", b"/api/version", host)[0], 200, host)


class BombTests(SynchronousTestCase):
    """
    Issue 19, finding 3, over real sockets: concurrent 2 KB zstd bodies
    that each inflate to 60 MB of valid JSON, against a backend that holds
    every request.  On dcc94b3 ten of them took the proxy from 58 MB to
    2.5 GB; now the body budget refuses what does not fit (503 with
    C{Retry-After}), the process stays small, and what was held is given
    back afterwards.
    """

    COUNT = 10

    def setUp(self) -> None:
        self.gateway, url = startGateway(hold=1.0)
        self.addCleanup(self.gateway.server_close)
        self.addCleanup(self.gateway.shutdown)
        self.port = freePort()
        self.proxy = Twistd("ollama-proxy", [
            "--listen", f"tcp:{self.port}:interface=127.0.0.1", "--target", url,
            "--fallback", ""], self.port)
        self.addCleanup(self.proxy.stop)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            connection.request("POST", "/v1/messages", body=body, headers=headers)
            response = connection.getresponse()
            return (response.status, {k.lower(): v for k, v in response.getheaders()},
                    response.read())
        finally:
            connection.close()

    def test_concurrentBombs(self) -> None:
        """
        Ten concurrent bombs: each answered (200, or 503 with
        C{Retry-After} in Anthropic's shape), peak RSS under 400 MB, and an
        ordinary request served afterwards.
        """
        ordinary = codec.dumps({"model": "m", "max_tokens": 8,
                                "messages": [{"role": "user", "content": "hi"}]})
        plain = {"Content-Type": "application/json"}
        self.assertEqual(self.post(ordinary, plain)[0], 200)
        data = bomb(60_000_000)
        self.assertLess(len(data), 4096)
        answers: list[tuple[int, dict[str, str], bytes]] = []
        threads = [threading.Thread(target=lambda: answers.append(self.post(
            data, {**plain, "Content-Encoding": "zstd"}))) for _ in range(self.COUNT)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.assertEqual(len(answers), self.COUNT)
        for status, headers, body in answers:
            self.assertIn(status, (200, 503), body[:200])
            if status == 503:
                self.assertEqual(headers["retry-after"], "1")
                self.assertEqual(json.loads(body)["error"]["type"], "overloaded_error")
        self.assertIn(503, [status for status, _, _ in answers])
        peak = rss(self.proxy.process.pid)[1]
        self.assertLess(peak, 400 * 2**20)
        self.assertEqual(self.post(ordinary, plain)[0], 200)
