"""
The llhttp channel (L{ollama_proxy.web.fastchannel}) against twisted.web's
(L{ollama_proxy.web.channel.ProxyChannel}): the same byte streams, cut at
any points, must reach the resource as the same requests and get the same
answers; and what the proxy relies on from a channel (back-pressure to the
upstream read, cancellation on hang-up, pipelining) holds on it.

Where llhttp is stricter than twisted.web the stricter answer is kept, and
only there may the two differ (the channel answers 400 and closes where
twisted.web served the request or was still waiting for more bytes):

  - obs-fold: a header line starting with a space or tab continues the
    previous one for twisted.web; RFC 9112 5.2 lets a server refuse it with
    400, and a front proxy that joins or splits it differently is the
    classic request-smuggling gap;
  - a control character other than HTAB (C{\\x01}-C{\\x1f}, C{\\x7f}) in a
    header value: invalid in RFC 9110's C{field-value}; twisted.web refuses
    only NUL, CR and LF;
  - C{Transfer-Encoding: identity}: removed from HTTP in RFC 7230;
    twisted.web ignores the header, so a front proxy that honours or
    refuses it frames the body differently;
  - a bare LF ending the header section: twisted.web waits for a CRLF (and
    then refuses the line), llhttp refuses at once;
  - a request cut off mid-head: llhttp refuses a bad byte when it arrives,
    twisted.web at the end of its line (a header line one line later), so
    while the head is incomplete the channel may have answered 400 where
    twisted.web is still waiting.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web.channel import ProxyChannel
from ollama_proxy.web.fastchannel import COALESCE, EAGER_READ, FastChannel
from ollama_proxy.web.site import ProxySite, makeSite
from tests.web import test_relay
from tests.web.test_ready import withoutDate

MAX_BODY = 64
"""The site's body cap in the comparisons: small, so that 413s happen."""


class Recording(Resource):
    """
    A leaf that records what each request carried, and answers at once
    (C{sync}) or when the test says (C{async}: a stream, so that the next
    pipelined request waits behind it).
    """

    isLeaf = True

    def __init__(self, sync: bool = True) -> None:
        super().__init__()
        self.sync = sync
        self.seen: list[tuple[Any, ...]] = []
        self.pending: list[Request] = []

    def render(self, request: Request) -> Any:
        assert request.content is not None
        headers = sorted(
            (name, tuple(values)) for name, values in request.requestHeaders.getAllRawHeaders()
        )
        self.seen.append((request.method, request.uri, request.clientproto,
                          tuple(headers), request.content.read(),
                          tuple(sorted(request.received_cookies.items()))))
        if self.sync:
            return b"ok"
        self.pending.append(request)
        return NOT_DONE_YET


_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def run(parser: str, chunks: list[bytes], sync: bool) -> tuple[Any, ...]:
    """
    Feed C{chunks} to a fresh connection of a site on C{parser}, as a
    socket delivers them (nothing after the channel starts closing), then
    finish any held requests in order.

    @return: what reached the resource, the statuses answered, and whether
        the connection is being closed.
    """
    resource = Recording(sync)
    site = makeSite(resource, MemoryReactorClock(), timeout=None, headerTimeout=None,
                    maxBody=MAX_BODY, httpParser=parser)
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    for chunk in chunks:
        if transport.disconnecting:
            break
        channel.dataReceived(chunk)
    while resource.pending and not transport.disconnecting:
        request = resource.pending.pop(0)
        request.write(b"ok")
        request.finish()
    channel.connectionLost(Failure(ConnectionDone()))
    statuses = [int(s) for s in _STATUS.findall(transport.value())]
    return resource.seen, statuses, bool(transport.disconnecting)


# The byte streams.

_TOKEN_HEADERS = st.sampled_from([
    (b"Host", b"a"), (b"X-A", b"b"), (b"Accept", b"*/*"), (b"x-lower", b"v"),
    (b"Content-Type", b"application/json"), (b"X-Empty", b""), (b"X-Spaces", b"  pad \t"),
    (b"X-High", b"\x80\xff"), (b"X-Quote", b'"q"'), (b"Cookie", b"a=b; c=d"),
    (b"Expect", b"100-continue"), (b"Connection", b"close"), (b"Connection", b"keep-alive"),
])

