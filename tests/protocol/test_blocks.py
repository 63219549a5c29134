"""
The block lifecycle shared by the Anthropic and Responses encoders, on a
minimal block dialect: a kind change closes the open block, a tool call is
a block of its own, the Finish closes what is open, pings open the stream;
and the two encoders' wire, byte for byte, against their frozen copies.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.anthropic import AnthropicEncoder
from ollama_proxy.protocol.blocks import BlockEncoder
from ollama_proxy.protocol.dialect import DONE, EncoderMisuse
from ollama_proxy.protocol.events import (
    Delta,
    Finish,
    Reply,
    StreamFailed,
    ToolCall,
    ToolCalls,
    Usage,
    replyEvents,
)
from ollama_proxy.protocol.responses import ResponsesEncoder
from ollama_proxy.protocol.responses_request import ResponsesContext, ToolName
from tests.protocol import frozen_encoders as frozen
from tests.protocol.helpers import T0


class Tags(BlockEncoder):
    """
    Blocks as tags: C{<kind>} ... C{</kind>}.
    """

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def _opening(self) -> bytes:
        return b"[open]"

    def _firstPing(self) -> bytes:
        return b"[first-ping]"

    def _ping(self) -> bytes:
        return b"[ping]"

    def _startBlock(self, kind: str) -> bytes:
        self.kinds.append(kind)
        return f"<{kind}>".encode()

    def _stopBlock(self) -> list[bytes]:
        return [f"</{self.kinds[-1]}>".encode()]

    def _thinking(self, text: str) -> bytes:
        return f"~{text}".encode()

    def _text(self, text: str) -> bytes:
        return text.encode()

    def _toolCall(self, call: ToolCall) -> bytes:
        return f"<call {call.name}/>".encode()

    def _finish(self, finish: Finish) -> list[bytes]:
        return [f"[end {finish.reason}]".encode()]

    def _failure(self, message: str) -> bytes:
        return f"[error {message}]".encode()


FINISH = Finish("stop", Usage(), None, 0)


class BlockEncoderTests(SynchronousTestCase):
    """
    The machine, once, for both SSE block dialects.
    """

    def test_kindChanges(self) -> None:
        """
        Thinking then text then thinking again: three blocks, each closed
        before the next opens, the last closed by the Finish.
        """
        encoder = Tags()
        out = encoder.encode([Delta("", "a"), Delta("", "b"), Delta("c", "d")])
        out += encoder.encode([Delta("e"), Delta("", "f"), FINISH])
        self.assertEqual(
            out,
            b"[open]<thinking>~a~b~d</thinking><text>ce</text><thinking>~f</thinking>[end stop]",
        )
        self.assertIs(encoder.state, DONE)

    def test_toolCallsAreBlocks(self) -> None:
        """
        Each tool call closes the open block and is a block of its own.
        """
        calls = ToolCalls((ToolCall("1", "x", {}, 0), ToolCall("2", "y", {}, 1)))
        out = Tags().encode([Delta("t"), calls, FINISH])
        self.assertEqual(out, b"[open]<text>t</text><call x/><call y/>[end stop]")

    def test_pings(self) -> None:
        """
        The first ping opens the stream; later ones are bare; none after
        the end.
        """
        encoder = Tags()
        self.assertEqual(encoder.ping(), b"[open][first-ping]")
        self.assertEqual(encoder.ping(), b"[ping]")
        self.assertEqual(encoder.encode([]), b"")
        encoder.encode([FINISH])
        self.assertRaises(EncoderMisuse, encoder.ping)

    def test_errorAfterAnOpenBlock(self) -> None:
        """
        An error leaves the open block unclosed (the client must not read a
        completed block) and ends the stream.
        """
        encoder = Tags()
        encoder.encode([Delta("par")])
        self.assertEqual(encoder.error("boom"), b"[error boom]")
        self.assertRaises(EncoderMisuse, encoder.encode, [Delta("more")])


# The wire pinned (issue 23): the Anthropic and Responses encoders write
# byte for byte what they wrote before their per-read fast paths, kept in
# tests.protocol.frozen_encoders.

FORGED = "\x000123456789abcdef:0\x00"
"""A text shaped as a held text's hole in a Responses event (another
stream's nonce): it must be written as the text it is."""

texts = st.one_of(
    st.sampled_from([" w", "Hello", " token.", "", "é☃", 'q"uote', "back\\slash", "tab\t",
                     "\x00:1\x00", FORGED, "%d %s %%", "\n\n", "😀"]),
    st.text(max_size=8),
)
thinkingTexts = st.one_of(st.just(""), st.just(""), st.just(""), texts)
deltas = st.builds(
    Delta, texts, thinkingTexts,
    st.one_of(st.none(), st.none(), st.none(), st.just([{"token": "a", "logprob": -0.5}])),
)
calls = st.builds(
    ToolCall,
    st.sampled_from(["call_1", "c\"2", "toolu_x"]),
    st.sampled_from(["get_weather", "mcp__node__js", "apply_patch", "a.b"]),
    st.one_of(st.just({}), st.builds(lambda t: {"q": t}, texts), st.builds(lambda t: {"input": t}, texts)),
    st.integers(0, 3),
)
toolCalls = st.builds(lambda cs: ToolCalls(tuple(cs)), st.lists(calls, min_size=1, max_size=2))
usages = st.builds(Usage, st.one_of(st.none(), st.integers(0, 99)), st.one_of(st.none(), st.integers(0, 99)))
finishes = st.builds(
    Finish, st.sampled_from(["stop", "length", "tool_calls", "content_filter", None]), usages,
    st.one_of(st.none(), st.just(T0 + 5)), st.just(T0 + 7_000_000_000),
    st.one_of(st.none(), st.none(), st.just([{"token": "b", "logprob": -1.0}])),
)
plainRun = st.lists(st.sampled_from([" w", "x", "", 'q"', "é"]).map(Delta), min_size=1, max_size=30)
"""The common read: many plain text deltas."""
reads = st.one_of(
    plainRun, plainRun,
    st.lists(st.one_of(deltas, deltas, deltas, deltas, toolCalls), max_size=6),
)
steps = st.lists(st.one_of(reads, reads, reads, reads, st.just("ping")), max_size=8)
endings = st.one_of(finishes, st.just("error"), st.just("none"))
replies = st.builds(
    Reply, texts, thinkingTexts, st.lists(calls, max_size=2).map(tuple),
    st.sampled_from(["stop", "length", "tool_calls", None]), usages, st.just([]),
)


