# -*- test-case-name: tests.web.test_writes -*-
"""
How a response body leaves a twisted.web C{Request} on L{FastChannel}.

L{FastWriteRequest} is the site's request class's base
(L{ollama_proxy.web.site.LimitedRequest}): twisted.web's C{Request} with
its C{write} shortened at both ends of an answer.

- The first write of a body: its head and these bytes leave in one
  C{transport.write}, not a head of ~30 pieces and then the body
  (L{FastChannel.holdHead}).  A head no body follows (C{HEAD}, 204, 304)
  is sent before C{write} returns, so holding never delays a byte.
- Every later write of a chunked answer (a relayed stream's every read):
  framed in one C{bytes} and handed to the channel's way out
  (L{FastChannel.writeBody}).  twisted.web went through three C{write}
  methods, C{toChunk}'s tuple and the channel's C{writeSequence} join for
  the same bytes: a fifth of the calls of a relayed read (issue 23).  The
  same checks stay: a finished request raises (twisted.web's
  C{RuntimeError}), a disconnected one drops the bytes, C{sentLength}
  counts them (the access line's size); back-pressure is the channel's
  and the transport's, as before.

On twisted.web's own channel (C{--http-parser twisted}) C{write} is
twisted.web's.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from twisted.web.http import NO_BODY_CODES
from twisted.web.server import Request

from ollama_proxy.web.fastchannel import COALESCE, FastChannel


class FastWriteRequest(Request):
    """
    A twisted.web C{Request} whose body writes on L{FastChannel} are one
    channel call each (see the module).
    """

    _chunkOut: Callable[[bytes], None] | None = None
    """The channel's way out, once the head of a chunked answer is sent."""

    _prepared: tuple[int, bytes, list[tuple[bytes, tuple[bytes, ...]]], bytes] | None = None
    """L{prepareHead}'s head: the status, reason and headers it was made
    from, and its bytes."""

    def prepareHead(self) -> None:
        """
        Render now the head the first L{write} of a chunked answer would
        send, without sending it or committing to it: a stream calls this
        when the backend's head arrives, while the backend is silent until
        its first token, so the first line does not wait for the head's
        ~40 calls of rendering.  Nothing is committed: C{startedWriting}
        stays false, the headers unchanged, and the first write uses these
        bytes only if the status, reason and every header are still the
        ones they were made from (an error before the first byte, with
        its own status and headers, is rendered by twisted.web as before).
        Only the common case is prepared (HTTP/1.1 on L{FastChannel}, a
        body that will be chunked, none of twisted.web's C{lastModified},
        C{etag} or cookies); any other answer is written as it was.
        """
        channel = getattr(self, "channel", None)
        headers = self.responseHeaders
        if (self.startedWriting or not isinstance(channel, FastChannel)
                or self.clientproto != b"HTTP/1.1" or self.method == b"HEAD"
                or self.code in NO_BODY_CODES or self.lastModified is not None
                or self.etag is not None or self.cookies or self._inFakeHead
                or not headers.hasHeader(b"Content-Type")
                or headers.hasHeader(b"Content-Length")
                or headers.hasHeader(b"Transfer-Encoding")):
            self._prepared = None
            return
        snapshot = _snapshot(headers.getAllRawHeaders())
        # twisted.web's Request.write and HTTPChannel.writeHeaders, for
        # this case: the headers in order, then the chunked framing's.
        head = b"HTTP/1.1 %d %s\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (
            self.code, self.code_message,
            b"".join([b"%s: %s\r\n" % (name, value) for name, values in snapshot for value in values]),
        )
        self._prepared = (self.code, self.code_message, snapshot, head)

    def writeWhole(self, contentType: bytes, body: bytes) -> None:
        """
        The whole answer in one call: its C{Content-Type} and
        C{Content-Length} set, its head rendered with the body in one
        C{bytes} and written (a non-streamed reply, a JSON error).
        twisted.web's first C{write} looks the framing headers up three
        times, renders the head through the channel and then writes the
        body: for an answer whose length is known the bytes are those
        computed here (the status line, every header in order, the body;
        no chunked framing).  Any other case (not L{FastChannel}, not
        HTTP/1.1, C{HEAD}, a status without a body, C{lastModified},
        C{etag}, cookies, an encoder, writing started, finished or the
        client gone) takes twisted.web's C{write} as before, with the same
        two headers set.

        @param contentType: the C{Content-Type} value.
        @param body: the whole body.
        """
        headers = self.responseHeaders
        headers.setRawHeaders(b"Content-Type", [contentType])
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        channel = getattr(self, "channel", None)
        if (self.startedWriting or not body or not isinstance(channel, FastChannel)
                or self.finished or self._disconnected or self.clientproto != b"HTTP/1.1"
                or self.method == b"HEAD" or self.code in NO_BODY_CODES or self._inFakeHead
                or self._encoder is not None or self.lastModified is not None
                or self.etag is not None or self.cookies):
            self.write(body)
            return
        self.startedWriting = 1
        self.sentLength += len(body)
        head = b"HTTP/1.1 %d %s\r\n%s\r\n" % (
            self.code, self.code_message,
            b"".join([b"%s: %s\r\n" % (name, value)
                      for name, values in headers.getAllRawHeaders() for value in values]),
        )
        if len(body) <= COALESCE:
            channel.write(head + body)
        else:
            channel.write(head)
            channel.write(body)

    def write(self, data: bytes) -> None:
        """
        Write some of the body (see the module).

        @param data: the bytes.
        @raise RuntimeError: after C{finish}, as twisted.web's.
        """
        out = self._chunkOut
        if out is not None and data and not self.finished and not self._disconnected:
            self.sentLength += len(data)
            out(b"%x\r\n%b\r\n" % (len(data), data))
            return
        channel = getattr(self, "channel", None)
        if self.startedWriting or not data or not isinstance(channel, FastChannel):
            super().write(data)
            return
        prepared = self._prepared
        if prepared is not None:
            self._prepared = None
            if (not self.finished and not self._disconnected and prepared[0] == self.code
                    and prepared[1] == self.code_message and self.lastModified is None
                    and self.etag is None and not self.cookies
                    and prepared[2] == _snapshot(self.responseHeaders.getAllRawHeaders())):
                # What twisted.web's first write does for this answer,
                # with the head rendered already (see prepareHead).
                self.startedWriting = 1
                self.responseHeaders.setRawHeaders(b"Transfer-Encoding", [b"chunked"])
                self.chunked = 1
                self.sentLength += len(data)
                out = self._chunkOut = channel.writeBody
                out(b"%s%x\r\n%b\r\n" % (prepared[3], len(data), data))
                return
        channel.holdHead()
        try:
            super().write(data)
        finally:
            channel.releaseHead()
        if self.chunked:
            self._chunkOut = channel.writeBody


def _snapshot(
    headers: Iterable[tuple[bytes, Sequence[bytes]]],
) -> list[tuple[bytes, tuple[bytes, ...]]]:
    """
    @return: C{headers} as they are now (a header's list of values may
        change in place: each is copied).
    """
    return [(name, tuple(values)) for name, values in headers]
