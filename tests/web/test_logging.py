"""
What the proxy logs: one info line per request normally; payloads and raw
chunks with C{--debug}; secrets never.
"""

from __future__ import annotations

from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.harness import BodyCollector, ProxyHarness, delta
from tests.web.helpers import CHAT


def runChat(harness: ProxyHarness) -> list[bytes]:
    """
    One streamed chat through the harness, sent with a client Authorization
    header.

    @return: the NDJSON lines the client got.
    """
    d = harness.post("/api/chat", CHAT, headers={"Authorization": "Bearer client-token-123"})
    [upstream] = harness.backend.received
    upstream.startSSE()
    upstream.event(delta("Hi"))
    upstream.event(delta(finish_reason="stop"))
    upstream.done()
    harness.pump()
    reader = BodyCollector(harness, d.result)
    harness.pump()
    return reader.data.splitlines()


class LoggingTests(SynchronousTestCase):
    """
    Log content with and without C{--debug}.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def logged(self) -> str:
        """
        Every formatted event and every event's fields, as one text to
        search for secrets.  C{log_time} is left out: it is the wall
        clock, whose digits hold any short run of digits now and then
        (a key's C{12345} was found in one on CI).
        """
        fields = [repr({k: v for k, v in e.items() if k != "log_time"}) for e in self.events]
        return "\n".join(self.texts()) + "\n".join(fields)

    def test_oneLinePerRequest(self) -> None:
        """
        Without debug: exactly one info event for the request, with method,
        path, model and status; no debug events, no payloads.
        """
        lines = runChat(ProxyHarness())
        self.assertEqual(len(lines), 2)
        ours = [e for e in self.events if e.get("log_namespace", "").startswith("ollama_proxy")]
        self.assertEqual(len(ours), 1)
        self.assertEqual(ours[0]["log_level"], LogLevel.info)
        text = formatEvent(ours[0])
        self.assertIn("POST /api/chat model=m:proxy status=200", text)
        self.assertNotIn("hi", text.replace("/api/chat", ""))

    def test_debugShowsPayloadsAndChunks(self) -> None:
        """
        With debug: the incoming request, the outgoing payload, raw upstream
        chunks and the translated lines are logged.
        """
        runChat(ProxyHarness(debug=True))
        text = "\n".join(self.texts())
        self.assertIn("request POST /api/chat", text)
        self.assertIn('upstream request {"model":"m"', text)
        self.assertIn("upstream chunk", text)
        self.assertIn('data: {"id":"chatcmpl-1"', text)
        self.assertIn('translated {"model":"m:proxy"', text)

    def test_secretsNeverLogged(self) -> None:
        """
        Neither the backend API key nor the client's Authorization value
        appears in any log event, even with debug on.
        """
        runChat(ProxyHarness(debug=True))
        text = self.logged()
        self.assertNotIn("sk-secret", text)
        self.assertNotIn("client-token-123", text)
        self.assertIn("<redacted>", text)

    def test_percentEncodedSecretsNeverLogged(self) -> None:
        """
        A client that sends a secret in its request path, percent-encoded
        (as any URL with a C{/} or C{+} in it must be), does not get it
        written to the log: not the access line, not the debug request
        line, not the fallback's.  The secret here has the characters a
        URL encodes.
        """
        harness = ProxyHarness(debug=True, apiKey="sk-se/cr+et-0123456789")
        for path in ["/v1/models/m-sk-se%2Fcr%2Bet-0123456789",
                     "/v1/models/m-sk-se%252fcr%252Bet-0123456789",
                     "/api/show?name=sk%2Dse%2fcr%2bet%2D0123456789"]:
            harness.get(path)
            harness.pump()
        text = self.logged()
        self.assertIn("/v1/models/m-<redacted>", text)
        for fragment in ["cr%2Bet", "cr%252Bet", "cr%2bet", "0123456789"]:
            self.assertNotIn(fragment, text)

    def test_keyEchoedTokenByTokenNeverLogged(self) -> None:
        """
        With debug on, a backend that echoes the key a piece per delta (as
        a model writes it, token by token) does not get the pieces into
        the raw chunk lines (they show C{<redacted>}), nor one that streams
        a tool call's arguments in pieces, and the client gets the key
        replaced.  A read with nothing to hide is still logged raw.  The
        key's tail is letters no hex address, id or clock can spell.
        """
        key = "sk-se/cr+et-QWXZJKVYTR"
        harness = ProxyHarness(debug=True, apiKey=key)
        d = harness.post("/api/chat", CHAT)
        [upstream] = harness.backend.received
        upstream.startSSE()
        upstream.event(delta("Hello "))
        harness.pump()
        for piece in ["s", "k-se/", "cr+et-QW", "XZJKVYTR", " bye"]:
            upstream.event(delta(piece))
            harness.pump()
        arguments = '{"k": "' + key + '"}'
        for i in range(0, len(arguments), 5):
            upstream.event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {
                    **({"name": "read"} if i == 0 else {}), "arguments": arguments[i:i + 5]}}]},
                 "finish_reason": None}]})
            harness.pump()
        upstream.event(delta(finish_reason="stop"))
        upstream.done()
        harness.pump()
        reader = BodyCollector(harness, d.result)
        harness.pump()
        said = "".join(line["message"]["content"] for line in reader.lines())
        self.assertEqual(said, "Hello <redacted> bye")
        chunks = [formatEvent(e) for e in self.events if "upstream chunk" in formatEvent(e)]
        self.assertTrue(any("Hello " in c for c in chunks), chunks)
        self.assertTrue(any("<redacted>" in c for c in chunks), chunks)
        text = self.logged()
        for fragment in ["k-se", "cr+et", "cr\\\\u002bet", "XZJKVYTR", "se/cr", "+et-Q", "WXZJK"]:
            self.assertNotIn(fragment, text)
