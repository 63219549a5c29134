"""
Tests for L{ollama_proxy.protocol.agentguard}: what a client joins from a
relayed Anthropic Messages or OpenAI Responses stream never holds a
secret, however the backend splits it over delta events and reads; a clean
stream passes byte for byte.
"""

from __future__ import annotations

import json
import re
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.agentguard import AgentGuard, agentGuard
from ollama_proxy.protocol.redact import PREFIX, REDACTED, Redactor

from tests.protocol.helpers import BACKEND_KEY, INBOUND_KEY, SECRETS, feedInPieces


def guard() -> AgentGuard:
    made = agentGuard(Redactor([BACKEND_KEY]), [INBOUND_KEY])
    assert made is not None
    return made


def run(body: bytes, cuts: list[int]) -> bytes:
    return feedInPieces(guard(), body, cuts)


def sse(name: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(obj).encode() + b"\n\n"


def events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for raw in re.split(rb"\n\n", body)[:-1]:
        fields = dict(line.split(b": ", 1) for line in raw.split(b"\n"))
        out.append((fields[b"event"].decode(), json.loads(fields[b"data"])))
    return out


def anthropic(pieces: list[str], field: str) -> bytes:
    kind = {"text": "text_delta", "thinking": "thinking_delta", "partial_json": "input_json_delta"}[field]
    body = sse("message_start", {"type": "message_start", "message": {"id": "m"}})
    body += sse("content_block_start", {"type": "content_block_start", "index": 1,
                                        "content_block": {"type": "text", "text": ""}})
    for piece in pieces:
        body += sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                            "delta": {"type": kind, field: piece}})
    body += sse("content_block_stop", {"type": "content_block_stop", "index": 1})
    body += sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    return body + sse("message_stop", {"type": "message_stop"})


def anthropicJoined(body: bytes) -> str:
    text = ""
    stopped = False
    for name, obj in events(body):
        if name == "content_block_delta":
            assert not stopped, "a delta after its block stopped"
            text += next(v for k, v in obj["delta"].items() if k != "type")
        stopped = stopped or name == "content_block_stop"
    return text


def responses(pieces: list[str], kind: str) -> bytes:
    body = sse("response.created", {"type": "response.created", "sequence_number": 0})
    seq = 1
    for piece in pieces:
        body += sse(kind, {"type": kind, "item_id": "it", "output_index": 0, "content_index": 0,
                           "delta": piece, "sequence_number": seq})
        seq += 1
    done = kind[: -len(".delta")] + ".done"
    body += sse(done, {"type": done, "item_id": "it", "output_index": 0, "content_index": 0,
                       "sequence_number": seq})
    return body + sse("response.completed", {"type": "response.completed", "sequence_number": seq + 1})


def responsesJoined(body: bytes, kind: str) -> str:
    text = ""
    done = False
    for name, obj in events(body):
        if name == kind:
            assert not done, "a delta after its text was done"
            text += obj["delta"]
        done = done or name.endswith(".done")
    return text


def assertClean(case: SynchronousTestCase, joined: str, body: bytes) -> None:
    for secret in SECRETS:
        case.assertNotIn(secret[:PREFIX], joined)
        case.assertNotIn(secret[1:].encode(), body)


class AnthropicTests(SynchronousTestCase):
    """
    C{/v1/messages} relayed to a native backend.
    """

    @settings(max_examples=200, deadline=None)
    @given(secret=st.sampled_from(SECRETS), cut=st.integers(1, 30),
           cuts=st.lists(st.integers(0, 3000), max_size=4),
           field=st.sampled_from(["text", "thinking", "partial_json"]), tail=st.booleans())
    @example(BACKEND_KEY, 1, [], "text", True)
    def test_anySplit(self, secret: str, cut: int, cuts: list[int], field: str, tail: bool) -> None:
        """
        The key over two deltas of a block, any read boundaries, the last
        delta ending in a key's start or not: the joined text has the key
        replaced and every other character, all before the block stops.
        """
        pieces = ["key: ", secret[:cut], secret[cut:], " s" if tail else " end"]
        out = run(anthropic(pieces, field), cuts)
        joined = anthropicJoined(out)
        self.assertEqual(joined, f"key: {REDACTED}" + (" s" if tail else " end"))
        assertClean(self, joined, out)

    def test_clean(self) -> None:
        """
        A clean stream passes byte for byte.
        """
        body = anthropic(["hello", " world"], "text")
        self.assertEqual(run(body, [7, 100]), body)


