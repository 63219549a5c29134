"""
Answers that are ready without waiting (L{ProxyResource.ready}): a warm
C{/api/tags} and the constant routes are answered within C{render}, with
the same bytes and headers as the async handler gives, and still logged
and counted; a stale catalog goes the async way.  Driven byte by byte
through the real site, behind the key gate, the CORS layer and the
C{Host} check.
"""

from __future__ import annotations

import re
from typing import Any

from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.web.bridge import Exchange, ProxyResource
from ollama_proxy.web.cors import HostPolicy, OriginPolicy
from ollama_proxy.web.site import makeSite
from ollama_proxy.web.tree import buildRoot
from ollama_proxy.web.models import Ps, Recommendations, Status, Tags
from ollama_proxy.web.ollama import Version
from tests.web.helpers import serveCatalog
from tests.web.test_answers import ORIGIN, SiteCase
from tests.web.test_site import parseResponse

KEY = b"Authorization: Bearer good-key\r\n"

READY = [Tags, Ps, Recommendations, Version, Status]
"""The resources with a L{ProxyResource.ready}."""


def withoutDate(raw: bytes) -> bytes:
    """
    @param raw: one raw response.
    @return: it without its C{Date} header (the only part that depends on
        when it was sent).
    """
    return re.sub(rb"\r\nDate: [^\r]*", b"", raw)


class ReadyCase(SiteCase):
    """
    The site, with every C{ready} answer noted.
    """

    def setUp(self) -> None:
        super().setUp()
        self.answered: list[str] = []
        self.linesBefore = 0
        for cls in READY:
            self._count(cls)

    def _count(self, cls: type[ProxyResource]) -> None:
        """
        Note each answer C{cls.ready} gives.
        """
        original = cls.ready

        def ready(resource: Any, ex: Exchange) -> Any:
            answer = original(resource, ex)
            if answer is not None:
                self.answered.append(cls.__name__)
            return answer

        self.patch(cls, "ready", ready)

    def warm(self) -> None:
        """
        Make the catalog (one cold C{/api/tags}, answered by the backend).
        """
        transport = self.connect(self.request(b"GET", b"/api/tags", extra=KEY))
        serveCatalog(self.harness, [{"id": "gpt-4o"}, {"id": "qwen3:8b"}])
        self.assertEqual(parseResponse(transport.value())[0], 200)
        self.assertEqual(self.answered, [])
        self.linesBefore = len(super().lines())

    def lines(self) -> list[str]:
        """
        @return: the request lines since L{warm}.
        """
        return super().lines()[self.linesBefore :]

    def raw(self, method: bytes, path: bytes) -> bytes:
        """
        @return: the raw response to one request (with a key and an origin).
        """
        raw: bytes = self.connect(self.request(method, path, extra=KEY)).value()
        return raw



class ReadyTests(ReadyCase):
    """
    The synchronous answers against the async ones.
    """

    def test_sameBytes(self) -> None:
        """
        Every ready route, GET and HEAD, answers from C{ready} with the
        bytes the async handler sends (CORS headers included), without
        asking the backend again.
        """
        self.warm()
        # /api/ps says when a model "expires": the same clock for both.
        self.harness.ctx.now = lambda: 1_700_000_000_000_000_000
        asked = len(self.harness.backend.received)
        paths = [b"/api/tags", b"/api/ps", b"/api/experimental/model-recommendations",
                 b"/api/version", b"/api/status"]
        fast = {(m, p): self.raw(m, p) for m in (b"GET", b"HEAD") for p in paths}
        self.assertEqual(
            sorted(set(self.answered)), sorted(cls.__name__ for cls in READY)
        )
        self.assertEqual(len(self.answered), 2 * len(paths))
        for cls in READY:
            self.patch(cls, "ready", lambda resource, ex: None)
        for (method, path), answer in fast.items():
            slow = self.raw(method, path)
            self.assertEqual(withoutDate(answer), withoutDate(slow), (method, path))
            status, headers, body = parseResponse(answer)
            self.assertEqual(status, 200)
            self.assertEqual(headers["access-control-allow-origin"], ORIGIN.decode())
            self.assertEqual(headers["content-type"], "application/json; charset=utf-8")
            if method == b"HEAD":
                self.assertEqual(body, b"")
        self.assertEqual(len(self.harness.backend.received), asked)

    def test_loggedAndCounted(self) -> None:
        """
        A ready answer gets its log line and its metrics under its route.
        """
        self.warm()
        before = self.count("/api/tags", 200)
        self.assertEqual(parseResponse(self.raw(b"GET", b"/api/tags"))[0], 200)
        self.assertEqual(self.answered, ["Tags"])
        self.assertEqual(self.count("/api/tags", 200), before + 1)
        [line] = self.lines()
        self.assertIn("GET /api/tags model=- status=200 backend=- tokens=- ttft=-", line)
        event = [e for e in self.events if e.get("route") == "/api/tags"][-1]
        self.assertEqual(event["status"], 200)
        self.assertGreater(event["duration_ms"], 0)

    def test_staleCatalogWaits(self) -> None:
        """
        Once the lists are older than the TTL, C{/api/tags} waits for the
        backend again, as before.
        """
        self.warm()
        models = self.harness.ctx.models
        self.assertIsNotNone(models.readyCatalog())
        self.harness.clock.advance(3600)
        self.assertIsNone(models.readyCatalog())
        asked = len(self.harness.backend.received)
        transport = self.connect(self.request(b"GET", b"/api/tags", extra=KEY))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.harness.backend.received[asked].path, "/v1/models")
        serveCatalog(self.harness, [{"id": "gpt-4o"}])
        status, _, body = parseResponse(transport.value())
        self.assertEqual(status, 200)
        self.assertIn(b"gpt-4o:proxy", body)
        self.assertNotIn("Tags", self.answered)
        self.assertIsNotNone(models.readyCatalog())

    def test_keyAndHostStillChecked(self) -> None:
        """
        The key gate and the C{Host} check still come first.
        """
        self.warm()
        _, (status, _, _) = self.send(self.request(b"GET", b"/api/tags"))
        self.assertEqual(status, 401)
        _, (status, _, _) = self.send(
            self.request(b"GET", b"/api/tags", host=b"evil.example", extra=KEY)
        )
        self.assertEqual(status, 403)
        self.assertEqual(self.answered, [])


