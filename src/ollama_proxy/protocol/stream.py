# -*- test-case-name: tests.protocol.test_stream -*-
"""
The streaming pipeline as one pure object: SSE bytes from the backend in,
the client dialect's bytes out, one call per socket read.

    SSE bytes -> L{SSEDecoder} -> L{ChatStreamReader} -> events -> encoder -> bytes

The web layer calls L{TranslatedStream.feed} from each upstream read and
writes the result with a single C{request.write}, so a read that carried ten
tokens costs one write, while each token is still its own line or event.
"""

from __future__ import annotations

from typing import Sequence

from ollama_proxy.protocol.dialect import Encoder
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.events import Event, Finish, Usage
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.redact import EventRedactor
from ollama_proxy.protocol.sse import (
    DEFAULT_MAX_LINE_LENGTH,
    SSEDecoder,
    SSELineTooLong,
)


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
        @raise ollama_proxy.protocol.sse.SSELineTooLong: on an oversized line.
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
        payloads = self.decoder.feed(data)
        if not payloads:
            self.redacted = True
            return b""
        try:
            events = self.reader.feed(payloads)
        except StreamFailed as e:
            e.output = self.encoder.encode(self._redactLast(e.events))
            raise
        redactor = self.redactor
        if redactor is None:
            return self.encoder.encode(events)
        framing = self.encoder.framing()
        events = redactor.feed(events)
        out = self.encoder.encode(events)
        self.redacted = framing is not None and redactor.plain and redactor.certifies(framing)
        return out

    def _redactLast(self, events: Sequence[Event]) -> Sequence[Event]:
        """
        @return: the last events of the stream, redacted, with any text the
            redactor held back released.
        """
        if self.redactor is None:
            return events
        return [*self.redactor.feed(events), *self.redactor.end()]

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
            e.output = self.encoder.encode(self._redactLast(e.events))
            raise
        last = self.reader.finish()
        finish = last[-1]
        if isinstance(finish, Finish):
            self.finished = finish
        events.extend(last)
        return self.encoder.encode(self._redactLast(events))
