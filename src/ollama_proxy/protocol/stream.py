# -*- test-case-name: tests.protocol.test_stream -*-
"""
The streaming pipeline as one pure object: SSE bytes from the backend in,
the client dialect's bytes out, one call per socket read.

    SSE bytes -> L{SSEDecoder} -> L{ChatStreamReader} -> events -> encoder -> bytes

The web layer calls L{TranslatedStream.feed} from each upstream read and
writes the result with a single C{request.write}, so a read that carried ten
tokens costs one write, while each token is still its own line or event.

The first stage, the SSE decoder (L{SSEDecoder}), is here too: it exists
only to feed this pipeline, so a read goes down the stages and comes back
without leaving this module to be split into events.  OpenAI-compatible
servers stream C{text/event-stream}: events separated by a blank line, each
with one or more C{data:} lines.  TCP delivers the bytes in arbitrary
pieces, so the decoder keeps the unfinished tail between calls and returns
only complete events.  The line-length cap is explicit and large (a single
event can carry a whole tool call's JSON); exceeding it raises
L{SSELineTooLong} rather than hanging or growing without bound.
"""

from __future__ import annotations

from typing import Sequence

from ollama_proxy.protocol.dialect import Encoder
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.events import Event, Finish, Usage
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.redact import EventRedactor


DEFAULT_MAX_LINE_LENGTH = 4 * 1024 * 1024


class SSELineTooLong(ValueError):
    """
    An SSE line (or the pending data of one event) exceeded the cap.
    """