_BAD_HEADER_LINES = st.sampled_from([
    b"no colon", b"Bad Name: x", b": empty", b"X-Nul: a\x00b", b"X-CR: a\rb",
    b"X-\xc3\xa9: x", b"Host : a", b" Leading: x",
])

_STRICT_HEADER_LINES = st.sampled_from([
    b"X-Ctl: a\x01b", b"X-Del: a\x7fb", b"X-Esc: \x1b[31m", b"Transfer-Encoding: identity",
])
"""Header lines twisted.web accepts and llhttp refuses (see the module)."""

_FRAMING = st.sampled_from([
    "none", "none", "none", "cl", "cl", "cl", "cl", "cl", "te", "te", "te", "cl-short", "cl-long", "cl-dup", "cl-dup-differ", "cl-list",
    "cl-plus", "cl-space", "cl-empty", "cl-huge-digits", "cl-zero", "te", "te", "te-upper",
    "te-gzip", "te-twice", "cl-te", "te-cl",
])

_METHODS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS",
                            b"M-SEARCH", b"FOO", b"get", b"G(T", b""])
_TARGETS = st.sampled_from([b"/x", b"/x?a=b", b"/a%2e", b"*", b"http://evil/x",
                            b"host:443", b"/\x7f", b"/\xa0", b"/\xc3\xa9", b"", b"/a b"])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0",
                             b"http/1.1", b"HTTP/1.1 "])