class ResponsesTests(SynchronousTestCase):
    """
    C{/v1/responses} relayed to a native backend.
    """

    @settings(max_examples=200, deadline=None)
    @given(secret=st.sampled_from(SECRETS), cut=st.integers(1, 30),
           cuts=st.lists(st.integers(0, 3000), max_size=4),
           kind=st.sampled_from(["response.output_text.delta", "response.reasoning_text.delta",
                                 "response.function_call_arguments.delta",
                                 "response.reasoning_summary_text.delta"]),
           tail=st.booleans())
    @example(INBOUND_KEY, 2, [], "response.output_text.delta", True)
    def test_anySplit(self, secret: str, cut: int, cuts: list[int], kind: str, tail: bool) -> None:
        """
        The key over two deltas of a text: replaced, every other character
        kept, all before the text's C{.done}.
        """
        pieces = ["key: ", secret[:cut], secret[cut:], " s" if tail else " end"]
        out = run(responses(pieces, kind), cuts)
        joined = responsesJoined(out, kind)
        self.assertEqual(joined, f"key: {REDACTED}" + (" s" if tail else " end"))
        assertClean(self, joined, out)

    def test_releasedAtEnd(self) -> None:
        """
        A body that ends with a tail held: the tail goes out in a delta
        event of its own, with the text's ids.
        """
        body = sse("response.output_text.delta", {"type": "response.output_text.delta",
                                                   "item_id": "it", "output_index": 2,
                                                   "content_index": 0, "delta": "x in-ke",
                                                   "sequence_number": 4})
        out = events(run(body, []))
        self.assertEqual([o["delta"] for _, o in out], ["x ", "in-ke"])
        self.assertEqual((out[1][1]["item_id"], out[1][1]["output_index"]), ("it", 2))

    def test_clean(self) -> None:
        body = responses(["hello", " world"], "response.output_text.delta")
        self.assertEqual(run(body, [7, 100]), body)

    @settings(max_examples=200, deadline=None)
    @given(first=st.lists(st.sampled_from(["yes", " ask", "s", "sk-h", "in-", "ok", BACKEND_KEY[:9]]),
                          min_size=1, max_size=4),
           second=st.lists(st.sampled_from(['{"a":', ' "s', 'k', '"}', "in-ke"]), min_size=1, max_size=4),
           cuts=st.lists(st.integers(0, 3000), max_size=4), atEnd=st.booleans(),
           perEvent=st.booleans())
    @example(["it is yes"], ["s"], [], False, False)
    @example(["it is yes"], ["{}"], [], False, True)
    def test_sequenceNumbers(self, first: list[str], second: list[str], cuts: list[int],
                             atEnd: bool, perEvent: bool) -> None:
        """
        A text that ends in what could begin a key (an innocent C{yes}
        holds its C{s}) has that tail released in an event of its own: it
        takes the next C{sequence_number} and every later event's moves up,
        so the numbers stay 0, 1, 2... with none twice, and both texts
        come out whole.  With C{atEnd} the body ends before the texts do;
        with C{perEvent} each read is one whole event (the clean read's
        fast path).
        """
        body, seq = b"", 0

        def add(name: str, **fields: Any) -> None:
            nonlocal body, seq
            body += sse(name, {"type": name, "sequence_number": seq, **fields})
            seq += 1

        ids = {"item_id": "it", "output_index": 0, "content_index": 0}
        add("response.created")
        for piece in first:
            add("response.output_text.delta", delta=piece, **ids)
        add("response.output_text.done", text="".join(first), **ids)
        add("response.output_item.done", output_index=0)
        call = {"item_id": "fc", "output_index": 1}
        for piece in second:
            add("response.function_call_arguments.delta", delta=piece, **call)
        if not atEnd:
            add("response.function_call_arguments.done", arguments="".join(second), **call)
            add("response.completed")
        if perEvent:
            cuts = [m.end() for m in re.finditer(rb"\n\n", body)]
        out = events(run(body, cuts))
        self.assertEqual([o["sequence_number"] for _, o in out], list(range(len(out))))
        texts = {kind: "".join(o["delta"] for k, o in out if k == kind)
                 for kind in ("response.output_text.delta", "response.function_call_arguments.delta")}
        for kind, pieces in [("response.output_text.delta", first),
                             ("response.function_call_arguments.delta", second)]:
            if BACKEND_KEY[:9] not in "".join(pieces):
                self.assertEqual(texts[kind], "".join(pieces))


class BoundsTests(SynchronousTestCase):
    """
    A hostile stream inventing indexes grows nothing without bound.
    """

    def test_manyTexts(self) -> None:
        """
        Texts that hold a tail and then release it leave nothing behind;
        more than L{MAX_HELD} holding at once end the stream.
        """
        from ollama_proxy.protocol.events import StreamFailed
        from ollama_proxy.protocol.relayguard import MAX_HELD

        g = guard()
        for i in range(3000):
            for text in ("s", "x"):
                g.feed(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "text_delta", "text": text}}))
        self.assertFalse(g.holding)
        self.assertEqual(g._templates, {})
        with self.assertRaises(StreamFailed):
            for i in range(MAX_HELD + 1):
                g.feed(sse("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "text_delta", "text": "s"}}))
