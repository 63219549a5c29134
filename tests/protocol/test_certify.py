"""
The checks behind the outbound filter's one skip (issue 23); the skip
itself, end to end for every dialect: C{tests/protocol/test_stream.py}
C{CertifiedTests}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.certify import ESCAPED, checks, framable, suspect
from ollama_proxy.protocol.codec import dumps
from ollama_proxy.protocol.redact import PREFIX, _heldBack


class SuspectTests(SynchronousTestCase):
    """
    The event redactor's one-search check says what the loop per secret
    said: a backslash, a secret's first L{PREFIX} characters, or a tail
    that may begin a secret.
    """

    @settings(max_examples=500, deadline=None)
    @given(
        secrets=st.lists(st.text(alphabet="sk-ab\\c1é.*(", min_size=1, max_size=9),
                         min_size=1, max_size=3),
        text=st.text(alphabet="sk-ab\\c1é.*(%", min_size=1, max_size=14),
    )
    def test_sameAsTheLoop(self, secrets: list[str], text: str) -> None:
        loop = bool(
            any(secret[:PREFIX] in text for secret in secrets)
            or _heldBack(text, secrets) or "\\" in text or "%" in text
        )
        self.assertEqual(bool(suspect(secrets, PREFIX).search(text)), loop)

    def test_longSecret(self) -> None:
        """
        A secret of thousands of characters (a forwarded JWT) makes a
        pattern of bounded size.
        """
        secret = "eyJ" + "a" * 5000
        self.assertLess(len(suspect([secret], PREFIX).pattern), 100)
        self.assertTrue(suspect([secret], PREFIX).search("token eyJa"))
        self.assertFalse(suspect([secret], PREFIX).search("token ey J"))


class EscapedTests(SynchronousTestCase):
    """
    L{ESCAPED} finds exactly the characters the JSON encoder escapes.
    """

    def test_everyCharacter(self) -> None:
        for code in [*range(0x100), 0x2028, 0x2029, 0xFEFF, 0x1F600]:
            char = chr(code)
            self.assertEqual(bool(ESCAPED.search(char)), dumps(char) != b'"' + char.encode() + b'"',
                             hex(code))


class FramableTests(SynchronousTestCase):
    """
    L{framable}: secrets no dialect's framing can help spell.
    """

    def test_framable(self) -> None:
        self.assertTrue(framable(["sk-bench-secret-key", "client-key-999999", "AIzaSy"], PREFIX))

    def test_notFramable(self) -> None:
        for secret in ['sk-"x', "sk-\\x", "sk-\nx", "sk-\x7fx", "123456789", "2025-06-15T",
                       "0,:{}[]x", "12"]:
            self.assertFalse(framable(["sk-bench-secret-key", secret], PREFIX), secret)


class ChecksTests(SynchronousTestCase):
    """
    L{checks}: the three answers for a request's secrets in one.
    """

    def test_checks(self) -> None:
        """
        The checks are L{framable}'s and L{suspect}'s answers and each
        secret's first C{prefix} characters as bytes.
        """
        secrets = ["sk-live-abcdefgh", "tok\\x"]
        made = checks(secrets, PREFIX)
        self.assertEqual(made.framable, framable(secrets, PREFIX))
        self.assertFalse(made.framable)
        self.assertEqual(made.heads, tuple(s[:PREFIX].encode("utf-8") for s in secrets))
        self.assertEqual(made.suspect.pattern, suspect(secrets, PREFIX).pattern)
        self.assertTrue(checks(["sk-live-abcdefgh"], PREFIX).framable)
