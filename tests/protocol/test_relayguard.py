"""
Tests for L{ollama_proxy.protocol.relayguard}: what a client joins from a
relayed OpenAI stream never holds a secret, however the backend splits it
over deltas and reads; a clean stream passes byte for byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.redact import PREFIX, REDACTED, Redactor, TextRedactor
from ollama_proxy.protocol.relayguard import MAX_HELD, RelayGuard, relayGuard
from ollama_proxy.protocol.stream import SSELineTooLong

from tests.protocol.helpers import BACKEND_KEY, INBOUND_KEY, SECRETS, feedInPieces


FILLER = "xyzXYZ .,!?0\n\u00e9\u4e2d"
"""Text around the keys: none of their first characters, so that the only
thing to replace is the key itself."""

FIELDS = ("content", "reasoning_content", "reasoning", "arguments", "name", "text")

Key = tuple[int, str]


def guard() -> RelayGuard:
    made = relayGuard(Redactor([BACKEND_KEY]), [INBOUND_KEY])
    assert made is not None
    return made


def run(body: bytes, cuts: list[int], g: RelayGuard | None = None) -> bytes:
    """
    @return: what the guard sends for C{body} read in pieces at C{cuts}.
    """
    return feedInPieces(g or guard(), body, cuts)


def events(body: bytes) -> list[str]:
    """
    @return: the data of every event, as an SSE client dispatches them (an
        unfinished last event is dropped).
    """
    out = []
    for raw in re.split(rb"\r\n\r\n|\n\n|\r\r", body)[:-1]:
        lines = re.split(rb"\r\n|\r|\n", raw)
        data = [line[5:].removeprefix(b" ") for line in lines if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data).decode("utf-8"))
    return out


def joined(body: bytes) -> dict[Key, str]:
    """
    @return: every text a client joins from the stream, up to C{[DONE]},
        keyed by choice and field; fails on anything after C{[DONE]}.
    """
    texts: dict[Key, str] = {}
    done = False
    for data in events(body):
        assert not done, f"an event after [DONE]: {data!r}"
        if data == "[DONE]":
            done = True
            continue
        obj = json.loads(data)
        for choice in obj.get("choices") or []:
            index = choice["index"]
            found = [(f, choice.get(f)) for f in ("text",)]
            delta = choice.get("delta") or {}
            found += [(f, delta.get(f)) for f in ("content", "reasoning_content", "reasoning")]
            for call in delta.get("tool_calls") or []:
                found += [(f, call.get("function", {}).get(f)) for f in ("name", "arguments")]
            for field, value in found:
                if isinstance(value, str):
                    texts[index, field] = texts.get((index, field), "") + value
    return texts


def event(index: int, field: str, value: str, escape: bool = False, finish: str | None = None) -> bytes:
    """
    @return: one chunk carrying C{value} as choice C{index}'s C{field}
        (C{escape}: every character written as C{\\uXXXX} on the wire).
    """
    # A placeholder no value can spell, replaced once by the value's JSON
    # (a value such as C{", "} must not be found between the fields).
    hole = "\x00hole\x00"
    if field == "text":
        choice: dict[str, Any] = {"index": index, "text": hole}
    elif field in ("arguments", "name"):
        choice = {"index": index, "delta": {"tool_calls": [
            {"index": 0, "function": {field: hole}}]}}
    else:
        choice = {"index": index, "delta": {field: hole}}
    choice["finish_reason"] = finish
    data = json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 7,
                       "model": "m", "choices": [choice]})
    spelled = ('"' + "".join(f"\\u{ord(c):04x}" for c in value) + '"') if escape else json.dumps(value)
    data = data.replace(json.dumps(hole), spelled, 1)
    return b"data: " + data.encode("utf-8") + b"\n\n"


def pieces(draw: Any, text: str) -> list[str]:
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    out = []
    start = 0
    for cut in [*cuts, len(text)]:
        out.append(text[start:cut])
        start = cut
    return out


@st.composite
def streams(draw: Any) -> tuple[bytes, dict[Key, str]]:
    """
    @return: a stream of several texts (choices and fields), each with a key
        split over its deltas at any points, the deltas interleaved, and
        the texts the backend meant.
    """
    keys = draw(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(FIELDS)),
                         min_size=1, max_size=4, unique=True))
    queues = []
    meant: dict[Key, str] = {}
    for key in keys:
        secret = draw(st.sampled_from(SECRETS))
        filler = st.text(alphabet=FILLER, max_size=6)
        text = draw(filler) + secret + draw(filler) + draw(st.sampled_from(["", secret, "s", "in-k"]))
        meant[key] = text
        queues.append([(key, p, draw(st.booleans())) for p in pieces(draw, text)])
    body = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        (index, field), piece, escape = queue.pop(0)
        body.append(event(index, field, piece, escape))
    if draw(st.booleans()):
        for index in sorted({k[0] for k in keys}):
            body.append(event(index, "content", "", finish="stop"))
    ending = draw(st.sampled_from(["done", "end", "usage"]))
    if ending == "usage":
        body.append(b'data: {"id": "c1", "choices": [], "usage": {"total_tokens": 3}}\n\n')
    if ending != "end":
        body.append(b"data: [DONE]\n\n")
    return b"".join(body), meant


def redacted(text: str) -> str:
    for secret in SECRETS:
        text = text.replace(secret, REDACTED)
    return text


class SplitKeyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(stream=streams(), cuts=st.lists(st.integers(0, 4000), max_size=6))
    def test_anySplit(self, stream: tuple[bytes, dict[Key, str]], cuts: list[int]) -> None:
        """
        Any split of a key over deltas and reads, in any text a client
        joins, over several choices, written escaped or not: the client's
        joined text never holds the key nor a L{PREFIX}-long piece of its
        start, and is the backend's text with the key replaced.
        """
        body, meant = stream
        texts = joined(run(body, cuts))
        for key, text in meant.items():
            got = texts.get(key, "")
            self.assertEqual(got, redacted(text), key)
            for secret in SECRETS:
                self.assertNotIn(secret[:PREFIX], got)

    def test_hostilePieces(self) -> None:
        """
        The hostile backend's case: C{"s"}, then the rest of the key.
        """
        body = (event(0, "content", "s") + event(0, "content", BACKEND_KEY[1:])
                + event(0, "content", " ok") + b"data: [DONE]\n\n")
        out = run(body, [])
        self.assertEqual(joined(out), {(0, "content"): REDACTED + " ok"})
        self.assertNotIn(BACKEND_KEY[1:].encode(), out)


class CleanTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(
        texts=st.lists(st.text(alphabet=FILLER + "abc\"\u2028", max_size=12), max_size=8),
        field=st.sampled_from(FIELDS),
        crlf=st.booleans(),
        cuts=st.lists(st.integers(0, 2000), max_size=6),
    )
    def test_byteIdentical(self, texts: list[str], field: str, crlf: bool, cuts: list[int]) -> None:
        """
        A stream whose texts hold nothing that could begin a secret goes
        out byte for byte as it came, whatever its reads and line ends,
        comments and non-JSON events included.
        """
        body = b": keep-alive\n\n" + b"".join(event(0, field, t) for t in texts)
        body += b'event: ping\ndata: not json\n\n' + event(0, field, "", finish="stop")
        body += b"data: [DONE]\n\n"
        if crlf:
            body = body.replace(b"\n", b"\r\n")
        self.assertEqual(run(body, cuts), body)

    def test_noSecrets(self) -> None:
        """
        Without a secret to look for, there is no guard.
        """
        self.assertIsNone(relayGuard(Redactor([]), [None]))


class ReleaseTests(SynchronousTestCase):
    def test_heldUntilNextPiece(self) -> None:
        """
        A tail that could begin a key is held only until the next piece of
        the same text, which it is put in front of.
        """
        g = guard()
        self.assertEqual(joined(g.feed(event(0, "content", "is"))), {(0, "content"): "i"})
        out = g.feed(event(0, "content", " fine"))
        self.assertEqual(joined(out), {(0, "content"): "s fine"})
        self.assertFalse(g.holding)

    def test_releasedAtFinish(self) -> None:
        """
        The event carrying the choice's C{finish_reason} takes the held
        tails of that choice, every field.
        """
        g = guard()
        g.feed(event(0, "content", "yes") + event(0, "arguments", "{\"a\": \"in-k"))
        out = g.feed(event(0, "content", "", finish="stop"))
        obj = json.loads(events(out)[0])
        self.assertEqual(obj["choices"][0]["delta"]["content"], "s")
        self.assertEqual(obj["choices"][0]["delta"]["tool_calls"],
                         [{"index": 0, "function": {"arguments": "in-k"}}])
        self.assertEqual(obj["choices"][0]["finish_reason"], "stop")
        self.assertFalse(g.holding)

    def test_releasedBeforeDone(self) -> None:
        """
        At C{[DONE]}, held tails go in one chunk like the last event, before
        it.
        """
        g = guard()
        g.feed(event(1, "content", "its"))
        out = g.feed(b"data: [DONE]\n\n")
        first, done = events(out)
        self.assertEqual(done, "[DONE]")
        self.assertEqual(json.loads(first), {
            "id": "c1", "object": "chat.completion.chunk", "created": 7, "model": "m",
            "choices": [{"index": 1, "delta": {"content": "s"}, "finish_reason": None}]})

    def test_releasedAtEnd(self) -> None:
        """
        A body that ends without C{[DONE]}: the tail comes at the end; a
        completion's text goes back as C{text}.
        """
        g = guard()
        self.assertEqual(joined(g.feed(event(0, "text", "s"))), {(0, "text"): ""})
        self.assertEqual(joined(g.end()), {(0, "text"): "s"})

    def test_releasedBeforeError(self) -> None:
        """
        An error event ends the texts: what was held goes before it.
        """
        g = guard()
        g.feed(event(0, "content", "s"))
        out = g.feed(b'data: {"error": {"message": "boom"}}\n\n')
        self.assertEqual([json.loads(e).get("error") for e in events(out)],
                         [None, {"message": "boom"}])

    def test_partialGuarded(self) -> None:
        """
        An unfinished last event (the relay ends it after a failure, so a
        client reads it) is guarded as a whole one, before the held text.
        """
        g = guard()
        g.feed(event(0, "content", "s"))
        out = g.feed(b'data: {"choices": [{"index": 0, "delta": {"content": "k-host/I"}}]}')
        self.assertEqual(out, b"")
        self.assertEqual(joined(g.end()), {(0, "content"): REDACTED})
        g.feed(event(0, "content", "s") + b'data: {"trunc')
        out = g.end()
        self.assertTrue(out.startswith(b'data: {"trunc\n\ndata: {'), out)
        self.assertEqual(joined(out.replace(b'data: {"trunc\n\n', b"")), {(0, "content"): "s"})

    def test_otherFields(self) -> None:
        """
        An event's other fields (C{event}, C{id}) survive a rewrite.
        """
        out = run(b"event: chunk\nid: 5\n" + event(0, "content", "s") + event(0, "content", "!"), [])
        self.assertTrue(out.startswith(b"event: chunk\nid: 5\ndata: "), out)


class HostileTests(SynchronousTestCase):
    def test_longEvent(self) -> None:
        """
        An event that never ends is bounded by the line limit.
        """
        g = RelayGuard(SECRETS, maxEvent=100)
        g.feed(b"data: " + b"x" * 90)
        self.assertRaises(SSELineTooLong, g.feed, b"x" * 20)
        self.assertEqual(g.end(), b"")

    def test_manyHeldTexts(self) -> None:
        """
        A stream that makes texts hold a tail without end fails rather than
        grows.
        """
        g = guard()
        body = b"".join(event(i, "content", "s") for i in range(MAX_HELD))
        self.assertEqual(set(joined(g.feed(body)).values()), {""})
        e = self.assertRaises(StreamFailed, g.feed, event(0, "content", "!s") + event(MAX_HELD, "content", "s"))
        self.assertEqual(joined(e.output), {(0, "content"): "s!"})

    def test_carriageReturns(self) -> None:
        """
        Events ended by bare CRs (which SSE clients honour) are split as a
        client splits them.
        """
        body = (event(0, "content", "s") + event(0, "content", BACKEND_KEY[1:])).replace(b"\n", b"\r")
        self.assertEqual(joined(run(body + b"data: [DONE]\r\r", [3, 60])), {(0, "content"): REDACTED})

    def test_lenientJSON(self) -> None:
        """
        JSON orjson refuses but a lenient client reads (C{NaN}, a lone
        surrogate) is guarded too.
        """
        body = (b'data: {"x": NaN, "choices": [{"index": 0, "delta": {"content": "\\ud800s"}}]}\n\n'
                + event(0, "content", BACKEND_KEY[1:]))
        out = run(body, [])
        self.assertNotIn(BACKEND_KEY[1:].encode(), out)
        text = "".join(json.loads(e)["choices"][0]["delta"]["content"] for e in events(out))
        self.assertTrue(text.endswith(REDACTED), text)

    def test_multiLineData(self) -> None:
        """
        One JSON split over several C{data:} lines, as a client joins them.
        """
        body = (b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "s"}}]}\n\n'
                + event(0, "content", BACKEND_KEY[1:]))
        self.assertEqual(joined(run(body, [])), {(0, "content"): REDACTED})


class ReferenceTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        parts=st.lists(st.tuples(st.integers(0, 1), st.sampled_from(FIELDS),
                                 st.sampled_from(["s", "sk", "sk-ho", "in-k", "i", "-", "\\", '"', "/",
                                                  "x", " ", BACKEND_KEY, INBOUND_KEY, "\u00e9"])),
                       max_size=30),
        cuts=st.lists(st.integers(0, 4000), max_size=4),
        done=st.booleans(),
    )
    def test_sameAsTextRedactor(self, parts: list[tuple[int, str, str]], cuts: list[int],
                                done: bool) -> None:
        """
        Pieces made of the keys' own characters (quotes and backslashes
        too), any split of the reads: each text the client joins is what a
        L{TextRedactor} fed that text's pieces makes of it (as the
        translated streams do), whole keys replaced; so the events that
        pass undecoded are exactly those whose texts would pass unchanged.
        """
        body = b"".join(event(i, f, p) for i, f, p in parts) + (b"data: [DONE]\n\n" if done else b"")
        reference: dict[Key, TextRedactor] = {}
        meant: dict[Key, str] = {}
        for index, field, piece in parts:
            redactor = reference.setdefault((index, field), TextRedactor(SECRETS))
            meant[index, field] = meant.get((index, field), "") + redactor.feed(piece)
        texts = joined(run(body, cuts))
        for key, redactor in reference.items():
            got = texts.get(key, "")
            self.assertEqual(got, meant[key] + redactor.end(), key)
            for secret in SECRETS:
                self.assertNotIn(secret, got)
