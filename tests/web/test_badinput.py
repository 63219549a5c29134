"""
Hostile or sloppy client bodies: each gets a 400 JSON error that names what
is wrong, nothing is sent upstream, and what Ollama tolerates (unknown
fields, large strings) is tolerated.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.harness import ProxyHarness, delta

M = [{"role": "user", "content": "hi"}]


class BadInputTests(SynchronousTestCase):
    """
    Table of bad bodies with the word their error message must contain.
    """

    def reject(self, path: str, body: Any, mentions: str) -> None:
        h = ProxyHarness()
        d = h.post(path, body)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 400, (path, body))
        self.assertEqual(
            response.headers.getRawHeaders(b"content-type"), [b"application/json; charset=utf-8"]
        )
        error = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual(list(error), ["error"])
        self.assertIn(mentions, error["error"], (path, body))
        self.assertEqual(h.backend.received, [])

    def test_malformedJSON(self) -> None:
        """
        Truncated JSON and invalid UTF-8 are 400s that say the JSON is
        invalid; absurd nesting (past orjson's own 1024 levels) is a 400
        naming the nesting limit (never a recursion error or a 500).
        """
        for body in (
            b'{"model": "m", "messages": [',
            b'{"model":"m","messages":[{"role":"user","content":"\xff\xfe"}]}',
            b"\x00\x01",
        ):
            self.reject("/api/chat", body, "invalid JSON")
            self.reject("/api/generate", body, "invalid JSON")
        for path in ("/api/chat", "/api/generate"):
            self.reject(path, b"[" * 5000 + b"]" * 5000, "nested more than 128 levels")

    def test_notAnObject(self) -> None:
        """
        Valid JSON that is not an object is refused.
        """
        for body in (b"[]", b"42", b'"chat"', b"null"):
            self.reject("/api/chat", body, "object")

    def test_wrongTypes(self) -> None:
        """
        Each mistyped field is named in the error.
        """
        cases: list[tuple[str, dict[str, Any], str]] = [
            ("/api/chat", {"model": "m", "messages": {"role": "user"}}, "messages"),
            ("/api/chat", {"model": "m", "messages": ["hi"]}, "messages[0]"),
            ("/api/chat", {"model": "m", "messages": [{"role": "user", "content": 5}]}, "content"),
            ("/api/chat", {"model": "m", "messages": M, "stream": "yes"}, "stream"),
            ("/api/chat", {"model": "m", "messages": M, "options": [1]}, "options"),
            ("/api/chat", {"model": "m", "messages": M, "options": {"temperature": "hot"}}, "temperature"),
            ("/api/chat", {"model": "m", "messages": M, "tools": "x"}, "tools"),
            ("/api/chat", {"model": "m", "messages": M, "format": "xml"}, "format"),
            ("/api/chat", {"model": "m", "messages": M, "think": "maybe"}, "think"),
            ("/api/chat", {"model": 5, "messages": M}, "model"),
            ("/api/generate", {"model": "m", "prompt": ["x"]}, "prompt"),
            ("/api/generate", {"model": "m", "prompt": "x", "stream": 1}, "stream"),
        ]
        for path, body, mentions in cases:
            self.reject(path, body, mentions)

    def test_missingModel(self) -> None:
        """
        No model: C{model is required} on both native routes.
        """
        self.reject("/api/chat", {"messages": M}, "model is required")
        self.reject("/api/generate", {"prompt": "x"}, "model is required")

    def test_invalidImages(self) -> None:
        """
        Images that are not base64 (in C{generate} or in a chat message)
        are refused before anything is sent upstream.
        """
        self.reject("/api/generate", {"model": "m", "prompt": "x", "images": ["not base64!!"]}, "image")
        self.reject(
            "/api/chat",
            {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["@@@"]}]},
            "image",
        )
        self.reject("/api/generate", {"model": "m", "prompt": "x", "images": [42]}, "image")


class ToleratedInputTests(SynchronousTestCase):
    """
    What Ollama accepts, the proxy accepts.
    """

    def test_unknownFieldsIgnored(self) -> None:
        """
        Unknown top-level and option fields are accepted and not forwarded.
        """
        h = ProxyHarness()
        h.post("/api/chat", {"model": "m", "messages": M, "whatever": {"a": 1}, "options": {"mirostat_zeta": 3}})
        [upstream] = h.backend.received
        sent = upstream.json()
        self.assertNotIn("whatever", sent)
        self.assertNotIn("mirostat_zeta", codec.dumps(sent).decode())

    def test_hugeString(self) -> None:
        """
        A multi-megabyte message under the body cap is forwarded intact.
        """
        h = ProxyHarness()
        content = "x" * (3 * 1024 * 1024)
        h.post("/api/chat", {"model": "m", "messages": [{"role": "user", "content": content}]})
        [upstream] = h.backend.received
        self.assertEqual(upstream.json()["messages"][0]["content"], content)


def nested(depth: int, mixed: bool = True) -> str:
    """
    @return: JSON text of arrays and objects (alternating when C{mixed})
        C{depth} deep (as text: orjson cannot encode past 254).
    """
    text = '"x"'
    for i in range(depth):
        text = '{"a":' + text + "}" if mixed and i % 2 else "[" + text + "]"
    return text


def withDeep(make: Any, deep: str) -> bytes:
    """
    @return: the body C{make} builds, with C{deep} in its marked place.
    """
    return codec.dumps(make("DEEP")).replace(b'"DEEP"', deep.encode())


ANTHROPIC = {"model": "m", "max_tokens": 8, "messages": M}
ROUTES: list[tuple[str, Any]] = [
    ("/v1/messages", lambda deep: {**ANTHROPIC, "tools": [
        {"name": "t", "input_schema": {"type": "object", "properties": {"p": deep}}}]}),
    ("/v1/messages/count_tokens", lambda deep: {**ANTHROPIC, "tools": [
        {"name": "t", "input_schema": {"type": "object", "properties": {"p": deep}}}]}),
    ("/v1/responses", lambda deep: {"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "t", "parameters": {"properties": {"p": deep}}}]}),
    ("/api/chat", lambda deep: {"model": "m", "messages": M, "stream": False, "format": deep}),
    ("/api/chat", lambda deep: {"model": "m", "messages": M, "stream": False, "tools": [
        {"type": "function", "function": {"name": "t", "parameters": deep}}]}),
    ("/api/generate", lambda deep: {"model": "m", "prompt": "x", "stream": False,
                                    "format": deep}),
    ("/v1/chat/completions", lambda deep: {"model": "m", "messages": M, "x": deep}),
]


class NestingTests(SynchronousTestCase):
    """
    Issue 19: one nesting limit (L{codec.MAX_DEPTH}) at parse time on every
    route, so a body between 128 and orjson's encoding limit (254) is a 400
    in the route's dialect, never a 500 when it is re-encoded.
    """

    def answer(self, path: str, body: Any) -> tuple[int, bytes, Any]:
        h = ProxyHarness()
        d = h.post(path, body)
        h.pump()
        response = self.successResultOf(d)
        return response.code, self.successResultOf(h.client.content(response)), h

    def test_tooDeep(self) -> None:
        """
        200 and 300 levels (arrays, objects, mixed) are a 400 naming the
        limit, in each route's error shape, and nothing goes upstream.
        """
        for path, make in ROUTES:
            for depth, mixed in ((200, True), (200, False), (300, True), (1000, True)):
                code, data, h = self.answer(path, withDeep(make, nested(depth, mixed)))
                self.assertEqual(code, 400, (path, depth, data[:200]))
                self.assertIn(b"nested more than 128 levels", data, path)
                self.assertEqual(h.backend.received, [], path)
                error = codec.loads(data)
                if path.startswith("/v1/messages"):
                    self.assertEqual(error["type"], "error")
                elif path == "/v1/responses":
                    self.assertEqual(error["error"]["type"], "invalid_request_error", path)
                else:
                    self.assertEqual(list(error), ["error"])

    def test_realSchemasPass(self) -> None:
        """
        A tool schema 100 levels deep (far past any real client's) is
        accepted and reaches the backend.
        """
        for path, make in ROUTES:
            if path.endswith("count_tokens"):
                continue
            h = ProxyHarness()
            h.post(path, withDeep(make, nested(100)))
            self.assertEqual(len(h.backend.received), 1, path)


class EncodedBodyTests(SynchronousTestCase):
    """
    Issue 19: C{Content-Encoding} is decoded the same way on every route
    that reads a body (it was ignored on the Ollama routes, and dropped on
    passthrough with the body still compressed).
    """

    def test_ollamaRoutesDecode(self) -> None:
        """
        zstd and gzip bodies on C{/api/chat}, C{/api/generate},
        C{/api/embed} reach the backend decoded.
        """
        import gzip

        import zstandard
        for path, payload in [
            ("/api/chat", {"model": "m", "messages": M, "stream": False}),
            ("/api/generate", {"model": "m", "prompt": "x", "stream": False}),
            ("/api/embed", {"model": "m", "input": "x"}),
        ]:
            raw = codec.dumps(payload)
            for data, coding in ((zstandard.ZstdCompressor().compress(raw), b"zstd"),
                                 (gzip.compress(raw), b"gzip")):
                h = ProxyHarness()
                h.post(path, data, headers={b"Content-Encoding": [coding]})
                [upstream] = h.backend.received
                self.assertEqual(upstream.json()["model"], "m", (path, coding))
                self.assertNotIn("content-encoding", upstream.headers)

    def test_showAndUnknownCoding(self) -> None:
        """
        An unknown coding is a 415 JSON error (never "not valid UTF-8"); a
        corrupt body a 400 naming the codec.
        """
        for path in ("/api/chat", "/api/show", "/api/embed", "/v1/chat/completions"):
            h = ProxyHarness()
            response = self.successResultOf(
                h.post(path, b"\x1f\x8b junk", headers={b"Content-Encoding": [b"br"]}))
            self.assertEqual(response.code, 415, path)
            data = self.successResultOf(h.client.content(response))
            self.assertIn(b"unsupported Content-Encoding", data)
            response = self.successResultOf(
                h.post(path, b"\x1f\x8b junk", headers={b"Content-Encoding": [b"gzip"]}))
            self.assertEqual(response.code, 400, path)
            data = self.successResultOf(h.client.content(response))
            self.assertIn(b"failed to decompress gzip body", data)
            self.assertNotIn(b"UTF-8", data)

    def test_emptyBodyNotDecoded(self) -> None:
        """
        A header on a request without a body (a GET) is not an error.
        """
        h = ProxyHarness()
        response = self.successResultOf(
            h.get("/api/version", headers={b"Content-Encoding": [b"br"]}))
        self.assertEqual(response.code, 200)

    def test_passthroughDecodesAndRoutes(self) -> None:
        """
        A compressed C{/v1/chat/completions} is decoded, routed by its model
        (the name mapped), and sent upstream as identity: its coding is
        never lost with the bytes still compressed.
        """
        import zstandard
        h = ProxyHarness()
        raw = codec.dumps({"model": "m:latest", "messages": M})
        h.post("/v1/chat/completions", zstandard.ZstdCompressor().compress(raw),
               headers={b"Content-Encoding": [b"zstd"], b"Content-Type": [b"application/json"]})
        [upstream] = h.backend.received
        self.assertEqual(upstream.json()["model"], "m")
        self.assertNotIn("content-encoding", upstream.headers)


def _toolReply(arguments: str) -> bytes:
    """
    @return: a whole completion calling tool C{t} with C{arguments} (JSON
        text spliced in as it is, since orjson cannot encode past 254).
    """
    return codec.dumps({"choices": [{"message": {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "t", "arguments": "ARGS"}}]},
        "finish_reason": "tool_calls"}]}).replace(b'"ARGS"', arguments.encode())


BACKEND_ROUTES: list[tuple[str, dict[str, Any]]] = [
    ("/api/chat", {"model": "m", "messages": M}),
    ("/v1/messages", ANTHROPIC),
    ("/v1/responses", {"model": "m", "input": "hi"}),
]


class BackendNestingTests(SynchronousTestCase):
    """
    A hostile backend's reply nested deeper than L{codec.MAX_DEPTH} (its
    tool-call arguments, or the whole body) is the backend's fault: a 502 in
    the route's dialect, or the stream ended with the dialect's error, never
    a 500 "internal proxy error" when the proxy re-encodes it.
    """

    def roundTrip(self, path: str, request: dict[str, Any], stream: bool,
                  reply: bytes) -> tuple[int, bytes]:
        h = ProxyHarness()
        d = h.post(path, {**request, "stream": stream})
        [upstream] = h.backend.received
        if stream:
            upstream.startSSE()
            upstream.write(reply)
            upstream.done()
        else:
            upstream.respond(200, reply)
        h.pump()
        response = self.successResultOf(d)
        data = self.successResultOf(h.client.content(response))
        return response.code, data

    def assertDialectError(self, path: str, stream: bool, code: int, data: bytes) -> None:
        self.assertNotIn(b"internal proxy error", data, (path, stream))
        self.assertIn(b"nested more than 128 levels", data, (path, stream))
        if not stream:
            self.assertEqual(code, 502, (path, data[:300]))
            error = codec.loads(data)
            if path == "/v1/messages":
                self.assertEqual((error["type"], error["error"]["type"]), ("error", "api_error"))
            elif path == "/v1/responses":
                self.assertEqual(error["error"]["type"], "server_error")
            else:
                self.assertEqual(list(error), ["error"])
            return
        if path == "/api/chat":
            last = codec.loads(data.strip().split(b"\n")[-1])
            self.assertIn("nested more than", last["error"])
        elif path == "/v1/messages":
            self.assertIn(b"event: error\n", data)
            self.assertNotIn(b"message_stop", data)
        else:
            self.assertIn(b"event: response.failed\n", data)
            self.assertNotIn(b"response.completed", data)

    def test_deepToolArguments(self) -> None:
        """
        Tool-call arguments nested 300 deep (as a JSON string, and as an
        object in a whole reply).
        """
        arguments = '{"a":' + nested(299) + "}"
        for path, request in BACKEND_ROUTES:
            code, data = self.roundTrip(path, request, False, _toolReply(codec.dumps(
                arguments).decode()))
            self.assertDialectError(path, False, code, data)
            code, data = self.roundTrip(path, request, False, _toolReply(arguments))
            self.assertDialectError(path, False, code, data)
            chunk = codec.dumps(delta(tool_calls=[{"index": 0, "id": "c1", "type": "function",
                                                   "function": {"name": "t", "arguments": "A"}}],
                                      finish_reason="tool_calls"))
            code, data = self.roundTrip(path, request, True, b"data: " + chunk.replace(
                b'"A"', codec.dumps(arguments)) + b"\n\n")
            self.assertDialectError(path, True, code, data)

    def test_deepBody(self) -> None:
        """
        A whole reply, or one stream event, nested 300 deep anywhere.
        """
        deep = nested(300)
        whole = codec.dumps({"choices": [{"message": {"content": "hi"},
                                          "finish_reason": "stop"}], "x": "D"})
        event = codec.dumps({**delta("hi"), "x": "D"})
        for path, request in BACKEND_ROUTES:
            code, data = self.roundTrip(path, request, False,
                                        whole.replace(b'"D"', deep.encode()))
            self.assertDialectError(path, False, code, data)
            code, data = self.roundTrip(path, request, True, b"data: " + event.replace(
                b'"D"', deep.encode()) + b"\n\n")
            self.assertDialectError(path, True, code, data)


class PassthroughErrorShapeTests(SynchronousTestCase):
    """
    The proxy's own refusals on the relayed OpenAI routes are in OpenAI's
    error shape, like the backend's answers relayed there.
    """

    def test_openAIShape(self) -> None:
        """
        Too deep (under orjson's limit and past it), a corrupt or unknown
        C{Content-Encoding}: a 4xx C{{"error": {"message", "type", "param",
        "code"}}} and nothing relayed.
        """
        import zstandard

        deep = b'{"model":"m","x":' + nested(300).encode() + b"}"
        cases: list[tuple[bytes, dict[bytes, list[bytes]], int, str]] = [
            (deep, {}, 400, "nested more than 128"),
            (b"[" * 5000 + b"]" * 5000, {}, 400, "nested more than 128"),
            (b"nonsense", {b"Content-Encoding": [b"zstd"]}, 400, "zstd"),
            (zstandard.ZstdCompressor().compress(deep), {b"Content-Encoding": [b"zstd"]}, 400,
             "nested more than 128"),
            (b"x", {b"Content-Encoding": [b"br"]}, 415, "Content-Encoding"),
        ]
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            for data, headers, status, mentions in cases:
                h = ProxyHarness()
                response = self.successResultOf(h.post(path, data, headers=headers))
                error = codec.loads(self.successResultOf(h.client.content(response)))
                self.assertEqual(response.code, status, (path, data[:20], error))
                self.assertEqual(sorted(error["error"]), ["code", "message", "param", "type"])
                self.assertEqual(error["error"]["type"], "invalid_request_error")
                self.assertIn(mentions, error["error"]["message"])
                self.assertEqual(h.backend.received, [], path)

    def test_invalidJSONRelayed(self) -> None:
        """
        JSON the proxy cannot read is the backend's to judge (as it would
        be without the proxy): relayed, and its answer relayed.
        """
        h = ProxyHarness()
        d = h.post("/v1/chat/completions", b'{"model":')
        [upstream] = h.backend.received
        self.assertEqual(upstream.body, b'{"model":')
        upstream.respond(400, {"error": {"message": "bad", "type": "invalid_request_error"}})
        h.pump()
        self.assertEqual(self.successResultOf(d).code, 400)