def rare(draw: Any, n: int) -> bool:
    """
    @return: true about once in C{n + 1} draws (a middle value: hypothesis
        favours the bounds of a range).
    """
    return bool(draw(st.integers(0, n)) == n // 2)


@st.composite
def chunkedBody(draw: Any, body: bytes) -> bytes:
    """
    C{body} as chunks, with extensions, trailers and, sometimes, damage.
    """
    out = b""
    rest = body
    while rest:
        size = draw(st.integers(1, max(1, len(rest))))
        piece, rest = rest[:size], rest[size:]
        ext = draw(st.sampled_from([b""] * 20 + [b";a=b", b";a=b", b";a", b'; x="q"', b";\x01bad",
                                    b";" + b"e" * 1100]))
        sizeLine = draw(st.sampled_from([b"%x" % len(piece)] * 24 + [b"%X" % len(piece),
                                         b"0%x" % len(piece), b"0x%x" % len(piece),
                                         b"%x " % len(piece)]))
        end = draw(st.sampled_from([b"\r\n"] * 30 + [b"\n", b"XX"]))
        out += sizeLine + ext + b"\r\n" + piece + end
    trailer = draw(st.sampled_from([b""] * 6 + [b"X-T: 1\r\n", b"not a header\r\n",
                                    b"X-Big: " + b"t" * 70000 + b"\r\n"]))
    return bytes(out + b"0\r\n" + trailer + b"\r\n")


@st.composite
def message(draw: Any) -> tuple[bytes, bool]:
    """
    @return: one request's bytes, and whether it has something llhttp
        refuses and twisted.web does not.
    """
    strict = False
    if rare(draw, 3):
        method, target, version = draw(_METHODS), draw(_TARGETS), draw(_VERSIONS)
        sep = draw(st.sampled_from([b" ", b" ", b" ", b"  ", b"\t"]))
        line = method + sep + target + b" " + version
    else:
        line = draw(st.sampled_from([b"GET /x HTTP/1.1", b"POST /x HTTP/1.1", b"HEAD /x HTTP/1.1"]))
    headers = [b"%s: %s" % pair for pair in draw(st.lists(_TOKEN_HEADERS, max_size=4, unique_by=lambda h: h[0]))]
    if rare(draw, 14):
        bad = draw(_BAD_HEADER_LINES)
        headers.insert(draw(st.integers(0, len(headers))), bad)
        # After another header, a leading space is obs-fold.
        strict = strict or bad.startswith(b" ")
    if rare(draw, 14):
        headers.append(draw(_STRICT_HEADER_LINES))
        strict = True
    if rare(draw, 14) and headers:
        headers.append(b" folded")  # obs-fold
        strict = True
    size = draw(st.sampled_from([0, 3, 16370, 16384, 16385, 20000]))
    if size and rare(draw, 9):
        headers.append(b"X-Big: " + b"b" * (size - len(line) - 9))
    if rare(draw, 29):
        headers.extend(b"X-N%d: v" % i for i in range(draw(st.sampled_from([499, 500, 501]))))
    body = draw(st.binary(max_size=MAX_BODY + 8))
    framing = draw(_FRAMING)
    encoded = body
    if framing.startswith("cl"):
        value = {
            "cl": b"%d" % len(body), "cl-short": b"%d" % max(0, len(body) - 1),
            "cl-long": b"%d" % (len(body) + 1), "cl-list": b"%d, %d" % (len(body), len(body)),
            "cl-plus": b"+%d" % len(body), "cl-space": b" %d " % len(body), "cl-empty": b"",
            "cl-huge-digits": b"0" * 30 + b"%d" % len(body), "cl-zero": b"0",
            "cl-dup": b"%d" % len(body), "cl-dup-differ": b"%d" % len(body),
            "cl-te": b"%d" % len(body),
        }[framing]
        headers.append(b"Content-Length: " + value)
        if framing == "cl-dup":
            headers.append(b"Content-Length: " + value)
        elif framing == "cl-dup-differ":
            headers.append(b"Content-Length: %d" % (len(body) + 2))
        elif framing == "cl-te":
            headers.append(b"Transfer-Encoding: chunked")
            encoded = draw(chunkedBody(body))
        elif framing == "cl-zero":
            encoded = b""
    elif framing.startswith("te"):
        coding = {"te": b"chunked", "te-upper": b"Chunked", "te-gzip": b"gzip, chunked",
                  "te-twice": b"chunked", "te-cl": b"chunked"}[framing]
        headers.append(b"Transfer-Encoding: " + coding)
        if framing == "te-twice":
            headers.append(b"Transfer-Encoding: chunked")
        elif framing == "te-cl":
            headers.append(b"Content-Length: %d" % len(body))
        encoded = draw(chunkedBody(body))
    else:
        encoded = b""
    ending = draw(st.sampled_from([b"\r\n"] * 15 + [b"\n"]))
    if ending == b"\n":
        strict = True
    lead = draw(st.sampled_from([b""] * 12 + [b"\r\n", b"\r\n\r\n", b"\n"]))
    return lead + b"\r\n".join([line, *headers]) + b"\r\n" + ending + encoded, strict


@st.composite
def streams(draw: Any) -> tuple[list[bytes], tuple[int, ...], bool]:
    """
    @return: the stream cut into chunks, the indexes of the messages
        llhttp may refuse where twisted.web does not (llhttp may still take
        one of them: C{Transfer-Encoding: identity} before a C{chunked}),
        and whether the last message was cut off.
    """
    messages = draw(st.lists(message(), min_size=1, max_size=3))
    data = b"".join(m for m, _ in messages)
    strict = tuple(i for i, (_, s) in enumerate(messages) if s)
    truncated = rare(draw, 7)
    if truncated:
        data = data[:draw(st.integers(0, len(data) - 1))]
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)]) if a != b]
    return chunks, strict, truncated


