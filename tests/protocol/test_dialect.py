"""
The encoder lifecycle every dialect shares (START -> OPEN -> DONE, misuse
refused as h11 refuses it) and the error shapes, checked on each of the
proxy's dialects through their public encoders.
"""

from __future__ import annotations

import re
from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.anthropic import ERRORS as ANTHROPIC_ERRORS
from ollama_proxy.protocol.anthropic import AnthropicDialect
from ollama_proxy.protocol.dialect import (
    DONE,
    OPEN,
    START,
    Encoder,
    EncoderMisuse,
    openAIErrorEvent,
)
from ollama_proxy.protocol.events import Delta, Finish, Reply, Usage
from ollama_proxy.protocol.ollama import ERRORS as OLLAMA_ERRORS
from ollama_proxy.protocol.ollama import OllamaDialect
from ollama_proxy.protocol.responses import ERRORS as RESPONSES_ERRORS
from ollama_proxy.protocol.responses import ResponsesDialect
from ollama_proxy.protocol.responses_request import ResponsesContext
from tests.protocol.helpers import T0

FINISH = Finish("stop", Usage(3, 2), None, T0 + 1)
REPLY = Reply("hi", "", (), "stop", Usage(3, 2), [])

ENCODERS: dict[str, Callable[[], Encoder]] = {
    "ollama": lambda: OllamaDialect("chat", lambda: T0).streamEncoder("m", T0),
    "anthropic": lambda: AnthropicDialect(5).streamEncoder("m", T0),
    "responses": lambda: ResponsesDialect(ResponsesContext({})).streamEncoder("m", T0),
}


class LifecycleTests(SynchronousTestCase):
    """
    Each dialect's encoder goes START -> OPEN -> DONE and refuses what
    its stream can no longer carry.
    """

    def test_states(self) -> None:
        """
        A fresh encoder is at START; its first bytes open it; the Finish
        ends it.
        """
        for name, make in ENCODERS.items():
            encoder = make()
            self.assertIs(encoder.state, START, name)
            encoder.encode([Delta("a")])
            self.assertIs(encoder.state, OPEN, name)
            self.assertTrue(encoder.encode([Delta("b"), FINISH]), name)
            self.assertIs(encoder.state, DONE, name)

    def test_nothingAfterTheEnd(self) -> None:
        """
        After the Finish, more events, an error or a whole reply raise
        L{EncoderMisuse} rather than write a second ending.
        """
        for name, make in ENCODERS.items():
            encoder = make()
            encoder.encode([Delta("a"), FINISH])
            self.assertRaises(EncoderMisuse, encoder.encode, [Delta("late")])
            self.assertRaises(EncoderMisuse, encoder.encode, [])
            self.assertRaises(EncoderMisuse, encoder.error, "late")
            self.assertRaises(EncoderMisuse, encoder.whole, REPLY, T0)

    def test_eventsAfterFinishInOneRead(self) -> None:
        """
        A Finish that is not the last event of its read is refused.
        """
        for name, make in ENCODERS.items():
            self.assertRaises(EncoderMisuse, make().encode, [FINISH, Delta("late")])

    def test_errorEnds(self) -> None:
        """
        A mid-stream error ends the stream: nothing may follow it.
        """
        for name, make in ENCODERS.items():
            encoder = make()
            self.assertTrue(encoder.error("boom"), name)
            self.assertIs(encoder.state, DONE, name)
            self.assertRaises(EncoderMisuse, encoder.error, "again")
            self.assertRaises(EncoderMisuse, encoder.encode, [FINISH])

    def test_freshPerStream(self) -> None:
        """
        Every call of C{streamEncoder} is a new stream, even on one
        per-request dialect object.
        """
        dialect = AnthropicDialect(5)
        first = dialect.streamEncoder("m", T0)
        first.encode([FINISH])
        second = dialect.streamEncoder("m", T0)
        self.assertIsNot(first, second)
        self.assertIs(second.state, START)


