"""
The SSE decoder: framing rules, and that TCP's arbitrary splitting of a
recorded stream never changes what comes out.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.sse import SSEDecoder, SSELineTooLong

RECORDED = (
    b": keep-alive comment\n"
    b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}\n\n'
    b'data:{"choices":[{"index":0,"delta":{"content":"lo \\u00e9\xc3\xa9"}}]}\n\n'
    b"event: message\n"
    b"id: 7\n"
    b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"retry: 10\n"
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
    b"data: [DONE]\n\n"
)

EXPECTED = [
    b'{"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}',
    b'{"choices":[{"index":0,"delta":{"content":"lo \\u00e9\xc3\xa9"}}]}',
    b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b"[DONE]",
]


def decodeInPieces(pieces: list[bytes]) -> list[bytes]:
    """
    Feed C{pieces} one by one, then close.
    """
    decoder = SSEDecoder()
    out: list[bytes] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.close())
    return out


class SplittingTests(SynchronousTestCase):
    """
    Whatever the chunk boundaries, the events are the same.
    """

    def test_whole(self) -> None:
        """
        The recorded stream in one read.
        """
        self.assertEqual(decodeInPieces([RECORDED]), EXPECTED)

    def test_everyTwoWaySplit(self) -> None:
        """
        Every split of the stream into two reads gives the same events.
        """
        for i in range(len(RECORDED) + 1):
            self.assertEqual(
                decodeInPieces([RECORDED[:i], RECORDED[i:]]), EXPECTED, f"split at {i}"
            )

    def test_byteByByte(self) -> None:
        """
        One byte per read.
        """
        self.assertEqual(
            decodeInPieces([RECORDED[i : i + 1] for i in range(len(RECORDED))]), EXPECTED
        )

    def test_crlfEverySplit(self) -> None:
        """
        CRLF line ends, split everywhere (a CR at the end of a read must not
        end a line twice).
        """
        crlf = RECORDED.replace(b"\n", b"\r\n")
        for i in range(len(crlf) + 1):
            self.assertEqual(decodeInPieces([crlf[:i], crlf[i:]]), EXPECTED, f"split at {i}")

    def test_bareCR(self) -> None:
        """
        Old-Mac CR line ends are lines too.
        """
        self.assertEqual(decodeInPieces([RECORDED.replace(b"\n", b"\r")]), EXPECTED)

    def test_eventsAreReturnedWhenComplete(self) -> None:
        """
        An event is returned by the C{feed} that completes it, not before.
        """
        decoder = SSEDecoder()
        self.assertEqual(decoder.feed(b"data: a\n"), [])
        self.assertEqual(decoder.feed(b"\n"), [b"a"])


class FramingTests(SynchronousTestCase):
    """
    The SSE rules the decoder follows.
    """

    def test_multiLineData(self) -> None:
        """
        Several C{data:} lines of one event are joined with newlines.
        """
        self.assertEqual(decodeInPieces([b"data: a\ndata: b\n\n"]), [b"a\nb"])

    def test_onlyOneSpaceStripped(self) -> None:
        """
        One space after the colon is syntax; more are content.
        """
        self.assertEqual(decodeInPieces([b"data:  x\n\n"]), [b" x"])

    def test_finalEventWithoutBlankLine(self) -> None:
        """
        A server that closes right after its last data line still delivers it.
        """
        self.assertEqual(decodeInPieces([b"data: [DONE]\n"]), [b"[DONE]"])
        self.assertEqual(decodeInPieces([b"data: [DONE]"]), [b"[DONE]"])

    def test_blankLinesAlone(self) -> None:
        """
        Blank lines without data produce no event.
        """
        self.assertEqual(decodeInPieces([b"\n\n\n: c\n\n"]), [])

    def test_lineTooLong(self) -> None:
        """
        An unterminated line past the cap raises instead of growing forever.
        """
        decoder = SSEDecoder(maxLineLength=10)
        self.assertRaises(SSELineTooLong, decoder.feed, b"data: " + b"x" * 20)

    def test_eventTooLong(self) -> None:
        """
        Many data lines adding up past the cap raise too.
        """
        decoder = SSEDecoder(maxLineLength=10)
        self.assertRaises(SSELineTooLong, decoder.feed, b"data: 123456\n" * 3)

    def test_longLineUnderCap(self) -> None:
        """
        Lines far above the old 64 KiB scanner limit are fine by default.
        """
        payload = b"x" * 200_000
        self.assertEqual(decodeInPieces([b"data: " + payload[:70_000], payload[70_000:] + b"\n\n"]), [payload])
