"""
Every answer is seen: the site's own (408, 413, 503, the C{Host} 403), the
key gate's 401, the CORS 403 and a 405 get the request log line, a metrics
count and the CORS headers their origin is due; and the C{Host} check
against DNS rebinding.  Driven byte by byte through the real site.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web.auth import requireKeys
from ollama_proxy.web.cors import HostPolicy, OriginPolicy
from ollama_proxy.web.metrics import Metrics
from ollama_proxy.web.site import ProxySite, makeSite
from ollama_proxy.web.tree import buildRoot
from tests.web.test_site import parseResponse

ORIGIN = b"http://localhost:3000"


class SiteCase(SynchronousTestCase):
    """
    The proxy's tree behind the real site, with a key, metrics and a
    C{Host} policy, as C{makeService} wires it.
    """

    httpParser = "httptools"
    """C{--http-parser}: every test here runs on both."""

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)
        self.metrics = Metrics()
        self.harness = ProxyHarness(metrics=self.metrics)
        root = requireKeys(buildRoot(self.harness.ctx), ["good-key"])
        self.site: ProxySite = makeSite(
            root, self.harness.clock, maxBody=100, bodyTimeout=5.0, metrics=self.metrics,
            origins=OriginPolicy(), hosts=HostPolicy(["*.example.internal", "proxy.lan"],
                                                     hostname="box"),
            httpParser=self.httpParser,
        )

    def connect(self, data: bytes) -> StringTransport:
        protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        self.harness.pump()
        return transport

    def send(self, data: bytes) -> tuple[StringTransport, tuple[int, dict[str, str], bytes]]:
        transport = self.connect(data)
        return transport, parseResponse(transport.value())

    def request(self, method: bytes, path: bytes, body: bytes = b"", host: bytes = b"127.0.0.1",
                extra: bytes = b"", length: int | None = None) -> bytes:
        size = len(body) if length is None else length
        return (
            b"%s %s HTTP/1.1\r\nHost: %s\r\nOrigin: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (method, path, host, ORIGIN, size, extra) + body
        )

    def count(self, route: str, status: int) -> float:
        value = self.metrics.registry.get_sample_value(
            "ollama_proxy_requests_total", {"route": route, "model": "", "status": str(status)}
        )
        return value or 0.0

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if "status=" in formatEvent(e)]

    def assertSeen(self, headers: dict[str, str], status: int, route: str = "-") -> None:
        self.assertEqual(headers.get("access-control-allow-origin"), ORIGIN.decode())
        self.assertEqual(self.count(route, status), 1.0)
        [line] = self.lines()
        self.assertIn(f"status={status}", line)


class SiteAnswerTests(SiteCase):
    """
    Answers given outside the handlers are observed like the others.
    """

    def test_unauthorized(self) -> None:
        """
        401 from the key gate.
        """
        _, (status, headers, _) = self.send(self.request(b"GET", b"/api/tags"))
        self.assertEqual(status, 401)
        self.assertSeen(headers, 401)

    def test_methodNotAllowed(self) -> None:
        """
        405 from a resource, counted under its route.
        """
        _, (status, headers, _) = self.send(
            self.request(b"PUT", b"/api/tags", extra=b"Authorization: Bearer good-key\r\n")
        )
        self.assertEqual(status, 405)
        self.assertSeen(headers, 405, "/api/tags")

    def test_disallowedOrigin(self) -> None:
        """
        403 from the CORS layer: logged and counted, no allow header.
        """
        data = self.request(b"GET", b"/api/tags").replace(ORIGIN, b"https://evil.example")
        _, (status, headers, _) = self.send(data)
        self.assertEqual(status, 403)
        self.assertNotIn("access-control-allow-origin", headers)
        self.assertEqual(self.count("-", 403), 1.0)
        self.assertEqual(len(self.lines()), 1)

    def test_tooLarge(self) -> None:
        """
        413 for a declared length over the cap.
        """
        _, (status, headers, _) = self.send(self.request(b"POST", b"/api/chat", length=1000))
        self.assertEqual(status, 413)
        self.assertSeen(headers, 413)

    def test_bodyTimeout(self) -> None:
        """
        408 for a body that does not arrive in time.
        """
        transport = self.connect(self.request(b"POST", b"/api/chat", length=50))
        self.harness.clock.advance(6)
        status, headers, _ = parseResponse(transport.value())
        self.assertEqual(status, 408)
        self.assertSeen(headers, 408)

    def test_draining(self) -> None:
        """
        503 while shutting down.
        """
        self.site.drain(10)
        _, (status, headers, _) = self.send(self.request(b"GET", b"/api/version"))
        self.assertEqual(status, 503)
        self.assertSeen(headers, 503)

    def test_servedOnce(self) -> None:
        """
        An answer of a resource is logged and counted once, by the resource
        (with its route), not again by the site.
        """
        _, (status, _, _) = self.send(
            self.request(b"GET", b"/api/version", extra=b"Authorization: Bearer good-key\r\n")
        )
        self.assertEqual(status, 200)
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.count("/api/version", 200), 1.0)
        self.assertEqual(self.count("-", 200), 0.0)


class HostCheckTests(SiteCase):
    """
    The DNS-rebinding guard of a loopback-only proxy.
    """

    def status(self, host: bytes) -> int:
        _, (status, _, _) = self.send(self.request(b"GET", b"/", host=host))
        return status

    def test_foreignNameRefused(self) -> None:
        """
        A name that could be re-pointed at 127.0.0.1 gets a 403 JSON error,
        logged, counted, with CORS headers.
        """
        _, (status, headers, body) = self.send(
            self.request(b"GET", b"/api/tags", host=b"evil.example.com:11434")
        )
        self.assertEqual(status, 403)
        self.assertIn("host not allowed", codec.loads(body)["error"])
        self.assertSeen(headers, 403)

    def test_localNamesServed(self) -> None:
        """
        Local names, IP literals, the machine's name and C{--allow-host}
        globs are served.
        """
        for host in (b"localhost", b"localhost:11434", b"127.0.0.1:11434", b"[::1]:11434",
                     b"192.168.1.5", b"app.localhost", b"box", b"BOX:1", b"printer.local",
                     b"a.example.internal", b"proxy.lan"):
            self.assertEqual(self.status(host), 200, host)
        for host in (b"evil.example.com", b"proxy.lan.evil.com", b"8.8.8.8.nip.io"):
            self.assertEqual(self.status(host), 403, host)

    def test_anyHostWithoutPolicy(self) -> None:
        """
        A proxy that listens beyond loopback (no policy) serves any name.
        """
        self.site.hosts = None
        self.assertEqual(self.status(b"evil.example.com"), 200)


class SiteAnswerTwistedTests(SiteAnswerTests):
    """
    L{SiteAnswerTests} on twisted.web's parser (C{--http-parser twisted}).
    """

    httpParser = "twisted"


class HostCheckTwistedTests(HostCheckTests):
    """
    L{HostCheckTests} on twisted.web's parser.
    """

    httpParser = "twisted"
