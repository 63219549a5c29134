"""
Tests for L{ollama_proxy.protocol.ndguard}: what an Ollama client joins from
a relayed NDJSON stream never holds a secret, however the fallback splits
it over lines and reads; a clean stream passes byte for byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.ndguard import TEXTS, NDJSONGuard, ndjsonGuard
from ollama_proxy.protocol.redact import PREFIX, REDACTED, Redactor
from ollama_proxy.protocol.stream import SSELineTooLong

from tests.protocol.helpers import BACKEND_KEY, INBOUND_KEY, SECRETS, feedInPieces


def guard() -> NDJSONGuard:
    made = ndjsonGuard(Redactor([BACKEND_KEY]), [INBOUND_KEY])
    assert made is not None
    return made


def run(body: bytes, cuts: list[int], g: NDJSONGuard | None = None) -> bytes:
    """
    @return: what the guard sends for C{body} read in pieces at C{cuts}.
    """
    return feedInPieces(g or guard(), body, cuts)


def lines(body: bytes) -> list[Any]:
    """
    @return: every line as an httpx client reads it (C{\\n}, C{\\r\\n},
        C{\\r}), decoded.
    """
    return [json.loads(line) for line in re.split(rb"\r\n|\r|\n", body) if line.strip()]


def get(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = obj.get(name) if isinstance(obj, dict) else None
    return obj


def joined(body: bytes) -> dict[tuple[str, ...], str]:
    """
    @return: every text a client joins, by field.
    """
    texts: dict[tuple[str, ...], str] = {}
    for obj in lines(body):
        for path in TEXTS:
            value = get(obj, path)
            if isinstance(value, str):
                texts[path] = texts.get(path, "") + value
    return texts


def chatLine(content: str, done: bool = False, field: str = "content") -> bytes:
    message = {"role": "assistant", field: content}
    return json.dumps({"model": "m", "created_at": "2026-12-06T00:00:00Z", "message": message,
                       "done": done}).encode() + b"\n"


def generateLine(response: str, done: bool = False, field: str = "response") -> bytes:
    return json.dumps({"model": "m", "created_at": "t", field: response, "done": done}).encode() + b"\n"


def assertClean(case: SynchronousTestCase, texts: dict[tuple[str, ...], str], body: bytes) -> None:
    for text in texts.values():
        for secret in SECRETS:
            case.assertNotIn(secret[:PREFIX], text, texts)
    for secret in SECRETS:
        case.assertNotIn(secret[1:].encode(), body)


class SplitKeyTests(SynchronousTestCase):
    """
    A key split over the lines of a stream (each line clean) is replaced
    in what the client joins.
    """

    @settings(max_examples=300, deadline=None)
    @given(secret=st.sampled_from(SECRETS), cut=st.integers(1, 30),
           cuts=st.lists(st.integers(0, 2000), max_size=4),
           path=st.sampled_from(TEXTS), eol=st.sampled_from([b"\n", b"\r\n", b"\r"]),
           done=st.booleans())
    @example(BACKEND_KEY, 1, [], ("message", "content"), b"\n", True)
    @example(INBOUND_KEY, 5, [7], ("response",), b"\r", False)
    def test_anySplit(self, secret: str, cut: int, cuts: list[int], path: tuple[str, ...],
                      eol: bytes, done: bool) -> None:
        """
        Any text field, the key cut at any point over two lines, any line
        end, any read boundaries, the stream ended by a C{done} line or not
        at all: the joined text is the text with C{<redacted>}.
        """
        make = chatLine if path[0] == "message" else generateLine
        pieces = ["key: ", secret[:cut], secret[cut:], " end"]
        body = b"".join(make(p, field=path[-1]) for p in pieces)
        if done:
            body += make("", done=True, field=path[-1])
        body = body.replace(b"\n", eol)
        out = run(body, cuts)
        texts = joined(out)
        self.assertEqual(texts[path], f"key: {REDACTED} end")
        assertClean(self, texts, out)
        if done:
            self.assertIs(lines(out)[-1]["done"], True)

    def test_heldTailIntoDone(self) -> None:
        """
        A tail still held at the C{done} line goes into it, appended to its
        text: the client reads every character, and nothing after C{done}.
        """
        body = chatLine("the end: s") + chatLine("", done=True)
        out = run(body, [])
        objs = lines(out)
        self.assertEqual(len(objs), 2)
        self.assertEqual(objs[-1]["message"]["content"], "s")
        self.assertIs(objs[-1]["done"], True)
        self.assertEqual(joined(out)[("message", "content")], "the end: s")

    def test_heldTailIntoDoneWithoutMessage(self) -> None:
        """
        A C{done} line without the held text's field gets it.
        """
        body = generateLine("sk-h") + b'{"model":"m","done":true,"total_duration":1}\n'
        objs = lines(run(body, []))
        self.assertEqual(objs[-1], {"model": "m", "done": True, "total_duration": 1, "response": "sk-h"})

    def test_heldTailBeforeError(self) -> None:
        """
        An C{error} line ends the texts: the held tail goes out first, in a
        line like the last one.
        """
        body = chatLine("a s") + b'{"error":"boom"}\n'
        objs = lines(run(body, []))
        self.assertEqual([o.get("error") for o in objs], [None, None, "boom"])
        self.assertEqual(objs[1]["message"], {"role": "assistant", "content": "s"})
        self.assertEqual(objs[1]["model"], "m")
        self.assertIs(objs[1]["done"], False)

    def test_heldTailAtEnd(self) -> None:
        """
        A body that ends (or breaks) with a tail held: the tail goes out in
        a last line, never dropped; an unfinished last line is guarded as
        a whole one.
        """
        self.assertEqual(joined(run(generateLine("x in-k"), []))[("response",)], "x in-k")
        body = generateLine("s") + generateLine("k-host/ILE+back")[:-1]
        out = run(body, [3, 50])
        self.assertEqual(joined(out)[("response",)], REDACTED)

    def test_escapedOverLines(self) -> None:
        """
        The key written with JSON escapes (the client decodes them) over two
        lines, and a line that is the key's start escaped.
        """
        body = (b'{"response":"\\u0073k-ho","done":false}\n'
                b'{"response":"st\\/ILE+backend-0123456789abcdef!","done":false}\n'
                b'{"response":"\\u0069\\u006e-key-ABZ","done":true}\n')
        out = run(body, [])
        self.assertEqual(joined(out)[("response",)], f"{REDACTED}!{REDACTED}Z")

    def test_lenientJSON(self) -> None:
        """
        A line orjson refuses but Python's C{json} reads (C{NaN}): guarded
        as a lenient client reads it.
        """
        body = b'{"response":"s","x":NaN}\n{"response":"k-host/ILE+backend-0123456789abcdef"}\n'
        self.assertEqual(joined(run(body, []))[("response",)], REDACTED)


class CleanTests(SynchronousTestCase):
    """
    Clean streams pass byte for byte, and the guard stays bounded.
    """

    @settings(max_examples=100, deadline=None)
    @given(texts=st.lists(st.text(alphabet="abcxyz ,.\u00e9\"{}", max_size=12), max_size=6),
           cuts=st.lists(st.integers(0, 500), max_size=4))
    def test_byteForByte(self, texts: list[str], cuts: list[int]) -> None:
        """
        Lines whose texts cannot begin a key come out exactly as they came,
        whatever the reads.
        """
        body = b"".join(chatLine(t) for t in texts) + chatLine("", done=True)
        self.assertEqual(run(body, cuts), body)

    def test_notJSON(self) -> None:
        """
        Lines that are not JSON objects (text, an array) pass as they are.
        """
        body = b"Ollama is running\n[1, 2]\n\n"
        self.assertEqual(run(body, [5]), body)

    def test_lineCap(self) -> None:
        """
        An unfinished line longer than the limit while a text holds a tail
        ends the stream with an error (the line may go on with that text,
        and cannot be read whole), and is not passed on; the held tail is.
        """
        g = NDJSONGuard(SECRETS, maxLine=100)
        self.assertEqual(g.feed(b'{"response":"a s"}\n' + b"x" * 50), b'{"response":"a "}\n')
        self.assertRaises(SSELineTooLong, g.feed, b"y" * 60)
        self.assertEqual(g.end(), b'{"response":"s","done":false}\n')  # the held tail, not the line

    def test_overLongLineAlone(self) -> None:
        """
        With no text holding a tail, a line longer than the limit is relayed
        as it comes (the byte filter sees it); anything but white space
        after it ends the stream with an error, the line's end sent first.
        """
        g = NDJSONGuard(SECRETS, maxLine=100)
        first = b'{"pad":"' + b"x" * 120
        self.assertEqual(g.feed(first), first)
        self.assertEqual(g.feed(b"xx"), b"xx")
        self.assertEqual(g.feed(b'"}\n\n'), b'"}\n\n')
        self.assertEqual(g.end(), b"")
        g = NDJSONGuard(SECRETS, maxLine=100)
        g.feed(first)
        with self.assertRaises(StreamFailed) as caught:
            g.feed(b'"}\n{"response":"k-host/ILE+backend-0123456789abcdef"}\n')
        self.assertEqual(caught.exception.output, b'"}\n')
        self.assertEqual(g.end(), b"")

    def test_noSecrets(self) -> None:
        """
        Nothing to look for: no guard.
        """
        self.assertIsNone(ndjsonGuard(Redactor([])))


class LongLineTests(SynchronousTestCase):
    """
    A fallback's whole answer is one line: megabytes of it are read whole
    (C{/api/show} with C{verbose}), in linear time.
    """

    def test_longLineInPieces(self) -> None:
        """
        A line of many reads, its texts split the key with the next line:
        guarded as one line, whatever the reads.
        """
        pad = "v" * 200_000
        body = (json.dumps({"pad": pad, "response": "s"}).encode() + b"\n"
                + generateLine("k-host/ILE+backend-0123456789abcdef x"))
        g = guard()
        out = [g.feed(body[i:i + 4096]) for i in range(0, len(body), 4096)]
        self.assertEqual(b"".join(out[:-1]), b"")  # nothing before the line ends
        joined = b"".join(out) + g.end()
        self.assertEqual(joined.count(b"\n"), 2)
        self.assertEqual(globals()["joined"](joined)[("response",)],
                         f"{REDACTED} x")

    def test_defaultCap(self) -> None:
        """
        The default limit: a line of several megabytes (a vocabulary whose
        tokens start a key) is read whole and passes as it is; one beyond
        it, alone, passes as it comes.
        """
        g = guard()
        big = b'{"model_info":{"tokens":[' + b'"s",' * 900_000 + b'"x"]}}\n'
        out = b"".join(g.feed(big[i:i + 65536]) for i in range(0, len(big), 65536)) + g.end()
        self.assertEqual(out, big)
        g = guard()
        bigger = b'{"model_info":{"tokens":[' + b'"s",' * 1_200_000 + b'"x"]}}\n'
        self.assertGreater(len(bigger), 4 * 1024 * 1024)
        out = b"".join(g.feed(bigger[i:i + 65536]) for i in range(0, len(bigger), 65536)) + g.end()
        self.assertEqual(out, bigger)


class CertifiedTests(SynchronousTestCase):
    """
    A read a guard certifies (its clean pass) is one the outbound byte
    filter passes as it is, holding nothing: the relay writes it past the
    filter, so the guard's search stands in for the filter's.
    """

    ALPHABET = 'sk-a"\\%\n{}:,é \r'

    @settings(max_examples=500, deadline=None)
    @given(secrets=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=9), min_size=1, max_size=3),
           data=st.text(alphabet=ALPHABET, min_size=1, max_size=40), sse=st.booleans())
    @example(["sk-abc"], '{"response":"sk-a"}\n', False)
    @example(["ék-abc"], "x ék-ab\n", False)
    @example(["s\nk-abc"], "x s\n", False)
    def test_certifiedIsUnchanged(self, secrets: list[str], data: str, sse: bool) -> None:
        from ollama_proxy.protocol.redact import StreamRedactor
        from ollama_proxy.protocol.relayguard import relayGuard

        raw = data.encode("utf-8")
        if sse:
            raw += b"\n"  # an SSE read ends an event
        made = (relayGuard if sse else ndjsonGuard)(Redactor(secrets))
        assert made is not None
        made.feed(raw)
        if made.certified:
            flt = StreamRedactor(Redactor(secrets).all())
            self.assertEqual(flt.feed(raw), raw)
            self.assertFalse(flt.holding)

    def test_cleanReadCertified(self) -> None:
        """
        The common read is certified; one with a key's start, or after a
        hold, is not.
        """
        g = guard()
        g.feed(chatLine("hello"))
        self.assertTrue(g.certified)
        g.feed(chatLine("a s"))
        self.assertFalse(g.certified)
        g.feed(chatLine("hello"))
        self.assertFalse(g.certified)
        self.assertFalse(NDJSONGuard(("sk\nabc",)).certified)


class SniffedTests(SynchronousTestCase):
    """
    L{SniffedGuard}: the body's first bytes choose the guard.
    """

    def sniffed(self) -> Any:
        from ollama_proxy.protocol.ndguard import SniffedGuard
        from ollama_proxy.protocol.relayguard import relayGuard

        sse = relayGuard(Redactor(SECRETS))
        assert sse is not None
        return SniffedGuard(guard(), sse)

    def test_ndjson(self) -> None:
        g = self.sniffed()
        out = g.feed(b"\n") + g.feed(generateLine("s")) + g.feed(generateLine("k-host/ILE+backend-0123456789abcdef"))
        self.assertEqual(joined(out + g.end())[("response",)], REDACTED)

    def test_sse(self) -> None:
        g = self.sniffed()
        body = b"".join(b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": t}}]}).encode()
                        + b"\n\n" for t in ("s", "k-host/ILE+backend-0123456789abcdef"))
        out = g.feed(b"  ") + g.feed(body) + g.end()
        self.assertNotIn(b"k-host", out)
        self.assertIn(REDACTED.encode(), out)

    def test_nothing(self) -> None:
        g = self.sniffed()
        self.assertEqual(g.feed(b" \n"), b" \n")
        self.assertFalse(g.certified)
        self.assertEqual(g.end(), b"")
