# -*- test-case-name: tests.protocol.test_blocks -*-
"""
The block lifecycle the coding agents' SSE dialects share.

Anthropic's content blocks and the Responses API's output items are the
same machine: thinking, text and tool calls are separate blocks in the
order they arrive, one open at a time; a change of kind closes the open
block and opens the next, a tool call is a block of its own, and the
L{Finish} closes whatever is open before the reply's last events.  The
machine is here once (L{BlockEncoder}); each dialect says only how a
block starts, grows and stops on its wire.
"""

from __future__ import annotations

from typing import Sequence

from ollama_proxy.protocol.dialect import DONE, OPEN, Encoder, EncoderMisuse
from ollama_proxy.protocol.events import Delta, Event, Finish, StreamFailed, ToolCall, ToolCalls

SSE = b"text/event-stream; charset=utf-8"

THINKING = "thinking"
TEXT = "text"


class BlockEncoder(Encoder):
    """
    Events to a stream of blocks, with keep-alives (L{ping}) while the
    backend is silent.

    Subclasses implement L{_startBlock}, L{_stopBlock}, L{_thinking},
    L{_text} (or L{_textRun}, a run of them), L{_toolCall} and L{_finish},
    and the base's L{_opening} and L{_failure}.

    A hook may raise L{StreamFailed} (a dialect's own limit): the events
    of the read before it go out in its C{output}, before the error.

    @ivar openKind: the kind of the open block (L{THINKING}, L{TEXT}), or
        C{None}.
    """

    contentType = SSE
    openKind: str | None = None

    def _startBlock(self, kind: str) -> bytes:
        """
        @return: the events that open a block of C{kind}.
        """
        raise NotImplementedError

    def _stopBlock(self) -> list[bytes]:
        """
        @return: the events that close the open block, as pieces joined
            once with the read's other events (a long text repeated by the
            closing events is not copied on the way).
        """
        raise NotImplementedError

    def _thinking(self, text: str) -> bytes:
        """
        @return: a reasoning delta in the open thinking block.
        """
        raise NotImplementedError

    def _text(self, text: str) -> bytes:
        """
        @return: a text delta in the open text block.
        """
        raise NotImplementedError

    def _textRun(self, texts: list[str], out: list[bytes]) -> None:
        """
        Add a run of text deltas to the read's pieces: by default L{_text}
        of each; a dialect writes the run from its template in one call
        instead (a read is mostly one run).

        @param texts: the texts of consecutive deltas in the open text
            block (at least one, none empty).
        @param out: the read's pieces so far, joined once at its end.
        @raise StreamFailed: from L{_text}; the deltas before it are in
            C{out}, and so go out before the error.
        """
        for text in texts:
            out.append(self._text(text))

    def _toolCall(self, call: ToolCall) -> bytes:
        """
        @return: one complete tool call as its own block (none is open).
        """
        raise NotImplementedError

    def _finish(self, finish: Finish) -> list[bytes]:
        """
        @return: the reply's last events (no block is open), as pieces.
        """
        raise NotImplementedError

    def _firstPing(self) -> bytes:
        """
        @return: what a ping adds to the opening, the first time.
        """
        return b""

    def _ping(self) -> bytes:
        """
        @return: the keep-alive once the stream is open.
        """
        raise NotImplementedError

    def _run(self, run: list[str], out: list[bytes]) -> None:
        if len(run) == 1:
            out.append(self._text(run[0]))
        else:
            self._textRun(run, out)

    def _close(self) -> list[bytes]:
        if self.openKind is None:
            return []
        out = self._stopBlock()
        self.openKind = None
        return out

    def _switch(self, kind: str, out: list[bytes]) -> None:
        out.extend(self._close())
        self.openKind = kind
        out.append(self._startBlock(kind))

    def ping(self) -> bytes:
        """
        @return: a keep-alive, preceded by the stream's opening events if
            they were not written yet, to show a waiting client that the
            stream is alive.
        @raise ollama_proxy.protocol.dialect.EncoderMisuse: after the end.
        """
        if self.state is OPEN:
            return self._ping()
        return self._open() + self._firstPing()

    def _encode(self, events: Sequence[Event]) -> bytes:
        if len(events) == 1 and self.openKind == TEXT:
            event = events[0]
            if type(event) is Delta and event.content and not event.thinking:
                # One token in the open text block: the read of a backend
                # that streams token by token, as it comes.
                return self._text(event.content)
        out: list[bytes] = []
        # Plain text deltas in the open text block, gathered into one
        # _textRun call per run (a read is mostly one run): the dialect
        # writes the run from its template without a call per token.
        # While the run is not empty the open block is the text block and
        # everything in out comes before it.
        run: list[str] = []
        try:
            for event in events:
                if type(event) is Delta:
                    if event.thinking:
                        if run:
                            self._run(run, out)
                            run = []
                        if self.openKind != THINKING:
                            self._switch(THINKING, out)
                        out.append(self._thinking(event.thinking))
                    if event.content:
                        if self.openKind != TEXT:
                            self._switch(TEXT, out)
                        run.append(event.content)
                    continue
                if run:
                    self._run(run, out)
                    run = []
                if type(event) is ToolCalls:
                    for call in event.calls:
                        out.extend(self._close())
                        out.append(self._toolCall(call))
                elif type(event) is Finish:
                    if event is not events[-1]:
                        raise EncoderMisuse(f"{type(self).__name__}: events after the Finish")
                    self.state = DONE
                    out.extend(self._close())
                    out.extend(self._finish(event))
            if run:
                self._run(run, out)
        except StreamFailed as e:
            # A dialect's own limit, part-way through the read: the events
            # before it still belong to the client, before the error.
            e.output = b"".join(out) + e.output
            raise
        return b"".join(out)
