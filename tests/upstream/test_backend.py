"""
The backend client's own decisions: 429 retries before any byte reached
the client, a non-2xx answer turned into an error with its status.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import (
    ProxyHarness,
    delta,
)
from tests.web.helpers import CHAT


class RetryTests(SynchronousTestCase):
    """
    C{--retry-429}: bounded retries of a rate-limited request before the
    first byte reached the client.
    """

    def rateLimit(self, upstream: Any, retryAfter: bytes | None) -> None:
        upstream.request.setResponseCode(429)
        if retryAfter is not None:
            upstream.request.setHeader(b"Retry-After", retryAfter)
        upstream.request.write(codec.dumps({"error": {"message": "slow down"}}))
        upstream.request.finish()

    def test_retriedAfterDelay(self) -> None:
        """
        A 429 with C{Retry-After: 2} is retried after two seconds, and the
        client sees only the successful stream.
        """
        h = ProxyHarness()
        h.backendClient.retries = 2
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"2")
        h.pump()
        h.clock.advance(1.9)
        h.pump()
        self.assertEqual(len(h.backend.received), 1)
        h.clock.advance(0.1)
        h.pump()
        self.assertEqual(len(h.backend.received), 2)
        self.assertEqual(h.backend.received[1].body, h.backend.received[0].body)
        second = h.backend.received[1]
        second.startSSE()
        second.event(delta("ok", finish_reason="stop"))
        second.done()
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        body = self.successResultOf(h.client.content(response))
        self.assertEqual(codec.loads(body.splitlines()[0])["message"]["content"], "ok")

    def test_retriesBounded(self) -> None:
        """
        After C{retries} retries the last 429 is passed on with its message.
        """
        h = ProxyHarness()
        h.backendClient.retries = 1
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], None)
        h.pump()
        h.clock.advance(1)
        h.pump()
        self.rateLimit(h.backend.received[1], None)
        h.pump()
        self.assertEqual(len(h.backend.received), 2)
        response = self.successResultOf(d)
        self.assertEqual(response.code, 429)
        self.assertEqual(codec.loads(self.successResultOf(h.client.content(response))), {"error": "slow down"})

    def test_longWaitNotHonoured(self) -> None:
        """
        A C{Retry-After} longer than C{maxRetryWait} is not waited for.
        """
        h = ProxyHarness()
        h.backendClient.retries = 3
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"3600")
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 429)
        self.assertEqual(len(h.backend.received), 1)

    def test_unreadableRetryAfter(self) -> None:
        """
        A C{Retry-After} that is neither seconds nor an HTTP date (here
        empty, which C{stringToDatetime} fails on with C{IndexError} rather
        than C{ValueError}) is not waited for: the 429 is passed on as a
        JSON error, not a 500.
        """
        for value in (b"", b"soon", b"Wed, 21 Oct 2015 07:28 GMT"):
            with self.subTest(value=value):
                h = ProxyHarness()
                h.backendClient.retries = 2
                d = h.post("/api/chat", CHAT)
                self.rateLimit(h.backend.received[0], value)
                h.pump()
                response = self.successResultOf(d)
                self.assertEqual(response.code, 429)
                self.assertEqual(
                    codec.loads(self.successResultOf(h.client.content(response))),
                    {"error": "slow down"},
                )
                self.assertEqual(len(h.backend.received), 1)

    def test_offByDefault(self) -> None:
        """
        Without C{--retry-429} a 429 is passed on at once.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"1")
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 429)

    def test_clientLeavesDuringWait(self) -> None:
        """
        A client that disconnects while the proxy waits to retry cancels the
        retry: the backend gets no second request.
        """
        h = ProxyHarness()
        h.backendClient.retries = 2
        d = h.post("/api/chat", CHAT)
        self.rateLimit(h.backend.received[0], b"5")
        h.pump()
        h.dropClients()
        self.failureResultOf(d)
        h.clock.advance(10)
        h.pump()
        self.assertEqual(len(h.backend.received), 1)


class ClientKeyTests(SynchronousTestCase):
    """
    The client's key is passed with each request made on its behalf
    (L{ollama_proxy.upstream.backend.Backend.headers}): nothing outside the
    request carries it.
    """

    def test_explicit(self) -> None:
        """
        With C{forwardClientKey} the key passed is the one sent; C{None}
        (a shared fetch, or a client without a key) sends the configured
        key; without the switch the client's key is never sent.
        """
        h = ProxyHarness()
        backend = h.backendClient
        extra = {b"Content-Type": [b"application/json"]}
        self.assertEqual(backend.headers(extra, clientKey=b"client-a")[b"Authorization"],
                         [b"Bearer sk-secret"])
        backend.forwardClientKey = True
        self.assertEqual(backend.headers(extra, clientKey=b"client-a"),
                         {**extra, b"Authorization": [b"Bearer client-a"]})
        self.assertEqual(backend.headers(None, clientKey=b"client-b")[b"Authorization"],
                         [b"Bearer client-b"])
        self.assertEqual(backend.headers(None, clientKey=None)[b"Authorization"],
                         [b"Bearer sk-secret"])
        self.assertEqual(extra, {b"Content-Type": [b"application/json"]})


