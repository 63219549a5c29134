"""
Tests for L{ollama_proxy.protocol.redact}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.events import Delta, Finish, Reply, ToolCall, ToolCalls, Usage
from ollama_proxy.protocol.redact import REDACTED, Redactor, StreamRedactor


class RedactorTests(SynchronousTestCase):
    def test_text(self) -> None:
        """
        Every secret is replaced, the longest first, empty ones ignored.
        """
        redactor = Redactor(["sk-abc", "sk-abcdef", None, ""])
        self.assertEqual(
            redactor.text("Bearer sk-abcdef and sk-abc"), f"Bearer {REDACTED} and {REDACTED}"
        )

    def test_extra(self) -> None:
        """
        Per-request secrets (the client's key) are replaced too.
        """
        redactor = Redactor(["k1-secret"])
        self.assertEqual(
            redactor.data(b"k1-secret client-key", ["client-key"]),
            REDACTED.encode() + b" " + REDACTED.encode(),
        )
        self.assertEqual(redactor.text("nothing here", [None]), "nothing here")


class StreamRedactorTests(SynchronousTestCase):
    BODY = b'data: {"a": 1}\n\ndata: {"error": "key sk-abcdef and client-key seen"}\n\ndata: [DONE]\n\n'

    def test_everySplit(self) -> None:
        """
        Whatever the read boundaries, every secret is replaced and nothing
        else changes.
        """
        expected = Redactor(["sk-abcdef", "client-key"]).data(self.BODY)
        self.assertNotIn(b"sk-", expected)
        for i in range(len(self.BODY) + 1):
            for j in range(i, len(self.BODY) + 1, 7):
                redactor = StreamRedactor(["sk-abcdef", "client-key"])
                pieces = [self.BODY[:i], self.BODY[i:j], self.BODY[j:]]
                out = b"".join(redactor.feed(piece) for piece in pieces) + redactor.end()
                self.assertEqual(out, expected, (i, j))

    def test_eventsNotHeld(self) -> None:
        """
        A piece that ends an SSE event is passed on whole; only a tail that
        may start a secret waits, and the end releases it.
        """
        redactor = StreamRedactor(["sk-abcdef"])
        self.assertEqual(redactor.feed(b"data: 1\n\n"), b"data: 1\n\n")
        self.assertEqual(redactor.feed(b"data: sk-ab"), b"data: ")
        self.assertEqual(redactor.end(), b"sk-ab")

    def test_nothingToFind(self) -> None:
        """
        Without any secret there is no stream redactor at all.
        """
        self.assertIsNone(Redactor([None]).stream([None]))
        self.assertIsNotNone(Redactor([None]).stream(["k"]))


def escaped(text: str, upper: bool = False) -> str:
    return "".join(f"\\u{ord(c):04X}" if upper else f"\\u{ord(c):04x}" for c in text)


class EscapedTests(SynchronousTestCase):
    """
    Issue 19: a key written with JSON escapes is a key.
    """

    def test_escapedAgain(self) -> None:
        """
        JSON text inside a JSON string (a relayed body whose text reads as
        the escaped key, a tool's arguments quoted once more) doubles each
        escape's backslash, at every level: still the key, in a body, in
        text, and split across the pieces of a stream.
        """
        key = "sk/abc-1"
        redactor = Redactor([key])
        for level in (2, 4, 8):
            spelled = "".join("\\" * (level - 1) + f"\\u{ord(c):04x}" for c in key[:4]) + key[4:]
            self.assertEqual(redactor.text(f"a {spelled} b"), f"a {REDACTED} b", level)
            data = f"a {spelled} b".encode()
            self.assertEqual(redactor.data(data), f"a {REDACTED} b".encode(), level)
            for cut in range(len(data) + 1):
                stream = redactor.stream()
                assert stream is not None
                out = stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.end()
                self.assertNotIn(b"abc-1", out, (level, cut))

    def test_textAndData(self) -> None:
        """
        Any mix of literal characters, C{\\uXXXX} escapes (either case) and
        short escapes is replaced, in text and bytes.
        """
        redactor = Redactor(["sk-ab/cd"])
        for form in (escaped("sk-ab/cd"), escaped("sk-ab/cd", upper=True),
                     "s\\u006b-ab\\/cd", "sk-ab\\u002fcd"):
            self.assertEqual(redactor.text(f"key {form}!"), f"key {REDACTED}!", form)
            self.assertEqual(redactor.data(f"key {form}!".encode()), f"key {REDACTED}!".encode())

    def test_percentEncoded(self) -> None:
        """
        A secret percent-encoded, whole or a character at a time, once or
        more (C{%2F}, C{%252f}), either case of hex digit, is replaced in
        text and bytes; a C{%} that spells nothing is left alone.
        """
        key = "sk-ab/cd+é"
        redactor = Redactor([key])
        whole = "".join(f"%{b:02X}" for b in key.encode())
        for form in (whole, whole.lower(), whole.replace("%", "%25"),
                     "sk-ab%2Fcd%2B%C3%A9", "sk-ab%252fcd+%c3%a9", "%73k-ab/cd+é"):
            self.assertEqual(redactor.text(f"/m-{form}?x"), f"/m-{REDACTED}?x", form)
            self.assertEqual(redactor.data(f"/m-{form}?x".encode()), f"/m-{REDACTED}?x".encode(), form)
        for text in ["100% sk-ab", "sk-ab%2Ece", "%zz"]:
            self.assertEqual(redactor.text(text), text)

    def test_excerptRedactsFirst(self) -> None:
        """
        An excerpt is redacted before it is cut: a key across the cut does
        not leave its prefix.
        """
        redactor = Redactor(["sk-abcdef123456"])
        text = "x" * 195 + "sk-abcdef123456 rest"
        self.assertNotIn("sk-abc", redactor.excerpt(text, 200))
        self.assertEqual(redactor.excerpt(text, 200), "x" * 195 + REDACTED[:5] + "...")

    def test_streamEscapedEverySplit(self) -> None:
        """
        A JSON-escaped key split across reads anywhere, even inside an
        escape, is replaced.
        """
        body = b'data: {"error": "key ' + escaped("sk-abc").encode() + b' end"}\n\n'
        expected = Redactor(["sk-abc"]).data(body)
        self.assertIn(REDACTED.encode(), expected)
        for i in range(len(body) + 1):
            redactor = StreamRedactor(["sk-abc"])
            out = redactor.feed(body[:i]) + redactor.feed(body[i:]) + redactor.end()
            self.assertEqual(out, expected, i)

    def test_lineEndsHoldNothing(self) -> None:
        """
        A piece that ends a line (an SSE event, an NDJSON line) is passed on
        whole at once, even when it contains escapes: no latency.
        """
        redactor = StreamRedactor(["sk-abc"])
        piece = b'data: {"content": "s\\u00e9"}\n\n'
        self.assertEqual(redactor.feed(piece), piece)
        self.assertEqual(redactor.feed(b'{"content": "x"}\n'), b'{"content": "x"}\n')


class EventRedactorTests(SynchronousTestCase):
    """
    Issue 19: translated text and tool arguments, a key spread over deltas
    included.
    """

    def test_splitOverDeltas(self) -> None:
        """
        Text and thinking are each watched as one text; the held tail waits
        only while it may begin a key, and is released before a finish.
        """
        events = Redactor(["sk-abc"]).events()
        assert events is not None
        out = events.feed([Delta("a sk-"), Delta("ab", "s"), Delta("c b", "k-abc!")])
        out += events.feed([Delta("tail s")])
        finish = Finish("stop", Usage(), None, 1)
        out += events.feed([finish])
        self.assertEqual("".join(e.content for e in out if isinstance(e, Delta)),
                         f"a {REDACTED} btail s")
        self.assertEqual("".join(e.thinking for e in out if isinstance(e, Delta)),
                         f"{REDACTED}!")
        self.assertIs(out[-1], finish)

    def test_toolArguments(self) -> None:
        """
        Tool call arguments (keys and values, nested), names and ids are
        redacted; text held back is released before them.
        """
        events = Redactor(["sk-abc"]).events()
        assert events is not None
        call = ToolCall("id-sk-abc", "run", {"sk-abc": ["x sk-abc", {"k": "sk-abc"}]}, 0)
        out = events.feed([Delta("s"), ToolCalls((call,))])
        self.assertEqual(out[0], Delta("s"))
        [redacted] = out[1].calls  # type: ignore[union-attr]
        self.assertEqual(redacted.arguments,
                         {REDACTED: [f"x {REDACTED}", {"k": REDACTED}]})
        self.assertEqual(redacted.id, f"id-{REDACTED}")

    def test_escapedTextSplitOverDeltas(self) -> None:
        """
        Text that reads as the key JSON-escaped (C{\\u0073\\u006b...}, in
        either case, or C{\\/}) is replaced in a stream as in a whole reply
        (L{Redactor.reply}), wherever two deltas split it, in content and in
        thinking; a non-ASCII neighbour survives the split intact.
        """
        key = "sk/abc-é"
        spellings = ["".join(f"\\u{ord(c):04x}" for c in key),
                     "".join(f"\\u{ord(c):04X}" for c in key), key.replace("/", "\\/")]
        for spelled in spellings:
            text = f"ä {spelled} ü"
            whole = Redactor([key]).reply(Reply(text, text, (), "stop", Usage(), []))
            self.assertEqual(whole.content, f"ä {REDACTED} ü")
            for cut in range(len(text) + 1):
                events = Redactor([key]).events()
                assert events is not None
                out = events.feed([Delta(text[:cut], text[:cut])])
                out += events.feed([Delta(text[cut:], text[cut:])])
                out += events.end()
                for field in ("content", "thinking"):
                    self.assertEqual(
                        "".join(getattr(e, field) for e in out if isinstance(e, Delta)),
                        whole.content, (spelled, cut, field))


class CarriesTests(SynchronousTestCase):
    """
    L{Redactor.carries}: the strict test for a relayed header's value.
    """

    def test_spellings(self) -> None:
        """
        The secret literally, JSON-escaped, percent-encoded (once or twice)
        and its first six characters (a masked echo) all count; other
        values, and five characters, do not.
        """
        key = "sk-live/0123456789"
        redactor = Redactor([key])
        encoded = "".join(f"%{b:02X}" for b in key.encode())
        for value in [key, "".join(f"\\u{ord(c):04x}" for c in key), encoded,
                      encoded.replace("%", "%25"), "UTF-8''" + encoded,
                      key[:6] + "****6789", "x" + key[:6]]:
            self.assertTrue(redactor.carries(value.encode()), value)
        for value in ["req-7", "100", key[:5], "sk-other", "%zz"]:
            self.assertFalse(redactor.carries(value.encode()), value)

    def test_clientKey(self) -> None:
        """
        A per-request secret counts too.
        """
        self.assertTrue(Redactor(["sk-live-0123456789"]).carries(b"in-key-ABC", ["in-key-ABCDEF"]))
        self.assertFalse(Redactor().carries(b"in-key-ABC"))


class PrefixTests(SynchronousTestCase):
    """
    The first L{PREFIX} characters of a secret or more are the secret: a
    gateway's masked echo (C{sk-proj-abc****wxyz}) or a cut key.
    """

    key = "sk-live/0123456789abcdef"

    def test_wholeText(self) -> None:
        """
        In text and bodies, any run of six characters or more that begins a
        secret is replaced; five are left.
        """
        redactor = Redactor([self.key])
        masked = f"Incorrect API key provided: {self.key[:11]}****cdef. {self.key[:6]}! {self.key[:5]}"
        expected = f"Incorrect API key provided: {REDACTED}****cdef. {REDACTED}! {self.key[:5]}"
        self.assertEqual(redactor.text(masked), expected)
        self.assertEqual(redactor.data(masked.encode()), expected.encode())
        self.assertEqual(redactor.excerpt(masked, 40), expected[:40] + "...")

    def test_stream(self) -> None:
        """
        In a stream, at every split: a prefix that ends the body, or stops
        short inside it, is replaced; the whole key split in two is one
        marker (no suffix escapes).
        """
        for body in [f"a {self.key[:9]}", f"a {self.key[:9]}** b", f"a {self.key} b\n"]:
            data = body.encode()
            for cut in range(len(data) + 1):
                stream = Redactor([self.key]).stream()
                assert stream is not None
                out = stream.feed(data[:cut]) + stream.feed(data[cut:]) + stream.end()
                self.assertEqual(out.count(REDACTED.encode()), 1, (body, cut))
                self.assertNotIn(self.key[:6].encode(), out, (body, cut))
                self.assertNotIn(self.key[-6:].encode(), out, (body, cut))

    def test_streamedText(self) -> None:
        """
        A translated stream's text: a masked echo split over deltas.
        """
        text = f"bad key {self.key[:12]}****cdef"
        for cut in range(len(text) + 1):
            events = Redactor([self.key]).events()
            assert events is not None
            out = events.feed([Delta(text[:cut])]) + events.feed([Delta(text[cut:])]) + events.end()
            joined = "".join(e.content for e in out if isinstance(e, Delta))
            self.assertEqual(joined, f"bad key {REDACTED}****cdef", cut)

