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

from typing import Callable

from twisted.web.server import Request

from ollama_proxy.web.fastchannel import FastChannel


class FastWriteRequest(Request):
    """
    A twisted.web C{Request} whose body writes on L{FastChannel} are one
    channel call each (see the module).
    """

    _chunkOut: Callable[[bytes], None] | None = None
    """The channel's way out, once the head of a chunked answer is sent."""

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
        channel.holdHead()
        try:
            super().write(data)
        finally:
            channel.releaseHead()
        if self.chunked:
            self._chunkOut = channel.writeBody
