# -*- test-case-name: tests.protocol.test_redact -*-
"""
Secrets out of everything the proxy passes on from upstream text.

Some gateways and debugging proxies echo the request's C{Authorization}
header in their error bodies; the proxy relays those bodies (as a JSON
error, an NDJSON error line, an SSE error event, or a relayed non-2xx
passthrough or fallback answer).  L{Redactor} replaces every secret the
proxy holds (backend keys, inbound keys, the client's own key) before any
of that text reaches a client, whatever the dialect.
"""

from __future__ import annotations

from typing import Iterable

REDACTED = "<redacted>"
"""What a secret becomes (the same word the debug log uses)."""


class Redactor:
    """
    Replaces known secrets in text and bytes.

    @ivar secrets: the fixed secrets, longest first (so that a key that
        contains another is replaced whole).
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets: tuple[str, ...] = _ordered(s for s in secrets if s)

    def text(self, text: str, extra: Iterable[str | None] = ()) -> str:
        """
        @param text: an error message or body from upstream.
        @param extra: per-request secrets (the client's key).
        @return: C{text} with every secret replaced by L{REDACTED}.
        """
        for secret in self._all(extra):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def data(self, data: bytes, extra: Iterable[str | None] = ()) -> bytes:
        """
        @param data: a relayed body.
        @param extra: per-request secrets (the client's key).
        @return: C{data} with every secret (as UTF-8) replaced.
        """
        marker = REDACTED.encode("ascii")
        for secret in self._all(extra):
            raw = secret.encode("utf-8")
            if raw in data:
                data = data.replace(raw, marker)
        return data

    def stream(self, extra: Iterable[str | None] = ()) -> StreamRedactor | None:
        """
        @param extra: per-request secrets (the client's key).
        @return: a redactor for a body relayed in pieces, or C{None} when
            there is no secret to look for.
        """
        secrets = self._all(extra)
        return StreamRedactor(secrets) if secrets else None

    def _all(self, extra: Iterable[str | None]) -> tuple[str, ...]:
        more = [s for s in extra if s and s not in self.secrets]
        return _ordered([*self.secrets, *more]) if more else self.secrets


def _ordered(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(secrets), key=len, reverse=True))


class StreamRedactor:
    """
    Secrets out of a body relayed as it arrives (a 2xx passthrough stream,
    whose error event may quote a key), whatever the read boundaries.

    Each piece is passed on at once, except a tail that could be the start
    of a secret split across two reads: that is held until the next piece
    (or the end) shows what it is.  SSE events end with a blank line, which
    no key starts with, so in practice nothing is held and no event is
    delayed.

    @ivar secrets: the secrets as UTF-8, longest first.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self.secrets = tuple(secret.encode("utf-8") for secret in _ordered(secrets))
        self._marker = REDACTED.encode("ascii")
        self._carry = b""

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next piece of the body.
        @return: what can be sent now, secrets replaced.
        """
        if self._carry:
            data, self._carry = self._carry + data, b""
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, self._marker)
        held = self._heldBack(data)
        if held:
            data, self._carry = data[:-held], data[-held:]
        return data

    def end(self) -> bytes:
        """
        @return: the held tail, which the body ended without completing.
        """
        tail, self._carry = self._carry, b""
        return tail

    def _heldBack(self, data: bytes) -> int:
        """
        @return: the length of the longest tail of C{data} that is a proper
            prefix of a secret.
        """
        longest = 0
        for secret in self.secrets:
            start = max(0, len(data) - len(secret) + 1)
            index = data.find(secret[:1], start)
            while index != -1:
                if secret.startswith(data[index:]):
                    longest = max(longest, len(data) - index)
                    break
                index = data.find(secret[:1], index + 1)
        return longest