class ReadyURLTests(SynchronousTestCase):
    """
    L{ollama_proxy.upstream.backend.ReadyURL}: parsed once, the same bytes on
    the wire as treq's own parsing of the string.
    """

    urls = [
        "http://127.0.0.1:8000/v1/chat/completions",
        "https://api.example.com/v1/models",
        "http://user:secret@backend:9000/openai/v1/embeddings",
        "http://bücher.example/v1/chat/completions?api-version=2024-01-01",
        "http://backend/v1/models/a%2Fb",
    ]

    def test_sameTextAsTreq(self) -> None:
        """
        C{to_uri().to_text()} (what treq sends) matches a fresh parse, with
        and without the password.
        """
        from hyperlink import EncodedURL

        from ollama_proxy.upstream.backend import ReadyURL

        for url in self.urls:
            fresh = EncodedURL.from_text(url).to_uri()
            ready = ReadyURL.fromText(url)
            self.assertEqual(ready.to_uri().to_text(), fresh.to_text(), url)
            self.assertEqual(
                ready.to_uri().to_text(with_password=True), fresh.to_text(with_password=True), url
            )
            self.assertEqual((ready.host, ready.port, ready.scheme), (fresh.host, fresh.port, fresh.scheme))

    def test_derivedCopyFormatsAnew(self) -> None:
        """
        A copy made by C{replace} (treq does it to add C{params}) is not
        stuck with the original's cached text.
        """
        from ollama_proxy.upstream.backend import ReadyURL

        ready = ReadyURL.fromText("http://backend/v1/models")
        copy = ready.replace(query=(("a", "1"),))
        self.assertEqual(copy.to_uri().to_text(), "http://backend/v1/models?a=1")

    def test_requestThroughTreq(self) -> None:
        """
        A request made with a ready URL goes to the same host, port and path.
        """
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from ollama_proxy.upstream.backend import ReadyURL
        from ollama_proxy.upstream.pool import NO_COOKIES, makeClient

        reactor = MemoryReactorClock()
        http, _ = makeClient(reactor, 4, 5.0)
        http.request(
            "POST", ReadyURL.fromText("http://127.0.0.1:4000/v1/chat/completions"),
            data=b"{}", cookies=NO_COOKIES,
        )
        for _ in range(5):
            reactor.advance(0.01)
        host, port, factory, _, _ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 4000))
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"POST /v1/chat/completions HTTP/1.1\r\n"))
        self.assertEqual(list(NO_COOKIES), [])


