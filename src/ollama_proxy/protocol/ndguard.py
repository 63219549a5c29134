# -*- test-case-name: tests.protocol.test_ndguard -*-
"""
Secrets out of a relayed Ollama NDJSON stream's texts, across lines.

The fallback Ollama's answers (and anything else relayed without the hub)
go to the client through the outbound byte filter
(L{ollama_proxy.protocol.redact.StreamRedactor}), which sees a secret whole
or split across reads.  It cannot see one split across I{lines}: an Ollama
client joins C{message.content} (and C{message.thinking}, C{response},
C{thinking}) over the lines of a stream, so a fallback that sends C{"s"} in
one line and C{"k-host..."} in the next gets the key to it; each line alone
is no secret.  The fallback may be the very host the backend is (it knows
the backend's key), and the client's C{--require-key} is a secret too.

L{NDJSONGuard} is L{ollama_proxy.protocol.relayguard.RelayGuard}'s
counterpart for NDJSON: the body is split into lines (C{\\n}, C{\\r\\n} or a
bare C{\\r}, as an httpx client splits them), and every text a client joins
goes into a L{TextRedactor} of its own: a tail that could begin a secret
waits for the next piece of the same text, and the secret, once whole,
becomes C{<redacted>}.  A line whose texts pass as they are goes out byte
for byte; only a line whose text changed (or held a tail) is encoded
again.  A held tail is released into the next piece of its text, into the
C{done} line (appended to its texts), before an C{error} line, or at the
body's end in one line like the last one: never dropped.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Protocol

from ollama_proxy.protocol.certify import suspect
from ollama_proxy.protocol.redact import PREFIX, Redactor, TextRedactor
from ollama_proxy.protocol.relayguard import (certifiable, cleanOf, decodeLenient, dumpLenient,
                                              endHeld, feedHeld, quickSearch)
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.stream import DEFAULT_MAX_LINE_LENGTH, SSELineTooLong

TEXTS: tuple[tuple[str, ...], ...] = (
    ("message", "content"),
    ("message", "thinking"),
    ("response",),
    ("thinking",),
)
"""The texts of an Ollama stream line a client joins across lines:
C{/api/chat}'s message content and thinking, C{/api/generate}'s response
and thinking.  A fixed set, so the texts that may hold a tail at once are
bounded by it (tool calls come whole in one line, filtered there)."""

MAX_LINE = DEFAULT_MAX_LINE_LENGTH
"""The longest line the guard holds to read whole (every relayed line or
event has this limit).  A longer one is relayed as it comes, through the
byte filter, when no text holds a tail: a fallback's whole answer is one
line (C{/api/show} with C{verbose} lists megabytes of vocabulary), with
nothing after it to join; a line after it ends the stream with an error."""

_EOL = re.compile(rb"\r\n|\r|\n")
_LAST = ("model", "created_at")


class StreamGuard(Protocol):
    """
    What the relay asks of a guard over a stream's texts (this module's,
    or L{ollama_proxy.protocol.relayguard.RelayGuard}).
    """

    certified: bool
    """Whether what the last L{feed} returned needs no outbound filter
    (L{ollama_proxy.protocol.relayguard.certifiable})."""

    def feed(self, data: bytes) -> bytes:
        """
        @return: what of the body read so far can go now.
        """

    def end(self) -> bytes:
        """
        @return: what was held, at the body's end.
        """


_SSE_FIELDS = (b"data:", b"event:", b"id:", b"retry:", b":")


class SniffedGuard:
    """
    The guard for a body whose shape its content type does not say (a
    fallback may claim anything): an SSE body (its first bytes a field,
    C{data:} or C{event:}, or a comment) gets the SSE guard, anything else
    the NDJSON one, chosen at the first bytes that are not white space.
    """

    def __init__(self, ndjson: StreamGuard, sse: StreamGuard) -> None:
        self._choices: tuple[StreamGuard, StreamGuard] | None = (ndjson, sse)
        self._chosen: StreamGuard | None = None
        self.certified = False

    def feed(self, data: bytes) -> bytes:
        """
        @return: what the chosen guard lets go of C{data}.
        """
        chosen = self._chosen
        if chosen is None:
            start = data.lstrip()
            if not start:
                self.certified = False
                return data  # white space: nothing to guard yet
            assert self._choices is not None
            chosen = self._chosen = self._choices[start.startswith(_SSE_FIELDS)]
            self._choices = None
        out = chosen.feed(data)
        self.certified = chosen.certified
        return out

    def end(self) -> bytes:
        """
        @return: what the chosen guard held.
        """
        return self._chosen.end() if self._chosen is not None else b""


def ndjsonGuard(redactor: Redactor, extra: Iterable[str | None] = ()) -> NDJSONGuard | None:
    """
    @param redactor: the proxy's secrets.
    @param extra: per-request secrets (the client's key).
    @return: a guard for one relayed NDJSON stream, or C{None} when there
        is no secret to look for.
    """
    secrets = redactor.all(extra)
    return NDJSONGuard(secrets) if secrets else None


class NDJSONGuard:
    """
    A relayed NDJSON body in, the same body out with every secret split
    across lines replaced (see the module docstring).  One per stream;
    L{feed} once per read, L{end} once at the end.
    """

    def __init__(self, secrets: tuple[str, ...], maxLine: int = MAX_LINE) -> None:
        self._secrets = secrets
        self._suspect = suspect(secrets, PREFIX)
        self._quicks = tuple(quickSearch(secret) for secret in secrets)
        self._maxLine = maxLine
        self._certifies = certifiable(secrets)
        self.certified = False
        """Whether the last L{feed} passed its read as it came after the
        outbound filter's own search (L{certifiable})."""
        self._partial = b""
        # An unfinished line longer than one read, in pieces.
        self._pieces: list[bytes] = []
        self._size = 0
        # Relaying a line over the limit (1), or after it (2).
        self._over = 0
        self._held: dict[tuple[str, ...], TextRedactor] = {}
        self._last: dict[str, Any] = {}

    @property
    def holding(self) -> bool:
        """
        Whether some text holds a tail, or a partial line waits.
        """
        return bool(self._held or self._partial or self._pieces)

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next read of the body.
        @return: the whole lines it completed, as they came or with their
            texts redacted.
        @raise SSELineTooLong: if an unfinished line outgrows the line limit
            (the stream cannot be guarded: it ends, with an error).
        """
        if (not self._partial and not self._held and not self._pieces and not self._over
                and data[-1:] == b"\n"
                and b"\\" not in data and b"%" not in data):
            # Whole lines: L{_clean}, inlined (this is every read of a
            # clean stream).
            for quick in self._quicks:
                if quick.search(data):
                    break
            else:
                self.certified = self._certifies
                return data  # none with a text to change or hold
        self.certified = False
        if self._over:
            return self._overLine(data)
        if self._pieces and b"\n" not in data and b"\r" not in data:
            # A long line goes on: kept in pieces, joined once it ends
            # (joining at every read would copy it again each time).
            self._pieces.append(data)
            self._size += len(data)
            return self._check()
        if self._pieces:
            self._pieces.append(data)
            data, self._pieces, self._size = b"".join(self._pieces), [], 0
        buf = self._partial + data if self._partial else data
        lines, self._partial = _split(buf)
        out = [self._line(raw) for raw in lines]
        if not lines and self._partial:
            # No line ended in this read: the next ones join the pieces.
            self._pieces, self._size, self._partial = [self._partial], len(self._partial), b""
        out.append(self._check())
        return b"".join(out)

    def _check(self) -> bytes:
        """
        What an unfinished line longer than the limit becomes: relayed as it
        comes when no text holds a tail (L{MAX_LINE}).

        @return: what of it goes now.
        @raise SSELineTooLong: if a text holds a tail (the line may go on
            with it, and cannot be read whole).
        """
        if self._size + len(self._partial) <= self._maxLine:
            return b""
        if self._held:
            self._partial, self._pieces, self._size = b"", [], 0  # not passed on at the end
            raise SSELineTooLong(f"fallback NDJSON line longer than {self._maxLine} bytes")
        out = b"".join(self._pieces) + self._partial
        self._partial, self._pieces, self._size, self._over = b"", [], 0, 1
        return out

    def _overLine(self, data: bytes) -> bytes:
        """
        @return: C{data}, of a line over the limit or after it: the rest of
            that line as it comes, then nothing but white space.
        @raise StreamFailed: for anything after that line (its C{output} the
            line's last bytes): a text there could join one of the line's.
        """
        out = b""
        if self._over == 1:
            found = _EOL.search(data)
            if found is None:
                return data
            self._over = 2
            out, data = data[: found.end()], data[found.end():]
        if data.strip():
            raise StreamFailed("the fallback sent more after a line longer than "
                               f"{self._maxLine} bytes", output=out)
        return out + data

    def end(self) -> bytes:
        """
        @return: an unfinished last line (guarded as a whole one; a client
            reads it) and every held tail, in one last line (the body
            ended, or failed).
        """
        if self._over:
            return b""
        if self._pieces:
            self._partial, self._pieces, self._size = b"".join(self._pieces), [], 0
        partial, self._partial = self._partial, b""
        out = self._line(partial) if partial.strip() else partial
        held = self._release()
        if held and out and out[-1:] not in (b"\n", b"\r"):
            out += b"\n"  # or the held text would join its last line
        return out + held

    def _clean(self, data: bytes) -> bool:
        """
        @return: whether no text in C{data} could change or hold
            (L{cleanOf}).
        """
        return cleanOf(self._quicks, data)

    def _line(self, raw: bytes) -> bytes:
        body = raw.rstrip(b"\r\n")
        if not self._held and self._clean(body):
            return raw
        obj = decodeLenient(body) if body.strip() else None
        if not isinstance(obj, dict):
            return raw
        last = self._last
        for name in _LAST:
            if name in obj:
                last[name] = obj[name]
        changed = False
        for path in TEXTS:
            value = _get(obj, path)
            if isinstance(value, str):
                new = self._text(path, value)
                if new is not value:
                    _set(obj, path, new)
                    changed = True
        before = b""
        if self._held:
            if obj.get("done") is True:
                for path, tail in self._tails().items():
                    value = _get(obj, path)
                    _set(obj, path, value + tail if isinstance(value, str) else tail)
                    changed = True
            elif "error" in obj:
                before = self._release()  # the texts end here
        if not changed:
            return before + raw
        return before + dumpLenient(obj) + raw[len(body):]

    def _text(self, path: tuple[str, ...], value: str) -> str:
        """
        @return: C{value} itself when it passes as it is (the common case:
            nothing held, nothing suspect), otherwise what may go now.
        """
        redactor = self._held.get(path)
        if redactor is None:
            if not self._suspect.search(value):
                return value
            redactor = TextRedactor(self._secrets)
        return feedHeld(self._held, path, value, redactor)

    def _tails(self) -> dict[tuple[str, ...], str]:
        """
        @return: every held tail, released.
        """
        return endHeld(self._held, self._held)

    def _release(self) -> bytes:
        """
        @return: every held tail, in one line like the last one (not done).
        """
        tails = self._tails() if self._held else {}
        if not tails:
            return b""
        line: dict[str, Any] = {name: self._last[name] for name in _LAST if name in self._last}
        for path, tail in tails.items():
            if path[0] == "message" and "message" not in line:
                line["message"] = {"role": "assistant"}
            _set(line, path, tail)
        line["done"] = False
        return dumpLenient(line) + b"\n"


def _get(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = obj
    for name in path:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _set(obj: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    for name in path[:-1]:
        inner = obj.get(name)
        if not isinstance(inner, dict):
            inner = obj[name] = {}
        obj = inner
    obj[path[-1]] = value


def _split(buf: bytes) -> tuple[list[bytes], bytes]:
    """
    @return: the whole lines in C{buf} (each with its line end, bytes as
        they came) and the unfinished rest.
    """
    if b"\r" not in buf:
        end = buf.rfind(b"\n") + 1
        if not end:
            return [], buf
        return buf[:end].splitlines(keepends=True), buf[end:]
    lines = []
    start = 0
    size = len(buf)
    for match in _EOL.finditer(buf):
        if match.end() == size and match.group() == b"\r":
            break  # may be the first half of a CRLF
        lines.append(buf[start : match.end()])
        start = match.end()
    return lines, buf[start:]
