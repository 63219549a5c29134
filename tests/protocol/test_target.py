"""
The request grammar checked before any resource runs: request-targets
(every spelling of a dot segment or an encoded slash), C{Host} authorities
(RFC 3986), and which dialect's error shape a path takes.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.target import (
    checkPath,
    checkTarget,
    dialectOf,
    errorObject,
    parseAuthority,
    reencode,
)

DOT_SEGMENT_TARGETS = [
    b"/v1/models/../../admin/keys",
    b"/v1/models/%2e%2e/%2e%2e/admin/keys",
    b"/v1/models/%2E%2E/admin",
    b"/v1/models/%2e%2E/admin",
    b"/v1/models/.%2e/admin",
    b"/v1/models/%2e./admin",
    b"/v1/chat/completions/../../key/generate",
    b"/v1/models/%252e%252e/admin",
    b"/v1/models/%25252e%25252e/admin",
    b"/v1/models/..;/admin",
    b"/v1/models/%2e%2e;x=1/admin",
    b"/v1/./models",
    b"/v1/models/.",
    b"/v1/models/..",
    b"/api/../v1/models",
    b"/..",
]

SLASH_TARGETS = [
    b"/v1/models/..%2f..%2fadmin%2fkeys",
    b"/v1/models/a%2Fb/c",
    b"/v1/chat%2fcompletions",
    b"/api/a%2fb",
    b"/v1/models/a%5cb",
    b"/v1/models/a%5Cb",
    b"/v1/models/a%252fb",
    b"/v1/models/..\\admin",
    b"/v1/models\\..\\admin",
]


class TargetTests(SynchronousTestCase):
    """
    L{checkTarget} refuses what could reach another route than the named
    one, and passes ordinary paths.
    """

    def test_dotSegments(self) -> None:
        """
        Raw, percent-encoded in any case, mixed, encoded twice or three
        times, and with C{;} parameters: all refused as dot segments.
        """
        for target in DOT_SEGMENT_TARGETS:
            self.assertEqual(
                checkTarget(target), "dot segments (. and ..) are not allowed in the path", target
            )

    def test_encodedSlashes(self) -> None:
        """
        C{%2f}, C{%5c} (any case, encoded twice) and raw backslashes.
        """
        for target in SLASH_TARGETS:
            self.assertIn(checkTarget(target), (
                "encoded slashes are not allowed in the path",
                "backslashes are not allowed in the path",
                # In a model id the pieces are segments: the dots show.
                "dot segments (. and ..) are not allowed in the path",
            ), target)

    def test_otherForms(self) -> None:
        """
        absolute-form, authority-form (CONNECT), asterisk-form and a target
        that starts with C{@} (an authority in disguise) are refused.
        """
        for target in (b"http://evil/", b"evil:443", b"*", b"@127.0.0.1:18001/x", b""):
            self.assertEqual(
                checkTarget(target), "the request target must be a path starting with /"
            )

    def test_malformed(self) -> None:
        """
        Broken escapes (IIS's C{%u002e}), overlong UTF-8 dots, control
        characters and fragments.
        """
        self.assertEqual(checkTarget(b"/v1/models/%u002e%u002e"),
                         "malformed percent-encoding in the path")
        self.assertEqual(checkTarget(b"/v1/models/%zz"), "malformed percent-encoding in the path")
        self.assertEqual(checkTarget(b"/v1/models/%c0%ae%c0%ae/x"), "the path is not valid UTF-8")
        self.assertEqual(checkTarget(b"/v1/models/\xc0\xae\xc0\xae/x"), "the path is not valid UTF-8")
        self.assertEqual(checkTarget(b"/api/tags%0d%0aX: y"),
                         "control characters are not allowed in the path")
        self.assertEqual(checkTarget(b"/api/tags#x"),
                         "the request target must not contain a fragment (#)")

    def test_ordinary(self) -> None:
        """
        Paths clients really send pass, queries are not paths, and names
        that merely contain dots are not dot segments.
        """
        for target in (
            b"/", b"//", b"/api/tags", b"/v1/models/qwen/qwen3-coder", b"/v1/models/gpt-4o?x=../..",
            b"/v1/models/llama3.1:8b", b"/v1/models/...", b"/v1/models/.hidden",
            b"/v1/models/caf%C3%A9", b"/api/blobs/sha256:abc", b"/v1/models/a%20b",
        ):
            self.assertIsNone(checkTarget(target), target)

    def test_modelIdSlash(self) -> None:
        """
        The C{openai} SDK sends C{models.retrieve("qwen/qwen3")} as
        C{/v1/models/qwen%2Fqwen3}: one encoded slash in the id of
        C{/models/{id}} passes, but its pieces are segments, so C{..}
        hides there no better than elsewhere.
        """
        for target in (b"/v1/models/qwen%2Fqwen3-coder", b"/models/a%2fb%2fc",
                       b"/api/v1/models/openai%2Fgpt-4o"):
            self.assertIsNone(checkTarget(target), target)
        for target, reason in [
            (b"/v1/models/..%2f..%2fadmin%2fkeys", "dot segments (. and ..) are not allowed in the path"),
            (b"/v1/models/a%2f%2e%2e", "dot segments (. and ..) are not allowed in the path"),
            (b"/v1/models/a%2f.", "dot segments (. and ..) are not allowed in the path"),
            (b"/v1/models/a%252fb", "encoded slashes are not allowed in the path"),
            (b"/v1/models/a%2f%252e%252e", "dot segments (. and ..) are not allowed in the path"),
            (b"/v1/models/a%2f%252fb", "encoded slashes are not allowed in the path"),
            (b"/v1/models/%2fa", "empty segment in the model id"),
            (b"/v1/models/a%2f%2fb", "empty segment in the model id"),
            (b"/v1/models/a%5cb", "encoded slashes are not allowed in the path"),
        ]:
            self.assertEqual(checkTarget(target), reason, target)

    def test_decodingBounded(self) -> None:
        """
        Escapes nested deeper than any server decodes are refused rather
        than decoded forever.
        """
        deep = b"%" + b"25" * 10 + b"41"
        self.assertEqual(checkPath(b"/x/" + deep), "the path is percent-encoded too many times")

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(
        ["", ".", "..", "%2e", "%2E", "%252e", ".%2e", "%2f", "%2F", "%5c", "%25", ";", "..;",
         "a", "v1", "models", "chat", "completions", "%41", "x.y"]), max_size=6).map(
        lambda parts: "/" + "".join(parts)))
    def test_noDotSegmentPasses(self, segment: str) -> None:
        """
        Whatever is glued together from dots, escapes and separators: once
        it passes, no round of percent-decoding of any segment (nor the
        path decoded once, as a backend sees it) holds a dot segment or a
        backslash.
        """
        target = ("/v1/models" + segment).encode()
        if checkTarget(target) is not None:
            return
        from urllib.parse import unquote
        path = target
        for _ in range(5):
            text = unquote(path.decode("latin-1"), encoding="latin-1")
            self.assertNotIn("\\", text)
            for part in text.split("/"):
                self.assertNotIn(part.partition(";")[0], (".", ".."), target)
            path = text.encode("latin-1")


class ReencodeTests(SynchronousTestCase):
    """
    L{reencode} keeps a checked path's escapes and encodes bytes that do not
    belong in a URL.
    """

    def test_reencode(self) -> None:
        self.assertEqual(reencode("/api/caf\xc3\xa9 x"), "/api/caf%C3%A9%20x")
        self.assertEqual(reencode("/v1/models/a%20b:c@d"), "/v1/models/a%20b:c@d")
        self.assertEqual(reencode("/a?b#c"), "/a%3Fb%23c")


class AuthorityTests(SynchronousTestCase):
    """
    L{parseAuthority} is RFC 3986's C{host [":" port]}, nothing looser.
    """

    def test_valid(self) -> None:
        for value, expected in [
            (b"localhost", ("localhost", None)),
            (b"LocalHost:11434", ("localhost", "11434")),
            (b"localhost.", ("localhost", None)),
            (b"foo.localhost.:80", ("foo.localhost", "80")),
            (b"127.0.0.1", ("127.0.0.1", None)),
            (b"127.0.0.1.", ("127.0.0.1", None)),
            (b"[::1]", ("::1", None)),
            (b"[::1]:11434", ("::1", "11434")),
            (b"[::ffff:127.0.0.1]:1", ("::ffff:127.0.0.1", "1")),
            (b"my_host:", ("my_host", "")),
        ]:
            self.assertEqual(parseAuthority(value), expected, value)

    def test_invalid(self) -> None:
        for value in [
            b"[::1]evil.com", b"[::1].evil.com", b"[localhost]:1", b"localhost:evil",
            b"[::1", b"::1", b"[::1]:1:2", b"localhost:123456", b"a b", b"a,b", b"a@b",
            b"evil.com/x", b"evil..com", b".", b"", b":80", b"-a", b"caf\xc3\xa9", b"a:1:2",
            b"[v1.x]", b"localhost:-1", b"local%68ost",
        ]:
            self.assertIsNone(parseAuthority(value), value)


class DialectTests(SynchronousTestCase):
    """
    Which error shape a path's answer takes.
    """

    def test_dialects(self) -> None:
        self.assertEqual(dialectOf(b"/v1/messages"), "anthropic")
        self.assertEqual(dialectOf(b"/v1/messages/x/../y"), "anthropic")
        self.assertEqual(dialectOf(b"/v1/messagesx"), "openai")
        self.assertEqual(dialectOf(b"/v1/chat/completions"), "openai")
        self.assertEqual(dialectOf(b"/chat/completions/x"), "openai")
        self.assertEqual(dialectOf(b"/models"), "openai")
        self.assertEqual(dialectOf(b"/api/tags"), "ollama")
        self.assertEqual(dialectOf(b"/v1x"), "ollama")
        self.assertEqual(dialectOf(b"/health"), "ollama")
        self.assertEqual(dialectOf(b"/v1beta"), "gemini")
        self.assertEqual(dialectOf(b"/v1beta/models/m:generateContent"), "gemini")
        self.assertEqual(dialectOf(b"/v1betax"), "ollama")

    def test_shapes(self) -> None:
        self.assertEqual(errorObject("ollama", 400, "no"), {"error": "no"})
        self.assertEqual(errorObject("anthropic", 404, "no"),
                         {"type": "error", "error": {"type": "not_found_error", "message": "no"}})
        self.assertEqual(errorObject("gemini", 400, "no"),
                         {"error": {"code": 400, "message": "no", "status": "INVALID_ARGUMENT"}})
        openai = errorObject("openai", 400, "no")
        assert isinstance(openai, dict)
        self.assertEqual(openai["error"]["message"], "no")
