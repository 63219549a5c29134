# -*- test-case-name: tests.protocol.test_compression -*-
"""
Compressed request bodies (C{Content-Encoding: zstd}, which Codex sends,
and C{gzip}), decompressed with the body cap applied to the decompressed
size.

The site's cap (C{--max-body}) counts the bytes on the wire; a few
kilobytes of zstd can expand to gigabytes, so decompression is streamed
and stops one byte past the cap: a bomb costs at most the cap in memory and
is answered 413.
"""

from __future__ import annotations

import zlib

import zstandard

from ollama_proxy.protocol.errors import BadRequest, ProxyError


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


def _capped(limit: int) -> TooLarge:
    return TooLarge(f"request body is larger than the limit of {limit} bytes when decompressed")


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """
    @param body: the body as received.
    @param encoding: the C{Content-Encoding} header value, or C{None}.
    @param limit: the largest decompressed body accepted, in bytes.
    @return: the decoded body.
    @raise TooLarge: if it decompresses to more than C{limit} bytes.
    @raise UnsupportedEncoding: for an encoding other than identity, gzip,
        zstd (or a chain of them).
    @raise BadRequest: for a corrupt body.
    """
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    # Codings are listed in the order they were applied: undo from the end.
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _gunzip(body, limit)
        elif coding == "zstd":
            body = _unzstd(body, limit)
        else:
            raise UnsupportedEncoding(
                f"unsupported Content-Encoding {coding!r} (use gzip or zstd)"
            )
    return body


def _gunzip(body: bytes, limit: int) -> bytes:
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequest(f"failed to decompress gzip body: {e}") from None
    if len(out) > limit:
        raise _capped(limit)
    if not decoder.eof:
        raise BadRequest("failed to decompress gzip body: truncated")
    return out


def _unzstd(body: bytes, limit: int) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    try:
        out = reader.read(limit + 1)
    except zstandard.ZstdError as e:
        raise BadRequest(f"failed to decompress zstd body: {e}") from None
    if len(out) > limit:
        raise _capped(limit)
    return out
