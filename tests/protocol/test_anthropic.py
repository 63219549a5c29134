"""
The Anthropic Messages dialect: the exact SSE event sequences (text,
thinking, tool calls split across chunks, usage after the finish, a
failure part-way) at every byte split, and the message object (the request
parser's tests are in L{tests.protocol.test_anthropic_request}).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.anthropic import (AnthropicDialect, AnthropicEncoder, RandomHex,
                                             errorObject, randomId)
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.events import Reply, ToolCall, Usage
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.stream import TranslatedStream
from tests.protocol.helpers import T0, constant, sse


def counterIds() -> Callable[[str], str]:
    """
    @return: an id maker giving C{prefix} + 24 hex digits counting from 1.
    """
    count = [0]

    def make(prefix: str) -> str:
        count[0] += 1
        return f"{prefix}{count[0]:024x}"

    return make


def events(data: bytes) -> list[tuple[str, Any]]:
    """
    Parse named SSE events, checking the framing: C{event:} then C{data:},
    a blank line after each.
    """
    assert data.endswith(b"\n\n"), data
    out = []
    for block in data[:-2].split(b"\n\n"):
        name, payload = block.split(b"\n")
        assert name.startswith(b"event: ") and payload.startswith(b"data: "), block
        decoded = codec.loads(payload[len(b"data: "):])
        out.append((name[len(b"event: "):].decode(), decoded))
        assert decoded["type"] == out[-1][0]
    return out


def pipeline(estimate: int = 7) -> TranslatedStream:
    encoder = AnthropicDialect(estimate, counterIds()).streamEncoder("claude-x", T0)
    return TranslatedStream(ChatStreamReader(constant), encoder)


def run(pieces: list[bytes]) -> bytes:
    stream = pipeline()
    return b"".join(stream.feed(p) for p in pieces) + stream.end()


def chunk(finish: str | None = None, **delta: Any) -> Any:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 14}}

START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_000000000000000000000001", "type": "message", "role": "assistant",
    "model": "claude-x", "content": [], "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 7, "output_tokens": 0}}})


def block(index: int, kind: str, **fields: Any) -> tuple[str, Any]:
    return ("content_block_start", {"type": "content_block_start", "index": index,
                                    "content_block": {"type": kind, **fields}})


def delta(index: int, **fields: Any) -> tuple[str, Any]:
    return ("content_block_delta", {"type": "content_block_delta", "index": index,
                                    "delta": fields})


def stop(index: int) -> tuple[str, Any]:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def end(reason: str, inputTokens: int = 9, outputTokens: int = 14) -> list[tuple[str, Any]]:
    return [
        ("message_delta", {"type": "message_delta",
                           "delta": {"stop_reason": reason, "stop_sequence": None},
                           "usage": {"input_tokens": inputTokens, "output_tokens": outputTokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]


THINKING_STREAM = sse(
    chunk(role="assistant", content=""),
    chunk(reasoning_content="The user "),
    chunk(reasoning_content="greets me."),
    chunk(content="Hi \u00e9t\u00e9 "),
    chunk(content="\U0001f600!"),
    chunk("stop"),
    USAGE,
) + b"data: [DONE]\n\n"

TOOL_STREAM = sse(
    chunk(content="Let me check."),
    chunk(tool_calls=[{"index": 0, "id": "toolu_1", "type": "function",
                       "function": {"name": "get_weather", "arguments": ""}}]),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": '{"city": '}}]),
    chunk(tool_calls=[{"index": 0, "function": {"arguments": '"Paris"}'}}]),
    chunk(tool_calls=[{"index": 1, "id": "toolu_2", "function": {"name": "now", "arguments": "{}"}}]),
    chunk("tool_calls"),
    USAGE,
) + b"data: [DONE]\n\n"


class StreamTests(SynchronousTestCase):
    """
    The SSE event sequence, exactly, at every split of the backend's bytes.
    """

    def assertEverySplit(self, stream: bytes) -> bytes:
        whole = run([stream])
        for i in range(len(stream) + 1):
            self.assertEqual(run([stream[:i], stream[i:]]), whole, f"split at {i}")
        return whole

    def test_thinkingThenText(self) -> None:
        """
        Reasoning is a thinking block (with the empty signature the SDK
        needs), closed when text begins; usage arriving after the finish
        chunk is in C{message_delta}.
        """
        out = self.assertEverySplit(THINKING_STREAM)
        self.assertEqual(events(out), [
            START,
            block(0, "thinking", thinking="", signature=""),
            delta(0, type="thinking_delta", thinking="The user "),
            delta(0, type="thinking_delta", thinking="greets me."),
            stop(0),
            block(1, "text", text=""),
            delta(1, type="text_delta", text="Hi \u00e9t\u00e9 "),
            delta(1, type="text_delta", text="\U0001f600!"),
            stop(1),
            *end("end_turn"),
        ])

    def test_toolCalls(self) -> None:
        """
        Tool calls whose arguments arrive in pieces are tool_use blocks
        after the text, each with its whole arguments as one
        C{input_json_delta}; the stop reason is C{tool_use}.
        """
        out = self.assertEverySplit(TOOL_STREAM)
        self.assertEqual(events(out), [
            START,
            block(0, "text", text=""),
            delta(0, type="text_delta", text="Let me check."),
            stop(0),
            block(1, "tool_use", id="toolu_1", name="get_weather", input={}),
            delta(1, type="input_json_delta", partial_json='{"city":"Paris"}'),
            stop(1),
            block(2, "tool_use", id="toolu_2", name="now", input={}),
            delta(2, type="input_json_delta", partial_json="{}"),
            stop(2),
            *end("tool_use"),
        ])

    def test_stopReasons(self) -> None:
        """
        C{length} is C{max_tokens}, C{content_filter} C{refusal}; without
        usage from the backend, input tokens are the estimate.
        """
        for finish, reason in (("length", "max_tokens"), ("content_filter", "refusal"),
                               ("stop", "end_turn")):
            out = run([sse(chunk(finish, content="x")) + b"data: [DONE]\n\n"])
            self.assertEqual(events(out)[-2:], end(reason, 7, 0))

    def test_failurePartWay(self) -> None:
        """
        A backend error event after some text: the text already read, then
        C{event: error} in Anthropic's shape, and no C{message_stop}.
        """
        stream = pipeline()
        body = sse(chunk(content="par"), {"error": {"message": "overloaded"}})
        with self.assertRaises(StreamFailed) as e:
            stream.feed(body)
        out = e.exception.output + stream.encoder.error(e.exception.message)
        self.assertEqual(events(out), [
            START,
            block(0, "text", text=""),
            delta(0, type="text_delta", text="par"),
            ("error", {"type": "error", "error": {"type": "api_error", "message": "overloaded"}}),
        ])

    def test_errorFirst(self) -> None:
        """
        An error before any event still follows a C{message_start}.
        """
        encoder = AnthropicEncoder("m", "msg_1", 3)
        self.assertEqual([name for name, _ in events(encoder.error("boom"))],
                         ["message_start", "error"])

    def test_ping(self) -> None:
        """
        The first ping opens the message; later ones are bare pings.
        """
        encoder = AnthropicEncoder("m", "msg_1", 3)
        self.assertEqual([n for n, _ in events(encoder.ping())], ["message_start", "ping"])
        self.assertEqual(events(encoder.ping()), [("ping", {"type": "ping"})])
        self.assertEqual(encoder.encode([]), b"")


class ReplyTests(SynchronousTestCase):
    """
    The non-streamed message object.
    """

    REPLY = Reply("Let me check.", "Weather needed.",
                  (ToolCall("toolu_1", "get_weather", {"city": "Paris"}, 0),),
                  "tool_calls", Usage(412, 31), [])

    def test_message(self) -> None:
        """
        Thinking, text, then tool_use blocks with object input; the stop
        reason, a null stop sequence and the backend's usage.
        """
        dialect = AnthropicDialect(5, counterIds())
        self.assertEqual(dialect.reply(self.REPLY, "claude-x", T0, T0), {
            "id": "msg_000000000000000000000001", "type": "message", "role": "assistant",
            "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "Weather needed.", "signature": ""},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}},
            ],
            "stop_reason": "tool_use", "stop_sequence": None,
            "usage": {"input_tokens": 412, "output_tokens": 31},
        })

    def test_asStream(self) -> None:
        """
        A whole answer where a stream was asked for is the same sequence a
        stream would have been.
        """
        dialect = AnthropicDialect(5, counterIds())
        names = [n for n, _ in events(dialect.streamEncoder("m", T0).whole(self.REPLY, T0))]
        self.assertEqual(names, [
            "message_start", "content_block_start", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_stop",
            "content_block_start", "content_block_delta", "content_block_stop",
            "message_delta", "message_stop",
        ])

    def test_errorTypes(self) -> None:
        """
        Statuses become Anthropic's error types.
        """
        for status, kind in ((400, "invalid_request_error"), (401, "authentication_error"),
                             (404, "not_found_error"), (413, "request_too_large"),
                             (429, "rate_limit_error"), (502, "api_error"),
                             (503, "overloaded_error"), (504, "timeout_error")):
            self.assertEqual(errorObject(status, "m"),
                             {"type": "error", "error": {"type": kind, "message": "m"}})




class RandomHexTests(SynchronousTestCase):
    """
    L{RandomHex}: ids from the OS's random source, drawn in blocks.
    """

    def test_ids(self) -> None:
        """
        An id is its prefix and 24 hex digits; a thousand (several draws'
        worth) are all different.
        """
        ids = [randomId("msg_") for _ in range(1000)]
        for value in ids:
            self.assertRegex(value, r"\Amsg_[0-9a-f]{24}\Z")
        self.assertEqual(len(set(ids)), 1000)

    def test_eachDigitOnce(self) -> None:
        """
        Every digit drawn is handed out once, in order; a draw is made only
        when the block cannot fill an ask (no syscall per id).
        """
        draws: list[bytes] = []

        def urandom(n: int) -> bytes:
            draws.append(bytes(range(len(draws) * n, len(draws) * n + n)))
            return draws[-1]

        self.patch(os, "urandom", urandom)
        pool = RandomHex()
        pool.size = 4  # 8 digits a block
        taken = [pool.take(3), pool.take(3)]
        self.assertEqual(taken, ["000", "102"])
        self.assertEqual(len(draws), 1)
        taken += [pool.take(3), pool.take(3)]  # 2 digits left: a new block
        self.assertEqual(len(draws), 2)
        self.assertEqual(taken[2:], ["040", "506"])

    def test_forgetAfterFork(self) -> None:
        """
        A forked child does not hand out digits its parent still holds:
        what the two take next differs.
        """
        if not hasattr(os, "fork") or not hasattr(os, "register_at_fork"):
            raise self.skipTest("no fork")
        pool = RandomHex()
        pool.take(2)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.write(write, pool.take(24).encode())
            finally:
                os._exit(0)
        os.close(write)
        try:
            child = os.read(read, 100).decode()
        finally:
            os.close(read)
            os.waitpid(pid, 0)
        self.assertTrue(re.fullmatch(r"[0-9a-f]{24}", child), child)
        self.assertNotEqual(child, pool.take(24))
