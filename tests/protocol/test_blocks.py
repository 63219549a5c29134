"""
The block lifecycle shared by the Anthropic and Responses encoders, on a
minimal block dialect: a kind change closes the open block, a tool call is
a block of its own, the Finish closes what is open, pings open the stream.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.blocks import BlockEncoder
from ollama_proxy.protocol.dialect import DONE, EncoderMisuse
from ollama_proxy.protocol.events import Delta, Finish, ToolCall, ToolCalls, Usage


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