class Refusing(ProxyResource):
    """
    A resource whose ready answer is an error.
    """

    def __init__(self, ctx: Any, error: Exception) -> None:
        super().__init__(ctx)
        self.error = error

    def ready(self, ex: Exchange) -> Any:
        raise self.error

    async def handle_GET(self, ex: Exchange) -> Any:
        raise AssertionError("not reached")


class ReadyErrorTests(SiteCase):
    """
    An error raised by C{ready} goes through the same funnel.
    """

    def mount(self, error: Exception) -> None:
        # The site's tree: CORS, then the key gate, then the root.
        root = self.site.resource.wrapped.wrapped
        root.putChild(b"refusing", Refusing(self.harness.ctx, error))

    def test_proxyError(self) -> None:
        """
        A L{ProxyError}: its status and Ollama's error body, logged and
        counted.
        """
        self.mount(BadRequest("no such thing"))
        _, (status, headers, body) = self.send(self.request(b"GET", b"/refusing", extra=KEY))
        self.assertEqual(status, 400)
        self.assertIn(b'\r\n{"error":"no such thing"}\r\n', body)
        self.assertEqual(headers["access-control-allow-origin"], ORIGIN.decode())
        self.assertEqual(self.count("/refusing", 400), 1.0)
        # Only this request's line: the global log may still carry a late
        # line of an earlier test's connection.
        [line] = [line for line in self.lines() if "/refusing" in line]
        self.assertIn("GET /refusing model=- status=400", line)

    def test_unexpected(self) -> None:
        """
        Anything else: a 500 with the generic message, its traceback
        logged.
        """
        self.mount(RuntimeError("bug"))
        _, (status, _, body) = self.send(self.request(b"GET", b"/refusing", extra=KEY))
        self.assertEqual(status, 500)
        self.assertIn(b'{"error":"internal proxy error; see the proxy log"}', body)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.count("/refusing", 500), 1.0)


class HostCacheTests(SiteCase):
    """
    L{HostPolicy} keeps its answers, within a bound.
    """

    def test_sameAnswers(self) -> None:
        """
        Asked again, a host gets the same answer.
        """
        policy = HostPolicy(["proxy.lan"], hostname="box")
        hosts = [b"127.0.0.1:11434", b"evil.example", b"proxy.lan", b"box", b"[::1]:80", b"8.8.8.8"]
        first = [policy.allows(h) for h in hosts]
        self.assertEqual(first, [True, False, True, True, True, False])
        self.assertEqual([policy.allows(h) for h in hosts], first)

    def test_bounded(self) -> None:
        """
        A client that sends a new C{Host} each time does not grow it
        beyond L{HostPolicy.CACHED}.
        """
        policy = HostPolicy(hostname="box")
        for n in range(3 * HostPolicy.CACHED):
            self.assertFalse(policy.allows(b"h%d.example" % n))
        self.assertLessEqual(len(policy._answers), HostPolicy.CACHED)
        self.assertTrue(policy.allows(b"localhost"))


