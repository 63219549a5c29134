"""
No secret the proxy holds reaches a client through upstream text, in
every dialect: the backend answers with an error that quotes the request's
C{Authorization} header.  (The real-socket version is in
C{tests/integration/test_realsocket_hardening.py}.)
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from ollama_proxy.protocol import codec
from ollama_proxy.service.logging import eventAsJSONLine
from ollama_proxy.testing.harness import ProxyHarness
from ollama_proxy.web import models
from ollama_proxy.web.metrics import Metrics
from tests.web.helpers import _content

USER = [{"role": "user", "content": "hi"}]

ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"model": "m", "messages": USER}),
    ("/api/chat", {"model": "m", "messages": USER, "stream": False}),
    ("/api/generate", {"model": "m", "prompt": "hi"}),
    ("/v1/chat/completions", {"model": "m", "messages": USER}),
    ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER}),
    ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER, "stream": True}),
    ("/v1/responses", {"model": "m", "input": "hi"}),
    ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
]


class RedactionTests(SynchronousTestCase):
    def answer(self, path: str, payload: dict[str, Any], midStream: bool) -> bytes:
        h = ProxyHarness(secrets=("inbound-key-123456",))
        d = h.post(path, payload, headers={b"Authorization": [b"Bearer client-key-999999"]})
        received = h.backend.received[-1]
        echoed = ("denied; request had Authorization: " + received.headers["authorization"]
                  + " and x-debug inbound-key-123456 client-key-999999")
        if midStream:
            received.startSSE()
            received.event({"choices": [{"index": 0, "delta": {"content": "hi"},
                                          "finish_reason": None}]})
            received.event({"error": {"message": echoed}})
            received.done()
        else:
            received.respond(401, {"error": {"message": echoed, "type": "invalid_request_error"}})
        h.pump()
        return _content(h, self.successResultOf(d))

    def assertClean(self, data: bytes, path: str) -> None:
        self.assertIn(b"<redacted>", data, path)
        for secret in (b"sk-secret", b"inbound-key-123456", b"client-key-999999"):
            self.assertNotIn(secret, data, path)

    def test_errorBeforeStream(self) -> None:
        """
        A non-2xx answer, relayed or turned into the dialect's error.
        """
        for path, payload in ROUTES:
            self.assertClean(self.answer(path, payload, False), path)

    def test_errorMidStream(self) -> None:
        """
        An error event after the stream began: the dialect's stream error,
        or the relayed event of a passthrough stream.
        """
        for path, payload in ROUTES:
            if payload.get("stream") is not False:
                self.assertClean(self.answer(path, {**payload, "stream": True}, True), path)


# Issue 19: one outbound filter for everything that came from upstream.

BACKEND_KEY = "sk-secret"
INBOUND_KEY = "inbound-key-123456"
CLIENT_KEY = "client-key-999999"
SECRETS = (BACKEND_KEY, INBOUND_KEY, CLIENT_KEY)

TRANSLATED: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"model": "m", "messages": USER}),
    ("/api/generate", {"model": "m", "prompt": "hi"}),
    ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER, "stream": True}),
    ("/v1/responses", {"model": "m", "input": "hi", "stream": True}),
]
PASSTHROUGH = ("/v1/chat/completions", {"model": "m", "messages": USER, "stream": True})

PLACES = ("content", "reasoning", "tool", "escaped", "errorEvent")
"""Where a streamed 2xx reply carries the secret."""

ERROR_PLACES = ("errorBody", "escapedBody", "truncated", "reason")
"""Where a non-2xx answer carries it."""


def escaped(text: str) -> str:
    """
    @return: C{text} with every character as a JSON C{\\uXXXX} escape.
    """
    return "".join(f"\\u{ord(c):04x}" for c in text)


def chunk(fields: str) -> bytes:
    """
    @return: one SSE event of a chat chunk whose delta is C{fields} (raw
        JSON members, so that escapes stay as the backend wrote them).
    """
    return (b'data: {"choices": [{"index": 0, "delta": {' + fields.encode()
            + b'}, "finish_reason": null}]}\n\n')


def streamBody(place: str, secret: str, cut: int) -> bytes:
    """
    @return: an SSE reply carrying C{secret} at C{place}, the secret (or
        its arguments) split over two deltas at C{cut}.
    """
    text = f"key {secret} end"
    cut = min(cut, len(text))
    end = (b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
           b"data: [DONE]\n\n")
    if place == "content":
        return chunk(f'"content": "{text[:cut]}"') + chunk(f'"content": "{text[cut:]}"') + end
    if place == "reasoning":
        return (chunk(f'"reasoning_content": "{text[:cut]}"')
                + chunk(f'"reasoning_content": "{text[cut:]}"') + chunk('"content": "ok"') + end)
    if place == "tool":
        arguments = codec.dumps({"cmd": text}).decode()
        cut = min(cut, len(arguments))
        first, second = (codec.dumps(arguments[:cut]).decode(),
                         codec.dumps(arguments[cut:]).decode())
        return (chunk('"tool_calls": [{"index": 0, "id": "c1", "type": "function", '
                      f'"function": {{"name": "run", "arguments": {first}}}}}]')
                + chunk(f'"tool_calls": [{{"index": 0, "function": {{"arguments": {second}}}}}]')
                + b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}\n\n'
                + b"data: [DONE]\n\n")
    if place == "escaped":
        return chunk(f'"content": "{escaped(text)}"') + end
    if place == "doubleEscaped":
        # Text that reads as the escaped key: each escape's backslash
        # escaped again on the wire.
        return chunk('"content": "' + escaped(text).replace("\\", "\\\\") + '"') + end
    assert place == "errorEvent"
    return chunk('"content": "hi"') + (
        b'data: {"error": {"message": "bad key ' + escaped(secret).encode() + b" "
        + secret.encode() + b'"}}\n\n')


def serveModels(h: ProxyHarness, ids: list[str]) -> None:
    """
    Answer every pending model listing with C{ids} and every pending
    metadata request with a 404, until no more come.
    """
    answered: set[int] = set()
    for _ in range(5):
        h.pump()
        for received in list(h.backend.received):
            if id(received) in answered or not received.path.endswith("models") and (
                    "model" not in received.path or "chat" in received.path):
                continue
            answered.add(id(received))
            if received.path.endswith("/models"):
                received.respond(200, {"object": "list", "data": [
                    {"id": i, "object": "model"} for i in ids]})
            else:
                received.respond(404, {"error": "no"})
    h.pump()


class OutboundFilterTests(SynchronousTestCase):
    """
    A hostile backend plants each secret the proxy holds (its key, an
    inbound key, the client's forwarded key) everywhere it can: no byte the
    client or the log receives carries it.
    """

    def setUp(self) -> None:
        self.events: list[LogEvent] = []

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def harness(self) -> ProxyHarness:
        h = ProxyHarness(secrets=(INBOUND_KEY,), debug=True, metrics=Metrics())
        self.events.clear()
        return h

    def logged(self) -> bytes:
        """
        @return: every log event as the text and the JSON log write it.
        """
        return "\n".join(
            (formatEvent(e) or "") + eventAsJSONLine(e) for e in self.events
        ).encode("utf-8")

    def assertNoSecret(self, data: bytes, where: str) -> None:
        logged = self.logged()
        for secret in SECRETS:
            for form in (secret, escaped(secret), escaped(secret).replace("\\", "\\\\")):
                self.assertNotIn(form.encode(), data, f"{where}: client")
                self.assertNotIn(form.encode(), logged, f"{where}: log")
            # Every planted secret is whole: a prefix is a cut key.
            self.assertNotIn(secret[: len(secret) // 2 + 1].encode(), data, f"{where}: prefix")

    def exchange(
        self, path: str, payload: dict[str, Any], answer: Callable[[Any], list[bytes]]
    ) -> bytes:
        """
        Send one request with the client's key; C{answer} drives the backend
        and returns the pieces to write, each its own read.
        """
        h = self.harness()
        d = h.post(path, payload, headers={b"Authorization": [b"Bearer " + CLIENT_KEY.encode()]})
        received = h.backend.received[-1]
        lost: list[object] = []
        received.request.notifyFinish().addErrback(lost.append)
        for piece in answer(received):
            if not lost:
                received.write(piece)
            h.pump()
        if not lost:
            # The proxy closes the upstream after a stream error.
            received.finish()
        h.pump()
        return _content(h, self.successResultOf(d))

    def streamed(self, path: str, payload: dict[str, Any], body: bytes, split: int) -> bytes:
        def answer(received: Any) -> list[bytes]:
            received.startSSE()
            return [body[:split], body[split:]]

        return self.exchange(path, payload, answer)

    @settings(max_examples=120, deadline=None)
    @given(
        route=st.sampled_from(TRANSLATED),
        place=st.sampled_from(PLACES),
        secret=st.sampled_from(SECRETS),
        cut=st.integers(0, 40),
        split=st.integers(0, 2000),
    )
    def test_translatedStream(
        self, route: tuple[str, dict[str, Any]], place: str, secret: str, cut: int, split: int
    ) -> None:
        """
        Text, reasoning and tool arguments (split over deltas), JSON-escaped
        text and error events, at every byte split of the reads, in every
        dialect's stream.
        """
        body = streamBody(place, secret, cut)
        data = self.streamed(*route, body, split % (len(body) + 1))
        self.assertNoSecret(data, f"{route[0]} {place}")

    @settings(max_examples=60, deadline=None)
    @given(
        place=st.sampled_from(("escaped", "doubleEscaped", "errorEvent", "plain")),
        secret=st.sampled_from(SECRETS),
        split=st.integers(0, 2000),
    )
    def test_passthroughStream(self, place: str, secret: str, split: int) -> None:
        """
        A relayed stream: the secret literal or JSON-escaped, at every byte
        split of the reads.
        """
        body = (chunk(f'"content": "key {secret} end"') + b"data: [DONE]\n\n"
                if place == "plain" else streamBody(place, secret, 99))
        data = self.streamed(*PASSTHROUGH, body, split % (len(body) + 1))
        self.assertNoSecret(data, f"passthrough {place}")

    @settings(max_examples=80, deadline=None)
    @given(
        route=st.sampled_from([*TRANSLATED, PASSTHROUGH,
                               ("/api/chat", {"model": "m", "messages": USER, "stream": False})]),
        place=st.sampled_from(ERROR_PLACES),
        secret=st.sampled_from(SECRETS),
        split=st.integers(0, 400),
    )
    def test_errorAnswer(
        self, route: tuple[str, dict[str, Any]], place: str, secret: str, split: int
    ) -> None:
        """
        A non-2xx answer: the secret in the body (JSON-escaped too), at the
        point where an excerpt is cut, in the status line's reason, and in
        headers.
        """
        if place == "errorBody":
            body = codec.dumps({"error": {"message": f"Incorrect API key provided: {secret}"}})
        elif place == "escapedBody":
            body = b'{"error": {"message": "Incorrect API key: ' + escaped(secret).encode() + b'"}}'
        elif place == "truncated":
            body = b"x" * (1995 - len(secret) // 2) + secret.encode() + b" not json"
        else:
            body = b"no"

        def answer(received: Any) -> list[bytes]:
            reason = secret.encode() if place == "reason" else b"Unauthorized"
            received.request.setResponseCode(401, reason)
            received.request.setHeader(b"Content-Type", b"application/json")
            received.request.setHeader(b"X-Api-Key", secret.encode())
            received.request.setHeader(b"Set-Cookie", b"sid=" + secret.encode())
            return [body[:split], body[split:]]

        data = self.exchange(*route, answer)
        self.assertNoSecret(data, f"{route[0]} {place}")

    @settings(max_examples=120, deadline=None)
    @given(
        route=st.sampled_from([
            ("/api/chat", {"model": "m", "messages": USER, "stream": False}),
            ("/api/generate", {"model": "m", "prompt": "hi", "stream": False}),
            ("/v1/messages", {"model": "m", "max_tokens": 8, "messages": USER}),
            ("/v1/responses", {"model": "m", "input": "hi"}),
            ("/v1beta/models/m:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
        ]),
        place=st.sampled_from(("content", "reasoning", "tool", "escaped", "doubleEscaped",
                               "thinkTag", "ids")),
        secret=st.sampled_from(SECRETS),
        split=st.integers(0, 2000),
    )
    def test_wholeReply(
        self, route: tuple[str, dict[str, Any]], place: str, secret: str, split: int
    ) -> None:
        """
        A non-streamed answer (redacted whole, in one pass, issue 23): the
        secret in the text, the reasoning, tool arguments, JSON-escaped (once
        or twice), in a leading C{<think>} block, or in the reply's own id,
        model and fingerprint, the body at any split of the reads.
        """
        text = f"key {secret} end"
        message: dict[str, Any] = {"role": "assistant", "content": "ok"}
        if place == "content":
            message["content"] = text
        elif place == "reasoning":
            message["reasoning_content"] = text
        elif place == "thinkTag":
            message["content"] = f"<think>{text}</think>answer"
        elif place == "tool":
            message["tool_calls"] = [{"id": "c1", "type": "function", "function": {
                "name": "run", "arguments": codec.dumps({"cmd": text}).decode()}}]
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                 "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 2}}
        if place == "ids":
            reply.update(id=text, model=text, system_fingerprint=text)
        body = codec.dumps(reply)
        if place in ("escaped", "doubleEscaped"):
            spelled = escaped(text)
            if place == "doubleEscaped":
                spelled = spelled.replace("\\", "\\\\")
            body = body.replace(b'"content":"ok"', b'"content":"' + spelled.encode() + b'"')

        def answer(received: Any) -> list[bytes]:
            received.request.setResponseCode(200)
            received.request.setHeader(b"Content-Type", b"application/json")
            cut = split % (len(body) + 1)
            return [body[:cut], body[cut:]]

        data = self.exchange(*route, answer)
        if place in ("content", "tool", "escaped", "doubleEscaped"):  # (not dropped)
            self.assertIn(b"<redacted>", data, f"{route[0]} {place}: an answer, redacted")
        self.assertNoSecret(data, f"{route[0]} {place}")

    def test_passthroughHeaders(self) -> None:
        """
        Relayed headers come from an allow-list: the content type, retry
        hints, request ids and rate limits pass; C{Set-Cookie}, C{Server},
        invented headers and any allowed header that carries a secret stay
        behind.
        """
        h = self.harness()
        d = h.post(*PASSTHROUGH)
        received = h.backend.received[-1]
        headers = {
            b"Set-Cookie": b"sid=" + BACKEND_KEY.encode(), b"Server": b"gateway/1.0",
            b"X-Api-Key": BACKEND_KEY.encode(), b"Retry-After": b"3",
            b"X-Request-Id": b"req-1", b"X-Ratelimit-Remaining-Requests": b"99",
            b"Openai-Version": BACKEND_KEY.encode(), b"Keep-Alive": b"timeout=5",
        }
        for name, value in headers.items():
            received.request.setHeader(name, value)
        received.startSSE()
        received.done()
        h.pump()
        response = self.successResultOf(d)
        got = {name.lower(): values for name, values in response.headers.getAllRawHeaders()}
        self.assertEqual(got[b"retry-after"], [b"3"])
        self.assertEqual(got[b"x-request-id"], [b"req-1"])
        self.assertEqual(got[b"x-ratelimit-remaining-requests"], [b"99"])
        self.assertTrue(got[b"content-type"][0].startswith(b"text/event-stream"))
        for name in (b"set-cookie", b"x-api-key", b"openai-version", b"keep-alive"):
            self.assertNotIn(name, got)
        self.assertNotIn(b"gateway/1.0", got.get(b"server", [b""])[0])

    def test_modelIds(self) -> None:
        """
        A backend model id that carries a secret is shown redacted in
        C{/api/tags}, C{/api/ps}, C{/api/show} (modelfile too), the
        C{/metrics} labels and the log line.
        """
        h = self.harness()
        ids = [f"evil-{secret}" for secret in (BACKEND_KEY, INBOUND_KEY)]
        d = h.get("/api/tags", headers={b"Authorization": [b"Bearer " + INBOUND_KEY.encode()]})
        serveModels(h, ids)
        out = [_content(h, self.successResultOf(d))]
        auth = {b"Authorization": [b"Bearer " + INBOUND_KEY.encode()]}
        d = h.get("/api/ps", headers=auth)
        h.pump()
        out.append(_content(h, self.successResultOf(d)))
        for name in ids:
            d = h.post("/api/show", {"model": name}, headers=auth)
            h.pump()
            out.append(_content(h, self.successResultOf(d)))
            d = h.post("/api/chat", {"model": name, "messages": USER, "stream": False},
                       headers=auth)
            h.pump()
            h.backend.received[-1].respond(200, {"choices": [{"index": 0, "message": {
                "role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
            h.pump()
            out.append(_content(h, self.successResultOf(d)))
        d = h.get("/metrics", headers=auth)
        h.pump()
        out.append(_content(h, self.successResultOf(d)))
        data = b"\n".join(out)
        self.assertIn(b"evil-<redacted>", data)
        self.assertIn(b"modelfile", data)
        self.assertNoSecret(data, "model ids")

    def test_warmTagsPreEncoded(self) -> None:
        """
        A warm C{/api/tags} is sent from bytes encoded and redacted once
        (issue 23): the same bytes to every request without a key of its
        own; a client whose key an id carries still gets it redacted, and
        one whose key is no secret (shorter than 8) gets the shared bytes.
        """
        h = self.harness()
        ids = [f"evil-{BACKEND_KEY}", f"evil-{CLIENT_KEY}"]
        d = h.get("/api/tags")
        serveModels(h, ids)
        first = _content(h, self.successResultOf(d))
        again = [first]
        self.patch(models, "encoded", lambda *a: self.fail("encoded again"))
        for headers in ({}, {b"Authorization": [b"Bearer ollama"]}):
            d = h.get("/api/tags", headers=headers)
            h.pump()
            again.append(_content(h, self.successResultOf(d)))
        self.assertEqual(again, [first] * 3)
        self.assertIn(b"evil-<redacted>", first)
        self.assertNotIn(BACKEND_KEY.encode(), first)
        self.assertIn(CLIENT_KEY.encode(), first)  # no secret for these clients
        d = h.get("/api/tags", headers={b"Authorization": [b"Bearer " + CLIENT_KEY.encode()]})
        h.pump()
        keyed = _content(h, self.successResultOf(d))
        self.assertNoSecret(keyed, "tags for the client whose key an id carries")
        self.assertEqual(keyed.count(b"evil-<redacted>"), 2 * first.count(b"evil-<redacted>"))

    def test_controlCharactersInLogLine(self) -> None:
        """
        A model name with C{\\r} or C{\\n} cannot forge a log line: control
        characters are written as escapes in the request line.
        """
        h = self.harness()
        d = h.post("/api/chat", {"model": "m\r\nGET /forged model=x", "messages": USER,
                                 "stream": False})
        serveModels(h, ["m"])
        h.backend.received[-1].respond(404, {"error": "no such model"})
        h.pump()
        _content(h, self.successResultOf(d))
        lines = [formatEvent(e) or "" for e in self.events if e.get("log_format") == "{line}"]
        self.assertEqual(len(lines), 1)
        self.assertNotIn("\r", lines[0])
        self.assertNotIn("\n", lines[0])
        self.assertIn("model=m\\r\\nGET /forged", lines[0])

    def test_debugLinesBounded(self) -> None:
        """
        With C{--debug}, a large body is shown as an excerpt in every line
        (the request line and the upstream request line), never whole: a
        2 KB compressed body of 60 MB made two 60 MB log lines per request
        (120 MB of JSON log, the reactor held for seconds).
        """
        for path, payload in TRANSLATED[:3]:
            h = self.harness()
            big = {**payload, "messages": [{"role": "user", "content": "x" * 300_000}],
                   "prompt": "y" * 300_000, "stream": False}
            d = h.post(path, big)
            serveModels(h, ["m"])
            h.backend.received[-1].respond(404, {"error": "no such model"})
            h.pump()
            _content(h, self.successResultOf(d))
            lines = [formatEvent(e) or "" for e in self.events] + [
                eventAsJSONLine(e) for e in self.events]
            self.assertTrue(any("upstream request" in line for line in lines), path)
            self.assertLess(max(len(line) for line in lines), 20_000, path)

