"""
L{ollama_proxy.protocol.events}: the dialect-neutral events, a whole reply
as the events of its stream, and the mid-read stream failure.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import UpstreamError
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

CALL = ToolCall("call_1", "shell", {"command": "ls"}, 0)


def reply(content: str = "", thinking: str = "", calls: tuple[ToolCall, ...] = ()) -> Reply:
    return Reply(content, thinking, calls, "stop", Usage(3, 4), [])


class ReplyEventsTests(SynchronousTestCase):
    """
    L{replyEvents}: what a stream of the same answer would have carried.
    """

    def test_textAndCalls(self) -> None:
        """
        Reasoning and text in one delta, the tool calls, then the finish
        with the reason, usage and time (no first-token time: nothing was
        streamed).
        """
        self.assertEqual(replyEvents(reply("hi", "hmm", (CALL,)), 99), [
            Delta("hi", "hmm"), ToolCalls((CALL,)), Finish("stop", Usage(3, 4), None, 99)])

    def test_empty(self) -> None:
        """
        An empty answer is only its finish: no empty delta, no empty list
        of calls.
        """
        self.assertEqual(replyEvents(reply(), 5), [Finish("stop", Usage(3, 4), None, 5)])

    def test_onlyCalls(self) -> None:
        """
        A tool-call-only answer has no text delta.
        """
        self.assertEqual([type(e) for e in replyEvents(reply(calls=(CALL,)), 5)],
                         [ToolCalls, Finish])


class EventTests(SynchronousTestCase):
    """
    The events' defaults, and L{StreamFailed}.
    """

    def test_defaults(self) -> None:
        """
        A delta is text only unless told; usage is unknown unless reported.
        """
        self.assertEqual(Delta("a"), ("a", "", None))
        self.assertEqual(Usage(), (None, None))
        self.assertIsNone(Finish(None, Usage(), None, 1).logprobs)

    def test_streamFailed(self) -> None:
        """
        A 502 upstream error that keeps the events read before the failing
        one (the pipeline fills in their encoding).
        """
        events = [Delta("partial")]
        error = StreamFailed("bad chunk", events)
        self.assertIsInstance(error, UpstreamError)
        self.assertEqual((error.status, error.message, error.events, error.output),
                         (502, "bad chunk", events, b""))
        events.append(Delta("later"))
        self.assertEqual(error.events, [Delta("partial")])