def counter() -> Callable[[str], str]:
    """
    @return: an id maker counting from 1, the same in two encoders.
    """
    count = [0]

    def make(prefix: str) -> str:
        count[0] += 1
        return f"{prefix}{count[0]:024x}"

    return make


NAMES = {"mcp__node__js": ToolName("js", "mcp__node"), "apply_patch": ToolName("apply_patch", custom=True)}


def pair(dialect: str, model: str, limit: int | None, maxOutput: int | None) -> tuple[Any, Any]:
    """
    @return: the current encoder of C{dialect} and the frozen one, alike.
    """
    if dialect == "anthropic":
        return AnthropicEncoder(model, "msg_01", 7), frozen.AnthropicEncoder(model, "msg_01", 7)
    context = ResponsesContext({"instructions": "i", "max_output_tokens": maxOutput,
                                "tools": []}, dict(NAMES))
    new = ResponsesEncoder(model, T0, context, counter())
    old = frozen.ResponsesEncoder(model, T0, context, counter())
    if limit is not None:
        new.maxText = old.maxText = limit
    return new, old


def outcome(call: Callable[[], bytes]) -> tuple[str, object]:
    """
    @return: what C{call} gave: its bytes, or its error with the output it
        carried.
    """
    try:
        return ("bytes", call())
    except StreamFailed as e:
        return ("failed", (str(e), e.output))
    except EncoderMisuse as e:
        return ("misuse", str(e))


class SameWireTests(SynchronousTestCase):
    """
    The Anthropic and Responses encoders against their frozen copies
    (L{tests.protocol.frozen_encoders}): the same events, in the same reads,
    give the same bytes, the same failures, the same framing for the
    certified skip, and the same C{stream: false} response object.
    """

    def assertSame(self, new: Any, old: Any, what: str) -> None:
        """
        The same state, and the same framing for the next read.  (A
        streaming encoder's C{response} holds its texts by reference: its
        bytes are compared, in the events that carry it.)
        """
        self.assertEqual(new.state, old.state, what)
        self.assertEqual(new.framing(), old.framing(), what)

    @settings(max_examples=500, deadline=None)
    @given(
        dialect=st.sampled_from(["anthropic", "responses"]),
        model=st.sampled_from(["m", 'q"m', "é-model"]),
        steps=steps,
        ending=endings,
        limit=st.one_of(st.none(), st.none(), st.integers(1, 60)),
        maxOutput=st.sampled_from([None, 10]),
    )
    def test_stream(
        self, dialect: str, model: str, steps: list[Any], ending: Any, limit: int | None,
        maxOutput: int | None,
    ) -> None:
        """
        Any reads of any events (plain runs, thinking, log-probabilities,
        tool calls, texts with quotes, escapes, NULs and forged holes),
        pings between them, then a finish, an error or nothing; with the
        Responses text cap anywhere.
        """
        new, old = pair(dialect, model, limit, maxOutput)
        if ending not in ("error", "none"):
            steps = [*steps, [ending]]
        for i, step in enumerate(steps):
            what = f"step {i}"
            self.assertSame(new, old, what)
            if step == "ping":
                got = outcome(new.ping), outcome(old.ping)
            else:
                got = outcome(lambda: new.encode(step)), outcome(lambda: old.encode(step))
            self.assertEqual(got[0], got[1], what)
            if got[0][0] == "failed":
                self.assertEqual(outcome(lambda: new.error(str(got[0][1]))),
                                 outcome(lambda: old.error(str(got[1][1]))), what)
                break
        else:
            if ending == "error":
                self.assertEqual(outcome(lambda: new.error("boom")), outcome(lambda: old.error("boom")))
        self.assertSame(new, old, "end")

    @settings(max_examples=200, deadline=None)
    @given(
        dialect=st.sampled_from(["anthropic", "responses"]),
        reply=replies,
        pinged=st.booleans(),
        limit=st.one_of(st.none(), st.integers(1, 60)),
    )
    def test_whole(self, dialect: str, reply: Reply, pinged: bool, limit: int | None) -> None:
        """
        A whole reply where a stream was asked for, after a ping or not;
        and the C{stream: false} response object.
        """
        new, old = pair(dialect, "m", limit, None)
        if pinged:
            self.assertEqual(new.ping(), old.ping())
        end = T0 + 9_000_000_000
        self.assertEqual(outcome(lambda: new.whole(reply, end)), outcome(lambda: old.whole(reply, end)))
        self.assertSame(new, old, "whole")
        if dialect == "responses":
            context = ResponsesContext({"tools": []}, dict(NAMES))
            whole = ResponsesEncoder("m", T0, context, counter(), whole=True)
            whole.encode(replyEvents(reply, end))
            frozenWhole = frozen.ResponsesEncoder("m", T0, context, counter(), whole=True)
            frozenWhole.encode(replyEvents(reply, end))
            self.assertEqual(whole.response, frozenWhole.response)