class EncodeReadTests(SynchronousTestCase):
    """
    L{Encoder.encodeRead}: one read's bytes, and the framing of the
    template that wrote them, as it was before the read.
    """

    def test_sameBytesAsEncode(self) -> None:
        """
        The bytes are L{Encoder.encode}'s, read for read (the random
        message ids aside).
        """
        ids = re.compile(rb"(msg|resp)_[0-9a-f]+")
        for name, make in ENCODERS.items():
            one, other = make(), make()
            for events in ([Delta("a")], [Delta("b"), Delta("c")], [FINISH]):
                self.assertEqual(ids.sub(b"ID", one.encodeRead(events)[0]),
                                 ids.sub(b"ID", other.encode(events)), name)

    def test_framingBeforeTheRead(self) -> None:
        """
        The read that opens the stream (or its text block) was not written
        by the template alone: its framing is C{None}, though the encoder
        has one afterwards; the next plain read gets the template it used,
        which holds the constant bytes around its text.
        """
        for name, make in ENCODERS.items():
            encoder = make()
            out, framing = encoder.encodeRead([Delta("a")])
            self.assertTrue(out, name)
            self.assertIsNone(framing, name)
            after = encoder.framing()
            self.assertIsNotNone(after, name)
            out, framing = encoder.encodeRead([Delta("b")])
            self.assertIs(framing, after, name)
            assert framing is not None
            self.assertIn(b'"b"', out, name)
            for piece in framing.split(b"\n"):
                self.assertIn(piece, out, (name, piece))

    def test_noFramingAfterTheEnd(self) -> None:
        """
        The read that ends the stream reports the framing it began in;
        nothing is framed once the stream is over, and a read after it
        raises.
        """
        encoder = ENCODERS["ollama"]()
        encoder.encodeRead([Delta("a")])
        self.assertIsNotNone(encoder.encodeRead([Delta("b"), FINISH])[1])
        self.assertIsNone(encoder.framing())
        self.assertRaises(EncoderMisuse, encoder.encodeRead, [Delta("late")])


class ErrorShapeTests(SynchronousTestCase):
    """
    One object per dialect writes both its errors.
    """

    def test_bodies(self) -> None:
        """
        Before the stream: each dialect's own JSON object.
        """
        self.assertEqual(codec.loads(OLLAMA_ERRORS.body(404, "no")), {"error": "no"})
        self.assertEqual(codec.loads(ANTHROPIC_ERRORS.body(404, "no")),
                         {"type": "error", "error": {"type": "not_found_error", "message": "no"}})
        self.assertEqual(codec.loads(RESPONSES_ERRORS.body(400, "no", "store")), {"error": {
            "message": "no", "type": "invalid_request_error", "param": "store",
            "code": "unsupported_parameter"}})

    def test_midStream(self) -> None:
        """
        In the stream: the encoder's own error event, nothing once the
        reply is complete on the client's side.
        """
        encoder = ENCODERS["anthropic"]()
        encoder.encode([Delta("a")])
        self.assertIn(b"event: error\n", ANTHROPIC_ERRORS.midStream(encoder, "boom"))
        self.assertIs(encoder.state, DONE)
        self.assertEqual(ANTHROPIC_ERRORS.midStream(encoder, "late"), b"")

    def test_relayedStreams(self) -> None:
        """
        A stream the proxy relays without an encoder ends with Ollama's
        error line on the Ollama routes and an OpenAI error event
        elsewhere.
        """
        self.assertEqual(OLLAMA_ERRORS.midStream(None, "boom"), b'{"error":"boom"}\n')
        self.assertEqual(
            RESPONSES_ERRORS.midStream(None, "boom"),
            b'\n\ndata: {"error":{"message":"boom","type":"api_error","param":null,'
            b'"code":null}}\n\n',
        )
        self.assertEqual(ANTHROPIC_ERRORS.midStream(None, "boom"), openAIErrorEvent("boom"))
