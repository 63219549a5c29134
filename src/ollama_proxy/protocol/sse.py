# -*- test-case-name: tests.protocol.test_sse -*-
"""
A sans-IO decoder for Server-Sent Events.

OpenAI-compatible servers stream C{text/event-stream}: events separated by a
blank line, each with one or more C{data:} lines.  TCP delivers the bytes in
arbitrary pieces, so the decoder keeps the unfinished tail between calls and
returns only complete events.  It knows nothing about Twisted: one
L{SSEDecoder.feed} per socket read, a list of event payloads out.

The line-length cap is explicit and large (a single event can carry a whole
tool call's JSON); exceeding it raises L{SSELineTooLong} rather than hanging
or growing without bound.
"""

from __future__ import annotations

DEFAULT_MAX_LINE_LENGTH = 4 * 1024 * 1024


def sseEvent(name: bytes, data: bytes) -> bytes:
    """
    Frame one named event, as Anthropic and the Responses API write them
    (their SDKs dispatch on the C{event:} line).

    @param name: the event type.
    @param data: the JSON payload (one line).
    @return: C{event: <name>}, C{data: <data>}, a blank line.
    """
    return b"event: " + name + b"\ndata: " + data + b"\n\n"


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
