"""
Compressed request bodies: decoded, and capped after decompression.
"""

from __future__ import annotations

import gzip

import zstandard
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.compression import TooLarge, UnsupportedEncoding, decompress
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
