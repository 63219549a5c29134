"""
Only the named routes are reached: the proxy's tree behind the real site,
driven with hand-made request lines.  Dot segments and encoded slashes are
a 400 before anything goes upstream, relayed routes have no sub-paths
beyond the README's, every answer is JSON in the path's dialect, and the
C{Host} header is parsed exactly.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.target import checkPath
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web.cors import HostPolicy, OriginPolicy
from ollama_proxy.web.fallback import fallbackURL
from ollama_proxy.web.site import makeSite
from ollama_proxy.web.tree import buildRoot
from tests.protocol.test_target import DOT_SEGMENT_TARGETS, SLASH_TARGETS
from tests.web.test_site import parseResponse

RELAYED = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
"""The backend paths the relayed routes reach (plus C{/v1/models/{id}})."""


class TreeCase(SynchronousTestCase):
    """
    The proxy's tree behind the real site, with the loopback C{Host} policy.
    """

    def setUp(self) -> None:
        self.harness = ProxyHarness()
        self.site = makeSite(
            buildRoot(self.harness.ctx), self.harness.clock, origins=OriginPolicy(),
            hosts=HostPolicy(hostname="box"),
        )

    def send(self, method: bytes, target: bytes, body: bytes = b"{}",
             host: bytes | None = b"127.0.0.1", extra: bytes = b"") -> tuple[int, dict[str, str], Any]:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        # A request still waiting for the (unscripted) backend is cancelled
        # as its client leaves.
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        hostLine = b"Host: %s\r\n" % host if host is not None else b""
        protocol.dataReceived(
            b"%s %s HTTP/1.1\r\n%s%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % (method, target, hostLine, extra, len(body)) + body
        )
        self.harness.pump()
        if not transport.value():
            return 0, {}, None  # waiting for the backend
        status, headers, data = parseResponse(transport.value())
        if status == 200 and target.lstrip(b"/") == b"":
            return status, headers, data  # Ollama is running
        self.assertTrue(headers["content-type"].startswith("application/json"),
                        (target, transport.value()))
        return status, headers, codec.loads(data) if data else None

    def upstreamPaths(self) -> list[str]:
        """
        @return: every path the backend and the fallback received.
        """
        return [r.path for r in self.harness.backend.received + self.harness.ollama.received]


class DotSegmentTests(TreeCase):
    """
    Finding 2: no spelling of C{..} or of an encoded slash reaches the
    backend (with its key) or the fallback.
    """

    def test_refusedBeforeUpstream(self) -> None:
        """
        Every target of the issue, and every other spelling, on the relayed
        routes: 400 JSON in OpenAI's shape, nothing sent upstream.
        """
        for target in DOT_SEGMENT_TARGETS + SLASH_TARGETS:
            for method in (b"GET", b"POST"):
                status, _, body = self.send(method, target, b'{"model": "m"}')
                self.assertEqual(status, 400, target)
                if target.startswith(b"/v1/"):
                    self.assertIn("not allowed", body["error"]["message"], target)
        self.assertEqual(self.upstreamPaths(), [])

    def test_dialectShapes(self) -> None:
        """
        The 400 is in the dialect of the path it names.
        """
        _, _, body = self.send(b"POST", b"/v1/messages/%2e%2e/x")
        self.assertEqual(body["type"], "error")
        self.assertEqual(body["error"]["type"], "invalid_request_error")
        _, _, body = self.send(b"GET", b"/api/%2e%2e/v1/models")
        self.assertEqual(body, {"error": "dot segments (. and ..) are not allowed in the path"})

    def test_fallbackToo(self) -> None:
        """
        The fallback Ollama has no backend key, but gets no dot segment
        either.
        """
        for target in (b"/foo/../api/tags", b"/foo/%2e%2e/bar", b"/foo%2fbar"):
            status, _, _ = self.send(b"GET", target)
            self.assertEqual(status, 400, target)
        self.assertEqual(self.upstreamPaths(), [])

    def test_otherTargetForms(self) -> None:
        """
        absolute-form, authority-form (CONNECT) and C{@host/x} targets are
        400: the proxy is no forward proxy, and C{@127.0.0.1:18001/x} once
        became the fallback URL's authority.
        """
        for method, target in [
            (b"GET", b"http://evil/"), (b"GET", b"http://127.0.0.1:11434/api/tags"),
            (b"CONNECT", b"evil:443"), (b"GET", b"@127.0.0.1:18001/x"), (b"OPTIONS", b"*"),
        ]:
            status, _, body = self.send(method, target)
            self.assertEqual((status, body),
                             (400, {"error": "the request target must be a path starting with /"}))
        self.assertEqual(self.upstreamPaths(), [])

    def test_ordinaryStillRelayed(self) -> None:
        """
        A model id with C{/}, dots and escapes reaches the backend's
        C{/v1/models/{id}} as sent; double slashes go nowhere new.
        """
        self.send(b"GET", b"/v1/models/qwen/qwen3.1-coder:8b")
        self.send(b"GET", b"/v1/models/caf%C3%A9")
        self.send(b"GET", b"//v1/models")
        # The openai SDK's models.retrieve("qwen/qwen3"), as it sends it.
        self.send(b"GET", b"/v1/models/qwen%2Fqwen3")
        self.assertEqual(self.upstreamPaths(), [
            "/v1/models/qwen/qwen3.1-coder:8b", "/v1/models/caf%C3%A9", "/v1/models",
            "/v1/models/qwen%2Fqwen3",
        ])

    @settings(max_examples=150, deadline=None)
    @given(
        st.sampled_from(["/v1/models", "/v1/chat/completions", "/v1/completions",
                         "/v1/embeddings", "/models", "/chat/completions", "/v1", "/api", ""]),
        st.lists(st.sampled_from(
            ["/", ".", "..", "%2e", "%2E", "%252e", "%2f", "%2F", "%5c", "%25", ";", "a",
             "admin", "keys", "models", "%41", "%"]), max_size=8),
        st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT"]),
    )
    def test_randomPathsStayOnTheList(self, prefix: str, parts: list[str], method: bytes) -> None:
        """
        Paths made of segments, dots and escapes reach the backend only on
        the allow-list (or as a clean C{/v1/models/{id}}), and the fallback
        only without a dot segment or an encoded slash.
        """
        self.setUp()
        target = (prefix + "".join(parts)) or "/"
        if not target.startswith("/"):
            target = "/" + target
        self.send(method, target.encode(), b'{"model": "m"}')
        for request in self.harness.backend.received:
            self.assertIsNone(checkPath(request.path.encode()), (target, request.path))
            self.assertTrue(
                request.path in RELAYED or (
                    request.path.startswith("/v1/models/") and request.method == "GET"
                ), (target, request.path))
        for request in self.harness.ollama.received:
            self.assertIsNone(checkPath(request.path.encode()), (target, request.path))


class SubPathTests(TreeCase):
    """
    Exactly the README's routes: no sub-path, no method beyond the
    documented ones.
    """

    def test_relayedSubPaths(self) -> None:
        """
        C{/v1/chat/completions/x} (OpenAI's stored completions) and friends
        are a 404 in OpenAI's shape, never relayed.
        """
        for target in (b"/v1/chat/completions/x", b"/v1/chat/completions/", b"/v1/completions/x",
                       b"/v1/embeddings/x", b"/chat/completions/x/messages", b"/v1/models/",
                       b"/v1/models//x", b"/v1/responses/x"):
            status, _, body = self.send(b"POST", target, b'{"model": "m"}')
            self.assertEqual(status, 404, target)
            self.assertEqual(body["error"]["message"],
                             f"{target.decode()} is not served by this proxy")
        self.assertEqual(self.upstreamPaths(), [])

    def test_methods(self) -> None:
        """
        C{GET /v1/chat/completions} would list the stored completions of
        everyone on the operator's key: 405 with C{Allow}; models are C{GET}.
        """
        status, headers, body = self.send(b"GET", b"/v1/chat/completions")
        self.assertEqual((status, headers["allow"]), (405, "POST"))
        self.assertEqual(body["error"]["message"], "method GET not allowed")
        status, headers, _ = self.send(b"POST", b"/v1/models")
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"))
        status, headers, _ = self.send(b"DELETE", b"/v1/models/x")
        self.assertEqual(status, 405)
        self.assertEqual(self.upstreamPaths(), [])

    def test_ollamaAndAgentSubPaths(self) -> None:
        """
        C{/api/chat/x} is no C{/api/chat}; C{/v1/messages/x} is a 404 in
        Anthropic's shape (it was twisted.web's HTML page).
        """
        status, _, body = self.send(b"POST", b"/api/chat/x")
        self.assertEqual((status, body), (404, {"error": "/api/chat/x is not served by this proxy"}))
        status, _, body = self.send(b"POST", b"/v1/messages/x")
        self.assertEqual(status, 404)
        self.assertEqual(body["error"]["type"], "not_found_error")
        status, _, body = self.send(b"POST", b"/v1/messages/count_tokens/x")
        self.assertEqual((status, body["type"]), (404, "error"))
        self.assertEqual(self.upstreamPaths(), [])

    def test_blobsAndUnknownGoToFallback(self) -> None:
        """
        The fallback keeps its sub-paths: blobs and unknown paths.
        """
        self.send(b"POST", b"/api/blobs/sha256:abc")
        self.send(b"GET", b"/api/unknown/deeper?x=1")
        self.assertEqual(self.upstreamPaths(), ["/api/blobs/sha256:abc", "/api/unknown/deeper"])


class JSONEverywhereTests(TreeCase):
    """
    No twisted.web HTML page for any path or method.
    """

    def test_health(self) -> None:
        for method, target, status in [
            (b"GET", b"/health", 404), (b"GET", b"/health/", 404), (b"GET", b"/health/x", 404),
            (b"GET", b"/health/live/x", 404), (b"POST", b"/health/live", 405),
            (b"DELETE", b"/health/ready", 405),
        ]:
            code, headers, body = self.send(method, target)
            self.assertEqual(code, status, target)
            self.assertIn("error", body)
            if status == 405:
                self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertEqual(self.send(b"GET", b"/health/live")[:3:2], (200, {"status": "ok"}))

    def test_status(self) -> None:
        """
        The status page's three paths: exactly themselves, GET and HEAD.
        """
        from ollama_proxy.web.metrics import Metrics

        self.harness = ProxyHarness(metrics=Metrics())
        self.site = makeSite(buildRoot(self.harness.ctx), self.harness.clock,
                             origins=OriginPolicy(), hosts=HostPolicy(hostname="box"))
        for method, target, status in [
            (b"GET", b"/status/x", 404), (b"GET", b"/status.json/", 404),
            (b"GET", b"/status.js/x", 404), (b"POST", b"/status", 405),
            (b"DELETE", b"/status.json", 405),
        ]:
            code, headers, body = self.send(method, target)
            self.assertEqual(code, status, target)
            self.assertIn("error", body)
            if status == 405:
                self.assertEqual(headers["allow"], "GET, HEAD")
        self.assertEqual(self.send(b"GET", b"/status.json")[0], 200)

    def test_unknownMethods(self) -> None:
        """
        C{PATCH} (or any made-up method) is a 405 JSON with C{Allow}.
        """
        for target in (b"/api/tags", b"/", b"/api/chat", b"/v1/messages", b"/metrics"):
            status, headers, body = self.send(b"PATCH", target)
            self.assertEqual(status, 405, target)
            self.assertIn("error", body)
        status, headers, _ = self.send(b"BREW", b"/api/tags")
        self.assertEqual((status, headers["allow"]), (405, "GET, HEAD"))

    def test_renderFailureIsJSON(self) -> None:
        """
        A resource that raises while rendering gives a JSON 500 in the
        path's dialect, not twisted.web's "Processing Failed" page.
        """

        class Broken(Resource):
            isLeaf = True

            def render(self, request: Request) -> bytes:
                raise RuntimeError("boom")

        self.site = makeSite(Broken(), MemoryReactorClock())
        status, _, body = self.send(b"POST", b"/v1/messages")
        self.assertEqual(status, 500)
        self.assertEqual(body["error"]["type"], "api_error")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class HostGrammarTests(TreeCase):
    """
    One C{Host}, parsed as RFC 3986 C{host[:port]}.
    """

    def test_twoHosts(self) -> None:
        status, _, body = self.send(b"GET", b"/api/version", extra=b"Host: evil.com\r\n")
        self.assertEqual((status, body), (400, {"error": "more than one Host header"}))

    def test_malformed(self) -> None:
        for host in (b"[::1]evil.com", b"[::1].evil.com", b"[localhost]:1", b"localhost:evil",
                     b"localhost, evil.com", b"[::1"):
            status, _, body = self.send(b"GET", b"/api/version", host=host)
            self.assertEqual(status, 400, host)
            self.assertIn("malformed Host header", body["error"])

    def test_localNames(self) -> None:
        """
        Trailing-dot forms of local names are the same names; a public name
        with a dot is still refused.
        """
        for host in (b"localhost.", b"foo.localhost.", b"127.0.0.1.", b"localhost.:11434",
                     b"[::1]:11434", b"LOCALHOST", b"box.", b"localhost:"):
            status, _, _ = self.send(b"GET", b"/api/version", host=host)
            self.assertEqual(status, 200, host)
        for host in (b"evil.com.", b"evil.com", b"127.0.0.1.evil.com"):
            status, _, _ = self.send(b"GET", b"/api/version", host=host)
            self.assertEqual(status, 403, host)


class FallbackURLTests(SynchronousTestCase):
    """
    The fallback URL is built from parts, never by concatenation.
    """

    def test_parts(self) -> None:
        base = "http://127.0.0.1:11505"
        self.assertEqual(fallbackURL(base, b"/api/x?a=b&c=%20"),
                         "http://127.0.0.1:11505/api/x?a=b&c=%20")
        self.assertEqual(fallbackURL(base + "/ollama/", b"/api/x"),
                         "http://127.0.0.1:11505/ollama/api/x")
        self.assertEqual(fallbackURL(base, b"//evil.com/x"), "http://127.0.0.1:11505//evil.com/x")
        self.assertEqual(fallbackURL(base, b"/caf\xc3\xa9"), "http://127.0.0.1:11505/caf%C3%A9")

    def test_authorityNeverChanges(self) -> None:
        for target in (b"@127.0.0.1:18001/x", b"http://evil/x", b"/a/../b", b":18001/x"):
            self.assertRaises(BadRequest, fallbackURL, "http://127.0.0.1:11505", target)
