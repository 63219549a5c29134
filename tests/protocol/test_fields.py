"""
The field validators the dialects' parsers share.
"""

from __future__ import annotations

from typing import Callable

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import (
    Base64Wording,
    base64Data,
    booleanAt,
    inlineImage,
    listAt,
    numberField,
    objectAt,
    requireObject,
    stringAt,
    stringList,
)


class FieldTests(SynchronousTestCase):
    """
    L{requireObject}, L{numberField}, L{base64Data}.
    """

    def test_requireObject(self) -> None:
        """
        Only an object is a request body.
        """
        self.assertEqual(requireObject({"a": 1}), {"a": 1})
        values: list[object] = [[], "x", None, 1]
        for value in values:
            with self.assertRaises(BadRequest) as e:
                requireObject(value)
            self.assertEqual(e.exception.message, "request body must be a JSON object")

    def test_numberField(self) -> None:
        """
        A number of the asked kind, C{None} when absent or null; a bool or
        another type is a 400 naming the field with its path.
        """
        body = {"t": 0.5, "n": 3, "b": True, "s": "1", "z": None}
        self.assertEqual(numberField(body, "t", (int, float)), 0.5)
        self.assertEqual(numberField(body, "n", int), 3)
        self.assertIsNone(numberField(body, "z", int))
        self.assertIsNone(numberField(body, "missing", int))
        for key, kind, message in (("b", int, "x.b: expected an integer"),
                                   ("t", int, "x.t: expected an integer"),
                                   ("s", (int, float), "x.s: expected a number")):
            with self.assertRaises(BadRequest) as e:
                numberField(body, key, kind, "x.")
            self.assertEqual(e.exception.message, message)

    def test_base64Data(self) -> None:
        """
        Strict base64 of something; anything else is a 400.
        """
        self.assertEqual(base64Data("aGk=", "img"), b"hi")
        for value in ("", "a b!", 3, "aGk"):
            with self.assertRaises(BadRequest) as e:
                base64Data(value, "img")
            self.assertTrue(e.exception.message.startswith("img: "), e.exception.message)

    def test_numberWording(self) -> None:
        """
        The dialect words the message: its template gets the field's path,
        key, kind and article.
        """
        with self.assertRaises(BadRequest) as e:
            numberField({"k": "1"}, "k", int, "p.", wording="{where}{key} {article} {kind}")
        self.assertEqual(e.exception.message, "p.k an integer")
        with self.assertRaises(BadRequest) as e:
            numberField({"k": False}, "k", (int, float), wording='"{key}": {kind}')
        self.assertEqual(e.exception.message, '"k": number')

    def test_base64Wording(self) -> None:
        """
        Each failure takes its own message from the dialect's wording; the
        check itself does not change.
        """
        wording = Base64Wording(notString="ns {where}", invalid="bad {where} {error}",
                                empty="empty {where}")
        self.assertEqual(base64Data("aGk=", "f", wording), b"hi")
        cases: list[tuple[object, str]] = [(3, "ns f"), ("", "empty f")]
        for value, message in cases:
            with self.assertRaises(BadRequest) as e:
                base64Data(value, "f", wording)
            self.assertEqual(e.exception.message, message)
        with self.assertRaises(BadRequest) as e:
            base64Data("aGk", "f", wording)
        self.assertTrue(e.exception.message.startswith("bad f "), e.exception.message)


class PathWordingTests(SynchronousTestCase):
    """
    The validators that name the field's path, in the agents' dialects'
    words: C{<where>: expected ...}.
    """

    def assertRefused(self, message: str, check: Callable[..., object], *args: object) -> None:
        """
        C{check(*args)} raises a L{BadRequest} with exactly C{message}.
        """
        with self.assertRaises(BadRequest) as e:
            check(*args)
        self.assertEqual(e.exception.message, message)

    def test_objectAt(self) -> None:
        """
        An object, as it is.
        """
        value = {"a": 1}
        self.assertIs(objectAt(value, "x"), value)
        self.assertRefused("tools[0]: expected an object", objectAt, ["a"], "tools[0]")

    def test_stringAt(self) -> None:
        """
        A string, the empty one included.
        """
        self.assertEqual(stringAt("", "x"), "")
        self.assertRefused("input[2].call_id: expected a string", stringAt, 3, "input[2].call_id")

    def test_stringList(self) -> None:
        """
        Stop sequences: a list of strings; nothing for any empty value.
        """
        self.assertEqual(stringList(["a", "b"], "stop"), ("a", "b"))
        empties: list[object] = [None, [], "", 0, False]
        for empty in empties:
            self.assertEqual(stringList(empty, "stop"), ())
        for bad in ("a", ["a", 1], {"a": 1}):
            self.assertRefused("stop: expected a list of strings", stringList, bad, "stop")

    def test_booleanAt(self) -> None:
        """
        A boolean, or nothing.
        """
        self.assertIs(booleanAt(True, "stream"), True)
        self.assertIsNone(booleanAt(None, "stream"))
        self.assertRefused("stream: expected a boolean", booleanAt, "true", "stream")

    def test_listAt(self) -> None:
        """
        A list, or an empty one for nothing.
        """
        self.assertEqual(listAt(None, "tools"), [])
        self.assertEqual(listAt([1], "tools"), [1])
        self.assertRefused("tools: expected a list", listAt, {}, "tools")

    def test_inlineImage(self) -> None:
        """
        Strict base64 as a C{data:} URL of the named type.
        """
        self.assertEqual(inlineImage("image/png", "iVBO", "x"), "data:image/png;base64,iVBO")
        self.assertRefused("m[0].source: invalid base64 image data: image is empty",
                           inlineImage, "image/png", "", "m[0].source")
        self.assertRefused("d: expected a base64 string", inlineImage, "image/png", None, "d")
