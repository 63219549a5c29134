"""
Tests for L{ollama_proxy.protocol.redact}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.events import Delta, Finish, ToolCall, ToolCalls, Usage
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