class SSEDecoder:
    """
    Incremental SSE framing: C{feed(bytes) -> [data payload, ...]}.

    Handles C{\\n}, C{\\r\\n} and C{\\r} line ends, C{:} comment lines
    (keep-alives), an optional single space after C{data:}, multi-line data
    (joined with C{\\n}) and ignores the C{event}, C{id} and C{retry} fields:
    OpenAI-style servers report errors inside the data JSON.

    @ivar maxLineLength: the largest line or event payload accepted, in bytes.
    """

    def __init__(self, maxLineLength: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self.maxLineLength = maxLineLength
        self._buffer = b""
        self._data: list[bytes] = []
        self._dataSize = 0

    def feed(self, data: bytes) -> list[bytes]:
        """
        Add bytes from the wire.

        @param data: the next piece of the stream, split anywhere.
        @return: the C{data} payloads of every event completed by C{data}, in
            order.  C{[DONE]} is returned like any other payload.
        @raise SSELineTooLong: if a line or event exceeds L{maxLineLength}.
        """
        buf = self._buffer + data if self._buffer else data
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                # A CR at the end may be the first half of a CRLF; keep it.
                held = b"\r"
                buf = buf[:-1]
            else:
                held = b""
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        else:
            held = b""
        lines = buf.split(b"\n")
        tail = lines.pop()
        if len(tail) > self.maxLineLength:
            self._buffer = b""
            raise SSELineTooLong(
                f"upstream SSE line longer than {self.maxLineLength} bytes"
            )
        self._buffer = tail + held
        events: list[bytes] = []
        # _line's work, inlined: a read of a stream is mostly "data:" lines
        # and the blank lines that end them, two per token.
        pending, size, limit = self._data, self._dataSize, self.maxLineLength
        for line in lines:
            if not line:
                if pending:
                    events.append(pending[0] if len(pending) == 1 else b"\n".join(pending))
                    pending = []
                    size = 0
            elif line[:5] == b"data:":
                value = line[6:] if line[5:6] == b" " else line[5:]
                size += len(value)
                if size > limit:
                    self._data = []
                    self._dataSize = 0
                    raise SSELineTooLong(f"upstream SSE event longer than {limit} bytes")
                pending.append(value)
            elif len(line) > limit:
                self._data, self._dataSize = pending, size
                raise SSELineTooLong(f"upstream SSE line longer than {limit} bytes")
        self._data, self._dataSize = pending, size
        return events

    def close(self) -> list[bytes]:
        """
        The stream has ended: return an event left without its final blank
        line (many servers close right after the last C{data:} line).

        @return: zero or one payloads.
        """
        events: list[bytes] = []
        tail = self._buffer.rstrip(b"\r")
        self._buffer = b""
        if tail:
            self._line(tail, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[bytes]) -> None:
        """
        Process one complete line.

        @param line: the line without its terminator.
        @param events: the list that completed payloads are appended to.
        """
        if not line:
            if self._data:
                events.append(
                    self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                )
                self._data = []
                self._dataSize = 0
            return
        if line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self._dataSize += len(value)
            if self._dataSize > self.maxLineLength:
                self._data = []
                self._dataSize = 0
                raise SSELineTooLong(
                    f"upstream SSE event longer than {self.maxLineLength} bytes"
                )
            self._data.append(value)
        elif len(line) > self.maxLineLength:
            raise SSELineTooLong(
                f"upstream SSE line longer than {self.maxLineLength} bytes"
            )
        # Comments (":..."), "event:", "id:", "retry:" and unknown fields are
        # ignored: OpenAI-style servers signal errors inside the data JSON.


class TranslatedStream:
    """
    One streamed reply, from the backend's SSE to the client's dialect.

    @ivar reader: reads the backend's events.
    @ivar encoder: writes the client's dialect.
    @ivar finished: the reply's L{Finish}, once the stream ended cleanly.
    @ivar redactor: takes the proxy's secrets out of the events before any
        dialect encodes them (a key spread over several deltas included), or
        C{None} when there is no secret to look for.
    @ivar redacted: whether the output of the last L{feed} is known to
        hold no secret in any spelling (plain text the redactor passed, in
        framing it certified: L{EventRedactor.certifies}), so that the
        outbound byte filter has nothing to do for it.
    """

    def __init__(
        self,
        reader: ChatStreamReader,
        encoder: Encoder,
        maxLineLength: int = DEFAULT_MAX_LINE_LENGTH,
        redactor: EventRedactor | None = None,
    ) -> None:
        self.reader = reader
        self.encoder = encoder
        self.redactor = redactor
        self.decoder = SSEDecoder(maxLineLength)
        self.finished: Finish | None = None
        self.redacted = False

    @property
    def usage(self) -> Usage:
        """
        The token counts the backend reported (for the request log).
        """
        return self.reader.usage

    @property
    def firstToken(self) -> int | None:
        """
        When the first token arrived (ns), if it did.
        """
        return self.reader.firstToken

    def feed(self, data: bytes) -> bytes:
        """
        @param data: one upstream read.
        @return: the encoded events of the complete SSE events in it.
        @raise StreamFailed: on upstream error events or garbage, carrying
            the encoded events of this read before the failure in C{output}.
        @raise SSELineTooLong: on an oversized line.
        """
        cut = data.rfind(b"\n") + 1
        if 0 < cut < len(data):
            # An unfinished line follows complete events (the relay joins the
            # reads of a turn): translate the events before the decoder can
            # refuse the tail as too long, so their output is not lost.
            head = self.feed(data[:cut])
            redacted = self.redacted
            try:
                tail = self.feed(data[cut:])
                self.redacted = redacted and (self.redacted or not tail)
                return head + tail
            except SSELineTooLong as e:
                raise StreamFailed(str(e), output=head) from None
            except StreamFailed as e:
                e.output = head + e.output
                raise
        self.redacted = False
        decoder = self.decoder
        if (
            data[:6] == b"data: " and data[-2:] == b"\n\n" and not decoder._buffer
            and not decoder._data and b"\r" not in data and len(data) <= decoder.maxLineLength
        ):
            # The common read: whole events of one "data: " line each,
            # nothing pending, no other line and no line end but each
            # event's "\n\n" (the newlines counted, and every separator
            # followed by "data: "), none over the cap (the read is not):
            # the decoder's own loop, in a few passes of C.
            newlines = data.count(b"\n")
            if newlines == 2:
                payloads = [data[6:-2]]
            else:
                pieces = data.split(b"\n\n")
                if newlines == 2 * len(pieces) - 2 and data.count(b"\n\ndata: ") == len(pieces) - 2:
                    pieces.pop()
                    payloads = [piece[6:] for piece in pieces]
                else:
                    payloads = decoder.feed(data)
        else:
            payloads = decoder.feed(data)
        if not payloads:
            self.redacted = True
            return b""
        redactor = self.redactor
        try:
            events = self.reader.feed(payloads)
        except StreamFailed as e:
            e.output = self._last(e.events)
            raise
        if redactor is None:
            return self.encoder.encode(events)
        out, framing = self.encoder.encodeRead(redactor.feed(events))
        # The skip's invariant: the output is certified only once the
        # framing it was written in passed the check, here, before the
        # caller writes it; no framing, or one that fails, sends the read
        # through the outbound byte filter.
        self.redacted = framing is not None and redactor.plain and redactor.certifies(framing)
        return out

    def _last(self, events: Sequence[Event]) -> bytes:
        """
        @return: the last events of the stream, redacted, with any text the
            redactor held back released, encoded.  (Asked of the encoder as
            every read is: the bytes alone without a redactor, with their
            framing, not needed at the end, with one.)
        """
        if self.redactor is None:
            return self.encoder.encode(events)
        return self.encoder.encodeRead([*self.redactor.feed(events), *self.redactor.end()])[0]

    def end(self) -> bytes:
        """
        The upstream body ended cleanly.

        @return: the remaining output, ending with the dialect's end of reply.
        @raise UpstreamError: if the stream was truncated.
        """
        self.redacted = False
        try:
            events = self.reader.feed(self.decoder.close())
        except StreamFailed as e:
            e.output = self._last(e.events)
            raise
        last = self.reader.finish()
        finish = last[-1]
        if isinstance(finish, Finish):
            self.finished = finish
        events.extend(last)
        return self._last(events)
