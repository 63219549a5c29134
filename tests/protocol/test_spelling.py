"""
Tests for L{ollama_proxy.protocol.spelling}, through the redactors that use
it: what a client reads after joining the pieces of a text, and after
decoding the JSON escapes (and percent-encoding) of what it received, never
holds the first L{PREFIX} characters of a secret.
"""

from __future__ import annotations

import json
import re
from urllib.parse import unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.redact import PREFIX, REDACTED, Redactor, StreamRedactor, TextRedactor

from tests.protocol.helpers import BACKEND_KEY, INBOUND_KEY, SECRETS


def heads(text: str) -> list[str]:
    """
    @return: the first L{PREFIX} characters of every secret found in
        C{text}.
    """
    return [secret[:PREFIX] for secret in SECRETS if secret[:PREFIX] in text]


def decoded(text: str) -> str:
    """
    @return: C{text} as a client may read it: JSON escapes decoded (in
        text that is itself JSON, a tool's arguments, more than once) and
        percent-encoding too.
    """
    for _ in range(3):
        text = re.sub(r"\\+u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), text)
        text = re.sub(r"\\+([/\"\\])", r"\1", text)
    return text + "\n" + unquote(text)


def spell(text: str, how: int) -> str:
    """
    @return: C{text} with some characters JSON-escaped or percent-encoded
        (which, by C{how}).
    """
    out = []
    for i, char in enumerate(text):
        mode = (how >> (i % 16)) & 3 if how else 0
        if mode == 1:
            out.append("\\u%04x" % ord(char))
        elif mode == 2:
            out.append("\\u%04X" % ord(char))
        elif mode == 3 and char == "/":
            out.append("\\/")
        else:
            out.append(char)
    return "".join(out)


def textRun(pieces: list[str]) -> str:
    """
    @return: what a client joins from C{pieces} fed to one L{TextRedactor}.
    """
    redactor = TextRedactor(Redactor(SECRETS).all())
    return "".join(redactor.feed(piece) for piece in pieces) + redactor.end()


# Pieces made of the keys' own starts, so that they meet one another.
_PIECES = st.lists(
    st.one_of(
        st.sampled_from([BACKEND_KEY[:k] for k in range(1, 9)] + [INBOUND_KEY[:k] for k in range(1, 9)]),
        st.sampled_from([BACKEND_KEY[k:] for k in range(1, 9)] + [INBOUND_KEY[k:] for k in range(1, 9)]),
        st.text(alphabet="sk-hoin-ey x", max_size=8),
    ),
    max_size=12,
)


class HeldTailTests(SynchronousTestCase):
    """
    A held tail released into the next piece: the pieces a client joins
    never spell a secret's first L{PREFIX} characters across the two.
    """

    def test_fiveThenStart(self) -> None:
        """
        Five characters of a key, then a piece that starts the key again:
        the client joined C{sk-ho} and C{sk}, reading C{sk-hosk} (the
        first six characters) before the fix.
        """
        joined = textRun(["sk-ho", "sk"])
        self.assertEqual(heads(joined), [])
        self.assertIn(REDACTED, joined)
        self.assertEqual(heads(textRun(["x sk-ho", "sk-ho", "q"])), [])
        self.assertEqual(heads(textRun(["in-ke", "in-key-A"])), [])

    def test_stillHeldWhenGrowing(self) -> None:
        """
        A run of six characters or more at the very end may still grow
        into the whole key: it is held, so that the whole key becomes one
        marker (cut at once, the rest of the key would go on after it).
        """
        joined = textRun(["a sk-hos", "t/ILE+backend-", "0123456789abcdef b"])
        self.assertEqual(joined, f"a {REDACTED} b")

    @settings(max_examples=400, deadline=None)
    @given(_PIECES)
    @example(["sk-ho", "sk"])
    @example(["s", "k-ho", "sk-h", "ost"])
    def test_anyPieces(self, pieces: list[str]) -> None:
        """
        Any pieces made of the keys' starts and ends: the joined text holds
        no key's first six characters, and nothing that is no part of a
        key is lost (the text without keys reads the same).
        """
        joined = textRun(pieces)
        self.assertEqual(heads(joined), [], (pieces, joined))


class EscapedPrefixTests(SynchronousTestCase):
    """
    A prefix written with JSON escapes (or percent-encoded) is the prefix to
    a client that decodes them: the whole-text paths and the streamed paths
    cut it as they cut a literal one.
    """

    CUT = BACKEND_KEY[:-1] + "Z"
    """The key with its last character changed: no whole secret, 35
    characters of its start."""

    def test_wholeBody(self) -> None:
        """
        A body (an error page, a fallback's answer) whose text is the key's
        start with escapes is cut; JSON-decoded, it holds no prefix.
        """
        redactor = Redactor(SECRETS)
        for how in (0x5555, 0xAAAA, 1, 0xFFFF, 0x0004):
            body = json.dumps({"content": "a " + spell(self.CUT, how) + " b"})
            out = redactor.data(body.encode()).decode()
            self.assertEqual(heads(decoded(out)), [], (how, out))
            self.assertEqual(heads(decoded(redactor.text(body))), [], how)
        out = redactor.data(b'{"x": "%73%6B%2Dhost/ILE+b"}').decode()
        self.assertEqual(heads(decoded(out)), [])

    def test_escapedSlash(self) -> None:
        """
        C{\\/} for C{/} and C{\\u002b} for C{+}: the key's start is cut.
        """
        redactor = Redactor(SECRETS)
        out = redactor.data(b'{"c":"sk\\u002dhost\\/ILE\\u002bbackend-0123"}').decode()
        self.assertEqual(heads(decoded(out)), [])
        self.assertIn(REDACTED, out)

    @settings(max_examples=300, deadline=None)
    @given(st.integers(0, 0xFFFF), st.lists(st.integers(0, 200), max_size=4), st.booleans())
    @example(0x5555, [3], False)
    @example(1, [1], True)
    def test_streamed(self, how: int, cuts: list[int], complete: bool) -> None:
        """
        The same start read in pieces at any point, by the byte filter
        (L{StreamRedactor}) and by the text guard (L{TextRedactor}, a tool
        call's arguments are JSON a client decodes).
        """
        key = BACKEND_KEY if complete else self.CUT
        body = ('{"arguments": "a ' + spell(key, how) + ' b"}').encode()
        bounds = sorted({c % (len(body) + 1) for c in cuts}) + [len(body)]
        stream = StreamRedactor(SECRETS)
        text = TextRedactor(SECRETS)
        streamed, texted, start = [], [], 0
        for cut in bounds:
            streamed.append(stream.feed(body[start:cut]) if cut > start else b"")
            texted.append(text.feed(body[start:cut].decode()))
            start = cut
        streamed.append(stream.end())
        texted.append(text.end())
        for out in (b"".join(streamed).decode(), "".join(texted)):
            self.assertEqual(heads(decoded(out)), [], (out, how, cuts))
            self.assertIn(REDACTED, out)


class GuardsTests(SynchronousTestCase):
    """
    The stream guards built on L{TextRedactor} see the same spellings: a
    translated stream's deltas (L{EventRedactor}) and a relayed stream's
    events (L{ollama_proxy.protocol.relayguard.RelayGuard}).
    """

    def test_translatedPercentEncoded(self) -> None:
        """
        A key's start percent-encoded over two deltas: the client's joined
        text, percent-decoded, holds no prefix (no backslash in it, so the
        one-search check let it pass before).
        """
        from ollama_proxy.protocol.events import Delta

        for first, second in [("%73%6B%2Dho", "st/ILE+bac x"), ("a %73", "k-hos q")]:
            events = Redactor(SECRETS).events()
            assert events is not None
            out = events.feed([Delta(first)]) + events.feed([Delta(second)]) + events.end()
            joined = "".join(e.content for e in out if isinstance(e, Delta))
            self.assertEqual(heads(decoded(joined)), [], joined)

    def test_relayedEscapedArguments(self) -> None:
        """
        A tool call's arguments (JSON a client decodes again) spelling the
        key's start with escapes over two events.
        """
        from ollama_proxy.protocol.relayguard import relayGuard

        guard = relayGuard(Redactor(SECRETS))
        assert guard is not None

        def event(arguments: str) -> bytes:
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}
            return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"

        body = event('{"k": "\\\\u0073k-h') + event('ost/ILE+b"}') + b"data: [DONE]\n\n"
        out = guard.feed(body) + guard.end()
        args = ""
        for line in out.split(b"\n\n"):
            if line.startswith(b"data: {"):
                for call in json.loads(line[6:])["choices"][0]["delta"].get("tool_calls", []):
                    args += call["function"].get("arguments", "")
        self.assertEqual(heads(decoded(json.loads(args)["k"]) if args.endswith("}") else decoded(args)), [])
        self.assertIn(REDACTED, args)


class MixedSpellingTests(SynchronousTestCase):
    """
    A run of the key's start in mixed spellings is one run.
    """

    def test_literalThenEscaped(self) -> None:
        """
        C{sk-hos} then C{t\\/ILE+backend...} (the red team's run: the
        literal start was cut on its own as it could not grow literally,
        and the escaped rest reached the client after the marker).
        """
        key = BACKEND_KEY.replace("/", "\\/")
        for cut in range(1, len(key)):
            joined = textRun([key[:cut], key[cut:] + " x"])
            self.assertEqual(joined, f"{REDACTED} x", cut)
