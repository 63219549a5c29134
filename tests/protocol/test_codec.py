"""
L{ollama_proxy.protocol.codec}: the one JSON encoder and decoder, and the
nesting limit that keeps whatever parses re-encodable.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.errors import BadRequest


def nested(depth: int, inner: Any = 1) -> Any:
    """
    @return: C{inner} inside C{depth} alternating arrays and objects.
    """
    value = inner
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


class EncodeTests(SynchronousTestCase):
    """
    L{codec.dumps}, L{codec.dumpLine}, L{codec.canonical}.
    """

    def test_compactUTF8(self) -> None:
        """
        Compact separators and raw UTF-8 (no C{\\u} escapes), bytes out.
        """
        self.assertEqual(codec.dumps({"a": [1, "é"], "b": None}), '{"a":[1,"é"],"b":null}'.encode())

    def test_dumpLine(self) -> None:
        """
        One NDJSON line: the same bytes plus exactly one newline.
        """
        value = {"text": "two\nlines"}
        self.assertEqual(codec.dumpLine(value), codec.dumps(value) + b"\n")
        self.assertEqual(codec.dumpLine(value).count(b"\n"), 1)

    def test_canonical(self) -> None:
        """
        Equal values give equal bytes whatever their key order.
        """
        self.assertEqual(codec.canonical({"b": 1, "a": {"d": 2, "c": 3}}),
                         codec.canonical({"a": {"c": 3, "d": 2}, "b": 1}))
        self.assertEqual(codec.canonical({"b": 1, "a": 2}), b'{"a":2,"b":1}')


class BodiesTests(SynchronousTestCase):
    """
    L{codec.dumpsBodies}: a run of texts encoded in one call.
    """

    @settings(max_examples=500, deadline=None)
    @given(st.lists(st.lists(st.sampled_from(['"', ",", "\\", "a", "\n", "\x00", "é", "😀", '","', "]"]),
                             max_size=5).map("".join), max_size=8))
    @example(['x",', "y"])
    @example(["x\\", "y"])
    @example(['",', '","', ""])
    @example([])
    def test_eachAsAlone(self, texts: list[str]) -> None:
        """
        Any texts (quotes, commas, backslashes, the separator itself in
        them, at their ends) give what each one's own encoding gives
        inside its quotes.
        """
        self.assertEqual(codec.dumpsBodies(texts), [codec.dumps(text)[1:-1] for text in texts])

    def test_oneEncoding(self) -> None:
        """
        Texts with no quote or backslash at their end are cut from the
        list's one encoding (each a piece of it, no encoding of their own).
        """
        calls: list[object] = []
        real = codec.orjson.dumps

        def counting(value: object) -> bytes:
            calls.append(value)
            return real(value)

        self.patch(codec.orjson, "dumps", counting)
        self.assertEqual(codec.dumpsBodies(["a\nb", 'say "hi" now', "é"]),
                         [b"a\\nb", b'say \\"hi\\" now', "é".encode()])
        self.assertEqual(len(calls), 1)


class DecodeTests(SynchronousTestCase):
    """
    L{codec.loads}, L{codec.loadsBounded}, L{codec.loadsRequest},
    L{codec.checkDepth}.
    """

    def test_roundTrip(self) -> None:
        """
        Bytes or text decode to the value that was encoded.
        """
        value = {"n": 1.5, "s": "é", "l": [True, None]}
        self.assertEqual(codec.loads(codec.dumps(value)), value)
        self.assertEqual(codec.loads(codec.dumps(value).decode()), value)
        self.assertRaises(codec.JSONDecodeError, codec.loads, b"{")

    def test_depthLimit(self) -> None:
        """
        L{codec.MAX_DEPTH} levels are accepted (and re-encode); one more is
        L{codec.TooDeep}, as is anything past orjson's own limit.
        """
        deepest = codec.dumps(nested(codec.MAX_DEPTH))
        self.assertEqual(codec.dumps(codec.loadsBounded(deepest)), deepest)
        self.assertRaises(codec.TooDeep, codec.loadsBounded, codec.dumps(nested(codec.MAX_DEPTH + 1)))
        self.assertRaises(codec.TooDeep, codec.loadsBounded, b"[" * 5000 + b"]" * 5000)
        self.assertRaises(codec.JSONDecodeError, codec.loadsBounded, b"[1,")

    def test_checkDepth(self) -> None:
        """
        The walk counts containers only (scalars are not a level) and
        honours its limit.
        """
        codec.checkDepth(nested(3), limit=3)
        self.assertRaises(codec.TooDeep, codec.checkDepth, nested(4), 3)
        codec.checkDepth("scalar", limit=1)
        codec.checkDepth([[], {}, 1], limit=2)

    def test_loadsRequest(self) -> None:
        """
        A client body's problems are L{BadRequest}s with a message the
        route shapes in its dialect.
        """
        self.assertEqual(codec.loadsRequest(b'{"a":1}'), {"a": 1})
        with self.assertRaises(BadRequest) as e:
            codec.loadsRequest(b"{nope")
        self.assertTrue(e.exception.message.startswith("invalid JSON in request body: "))
        with self.assertRaises(BadRequest) as e:
            codec.loadsRequest(codec.dumps(nested(codec.MAX_DEPTH + 1)))
        self.assertEqual(e.exception.message,
                         f"request body is nested more than {codec.MAX_DEPTH} levels deep")
        self.assertEqual(e.exception.status, 400)
