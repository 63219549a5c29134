"""
Compressed request bodies: decoded, and capped after decompression.
"""

from __future__ import annotations

import gzip

import zstandard
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.compression import (
    MAX_WINDOW,
    STEP,
    Decoder,
    TooLarge,
    UnsupportedEncoding,
    decompress,
)
from ollama_proxy.protocol.errors import BadRequest

BODY = b'{"model": "m", "input": "hi"}'


class DecompressTests(SynchronousTestCase):
    """
    L{decompress}.
    """

    def test_encodings(self) -> None:
        """
        zstd (one-shot or streamed frames), gzip, identity, none, and a
        chain in the order applied all give the body back.
        """
        streamed = zstandard.ZstdCompressor().compressobj()
        for data, encoding in [
            (zstandard.ZstdCompressor().compress(BODY), "zstd"),
            (streamed.compress(BODY) + streamed.flush(), "ZSTD"),
            (gzip.compress(BODY), "gzip"),
            (BODY, "identity"),
            (BODY, None),
            (zstandard.ZstdCompressor().compress(gzip.compress(BODY)), "gzip, zstd"),
        ]:
            self.assertEqual(decompress(data, encoding, 100), BODY, encoding)

    def test_bomb(self) -> None:
        """
        A small body that expands past the cap is a 413, whatever the
        codec; exactly the cap is fine.
        """
        huge = b"a" * 10_000_000
        for data, encoding in ((zstandard.ZstdCompressor().compress(huge), "zstd"),
                               (gzip.compress(huge), "gzip")):
            self.assertLess(len(data), 20_000)
            with self.assertRaises(TooLarge) as e:
                decompress(data, encoding, 1000)
            self.assertEqual(e.exception.status, 413)
        self.assertEqual(len(decompress(gzip.compress(b"a" * 1000), "gzip", 1000)), 1000)

    def test_bad(self) -> None:
        """
        Corrupt or truncated data is a 400, an unknown coding a 415.
        """
        for data, encoding, message in [
            (b"nonsense", "zstd", "failed to decompress zstd body"),
            (b"nonsense", "gzip", "failed to decompress gzip body"),
            (gzip.compress(BODY)[:-12], "gzip", "failed to decompress gzip body: truncated"),
        ]:
            with self.assertRaises(BadRequest) as e:
                decompress(data, encoding, 100)
            self.assertTrue(e.exception.message.startswith(message), e.exception.message)
        with self.assertRaises(UnsupportedEncoding) as e2:
            decompress(BODY, "br", 100)
        self.assertEqual(e2.exception.status, 415)


def _zstdFrame(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)


class ConsistencyTests(SynchronousTestCase):
    """
    Issue 19: both codecs follow the same rules for cut frames, several
    frames, and bytes after the last frame.
    """

    def assertBad(self, data: bytes, encoding: str) -> str:
        with self.assertRaises(BadRequest) as e:
            decompress(data, encoding, 1 << 20)
        self.assertEqual(e.exception.status, 400)
        message: str = e.exception.message
        return message

    def test_zstdTruncated(self) -> None:
        """
        A zstd frame with its checksum cut, or its last block missing, is a
        400 (it was accepted whole before).
        """
        frame = _zstdFrame(BODY * 50)
        self.assertEqual(decompress(frame, "zstd", 1 << 20), BODY * 50)
        for cut in (frame[:-4], frame[:-1], frame[:-9], frame[:len(frame) // 2], frame[:6]):
            self.assertIn("truncated", self.assertBad(cut, "zstd"))

    def test_gzipTruncated(self) -> None:
        """
        A gzip member cut anywhere is a 400.
        """
        member = gzip.compress(BODY * 50)
        for cut in (member[:-1], member[:-8], member[:len(member) // 2], member[:10]):
            self.assertBad(cut, "gzip")

    def test_multipleMembers(self) -> None:
        """
        Two gzip members (RFC 1952) and two zstd frames (RFC 8878) are
        decoded whole, one after the other; a zero-length member or frame
        adds nothing.
        """
        self.assertEqual(
            decompress(gzip.compress(b'{"a": ') + gzip.compress(b"1}"), "gzip", 100), b'{"a": 1}')
        self.assertEqual(
            decompress(_zstdFrame(b'{"a": ') + _zstdFrame(b"1}"), "zstd", 100), b'{"a": 1}')
        self.assertEqual(
            decompress(gzip.compress(b"") + gzip.compress(BODY), "gzip", 100), BODY)
        self.assertEqual(
            decompress(_zstdFrame(b"") + _zstdFrame(BODY) + _zstdFrame(b""), "zstd", 100), BODY)

    def test_trailingGarbage(self) -> None:
        """
        Bytes after a complete frame or member that do not start another
        are a 400 for both codecs (gzip ignored them, zstd refused them).
        """
        self.assertBad(gzip.compress(BODY) + b"junk", "gzip")
        self.assertBad(_zstdFrame(BODY) + b"junk", "zstd")
        self.assertBad(gzip.compress(BODY) + b"\0" * 8, "gzip")

    def test_stepsBounded(self) -> None:
        """
        A bomb of either codec comes out in bounded steps: no single step
        inflates more than a few megabytes, so the cap stops it early.
        """
        huge = b"a" * 50_000_000
        for coding, data in (("zstd", zstandard.ZstdCompressor(level=19).compress(huge)),
                             ("gzip", gzip.compress(huge, 9))):
            decoder = Decoder(coding, data)
            first = decoder.step(STEP)
            self.assertFalse(decoder.done)
            self.assertGreaterEqual(len(first), STEP)
            self.assertLess(len(first), 10 * STEP)

    def test_declaredSizeIgnored(self) -> None:
        """
        A zstd frame header declaring a huge content size allocates nothing
        up front: the frame is refused as corrupt or truncated.
        """
        header = zstandard.ZstdCompressor(write_content_size=True).compress(b"x" * 100_000)[:6]
        # Frame header: magic, descriptor, then a declared size of 2**64-1.
        lying = header[:4] + bytes([0xE0]) + b"\xff" * 8 + header[6:]
        self.assertBad(lying, "zstd")
        self.assertBad(header[:4] + bytes([0xE0]) + b"\xff" * 8 + _zstdFrame(BODY)[6:], "zstd")

    def test_chain(self) -> None:
        """
        A chain's inner coding is capped too.
        """
        bomb = zstandard.ZstdCompressor().compress(gzip.compress(b"a" * 5_000_000))
        with self.assertRaises(TooLarge):
            decompress(bomb, "gzip, zstd", 1000)

    def test_workspace(self) -> None:
        """
        The memory charged for a zstd decoder: its frame's window, at most
        8 MiB, at most the declared content size; gzip's 32 KiB window.
        """
        self.assertEqual(Decoder("gzip", gzip.compress(BODY)).workspace, 1 << 15)
        self.assertEqual(Decoder("zstd", _zstdFrame(BODY)).workspace, 1 << 15)
        big = zstandard.ZstdCompressor(level=19).compress(b"a" * 60_000_000)
        self.assertEqual(Decoder("zstd", big).workspace, MAX_WINDOW)
        self.assertEqual(Decoder("zstd", b"nonsense").workspace, MAX_WINDOW)
