"""
L{ollama_proxy.protocol.backends}: the configuration's value types, pure
and frozen, that the backend side reads.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.backends import NO_OVERRIDE, BackendConfig, ModelOverride


class BackendConfigTests(SynchronousTestCase):
    """
    What a configured backend offers, and its models' settings.
    """

    def test_allowAndDeny(self) -> None:
        """
        Allow globs admit, deny globs then exclude; no allow list admits
        everything not denied.
        """
        config = BackendConfig(name="a", url="http://a.test", allow=("qwen*", "llama*"),
                               deny=("*-base",))
        self.assertTrue(config.offers("qwen3:8b"))
        self.assertFalse(config.offers("qwen3-base"))
        self.assertFalse(config.offers("mistral"))
        self.assertTrue(BackendConfig(name="b", url="http://b.test").offers("anything"))

    def test_override(self) -> None:
        """
        A model's settings are its override, or the empty one.
        """
        extra = ModelOverride(extra={"user": "u"})
        config = BackendConfig(name="a", url="http://a.test", overrides={"m": extra})
        self.assertIs(config.override("m"), extra)
        self.assertIs(config.override("other"), NO_OVERRIDE)
        self.assertEqual(NO_OVERRIDE.extra, {})

    def test_frozen(self) -> None:
        """
        The values cannot change once parsed (a reload builds new ones).
        """
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr,
                          NO_OVERRIDE, "contextLength", 1)