class StatusTests(SynchronousTestCase):
    """
    L{ollama_proxy.upstream.backend.raiseForStatus}: a non-2xx answer is an
    error carrying the backend's status and message, its body read within
    the idle timeout.
    """

    def stall(self, h: ProxyHarness, upstream: Any, status: int) -> None:
        upstream.request.setResponseCode(status)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(b'{"partial": ')
        h.pump()

    def test_statusAndMessage(self) -> None:
        """
        The backend's status and its error message reach the client in
        the client's dialect.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.request.setResponseCode(404)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(codec.dumps({"error": {"message": "no such model"}}))
        upstream.finish()
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 404)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertIn("no such model", body["error"])

    def test_errorBodyStalls(self) -> None:
        """
        A 500 whose error body never ends: 504 after the idle timeout rather
        than a request that hangs.
        """
        h = ProxyHarness()
        h.backendClient.idleTimeout = 5.0
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        self.stall(h, upstream, 500)
        h.clock.advance(5)
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 504)
        self.assertEqual(len(upstream.lost), 1)


class RedirectTests(SynchronousTestCase):
    """
    A generation is posted to the backend's own route only: a redirect is
    not followed (Twisted's C{RedirectAgent} turned a C{303} into a C{GET}
    of wherever it pointed), whatever its status.
    """

    def redirected(self, status: int) -> tuple[int, Any, ProxyHarness]:
        h = ProxyHarness()
        d = h.post("/api/chat", {**CHAT, "stream": False})
        [upstream] = h.backend.received
        upstream.request.setHeader(b"Location", b"http://elsewhere.test/v1/chat/completions")
        upstream.respond(status, b"moved", b"text/plain")
        h.pump()
        response = self.successResultOf(d)
        return response.code, codec.loads(self.successResultOf(h.client.content(response))), h

    def test_notFollowed(self) -> None:
        """
        Every redirect status is a 502 naming it; the backend got one
        request, nothing went elsewhere.
        """
        for status in (301, 302, 303, 307, 308):
            code, body, h = self.redirected(status)
            self.assertEqual(code, 502, status)
            self.assertIn(f"{status} ", body["error"])
            self.assertIn("redirects are not followed", body["error"])
            self.assertEqual(len(h.backend.received), 1)


class RequestBytesTests(SynchronousTestCase):
    """
    The bytes a generation request puts on the wire to the backend, through
    the production client (treq over the chosen C{--http-parser} agent):
    pinned as they were before the exchange path was trimmed (issue 23), so
    that no header is added, dropped, reordered or re-cased.
    """

    BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    SENT_BODY = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":false}'

    def sent(self, apiKey: str | None, forward: bool, clientKey: bytes | None,
             parser: str = "httptools", calls: int = 1) -> list[bytes]:
        """
        Post L{BODY} C{calls} times (each after the previous answer) and
        return what each request wrote.
        """
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import MemoryReactorClock, StringTransport

        from ollama_proxy.upstream.backend import Backend
        from ollama_proxy.upstream.body import readBody
        from ollama_proxy.upstream.pool import makeClient

        reactor = MemoryReactorClock()
        http, _ = makeClient(reactor, 4, 5.0, httpParser=parser)
        backend = Backend(http, "http://127.0.0.1:4000", reactor, apiKey=apiKey,
                          forwardClientKey=forward)
        transport = StringTransport()
        written = []
        protocol: Any = None
        for call in range(calls):
            d = Deferred.fromCoroutine(backend.postChat(self.BODY, clientKey=clientKey))
            if call == 0:
                reactor.advance(0)
                protocol = reactor.tcpClients[0][2].buildProtocol(None)
                protocol.makeConnection(transport)
            reactor.advance(0)
            written.append(transport.value())
            transport.clear()
            # A cookie the backend sets is never sent back (one client
            # serves every user).
            protocol.dataReceived(b"HTTP/1.1 200 OK\r\nSet-Cookie: sid=abc; Path=/\r\n"
                                  b"Content-Length: 2\r\n\r\n{}")
            response = self.successResultOf(d)
            self.assertEqual(self.successResultOf(Deferred.fromCoroutine(readBody(response))), b"{}")
        self.assertEqual(len(reactor.tcpClients), 1)  # one keep-alive connection
        return written

    def test_configuredKey(self) -> None:
        """
        The configured key as C{Authorization}, in the same place on every
        request of a connection; the client's key is not sent.
        """
        self.assertEqual(
            self.sent("sk-backend-1234", False, b"client-key-99", calls=2),
            [b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
             b"Authorization: Bearer sk-backend-1234\r\nAccept-Encoding: gzip\r\n"
             b"Host: 127.0.0.1:4000\r\nContent-Length: 72\r\n\r\n" + self.SENT_BODY] * 2,
        )

    def test_noKey(self) -> None:
        """
        Without a key, no C{Authorization} at all.
        """
        self.assertEqual(
            self.sent(None, False, None),
            [b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
             b"Accept-Encoding: gzip\r\nHost: 127.0.0.1:4000\r\nContent-Length: 72\r\n\r\n"
             + self.SENT_BODY],
        )

    def test_forwardedClientKey(self) -> None:
        """
        C{--forward-client-key}: each request carries its own client's key
        (a second client's request never the first's), the configured one
        for a client without a key.
        """
        head = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
        tail = b"Accept-Encoding: gzip\r\nHost: 127.0.0.1:4000\r\nContent-Length: 72\r\n\r\n"
        self.assertEqual(
            self.sent("sk-backend-1234", True, b"client-key-99"),
            [head + b"Authorization: Bearer client-key-99\r\n" + tail + self.SENT_BODY],
        )
        self.assertEqual(
            self.sent("sk-backend-1234", True, b"other-client-key"),
            [head + b"Authorization: Bearer other-client-key\r\n" + tail + self.SENT_BODY],
        )
        self.assertEqual(
            self.sent("sk-backend-1234", True, None),
            [head + b"Authorization: Bearer sk-backend-1234\r\n" + tail + self.SENT_BODY],
        )

    def test_twistedAgent(self) -> None:
        """
        C{--http-parser twisted}: Twisted's own agent, its own header order.
        """
        self.assertEqual(
            self.sent("sk-backend-1234", False, None, parser="twisted"),
            [b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 72\r\n"
             b"Content-Type: application/json\r\nAuthorization: Bearer sk-backend-1234\r\n"
             b"Accept-Encoding: gzip\r\nHost: 127.0.0.1:4000\r\n\r\n" + self.SENT_BODY],
        )

    def test_givenHost(self) -> None:
        """
        A C{Host} among the caller's headers is the one sent, once.
        """
        from twisted.internet.testing import MemoryReactorClock, StringTransport
        from twisted.web.http_headers import Headers

        from ollama_proxy.upstream.pool import NO_COOKIES, makeClient

        reactor = MemoryReactorClock()
        http, _ = makeClient(reactor, 4, 5.0, httpParser="httptools")
        http.request("GET", "http://127.0.0.1:4000/v1/models", cookies=NO_COOKIES,
                     headers=Headers({b"Host": [b"models.test"]}))
        reactor.advance(0)
        protocol: Any = reactor.tcpClients[0][2].buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual(transport.value(), b"GET /v1/models HTTP/1.1\r\nHost: models.test\r\n"
                         b"Accept-Encoding: gzip\r\n\r\n")
