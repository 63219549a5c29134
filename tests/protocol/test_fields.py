"""
The field validators the dialects' parsers share.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import Base64Wording, base64Data, numberField, requireObject


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
