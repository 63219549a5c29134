"""
L{ollama_proxy.web.bridge}: the async bridge and error funnel every
resource shares (L{ProxyResource}), and the L{Exchange} a handler gets.
"""

from __future__ import annotations

import gc
import io
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import formatEvent, globalLogPublisher
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web import auth
from ollama_proxy.web.bridge import Exchange, ProxyResource

KEY = "client-key-0123456789"


def dummy(path: bytes) -> Any:
    """
    @return: a twisted.web request for C{path}, as the exchange sees it.
    """
    request: Any = DummyRequest([])
    request.path = request.uri = path
    request.content = io.BytesIO(b"")
    request.code = 200
    return request


class Answering(ProxyResource):
    """
    Answers C{GET} with what C{answer} says (or raises it).
    """

    answer: Any = {"ok": True}

    async def handle_GET(self, ex: Exchange) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


class FunnelTests(SynchronousTestCase):
    """
    What a handler returns or raises, as the client gets it (through a
    real twisted.web site, by L{StubTreq}).
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.resource = Answering(self.h.ctx)
        root = Resource()
        root.putChild(b"x", self.resource)
        self.client: Any = StubTreq(root)

    def call(self, method: str, path: str = "/x") -> tuple[Any, bytes]:
        d = self.client.request(method, "http://proxy.test" + path)
        self.client.flush()
        response = self.successResultOf(d)
        content = self.successResultOf(self.client.content(response))
        return response, content

    def test_jsonAnswer(self) -> None:
        """
        A returned object is JSON with its length (not chunked).
        """
        response, written = self.call("GET")
        self.assertEqual(response.code, 200)
        self.assertEqual(codec.loads(written), {"ok": True})
        self.assertEqual(response.length, len(written))

    def test_errorInTheResourcesShape(self) -> None:
        """
        A L{BadRequest} is its status and the resource's error shape
        (Ollama's by default), with the message.
        """
        self.resource.answer = BadRequest("no good")
        response, written = self.call("GET")
        self.assertEqual(response.code, 400)
        self.assertEqual(codec.loads(written), {"error": "no good"})

    def test_unexpectedIsA500(self) -> None:
        """
        Any other exception is a 500 saying where to look, never a
        traceback, and is logged with its traceback.
        """
        self.resource.answer = ZeroDivisionError("secret detail")
        response, written = self.call("GET")
        self.assertEqual(response.code, 500)
        self.assertNotIn(b"secret detail", written)
        self.assertIn("proxy log", codec.loads(written)["error"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_methodNotAllowed(self) -> None:
        """
        A method without a handler is a 405 naming the ones there are
        (C{HEAD} with C{GET}).
        """
        response, written = self.call("DELETE")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertIn("DELETE", codec.loads(written)["error"])

    def test_subPathNotServed(self) -> None:
        """
        A path below the resource's own is a 404, not the resource.
        """
        response, written = self.call("GET", "/x/y")
        self.assertEqual(response.code, 404)
        self.assertIn("/x/y", codec.loads(written)["error"])


class ExchangeTests(SynchronousTestCase):
    """
    The exchange's view of the client's key.
    """

    def test_clientKeyReadOnce(self) -> None:
        """
        The presented key is read from the request once, however often the
        redactions ask; a key shorter than a gateway key is not a secret.
        """
        h = ProxyHarness()
        reads: list[object] = []
        original = auth.presentedKey

        def counting(request: Any) -> Any:
            reads.append(request)
            return original(request)

        self.patch(auth, "presentedKey", counting)
        from ollama_proxy.web import bridge
        self.patch(bridge, "presentedKey", counting)
        request = dummy(b"/x")
        request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer " + KEY.encode()])
        ex = Exchange(request, b"", 0, bridge.ClientState(request, watch=False),
                      redactor=h.ctx.redactor)
        self.assertEqual(ex.redactText(f"echo {KEY}").count(KEY), 0)
        self.assertEqual(ex.clientKey(), [KEY])
        self.assertEqual(ex.presented, KEY.encode())
        self.assertEqual(len(reads), 1)
        short = dummy(b"/x")
        short.requestHeaders.setRawHeaders(b"authorization", [b"Bearer ollama"])
        ex = Exchange(short, b"", 0, bridge.ClientState(short, watch=False),
                      redactor=h.ctx.redactor)
        self.assertEqual(ex.clientKey(), [])
        self.assertEqual(ex.redactText("ollama"), "ollama")


class CollectedExchangeTests(SynchronousTestCase):
    """
    A request whose handler is collected while suspended (whatever it
    awaited was dropped, as when a test or a library abandons a Deferred)
    writes no log line and finishes nothing from the garbage collector:
    such a line used to land in whatever test was running when the
    collector ran.
    """

    def test_noLineFromTheCollector(self) -> None:
        class Waiting(ProxyResource):
            async def handle_GET(self, ex: Exchange) -> object:
                return await Deferred()

        events = EventLoggingObserver()
        globalLogPublisher.addObserver(events)
        self.addCleanup(globalLogPublisher.removeObserver, events)
        harness = ProxyHarness()
        request: Any = DummyRequest([])
        request.path = b"/waiting"
        request.content = io.BytesIO(b"")
        request.code = 200
        Waiting(harness.ctx).render(request)
        self.assertEqual(request.finished, 0)
        del request
        gc.collect()
        self.assertEqual([formatEvent(e) for e in events if "status=" in formatEvent(e)], [])
