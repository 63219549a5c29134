"""
Tests for L{ollama_proxy.protocol.sticky}: the conversation key from what
the real agents send, the prefix hash, and the LRU with a TTL.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.sticky import StickyTable, prefixKey, stickyKey
from tests.protocol.test_balance import Clock


def headers(**values: str) -> object:
    table = {k.replace("_", "-").lower().encode(): v.encode() for k, v in values.items()}
    return table.get


class KeyTests(SynchronousTestCase):
    """
    L{stickyKey} and L{prefixKey}.
    """

    def test_sessionHeaders(self) -> None:
        """
        The headers the agents were seen sending name the conversation:
        C{X-Session-Id}, Claude Code's C{X-Claude-Code-Session-Id}, Codex's
        C{Session-Id}; the key is scoped by model.
        """
        for name in ("X_Session_Id", "X_Claude_Code_Session_Id", "Session_Id"):
            key = stickyKey(headers(**{name: "0b4fac6c"}), {"messages": []}, "m")  # type: ignore[arg-type]
            self.assertEqual(key, stickyKey(headers(**{name: "0b4fac6c"}), None, "m"))  # type: ignore[arg-type]
            self.assertNotEqual(key, stickyKey(headers(**{name: "0b4fac6c"}), None, "other"))  # type: ignore[arg-type]
            self.assertNotEqual(key, stickyKey(headers(**{name: "1"}), None, "m"))  # type: ignore[arg-type]

    def test_promptCacheKey(self) -> None:
        """
        Without a header, the body's C{prompt_cache_key} (Codex, Copilot
        CLI) names the conversation, whatever the turns say.
        """
        none = headers()
        a = stickyKey(none, {"prompt_cache_key": "6747", "input": "turn 1"}, "m")  # type: ignore[arg-type]
        b = stickyKey(none, {"prompt_cache_key": "6747", "input": "other"}, "m")  # type: ignore[arg-type]
        self.assertEqual(a, b)

    def test_prefixHashStableAcrossTurns(self) -> None:
        """
        Without an id, turn N+1 (the same system and first user message,
        more turns after) has turn N's key; another opening another key.
        """
        none = headers()
        turn1 = {"messages": [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": "hello"}]}
        turn2 = {"messages": turn1["messages"] + [{"role": "assistant", "content": "hi"},
                                                  {"role": "user", "content": "more"}]}
        other = {"messages": [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": "bye"}]}
        self.assertEqual(stickyKey(none, turn1, "m"), stickyKey(none, turn2, "m"))  # type: ignore[arg-type]
        self.assertNotEqual(stickyKey(none, turn1, "m"), stickyKey(none, other, "m"))  # type: ignore[arg-type]

    def test_prefixDialects(self) -> None:
        """
        Anthropic's C{system} with content blocks, the Responses
        C{instructions}/C{input} and Gemini's C{systemInstruction}/C{contents}
        hash the same opening alike.
        """
        anthropic = {"system": [{"type": "text", "text": "sys"}],
                     "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}
        responses = {"instructions": "sys",
                     "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}
        chat = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]}
        self.assertEqual(prefixKey(anthropic), prefixKey(chat))
        self.assertEqual(prefixKey(responses), prefixKey(chat))
        gemini = {"systemInstruction": {"parts": [{"text": "sys"}]},
                  "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        self.assertEqual(prefixKey(gemini), prefixKey(chat))

    def test_nothingToStickBy(self) -> None:
        """
        No header, no cache key, no user message: no key.
        """
        self.assertEqual(stickyKey(headers(), {"messages": []}, "m"), "")  # type: ignore[arg-type]
        self.assertEqual(stickyKey(headers(), None, "m"), "")  # type: ignore[arg-type]
        self.assertIsNone(prefixKey(["not", "a", "dict"]))

    def test_longIdHashed(self) -> None:
        """
        A huge header value is hashed, not kept (the table stays small).
        """
        key = stickyKey(headers(X_Session_Id="x" * 100000), None, "m")  # type: ignore[arg-type]
        self.assertLess(len(key), 100)


class TableTests(SynchronousTestCase):
    """
    L{StickyTable}: bounded, expiring, renewed on use.
    """

    def test_ttlRenewedOnUse(self) -> None:
        """
        A pin lives C{ttl} seconds after its last use.
        """
        clock = Clock()
        table = StickyTable(clock, size=10, ttl=10)
        table.put("k", "a")
        clock.advance(9)
        self.assertEqual(table.get("k"), "a")
        clock.advance(9)
        self.assertEqual(table.get("k"), "a")
        clock.advance(10)
        self.assertIsNone(table.get("k"))
        self.assertEqual(len(table), 0)

    def test_leastRecentlyUsedEvicted(self) -> None:
        """
        Full: the least recently used pin goes.
        """
        clock = Clock()
        table = StickyTable(clock, size=2, ttl=100)
        table.put("a", "x")
        table.put("b", "y")
        table.get("a")
        table.put("c", "z")
        self.assertEqual((table.get("a"), table.get("b"), table.get("c")), ("x", None, "z"))
        self.assertEqual(len(table), 2)