class WarmTagsTests(ReadyCase):
    """
    A warm C{/api/tags} for a client without a key of its own is written
    by L{Tags.render} at once (no exchange): the same bytes as the common
    path, one log line and one count, the site's checks still first.  A
    proxy without a key gate here, so that the client presents none.
    """

    def setUp(self) -> None:
        super().setUp()
        root = buildRoot(self.harness.ctx)
        self.site = makeSite(
            root, self.harness.clock, maxBody=100, bodyTimeout=5.0, metrics=self.metrics,
            origins=OriginPolicy(), hosts=HostPolicy(["*.example.internal", "proxy.lan"],
                                                     hostname="box"),
        )

    def viaCommonPath(self) -> None:
        """
        Send every later request down L{ProxyResource.render}.
        """
        self.patch(Tags, "render", ProxyResource.render)

    def test_sameBytesAsCommonPath(self) -> None:
        """
        GET and HEAD, with and without a short key (no secret) and a query:
        the fast path answers without asking C{ready}, with the bytes the
        common path sends (CORS headers and C{Content-Length} included).
        """
        self.warm()
        asked = len(self.harness.backend.received)
        cases = [(m, p, k) for m in (b"GET", b"HEAD") for p in (b"/api/tags", b"/api/tags?x=1")
                 for k in (b"", b"Authorization: Bearer ollama\r\n")]
        fast = {case: self.connect(self.request(case[0], case[1], extra=case[2])).value()
                for case in cases}
        self.assertEqual(self.answered, [])
        self.viaCommonPath()
        for (method, path, key), answer in fast.items():
            slow = self.connect(self.request(method, path, extra=key)).value()
            self.assertEqual(withoutDate(answer), withoutDate(slow), (method, path, key))
            status, headers, body = parseResponse(answer)
            self.assertEqual(status, 200)
            self.assertEqual(headers["access-control-allow-origin"], ORIGIN.decode())
            self.assertEqual(body, b"" if method == b"HEAD" else slow.partition(b"\r\n\r\n")[2])
        self.assertEqual(len(self.answered), len(cases))
        self.assertEqual(len(self.harness.backend.received), asked)

    def test_oneLineOneCount(self) -> None:
        """
        Each fast answer is logged once and counted once, under its route.
        """
        self.warm()
        before = self.count("/api/tags", 200)
        for _ in range(3):
            self.assertEqual(parseResponse(self.raw(b"GET", b"/api/tags"))[0], 200)
        self.assertEqual(self.answered, [])
        self.assertEqual(self.count("/api/tags", 200), before + 3)
        lines = self.lines()
        self.assertEqual(len(lines), 3)
        for line in lines:
            self.assertIn("GET /api/tags model=- status=200 backend=- tokens=- ttft=-", line)
        events = [e for e in self.events if e.get("route") == "/api/tags"][-3:]
        self.assertEqual([e["status"] for e in events], [200] * 3)
        self.assertEqual({e["client_gone"] for e in events}, {False})
        self.assertEqual(self.metrics.registry.get_sample_value(
            "ollama_proxy_request_duration_seconds_count", {"route": "/api/tags"}), before + 3)

    def test_otherCasesTakeCommonPath(self) -> None:
        """
        A client key that is a secret (the body must be redacted of it), a
        compressed body, a sub-path, another method, C{--debug}, or a
        stale catalog: the common path answers.
        """
        self.warm()
        long = b"Authorization: Bearer client-key-0123456789\r\n"
        self.assertEqual(parseResponse(self.raw(b"GET", b"/api/tags", long))[0], 200)
        self.assertEqual(self.answered, ["Tags"])
        encoded = self.request(b"GET", b"/api/tags", body=b"{}", extra=b"Content-Encoding: x\r\n")
        self.assertEqual(parseResponse(self.connect(encoded).value())[0], 415)
        self.assertEqual(parseResponse(self.raw(b"GET", b"/api/tags/x"))[0], 404)
        self.assertEqual(parseResponse(self.raw(b"POST", b"/api/tags"))[0], 405)
        self.harness.ctx.debug = True
        self.assertEqual(parseResponse(self.raw(b"GET", b"/api/tags"))[0], 200)
        self.assertEqual(self.answered, ["Tags", "Tags"])

    def raw(self, method: bytes, path: bytes, extra: bytes = b"") -> bytes:
        """
        @return: the raw response to one request (no key unless C{extra}).
        """
        raw: bytes = self.connect(self.request(method, path, extra=extra)).value()
        return raw

    def test_staleCatalogWaits(self) -> None:
        """
        A stale catalog is not served from the fast path: the request
        waits for the backend's list.
        """
        self.warm()
        self.harness.clock.advance(3600)
        asked = len(self.harness.backend.received)
        transport = self.connect(self.request(b"GET", b"/api/tags"))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.harness.backend.received[asked].path, "/v1/models")
        serveCatalog(self.harness, [{"id": "gpt-4o"}])
        self.assertEqual(parseResponse(transport.value())[0], 200)

    def test_hostStillChecked(self) -> None:
        """
        The C{Host} check comes first.
        """
        self.warm()
        _, (status, _, _) = self.send(self.request(b"GET", b"/api/tags", host=b"evil.example"))
        self.assertEqual(status, 403)
