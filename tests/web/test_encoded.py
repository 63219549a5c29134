"""
Answers encoded once: the bytes are those the error funnel's ordinary
path makes (encoded, redacted, through the outbound filter).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.redact import Redactor
from ollama_proxy.web.encoded import encoded

SECRETS = ("sk-secret-123", "inbound-key-123456")


class EncodedTests(SynchronousTestCase):
    @settings(max_examples=200, deadline=None)
    @given(names=st.lists(st.one_of(
        st.text(max_size=12), st.sampled_from(SECRETS),
        st.sampled_from([s[:7] for s in SECRETS]),
        st.sampled_from(["".join(f"\\u{ord(c):04x}" for c in s) for s in SECRETS]),
    ).map(lambda parts: "evil-" + parts), max_size=4))
    def test_sameBytes(self, names: list[str]) -> None:
        """
        Model names carrying a secret literally, as a prefix or as JSON
        escapes: the once-encoded body is the ordinary path's bytes, and
        holds no secret.
        """
        redactor = Redactor(SECRETS)
        value = {"models": [{"name": name} for name in names]}
        outbound = redactor.stream()
        assert outbound is not None
        ordinary = redactor.data(codec.dumps(value))
        ordinary = outbound.feed(ordinary) + outbound.end()
        once = encoded(value, redactor)
        self.assertEqual(once.body, ordinary)
        self.assertIs(once.value, value)
        self.assertIs(once.redactor, redactor)
        for secret in SECRETS:
            self.assertNotIn(secret.encode(), once.body)

    def test_noSecrets(self) -> None:
        """
        Without secrets the body is the encoding.
        """
        value = {"models": [{"name": "m"}]}
        self.assertEqual(encoded(value, Redactor()).body, codec.dumps(value))
