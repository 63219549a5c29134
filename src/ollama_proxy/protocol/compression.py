# -*- test-case-name: tests.protocol.test_compression -*-
"""
Compressed request bodies (C{Content-Encoding: zstd}, which Codex sends,
and C{gzip}), decoded in bounded steps with the body cap applied to the
decompressed size as it grows.

The site's cap (C{--max-body}) counts the bytes on the wire; a few
kilobytes of zstd can expand to gigabytes, so a L{Decoder} hands out at most
about C{step} bytes per call: the caller (L{ollama_proxy.web.budget}) yields
to the reactor between steps and charges each step to the memory budget, and
a bomb stops one step past the cap, never after inflating.

Both codecs follow the same rules:
  - a frame (zstd) or member (gzip) cut short, its checksum included, is a
    400: the client sent less than it meant to;
  - frames or members that follow one another are decoded whole and
    concatenated, as RFC 1952 (gzip members) and RFC 8878 (zstd frames) both
    allow, so C{cat a.gz b.gz} means what it says; anything after a
    complete frame that is not another frame is corrupt (400).
"""

from __future__ import annotations

import zlib
from typing import Iterator

import zstandard

from ollama_proxy.protocol.errors import BadRequest, ProxyError

STEP = 1 << 20
"""Decompressed bytes handed out per step: about a millisecond of work."""

_SLICE = 64
"""zstd input fed per call: zstd's decompressor cannot bound its output, but
64 input bytes expand to at most about 2 MB (16 RLE blocks of 128 KB), so a step stays
bounded even for a bomb."""


MAX_WINDOW = 1 << 23
"""The largest zstd window accepted (8 MiB, what C{zstd -19} uses and the
size RFC 8878 asks every decoder to support).  A decoder allocates its
frame's window up front, and a frame may declare up to 128 MiB (the
library's default limit): a hundred such 2 KB requests would take 12 GB
before a byte was decoded."""


class TooLarge(ProxyError):
    """
    The decompressed body is over the cap (413).
    """

    status = 413


class UnsupportedEncoding(ProxyError):
    """
    A C{Content-Encoding} the proxy cannot decode (415).
    """

    status = 415


def capped(limit: int) -> TooLarge:
    """
    @return: the 413 for a body that decompresses past C{limit} bytes.
    """
    return TooLarge(f"request body is larger than the limit of {limit} bytes when decompressed")


def codings(encoding: str | None) -> list[str]:
    """
    @param encoding: the C{Content-Encoding} header value, or C{None}.
    @return: the codings to undo, in the order to undo them (identity
        dropped).
    @raise UnsupportedEncoding: for a coding other than identity, gzip,
        x-gzip or zstd.
    """
    listed = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    out = []
    # Codings are listed in the order they were applied: undo from the end.
    for coding in reversed(listed):
        if coding == "identity":
            continue
        if coding not in ("gzip", "x-gzip", "zstd"):
            raise UnsupportedEncoding(
                f"unsupported Content-Encoding {coding!r} (use gzip or zstd)"
            )
        out.append("gzip" if coding == "x-gzip" else coding)
    return out


class Decoder:
    """
    One coding undone in steps over a complete compressed body.

    @ivar done: set once every frame or member has been decoded.
    """

    def __init__(self, coding: str, body: bytes) -> None:
        """
        @param coding: C{"gzip"} or C{"zstd"} (see L{codings}).
        @param body: the compressed bytes.
        """
        self.coding = coding
        self._body = body[:32]
        self.done = not body
        self._pieces: Iterator[bytes] = (
            self._gunzip(body) if coding == "gzip" else self._unzstd(body)
        )

    @property
    def workspace(self) -> int:
        """
        @return: the memory the codec itself holds while decoding (the
            zstd window, at most L{MAX_WINDOW}; gzip's 32 KiB), to charge
            to the body budget with the output.
        """
        if self.coding != "zstd":
            return 1 << 15
        try:
            frame = zstandard.get_frame_parameters(self._body)
        except zstandard.ZstdError:
            return MAX_WINDOW
        window = min(frame.window_size, MAX_WINDOW)
        # A frame that says its size gets a buffer of that size at most.
        if frame.content_size:
            window = min(window, frame.content_size)
        return max(window, 1 << 15)

    def step(self, size: int = STEP) -> bytes:
        """
        Decode about C{size} more bytes (a zstd step may exceed it by the
        expansion of 64 input bytes).

        @return: the next decoded bytes (possibly empty).
        @raise BadRequest: for a corrupt or truncated body.
        """
        out: list[bytes] = []
        held = 0
        while not self.done and held < size:
            try:
                piece = next(self._pieces)
            except StopIteration:
                self.done = True
                break
            out.append(piece)
            held += len(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        """
        Drop the codec's state (its window) at once; no more steps.
        """
        self.done = True
        self._pieces = iter(())

    def _fail(self, why: str) -> BadRequest:
        return BadRequest(f"failed to decompress {self.coding} body: {why}")

    def _gunzip(self, data: bytes) -> Iterator[bytes]:
        while data:
            decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pending = data
            while not decoder.eof:
                try:
                    yield decoder.decompress(pending, STEP)
                except zlib.error as e:
                    raise self._fail(str(e)) from None
                pending = decoder.unconsumed_tail
                if not pending and not decoder.eof:
                    raise self._fail("truncated")
            data = decoder.unused_data

    def _unzstd(self, data: bytes) -> Iterator[bytes]:
        view = memoryview(data)
        while view:
            decoder = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).decompressobj()
            offset = 0
            try:
                while not decoder.eof and offset < len(view):
                    yield decoder.decompress(view[offset:offset + _SLICE].tobytes())
                    offset += _SLICE
            except zstandard.ZstdError as e:
                raise self._fail(str(e)) from None
            if not decoder.eof:
                raise self._fail("truncated (incomplete frame)")
            # The frame ended inside the last slice: what followed it.
            rest = decoder.unused_data
            view = memoryview(rest + view[offset:].tobytes()) if rest or offset < len(view) \
                else memoryview(b"")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """
    Decode a whole body at once (no reactor to yield to: tools and tests);
    the proxy's routes use L{ollama_proxy.web.budget.inflate}.

    @param body: the body as received.
    @param encoding: the C{Content-Encoding} header value, or C{None}.
    @param limit: the largest decompressed body accepted, in bytes.
    @return: the decoded body.
    @raise TooLarge: if it decompresses to more than C{limit} bytes.
    @raise UnsupportedEncoding: for an encoding other than identity, gzip,
        zstd (or a chain of them).
    @raise BadRequest: for a corrupt or truncated body.
    """
    for coding in codings(encoding):
        decoder = Decoder(coding, body)
        out = bytearray()
        while not decoder.done:
            out += decoder.step()
            if len(out) > limit:
                raise capped(limit)
        body = bytes(out)
    return body
