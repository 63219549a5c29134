# -*- test-case-name: tests.protocol.test_sticky -*-
"""
Sticky conversations: the key that ties turn N+1 to the backend that
served turn N (whose KV cache holds the conversation's prefix), and the
bounded table of pins.

The key, in order of preference (what the agents send was captured from the
real CLIs, see docs/operations.md):

  1. a session header: C{X-Session-Id} (any client may set it),
     C{X-Claude-Code-Session-Id} (Claude Code 2.1), C{Session-Id} (Codex
     0.171, the same id as its C{Thread-Id});
  2. the body's C{prompt_cache_key} (Codex and Copilot CLI 1.0 send one
     per conversation on C{/v1/responses}; OpenAI chat clients may too);
  3. a hash of the conversation's first turns: the system prompt and the
     first user message (C{messages}, Anthropic's C{system}, Responses'
     C{instructions} and C{input}, Gemini's C{systemInstruction} and
     C{contents}), which stay the same on every later turn.

Keys are scoped by model (one conversation may switch models; each model's
pool pins on its own).  Pure: the clock is passed in.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable

from ollama_proxy.protocol import codec

SESSION_HEADERS = (b"x-session-id", b"x-claude-code-session-id", b"session-id")
"""Request headers that name a conversation, in order of preference."""

MAX_KEY = 256
"""A longer header or C{prompt_cache_key} is hashed rather than kept."""


def _short(text: str) -> str:
    return text if len(text) <= MAX_KEY else hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _text(content: Any) -> Any:
    """
    @return: what identifies a message's content: the text of a string or
        of text parts, else the content as it is.
    """
    if isinstance(content, dict) and isinstance(content.get("parts"), list):
        content = content["parts"]  # Gemini's systemInstruction
    if isinstance(content, list):
        parts: list[str] = [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
        if parts:
            return "".join(parts)
    return content


def prefixKey(body: Any) -> str | None:
    """
    The hash of a conversation's opening: its system prompt and first user
    message, in any dialect.

    @param body: the decoded request body.
    @return: a hex digest, or C{None} when the body has no user message.
    """
    if not isinstance(body, dict):
        return None
    system: Any = body.get("system", body.get("instructions", body.get("systemInstruction")))
    turns = body.get("messages", body.get("input", body.get("contents")))
    first: Any = None
    if isinstance(turns, str):
        first = turns
    elif isinstance(turns, list):
        for turn in turns:
            if not isinstance(turn, dict):
                continue
            role = turn.get("role")
            if role in ("system", "developer") and system is None:
                system = _text(turn.get("content"))
            elif role == "user":
                first = _text(turn.get("content", turn.get("parts")))
                break
    if first is None:
        return None
    try:
        raw = codec.dumps([_text(system), first])
    except TypeError:
        return None
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def stickyKey(header: Callable[[bytes], bytes | None], body: Any, model: str) -> str:
    """
    The conversation's key, scoped by model.

    @param header: the request's header by lower-case name, or C{None}.
    @param body: the decoded request body (C{None} if not JSON).
    @param model: the model name the request resolved to.
    @return: the key; C{""} when the request carries nothing to stick by.
    """
    for name in SESSION_HEADERS:
        value = header(name)
        if value:
            return f"{model}\0h\0{_short(value.decode('latin-1').strip())}"
    if isinstance(body, dict):
        cacheKey = body.get("prompt_cache_key")
        if isinstance(cacheKey, str) and cacheKey:
            return f"{model}\0c\0{_short(cacheKey)}"
    prefix = prefixKey(body)
    return f"{model}\0p\0{prefix}" if prefix is not None else ""


class StickyTable:
    """
    Conversation keys to the backend that served them: a bounded LRU whose
    entries expire C{ttl} seconds after their last use.

    @ivar hits: lookups that found a live pin.
    @ivar misses: lookups that did not.
    """

    def __init__(self, clock: Callable[[], float], size: int = 10000, ttl: float = 1800.0) -> None:
        """
        @param clock: seconds.
        @param size: the most keys kept.
        @param ttl: seconds a pin lives after its last use.
        """
        self.clock = clock
        self.size = max(1, size)
        self.ttl = ttl
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        """
        @param key: a conversation key.
        @return: the pinned backend's name, its lifetime renewed; C{None}
            when unknown or expired.
        """
        found = self._pins.get(key)
        if found is None:
            return None
        name, expires = found
        now = self.clock()
        if now >= expires:
            del self._pins[key]
            return None
        self._pins[key] = (name, now + self.ttl)
        self._pins.move_to_end(key)
        return name

    def put(self, key: str, name: str) -> None:
        """
        Pin a conversation (the least recently used pin goes when full).

        @param key: the conversation key.
        @param name: the backend that served it.
        """
        self._pins[key] = (name, self.clock() + self.ttl)
        self._pins.move_to_end(key)
        while len(self._pins) > self.size:
            self._pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pins)
