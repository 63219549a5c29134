"""
Cancellation, back-pressure, timeouts and upstream faults, seen from both
ends: what the client gets, and what the fake backend saw (its request's
C{notifyFinish} errback in L{tests.fakes.Received.lost} proves that the
proxy closed the upstream connection).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import (
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import (
    TimeoutError as ConnectTimeoutError,
)
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import (
    TARGET,
    BodyCollector,
    Counter,
    ProxyHarness,
    contextFor,
    delta,
)
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.tree import buildRoot
from ollama_proxy.web.site import makeSite
from tests.web.helpers import CHAT
from tests.web.test_site import parseResponse


class Recorder:
    """
    Replaces C{pauseProducing}/C{resumeProducing} on a transport and records
    the calls (C{iosim}'s transports ignore them).
    """

    def __init__(self, transport: Any) -> None:
        self.calls: list[str] = []
        transport.pauseProducing = lambda: self.calls.append("pause")
        transport.resumeProducing = lambda: self.calls.append("resume")


class CancellationTests(SynchronousTestCase):
    """
    A client that leaves closes the upstream connection at once, whatever
    stage the exchange is at.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def test_disconnectBeforeUpstreamHeaders(self) -> None:
        """
        A client that disconnects while the backend has not answered yet
        aborts the upstream request: the backend sees its connection lost.
        """
        d = self.h.post("/api/chat", CHAT)
        [upstream] = self.h.backend.received
        self.assertEqual(upstream.lost, [])
        self.h.dropClients()
        self.failureResultOf(d)
        self.assertEqual(len(upstream.lost), 1)
        self.assertEqual(self.h.upstreamTransports(), [])

    def test_disconnectMidStream(self) -> None:
        """
        A client that disconnects while lines are streaming closes the
        upstream connection; nothing is written after that.
        """
        d = self.h.post("/api/chat", CHAT)
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        reader = BodyCollector(self.h, self.successResultOf(d))
        self.h.pump()
        self.assertEqual(len(reader.lines()), 1)
        self.assertEqual(upstream.lost, [])
        self.h.dropClients()
        self.failureResultOf(reader.done)
        self.assertEqual(len(upstream.lost), 1)
        self.assertEqual(self.h.upstreamTransports(), [])

    def test_disconnectDuringNonStreamingBody(self) -> None:
        """
        With C{stream: false} the proxy reads the whole upstream body before
        answering; a client that leaves meanwhile still closes the upstream
        connection rather than letting the generation run to its end.
        """
        d = self.h.post("/api/chat", {**CHAT, "stream": False})
        [upstream] = self.h.backend.received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(b'{"id": "x", "choices": [')
        self.h.pump()
        self.h.dropClients()
        self.failureResultOf(d)
        self.assertEqual(len(upstream.lost), 1)

    def test_disconnectDuringPassthrough(self) -> None:
        """
        An OpenAI passthrough stream is closed upstream when its client
        leaves.
        """
        d = self.h.post("/v1/chat/completions", {"model": "m", "stream": True})
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        reader = BodyCollector(self.h, self.successResultOf(d))
        self.h.dropClients()
        self.failureResultOf(reader.done)
        self.assertEqual(len(upstream.lost), 1)


class BackPressureTests(SynchronousTestCase):
    """
    A client that cannot keep up pauses reading from the backend.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness()

    def assertPausesUpstream(self, path: str, body: Any) -> None:
        d = self.h.post(path, body)
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.h.pump()
        self.successResultOf(d)
        [upstreamTransport] = self.h.upstreamTransports()
        recorder = Recorder(upstreamTransport)
        [channel] = self.h.proxyChannels()
        # What the reactor does when the client's socket buffer is full.
        channel.pauseProducing()
        self.assertEqual(recorder.calls, ["pause"])
        channel.resumeProducing()
        self.assertEqual(recorder.calls, ["pause", "resume"])

    def test_slowClientPausesUpstream(self) -> None:
        """
        When the client connection's transport pauses the proxy (its send
        buffer is full), the proxy pauses the upstream transport, and resumes
        it when the client drains: the stream is never buffered in memory.
        """
        self.assertPausesUpstream("/api/chat", CHAT)

    def test_slowClientPausesPassthrough(self) -> None:
        """
        The same holds for an OpenAI passthrough stream.
        """
        self.assertPausesUpstream("/v1/chat/completions", {"model": "m", "stream": True})


class IdleTimeoutTests(SynchronousTestCase):
    """
    C{--idle-timeout}: a stream whose backend goes silent ends with an error
    line after the last good one, and the upstream connection is closed.
    """

    def test_pausedClientIsNotIdleBackend(self) -> None:
        """
        While a slow client keeps the stream paused, the idle timer does not
        run: the backend is silent because we stopped reading.  After the
        client resumes, the timer runs again.
        """
        h = ProxyHarness(idleTimeout=5)
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.pump()
        [upstreamTransport] = h.upstreamTransports()
        Recorder(upstreamTransport)
        [channel] = h.proxyChannels()
        channel.pauseProducing()
        h.clock.advance(60)
        h.pump()
        self.assertEqual(upstream.lost, [])
        self.assertEqual([l.get("error") for l in reader.lines()], [None])
        channel.resumeProducing()
        upstream.event(delta("b"))
        h.pump()
        self.assertEqual([l["message"]["content"] for l in reader.lines()], ["a", "b"])
        h.clock.advance(5)
        h.pump()
        self.assertEqual(reader.lines()[-1], {"error": "backend sent nothing for 5 seconds"})
        self.assertEqual(len(upstream.lost), 1)

    def test_silentBackend(self) -> None:
        """
        After C{idleTimeout} seconds without a byte, the client gets the
        lines so far and an C{error} line naming the timeout, never
        C{done: true}; the backend's connection is closed.
        """
        h = ProxyHarness(idleTimeout=5.0)
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.clock.advance(4)
        upstream.event(delta("b"))
        h.pump()
        h.clock.advance(4)
        h.pump()
        self.assertNoResult(reader.done)
        h.clock.advance(1)
        h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual([l["message"]["content"] for l in lines[:2]], ["a", "b"])
        self.assertEqual(lines[2:], [{"error": "backend sent nothing for 5 seconds"}])
        self.assertEqual(len(upstream.lost), 1)

    def test_silentNonStreamingBody(self) -> None:
        """
        With C{stream: false}, a backend that sends headers and then stalls
        mid-body gives a 504 JSON error (nothing was sent to the client
        yet) and its connection is closed.
        """
        h = ProxyHarness(idleTimeout=5.0)
        d = h.post("/api/chat", {**CHAT, "stream": False})
        [upstream] = h.backend.received
        upstream.request.setResponseCode(200)
        upstream.request.setHeader(b"Content-Type", b"application/json")
        upstream.write(b'{"id": "x", "choices": [')
        h.pump()
        self.assertNoResult(d)
        h.clock.advance(5)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        self.assertEqual(
            codec.loads(self.successResultOf(h.client.content(response))),
            {"error": "backend sent nothing for 5 seconds"},
        )
        self.assertEqual(len(upstream.lost), 1)

    def test_noTimerLeftBehind(self) -> None:
        """
        A stream that ends normally leaves no pending timer on the clock.
        """
        h = ProxyHarness(idleTimeout=5.0)
        d = h.post("/api/chat", CHAT)
        upstream = h.backend.received[0]
        upstream.startSSE()
        upstream.event(delta("a", finish_reason="stop"))
        upstream.done()
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        h.pump()
        self.successResultOf(reader.done)
        self.assertEqual([c for c in h.clock.getDelayedCalls() if c.active()], [])


class HeaderTimeoutTests(SynchronousTestCase):
    """
    C{--header-timeout}: a backend that accepts the request but never
    answers yields a 504.
    """

    def test_504(self) -> None:
        """
        No response headers within C{headerTimeout} seconds: 504 with a JSON
        error, and the upstream request is aborted.
        """
        h = ProxyHarness()
        h.backendClient.headerTimeout = 30.0
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        h.clock.advance(29)
        h.pump()
        self.assertNoResult(d)
        h.clock.advance(1)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 504)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(body, {"error": "timed out waiting for the backend"})
        self.assertEqual(len(upstream.lost), 1)

    def test_notAppliedToBody(self) -> None:
        """
        The header timeout stops counting once headers arrived: a long
        stream outlives it (only the idle timer applies).
        """
        h = ProxyHarness(idleTimeout=None)
        h.backendClient.headerTimeout = 30.0
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.event(delta("x"))
        h.pump()
        reader = BodyCollector(h, self.successResultOf(d))
        for _ in range(4):
            h.clock.advance(20)
            upstream.event(delta("x"))
            h.pump()
        self.assertEqual(len(reader.lines()), 5)
        self.assertEqual(upstream.lost, [])


class FailingClient:
    """
    An HTTP client whose every request fails with a given exception.
    """

    def __init__(self, exception: Exception) -> None:
        self.exception = exception

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return fail(self.exception)


class ConnectFailureTests(SynchronousTestCase):
    """
    Failures to reach the backend map to 502/504 with a clear message.
    """

    def answer(self, exception: Exception, path: str = "/api/chat") -> tuple[int, Any]:
        clock = Counter()
        from treq.testing import StubTreq
        from twisted.internet.testing import MemoryReactorClock

        reactor = MemoryReactorClock()
        ctx = contextFor(Backend(FailingClient(exception), TARGET, reactor),
            clock=reactor,
            now=clock,
        )
        client: Any = StubTreq(buildRoot(ctx))
        if path == "/api/tags":
            d = client.get("http://proxy.test" + path)
        else:
            d = client.post("http://proxy.test" + path, data=codec.dumps(CHAT))
        client.flush()
        response = self.successResultOf(d)
        return response.code, codec.loads(self.successResultOf(client.content(response)))

    def test_refused(self) -> None:
        """
        Connection refused: 502 naming the backend.
        """
        code, body = self.answer(ConnectionRefusedError("127.0.0.1"))
        self.assertEqual(code, 502)
        self.assertIn("cannot connect to the backend", body["error"])

    def test_dnsFailure(self) -> None:
        """
        A host name that does not resolve: 502 saying so.
        """
        code, body = self.answer(DNSLookupError("backend.invalid"))
        self.assertEqual(code, 502)
        self.assertIn("cannot resolve the backend", body["error"])

    def test_connectTimeout(self) -> None:
        """
        C{--connect-timeout} expired (the Agent's C{TimeoutError}): 504.
        """
        code, body = self.answer(ConnectTimeoutError())
        self.assertEqual(code, 504)
        self.assertEqual(body, {"error": "timed out connecting to the backend"})

    def test_tagsRefused(self) -> None:
        """
        C{GET /api/tags} reports an unreachable backend the same way.
        """
        code, body = self.answer(ConnectionRefusedError("127.0.0.1"), "/api/tags")
        self.assertEqual(code, 502)
        self.assertEqual(list(body), ["error"])


class StreamFaultTests(SynchronousTestCase):
    """
    A backend that breaks the stream protocol yields an error line after
    the last good one (or a JSON error before the first), never a crash or a
    hang.
    """

    def setUp(self) -> None:
        self.h = ProxyHarness(maxLineLength=1000)
        self.d = self.h.post("/api/chat", CHAT)
        [self.upstream] = self.h.backend.received
        self.upstream.startSSE()

    def read(self) -> BodyCollector:
        self.h.pump()
        reader = BodyCollector(self.h, self.successResultOf(self.d))
        self.h.pump()
        self.successResultOf(reader.done)
        return reader

    def test_nonJSONDataLine(self) -> None:
        """
        A C{data:} line that is not JSON, after good lines: the good lines,
        then an error line quoting the garbage; the upstream is closed.
        """
        self.upstream.event(delta("a"))
        self.upstream.write(b"data: {oops\n\n")
        lines = self.read().lines()
        self.assertEqual(lines[0]["message"]["content"], "a")
        self.assertEqual(lines[1:], [{"error": "backend sent a stream event that is not JSON: {oops"}])
        self.assertEqual(len(self.upstream.lost), 1)

    def test_nonJSONFirst(self) -> None:
        """
        Garbage before anything was sent: a 502 with a JSON error body.
        """
        self.upstream.write(b"data: <html>\n\n")
        self.h.pump()
        response = self.successResultOf(self.d)
        self.assertEqual(response.code, 502)
        body = codec.loads(self.successResultOf(self.h.client.content(response)))
        self.assertIn("not JSON", body["error"])

    def test_nonObjectEvent(self) -> None:
        """
        A JSON event that is not an object (C{data: 42}) is an error line.
        """
        self.upstream.event(delta("a"))
        self.upstream.write(b"data: 42\n\n")
        lines = self.read().lines()
        self.assertEqual(lines[1:], [{"error": "backend sent a stream event that is not an object"}])

    def test_lineTooLong(self) -> None:
        """
        A line longer than C{--max-line} ends the stream with an error line
        naming the limit, as soon as the cap is passed (no waiting for a
        newline that may never come); the upstream is closed.
        """
        self.upstream.event(delta("a"))
        self.upstream.write(b"data: " + b"x" * 2000)
        lines = self.read().lines()
        self.assertEqual(lines[0]["message"]["content"], "a")
        [error] = lines[1:]
        self.assertIn("1000", error["error"])
        self.assertEqual(len(self.upstream.lost), 1)

    def test_resetMidStream(self) -> None:
        """
        The backend connection drops mid-stream: the lines so far, then one
        error line naming the broken connection, no C{done: true}.
        """
        self.upstream.event(delta("a"))
        self.h.pump()
        reader = BodyCollector(self.h, self.successResultOf(self.d))
        self.upstream.request.channel.transport.abortConnection()  # type: ignore[union-attr]
        self.h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual(len(lines), 2)
        self.assertTrue(lines[1]["error"].startswith("connection to the backend failed"))
        self.assertNotIn("done", lines[1])

    def test_garbageNotSSE(self) -> None:
        """
        A body with no SSE framing at all (an HTML page with a 200) ends as
        an error, not as an empty successful answer.
        """
        self.upstream.write(b"<html><body>gateway</body></html>")
        self.upstream.finish()
        self.h.pump()
        response = self.successResultOf(self.d)
        body = self.successResultOf(self.h.client.content(response))
        lines = [codec.loads(line) for line in body.splitlines()]
        self.assertEqual(list(lines[-1]), ["error"])
        self.assertNotIn(True, [l.get("done") for l in lines])


class UpstreamHTTPErrorTests(SynchronousTestCase):
    """
    Non-2xx backend answers keep their status and the backend's message.
    """

    def answer(self, status: int, body: Any, stream: bool = True, contentType: bytes = b"application/json") -> tuple[int, Any]:
        h = ProxyHarness()
        d = h.post("/api/chat", {**CHAT, "stream": stream})
        h.backend.received[0].respond(status, body, contentType)
        h.pump()
        response = self.successResultOf(d)
        return response.code, codec.loads(self.successResultOf(h.client.content(response)))

    def test_openAIErrorNonStreaming(self) -> None:
        """
        C{stream: false} with a 401 OpenAI error object: 401 and its message.
        """
        code, body = self.answer(
            401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
            stream=False,
        )
        self.assertEqual((code, body), (401, {"error": "Incorrect API key provided"}))

    def test_plainTextError(self) -> None:
        """
        A 503 with a text body: 503 and the text.
        """
        code, body = self.answer(503, b"upstream overloaded", contentType=b"text/plain")
        self.assertEqual((code, body), (503, {"error": "upstream overloaded"}))

    def test_fastAPIDetail(self) -> None:
        """
        A 422 with a FastAPI C{detail} (vLLM's validation errors): 422 and
        the detail.
        """
        code, body = self.answer(422, {"detail": "messages: field required"})
        self.assertEqual((code, body), (422, {"error": "messages: field required"}))

    def test_redirectIsBadGateway(self) -> None:
        """
        A 3xx (a misconfigured C{--target}) is not passed on as a status the
        client would try to follow: 502 with the backend's status named.
        """
        code, body = self.answer(301, b"", contentType=b"text/html")
        self.assertEqual(code, 502)
        self.assertIn("301", body["error"])


class ContentEncodingTests(SynchronousTestCase):
    """
    treq asks for and decodes gzip; the proxy must stay correct (lines,
    cancellation, back-pressure) when a backend uses it.
    """

    def startGzipStream(self) -> tuple[ProxyHarness, Any, Any, Any]:
        import zlib

        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        self.assertIn("gzip", upstream.headers.get("accept-encoding", ""))
        upstream.startSSE()
        upstream.request.setHeader(b"Content-Encoding", b"gzip")
        compressor = zlib.compressobj(wbits=31)
        upstream.write(
            compressor.compress(b"data: " + codec.dumps(delta("a")) + b"\n\n")
            + compressor.flush(zlib.Z_SYNC_FLUSH)
        )
        h.pump()
        return h, d, upstream, compressor

    def test_gzipStream(self) -> None:
        """
        A gzip-encoded SSE stream is decoded and translated as it arrives.
        """
        import zlib

        h, d, upstream, compressor = self.startGzipStream()
        response = self.successResultOf(d)
        # (Twisted's ContentDecoderAgent on the test client turns an absent
        # header into an empty one.)
        self.assertIn(response.headers.getRawHeaders(b"content-encoding"), (None, [b""]))
        reader = BodyCollector(h, response)
        h.pump()
        self.assertEqual(reader.lines()[0]["message"]["content"], "a")
        upstream.write(
            compressor.compress(b"data: " + codec.dumps(delta("b", finish_reason="stop")) + b"\n\ndata: [DONE]\n\n")
            + compressor.flush(zlib.Z_FINISH)
        )
        upstream.finish()
        h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual([l["message"]["content"] for l in lines], ["a", "b", ""])
        self.assertIs(lines[-1]["done"], True)

    def test_gzipStreamCancel(self) -> None:
        """
        Cancellation still closes the upstream connection through the gzip
        decoder.
        """
        h, d, upstream, _ = self.startGzipStream()
        reader = BodyCollector(h, self.successResultOf(d))
        h.dropClients()
        self.failureResultOf(reader.done)
        self.assertEqual(len(upstream.lost), 1)

    def test_gzipStreamBackPressure(self) -> None:
        """
        A paused client pauses the upstream transport through the gzip
        decoder too.
        """
        h, d, upstream, _ = self.startGzipStream()
        self.successResultOf(d)
        [upstreamTransport] = h.upstreamTransports()
        recorder = Recorder(upstreamTransport)
        [channel] = h.proxyChannels()
        channel.pauseProducing()
        channel.resumeProducing()
        self.assertEqual(recorder.calls, ["pause", "resume"])


class ContentTypeTests(SynchronousTestCase):
    """
    A backend that answers a streaming request with plain JSON.
    """

    def test_jsonAnswerToStreamingRequest(self) -> None:
        """
        Some gateways ignore C{stream: true} and send one
        C{chat.completion}: the client still gets valid NDJSON, one
        C{done: true} line with the whole message, rather than an error.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        h.backend.received[0].respond(
            200,
            {
                "id": "c",
                "object": "chat.completion",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
        )
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/x-ndjson"])
        body = self.successResultOf(h.client.content(response))
        [line] = [codec.loads(l) for l in body.splitlines()]
        self.assertEqual(line["message"], {"role": "assistant", "content": "whole"})
        self.assertIs(line["done"], True)
        self.assertEqual(line["done_reason"], "stop")
        self.assertEqual(line["eval_count"], 1)

    def test_jsonWithoutChoices(self) -> None:
        """
        A JSON answer that is not a completion gives a 502 JSON error, not
        a crash.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        h.backend.received[0].respond(200, {"unexpected": True})
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 502)
        self.assertEqual(list(codec.loads(self.successResultOf(h.client.content(response)))), ["error"])


class FirstBytesTests(SynchronousTestCase):
    """
    A stream's first line leaves in the turn its upstream read arrives,
    not at the end of that turn; later reads are joined per turn (issue 23).
    """

    def flushWithoutTurnEnd(self, h: ProxyHarness) -> None:
        """
        Move bytes both ways, as reads within one reactor turn do, without
        running the calls due at the end of the turn.
        """
        for _ in range(20):
            h.client.flush()
            h.upstream.flush()

    def test_firstLineInTheTurn(self) -> None:
        """
        The backend's first event reaches the client as its first line
        before any end-of-turn call runs; two more events in a later turn
        reach it only when that turn ends, in order.
        """
        h = ProxyHarness()
        d = h.post("/api/chat", CHAT)
        [upstream] = h.backend.received
        upstream.startSSE()
        upstream.event(delta("a"))
        self.flushWithoutTurnEnd(h)
        reader = BodyCollector(h, self.successResultOf(d))
        self.flushWithoutTurnEnd(h)
        self.assertEqual([line["message"]["content"] for line in reader.lines()], ["a"])
        upstream.event(delta("b"))
        upstream.event(delta("c"))
        self.flushWithoutTurnEnd(h)
        self.assertEqual(len(reader.lines()), 1)
        self.assertTrue(h.dueCalls())
        h.pump()
        self.assertEqual([line["message"]["content"] for line in reader.lines()], ["a", "b", "c"])
        upstream.done()
        h.pump()
        self.successResultOf(reader.done)
        self.assertTrue(reader.lines()[-1]["done"])


class SiteCancellationTests(SynchronousTestCase):
    """
    The same on the proxy's own site (L{makeSite}: L{FastChannel},
    L{ollama_proxy.web.site.LimitedRequest}, a whole answer written by
    L{FastWriteRequest.writeWhole}), on both channels (the harness above
    answers on twisted.web's own C{Request}).
    """

    httpParser = "httptools"

    def setUp(self) -> None:
        self.h = ProxyHarness()
        self.site = makeSite(self.h.root, self.h.clock, timeout=None, httpParser=self.httpParser)
        self.protocol = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        body = codec.dumps({**CHAT, "stream": False})
        self.protocol.dataReceived(
            b"POST /api/chat HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        self.h.pump()
        [self.upstream] = self.h.backend.received
        self.upstream.request.setResponseCode(200)
        self.upstream.request.setHeader(b"Content-Type", b"application/json")

    def test_disconnectDuringNonStreamingBody(self) -> None:
        """
        A client that leaves while the whole answer is read closes the
        upstream connection; nothing is written to it.
        """
        self.upstream.write(b'{"id": "x", "choices": [')
        self.h.pump()
        self.assertEqual(self.upstream.lost, [])
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.h.pump()
        self.assertEqual(len(self.upstream.lost), 1)
        self.assertEqual(self.transport.value(), b"")

    def test_answeredThenLeaves(self) -> None:
        """
        An answer finished before the client leaves is whole, and its
        leaving cancels nothing more (the upstream connection went back to
        the pool, or closed, with the answer, not with the client).
        """
        self.upstream.write(codec.dumps({"id": "x", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}))
        self.upstream.finish()
        self.h.pump()
        status, headers, body = parseResponse(self.transport.value())
        self.assertEqual((status, codec.loads(body)["message"]["content"]), (200, "hi"))
        self.assertEqual(headers["content-length"], str(len(body)))
        lost = len(self.upstream.lost)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.h.pump()
        self.assertEqual(len(self.upstream.lost), lost)


class SiteCancellationTwistedChannelTests(SiteCancellationTests):
    """
    The same on twisted.web's channel (C{--http-parser twisted}).
    """

    httpParser = "twisted"
