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

    def _all(self, extra: Iterable[str | None]) -> tuple[str, ...]:
        more = [s for s in extra if s and s not in self.secrets]
        return _ordered([*self.secrets, *more]) if more else self.secrets


def _ordered(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(secrets), key=len, reverse=True))