class EquivalenceTests(SynchronousTestCase):
    """
    The llhttp channel against twisted.web's on the same byte streams.
    """

    def assertEquivalent(self, chunks: list[bytes], strict: tuple[int, ...],
                         truncated: bool, sync: bool) -> None:
        ours = run("httptools", chunks, sync)
        theirs = run("twisted", chunks, sync)
        if ours == theirs:
            return
        seen, statuses, closing = ours
        # The only allowed difference: llhttp refused (400, closed) where
        # twisted.web served or waited, at a strict message or in
        # a cut-off last one; everything before it the same.
        self.assertTrue(strict or truncated, (ours, theirs))
        self.assertTrue(closing, (ours, theirs))
        self.assertEqual(statuses[-1], 400, (ours, theirs))
        self.assertEqual(statuses[:-1], theirs[1][:len(statuses) - 1], (ours, theirs))
        self.assertEqual(seen, theirs[0][:len(seen)], (ours, theirs))
        answered = len([s for s in statuses[:-1] if s != 100])
        if answered in strict:
            return
        # Cut off: twisted.web is still waiting for the rest of the head.
        self.assertTrue(truncated, (ours, theirs))
        self.assertEqual(seen, theirs[0], (ours, theirs))
        self.assertEqual(statuses[:-1], theirs[1], (ours, theirs))
        self.assertFalse(theirs[2], (ours, theirs))

    @settings(max_examples=400, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(streams())
    @example(([b"GET /x HTTP/1.1\r\n\r\n"
               b"GET /x HTTP/1.1\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
               b"GET /x HTTP/1.1\r\nX-Ctl: a\x01b\r\n\r\n"], (1, 2), False))
    def test_sameDecisions(self, stream: tuple[list[bytes], tuple[int, ...], bool]) -> None:
        """
        Any stream, any cuts, a resource that answers at once: the same
        requests reach it, with the same headers and bodies, and the same
        statuses are answered.
        """
        self.assertEquivalent(*stream, sync=True)

    @settings(max_examples=200, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(streams())
    def test_samePipelined(self, stream: tuple[list[bytes], tuple[int, ...], bool]) -> None:
        """
        The same with a resource that answers later: pipelined requests
        wait behind it and are served in order.
        """
        self.assertEquivalent(*stream, sync=False)

    def test_knownCases(self) -> None:
        """
        The smuggling and limit cases, one by one, in one read and byte by
        byte.
        """
        ok = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok"
        cases = [
            ok + ok,
            b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n",
            b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk",
            b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nok\r\n0\r\nX-T: 1\r\n\r\n"
            + ok,
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * 16370 + b"\r\n\r\n",
            b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * 16380 + b"\r\n\r\n",
            b"GET /" + b"a" * 16390 + b" HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(501)) + b"\r\n",
            b"GET http://evil/x HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n",
            b"GET /x HTTP/1.0\r\n\r\n" + ok,
            b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n" + ok,
            b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
            b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 999\r\n\r\n",
            b"\r\nGET /x HTTP/1.1\r\n\r\n",
            b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
            b"GET /x HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok"
            + ok,
        ]
        for case in cases:
            for chunks in ([case], [bytes([b]) for b in case]):
                for sync in (True, False):
                    ours = run("httptools", chunks, sync)
                    self.assertEqual(ours, run("twisted", chunks, sync), case[:80])

    def test_strictCases(self) -> None:
        """
        What llhttp refuses and twisted.web serves: refused with 400 here.
        """
        for line in (b"X-Ctl: a\x01b", b"X-A: a\r\n folded", b"Transfer-Encoding: identity"):
            data = b"GET /x HTTP/1.1\r\n" + line + b"\r\n\r\n"
            seen, statuses, closing = run("httptools", [data], True)
            self.assertEqual((seen, statuses, closing), ([], [400], True))
            self.assertEqual(run("twisted", [data], True)[1], [200])


def onFastChannel(h: ProxyHarness) -> None:
    """
    Serve the harness's client through L{makeSite}'s llhttp channel
    instead of the memory agent's plain C{Site}.
    """
    h.client.agent.site = makeSite(h.root, h.clock, timeout=None)


class FastCancellationTests(test_relay.CancellationTests):
    """
    A client that hangs up closes the upstream connection, on the llhttp
    channel.
    """

    def setUp(self) -> None:
        super().setUp()
        onFastChannel(self.h)


class FastBackPressureTests(test_relay.BackPressureTests):
    """
    A client that cannot keep up pauses the upstream read, on the llhttp
    channel.
    """

    def setUp(self) -> None:
        super().setUp()
        onFastChannel(self.h)

    def test_onFastChannel(self) -> None:
        """
        The harness really is on the llhttp channel.
        """
        d = self.h.post("/api/chat", test_relay.CHAT)
        self.assertIsInstance(self.h.proxyChannels()[0], FastChannel)
        [upstream] = self.h.backend.received
        upstream.startSSE()
        upstream.event(test_relay.delta("a"))
        self.h.pump()
        self.successResultOf(d)


class AbortRecording(StringTransport):
    """
    A transport that notes whether it was aborted.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class ChannelTests(SynchronousTestCase):
    """
    The channel's own behaviour on a fake transport.
    """

    def connect(self, **siteArgs: Any) -> tuple[FastChannel, StringTransport, Recording]:
        resource = Recording(sync=False)
        site: ProxySite = makeSite(resource, MemoryReactorClock(), **siteArgs)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.assertIsInstance(channel, FastChannel)
        transport = StringTransport()
        channel.makeConnection(transport)
        return channel, transport, resource

    def test_pipelinedFloodPausesReading(self) -> None:
        """
        A client that pipelines more than 16 KiB behind a request being
        answered is not read further until the answer is finished.
        """
        channel, transport, resource = self.connect()
        channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        self.assertEqual(transport.producerState, "producing")
        channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n" * (EAGER_READ // 19 + 1))
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(resource.seen), 1)
        resource.pending.pop().finish()
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(resource.seen), 2)

    def test_hangUpReachesRequest(self) -> None:
        """
        A client that leaves while its request is answered errbacks the
        request's C{notifyFinish}.
        """
        channel, _, resource = self.connect()
        channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        finished = resource.pending[0].notifyFinish()
        channel.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(finished, ConnectionDone)

    def test_idleTimerSuspendedWhileAnswering(self) -> None:
        """
        C{--client-timeout} does not cut a long answer, and applies again
        once it is finished.
        """
        clock = MemoryReactorClock()
        resource = Recording(sync=False)
        channel = makeSite(resource, clock, timeout=5, headerTimeout=None).buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
        clock.advance(60)
        self.assertFalse(transport.disconnecting)
        resource.pending.pop().finish()
        clock.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_idlePeriodRestartsAfterAnswer(self) -> None:
        """
        The idle timer stays armed while a request is answered (one timer
        per connection): however long the answer, the client gets the
        whole idle period after it, and a kept-alive request resets it.
        """
        clock = MemoryReactorClock()
        resource = Recording(sync=False)
        channel = makeSite(resource, clock, timeout=5, headerTimeout=None).buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        for _ in range(3):
            channel.dataReceived(b"GET /x HTTP/1.1\r\n\r\n")
            clock.advance(12.5)
            self.assertFalse(transport.disconnecting)
            resource.pending.pop().finish()
            clock.advance(4.9)
            self.assertFalse(transport.disconnecting)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_unreadLastAnswerAborted(self) -> None:
        """
        A client that never reads the last answer of its connection
        (C{Connection: close}) is closed and then aborted by the idle
        timer, not kept forever.
        """
        clock = MemoryReactorClock()
        channel = makeSite(Recording(), clock, timeout=5, headerTimeout=None).buildProtocol(None)
        transport = AbortRecording()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n")
        self.assertIn(b"200 OK", transport.value())
        self.assertTrue(transport.disconnecting)
        clock.advance(5)
        self.assertFalse(transport.aborted)
        clock.advance(channel.abortTimeout or 0)
        self.assertTrue(transport.aborted)

    def test_twistedParserOption(self) -> None:
        """
        C{httpParser="twisted"} is today's L{ProxyChannel}, unchanged.
        """
        site = makeSite(Recording(), MemoryReactorClock(), httpParser="twisted")
        self.assertIsInstance(site.buildProtocol(None), ProxyChannel)
        self.assertRaises(ValueError, makeSite, Recording(), MemoryReactorClock(),
                          httpParser="h11")


class Answering(Resource):
    """
    A leaf that answers as the proxy's resources do, one way per path:
    whole JSON with its length, a chunked stream, nothing, 204, 304, a
    header with several values and a cookie, a body larger than
    L{COALESCE}, bytes returned from C{render}, a 404.
    """

    isLeaf = True

    def render(self, request: Request) -> Any:
        kind = (request.path or b"/").strip(b"/")
        if kind == b"render":
            request.setHeader(b"Content-Type", b"text/plain")
            return b"rendered"
        if kind in (b"204", b"304"):
            request.setResponseCode(int(kind))
            request.finish()
            return NOT_DONE_YET
        if kind == b"empty":
            request.finish()
            return NOT_DONE_YET
        if kind == b"stream":
            request.setHeader(b"Content-Type", b"application/x-ndjson")
            for line in (b'{"a":1}\n', b'{"b":2}\n', b'{"done":true}\n'):
                request.write(line)
            request.finish()
            return NOT_DONE_YET
        body = b"x" * (COALESCE + 1) if kind == b"large" else b'{"models":[]}'
        if kind == b"missing":
            request.setResponseCode(404)
            body = b'{"error":"not found"}'
        if kind == b"headers":
            request.responseHeaders.addRawHeader(b"X-Multi", b"one")
            request.responseHeaders.addRawHeader(b"X-Multi", b"two")
            request.addCookie(b"k", b"v")
            request.setHeader(b"Access-Control-Allow-Origin", b"http://app.example")
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()
        return NOT_DONE_YET


class CountingTransport(StringTransport):
    """
    A transport that counts the calls that wrote to it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        self.writes += 1
        super().writeSequence(data)


_PATHS = [b"/json", b"/stream", b"/empty", b"/204", b"/304", b"/headers", b"/large",
          b"/render", b"/missing"]


def answerOn(site: Any, data: bytes) -> CountingTransport:
    """
    @return: the transport after C{data} was received on a new connection
        of C{site}.
    """
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = CountingTransport()
    channel.makeConnection(transport)
    channel.dataReceived(data)
    return transport


class HeadTests(SynchronousTestCase):
    """
    The response heads L{FastChannel} writes (one C{bytes}, held for the
    first body write) are twisted.web's own, byte for byte.
    """

    def sites(self) -> tuple[Any, Any]:
        # Its channels' idle timers on a fake clock, not the global reactor
        # (where they would outlive the test).
        twistedSite = Site(Answering(), reactor=MemoryReactorClock())
        twistedSite.log = lambda request: None  # type: ignore[method-assign]
        fast = makeSite(Answering(), MemoryReactorClock(), headerTimeout=None)
        return twistedSite, fast

    def test_sameBytesAsTwistedWeb(self) -> None:
        """
        Every kind of answer, to C{GET} and C{HEAD}, kept alive, closing,
        and HTTP/1.0: the same bytes as twisted.web's C{HTTPChannel} writes
        (but for the C{Date}).
        """
        twistedSite, fast = self.sites()
        for path in _PATHS:
            for method in (b"GET", b"HEAD"):
                for tail in (b"HTTP/1.1\r\nHost: a\r\n\r\n",
                             b"HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
                             b"HTTP/1.0\r\nHost: a\r\n\r\n"):
                    data = method + b" " + path + b" " + tail
                    expected = answerOn(twistedSite, data)
                    got = answerOn(fast, data)
                    self.assertEqual(withoutDate(got.value()), withoutDate(expected.value()),
                                     data)
                    self.assertEqual(got.disconnecting, expected.disconnecting, data)
                    self.assertRegex(got.value(), rb"\AHTTP/1\.[01] \d{3} ", data)

    def test_pipelinedSameBytes(self) -> None:
        """
        Every kind of answer pipelined in one read, in order, as twisted.web
        answers them.
        """
        twistedSite, fast = self.sites()
        data = b"".join(
            method + b" " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n"
            for path in _PATHS for method in (b"GET", b"HEAD")
        )
        expected = answerOn(twistedSite, data).value()
        got = answerOn(fast, data).value()
        self.assertEqual(withoutDate(got), withoutDate(expected))
        self.assertEqual(got.count(b"HTTP/1.1 "), 2 * len(_PATHS))

    def test_wholeAnswerInOneWrite(self) -> None:
        """
        A whole answer (head and body) leaves in one transport write; a
        body over L{COALESCE} is written after its head, not copied into
        it; a body-less answer's head is written at once.
        """
        _, fast = self.sites()
        for path, writes in [(b"/json", 1), (b"/missing", 1), (b"/render", 1),
                             (b"/large", 2), (b"/204", 1)]:
            transport = answerOn(fast, b"GET " + path + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(transport.writes, writes, path)
        transport = answerOn(fast, b"HEAD /json HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(transport.writes, 1)
        self.assertIn(b"Content-Length: 13\r\n", transport.value())
        self.assertTrue(transport.value().endswith(b"\r\n\r\n"))

    def test_headSentBeforeStreamWaits(self) -> None:
        """
        A resource that sends its head with an empty write and answers
        later: the head is on the wire at once (holding never delays it).
        """
        resource = Recording(sync=False)
        site = makeSite(resource, MemoryReactorClock(), headerTimeout=None)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        request = resource.pending[0]
        request.setHeader(b"Content-Type", b"application/x-ndjson")
        request.write(b"")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(transport.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n"))
        request.write(b"line\n")
        self.assertTrue(transport.value().endswith(b"5\r\nline\n\r\n"))
        request.finish()
