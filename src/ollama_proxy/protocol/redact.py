# -*- test-case-name: tests.protocol.test_redact -*-
"""
Secrets out of everything the proxy passes on from upstream.

A hostile or careless backend may echo the request's C{Authorization}
header anywhere: in an error body (raw, or written with JSON escapes such
as C{\\u0073\\u006b...}), in generated text split over many deltas, in tool
arguments, in a model id, in a response header.  L{Redactor} replaces every
secret the proxy holds (backend keys, inbound keys, the client's own key)
in all of those forms; the web layer runs every outbound byte through it
(L{ollama_proxy.web.bridge.Exchange.write}), and the translated streams
through L{EventRedactor} as well, so a secret spread over several deltas
is caught before the client's dialect splits it into several lines.

Redaction comes before truncation (L{Redactor.excerpt}), or a cut key escapes.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence
from urllib.parse import unquote_to_bytes

from ollama_proxy.protocol.certify import ESCAPED, checks
from ollama_proxy.protocol.spelling import PREFIX as PREFIX
from ollama_proxy.protocol.spelling import (cutEscaped, cutFinal, cutPrefixes, escapedPrefixAt,
                                             patterns)
from ollama_proxy.protocol.spelling import heldBack as _heldBack
from ollama_proxy.protocol.events import Delta, Event, Finish, Reply, ToolCall, ToolCalls

REDACTED = "<redacted>"
"""What a secret becomes (the same word the debug log uses)."""

_MARKER = REDACTED.encode("ascii")

def _ordered(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(secrets), key=len, reverse=True))


class Redactor:
    """
    Replaces known secrets in text, bytes, JSON values and replies.

    @ivar secrets: the fixed secrets, longest first (so that a key that
        contains another is replaced whole).
    """

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self.secrets: tuple[str, ...] = _ordered(s for s in secrets if s)

    def _escaped(self, secrets: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
        found = patterns(secrets)
        return found.whole, found.wholeBytes

    def all(self, extra: Iterable[str | None] = ()) -> tuple[str, ...]:
        """
        @param extra: per-request secrets (the client's key).
        @return: every secret to look for, longest first.
        """
        more = [s for s in extra if s and s not in self.secrets]
        return _ordered([*self.secrets, *more]) if more else self.secrets

    def text(self, text: str, extra: Iterable[str | None] = ()) -> str:
        """
        @param text: an error message, a model id, a log field.
        @param extra: per-request secrets (the client's key).
        @return: C{text} with every secret, literal, JSON-escaped or
            percent-encoded, replaced by L{REDACTED}.
        """
        secrets = self.all(extra)
        if not secrets:
            return text  # a proxy without keys: the access line's fields, every reply
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if secrets and ("\\" in text or "%" in text):
            found = patterns(secrets)
            text = cutEscaped(found.whole.sub(REDACTED, text), found.prefix, REDACTED)
        return cutPrefixes(text, secrets, REDACTED)

    def data(self, data: bytes, extra: Iterable[str | None] = ()) -> bytes:
        """
        @param data: a relayed body.
        @param extra: per-request secrets (the client's key).
        @return: C{data} with every secret (as UTF-8, JSON-escaped or
            percent-encoded) replaced.
        """
        secrets = self.all(extra)
        if not secrets:
            return data
        for secret in secrets:
            raw = secret.encode("utf-8")
            if raw in data:
                data = data.replace(raw, _MARKER)
        if secrets and (b"\\" in data or b"%" in data):
            found = patterns(secrets)
            data = cutEscaped(found.wholeBytes.sub(_MARKER, data), found.prefixBytes, _MARKER)
        return cutPrefixes(data, tuple(secret.encode("utf-8") for secret in secrets), _MARKER)

    def carries(self, data: bytes, extra: Iterable[str | None] = ()) -> bool:
        """
        The strict test for a short value that is dropped rather than
        rewritten (a relayed header's value): whether C{data} holds any
        secret, or the first L{PREFIX} characters of one, literally,
        JSON-escaped, or percent-encoded (once or more: C{Content-
        Disposition}'s C{filename*=UTF-8''%73%6B...}, a C{Link} URL).

        @param data: the value.
        @param extra: per-request secrets (the client's key).
        """
        secrets = self.all(extra)
        if not secrets:
            return False
        prefixes = Redactor(secret[:PREFIX] for secret in secrets)
        for _ in range(4):
            if prefixes.data(data) != data:
                return True
            decoded = unquote_to_bytes(data)
            if decoded == data:
                return False
            data = decoded
        return True

    def excerpt(self, text: str, limit: int, extra: Iterable[str | None] = ()) -> str:
        """
        @param text: upstream text to show in part.
        @param limit: the most characters to keep.
        @return: C{text} redacted, then cut to C{limit} characters (in this
            order, so that no cut key escapes as a prefix).
        """
        text = self.text(text, extra)
        return text if len(text) <= limit else text[:limit] + "..."

    def value(self, value: Any, extra: Iterable[str | None] = ()) -> Any:
        """
        @param value: a decoded JSON value (tool arguments, a model entry).
        @param extra: per-request secrets.
        @return: C{value} with every string (keys included) redacted; the
            same object when nothing needed replacing.
        """
        secrets = self.all(extra)
        return _redactValue(self, value, secrets) if secrets else value

    def reply(self, reply: Reply, extra: Iterable[str | None] = ()) -> Reply:
        """
        @param reply: a whole generated answer.
        @param extra: per-request secrets.
        @return: C{reply} with its text, thinking and tool calls redacted.
        """
        secrets = self.all(extra)
        if not secrets:
            return reply
        return reply._replace(
            content=self.text(reply.content, secrets),
            thinking=self.text(reply.thinking, secrets),
            toolCalls=tuple(_redactCall(self, call, secrets) for call in reply.toolCalls),
            logprobs=_redactValue(self, reply.logprobs, secrets),
        )

    def stream(self, extra: Iterable[str | None] = ()) -> StreamRedactor | None:
        """
        @param extra: per-request secrets (the client's key).
        @return: a redactor for bytes sent in pieces, or C{None} when there
            is no secret to look for.
        """
        secrets = self.all(extra)
        return StreamRedactor(secrets, self._escaped(secrets)[1]) if secrets else None

    def events(self, extra: Iterable[str | None] = ()) -> EventRedactor | None:
        """
        @param extra: per-request secrets (the client's key).
        @return: a redactor for a translated stream's events, or C{None}
            when there is no secret to look for.
        """
        secrets = self.all(extra)
        return EventRedactor(self, secrets) if secrets else None


def _redactValue(redactor: Redactor, value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redactor.text(value, secrets)
    if isinstance(value, dict):
        return {
            redactor.text(k, secrets) if isinstance(k, str) else k: _redactValue(redactor, v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redactValue(redactor, v, secrets) for v in value]
    return value


def _redactCall(redactor: Redactor, call: ToolCall, secrets: tuple[str, ...]) -> ToolCall:
    return call._replace(
        id=redactor.text(call.id, secrets),
        name=redactor.text(call.name, secrets),
        arguments=_redactValue(redactor, call.arguments, secrets),
    )


class StreamRedactor:
    """
    Secrets out of bytes sent in pieces (a relayed stream, every write of an
    answer), whatever the read boundaries.

    Each piece is passed on at once, except a tail that could be the start
    of a secret split across two pieces (literally, or JSON-escaped): that
    is held until the next piece (or the end) shows what it is.  SSE events
    and NDJSON lines end with a newline, which no key starts with, so in
    practice nothing is held and no event is delayed; the check per piece
    is one substring search per secret.

    @ivar secrets: the secrets as UTF-8, longest first.
    """

    def __init__(self, secrets: Iterable[str], escaped: re.Pattern[bytes] | None = None) -> None:
        self._text = _ordered(secrets)
        self.secrets = tuple(secret.encode("utf-8") for secret in self._text)
        found = patterns(self._text)
        self._escaped = escaped if escaped is not None else found.wholeBytes
        self._prefix = found.prefixBytes
        # Six bytes a character (\\u0073), more for escapes escaped again.
        self._window = 10 * max(len(s) for s in self._text) if self._text else 0
        self._short = any(c in '/"\\\n\r\t' for s in self._text for c in s)
        self._newline = any("\n" in s for s in self._text)
        self._heads = tuple(secret[:PREFIX] for secret in self.secrets)
        self._carry = b""

    @property
    def holding(self) -> bool:
        """
        Whether a tail that may begin a secret waits for the next piece.
        """
        return bool(self._carry)

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next piece of the body.
        @return: what can be sent now, secrets replaced.
        """
        if self._carry:
            data, self._carry = self._carry + data, b""
        elif data[-1:] == b"\n" and b"\\" not in data and b"%" not in data and not self._newline:
            # The common write, one search per secret: without a backslash
            # or a percent sign no escaped spelling can match, and a whole
            # secret, a prefix to cut and a tail to hold all begin with the
            # secret's first PREFIX bytes (or are the whole of a shorter one).
            for head in self._heads:
                if head in data:
                    break
            else:
                return data
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, _MARKER)
        escapes = self._mayEscape(data)
        if escapes:
            data = self._escaped.sub(_MARKER, data)
        if data[-1:] == b"\n" and not self._newline:
            # The end of an SSE event or an NDJSON line: no secret (in any
            # spelling) can start in it and run on into the next piece.
            return self._cut(data, escapes)
        # A run of a secret's start that cannot grow (the next character is
        # no part of it) is cut before the tail is chosen: a released piece
        # ending in five characters of a key and a held tail beginning with
        # the sixth would otherwise meet in what the client joins.  A run
        # reaching the end may still grow into the whole secret, which must
        # then go as one marker: it is held, whole.
        if escapes:
            # First: a run in mixed spellings (sk-host\\/ILE+) is one run.
            data = cutFinal(data, self._prefix, _MARKER, self._text)
        data = cutPrefixes(data, self.secrets, _MARKER, keepEnd=True,
                           spelled=self._text if escapes else ())
        held = _heldBack(data, self.secrets)
        tail = data[-self._window :]
        if b"\\" in tail or b"%" in tail:
            held = max(held, self._heldEscaped(tail))
        if held:
            data, self._carry = data[:-held], data[-held:]
        return self._cut(data, escapes)

    def _cut(self, data: bytes, escapes: bool) -> bytes:
        """
        @return: C{data}, to be sent now, with every run of a secret's
            start cut, in any spelling when C{escapes}.
        """
        if escapes:
            data = cutEscaped(data, self._prefix, _MARKER)
        return cutPrefixes(data, self.secrets, _MARKER)

    def _mayEscape(self, data: bytes) -> bool:
        """
        @return: whether C{data} may spell a secret with JSON escapes
            (C{\\u}, or a short escape of a character some secret has) or
            percent-encoding.
        """
        # One byte first: a one-byte search is a memchr, several times
        # cheaper than a two-byte one, and most writes have no backslash.
        return (b"\\" in data and (self._short or b"\\u" in data)) or b"%" in data

    def _heldEscaped(self, tail: bytes) -> int:
        """
        @return: the length of the longest tail of C{tail} that may begin a
            JSON-escaped or percent-encoded secret.
        """
        starts = {i for i in range(len(tail)) if tail[i] == 0x5C or tail[i] == 0x25}
        for raw in self.secrets:
            index = tail.find(raw[:1])
            while index != -1:
                starts.add(index)
                index = tail.find(raw[:1], index + 1)
        for index in sorted(starts):
            if any(escapedPrefixAt(tail, index, secret) for secret in self._text):
                return len(tail) - index
        return 0

    def end(self) -> bytes:
        """
        @return: the held tail, which the body ended without completing
            (replaced if it is L{PREFIX} characters of a secret or more).
        """
        tail, self._carry = self._carry, b""
        return self._cut(tail, b"\\" in tail or b"%" in tail)


class TextRedactor:
    """
    L{StreamRedactor} for text that arrives in pieces (the content of a
    stream's deltas): a tail that could begin a secret, literally or
    written with JSON escapes (text that reads C{\\u0073\\u006b...}, as
    L{Redactor.text} replaces in a whole reply), waits for the next piece.
    The text is searched as UTF-8, where a held tail always starts at a
    character boundary (the first byte of a secret is).
    """

    def __init__(self, secrets: tuple[str, ...], escaped: re.Pattern[bytes] | None = None) -> None:
        self.secrets = secrets
        self._bytes = StreamRedactor(secrets, escaped)

    @property
    def _carry(self) -> bytes:
        return self._bytes._carry

    def feed(self, text: str) -> str:
        """
        @param text: the next piece.
        @return: what can be passed on now, secrets replaced.
        """
        if not text and not self._bytes._carry:
            return text
        return self._bytes.feed(text.encode("utf-8")).decode("utf-8")

    def end(self) -> str:
        """
        @return: the held tail.
        """
        return self._bytes.end().decode("utf-8")


class EventRedactor:
    """
    Secrets out of a translated stream's events: the text and thinking of
    consecutive deltas are watched as one text each (a key split over
    deltas is caught), tool calls and log-probabilities are redacted whole,
    and whatever is held back is released before anything that ends the
    text (tool calls, the finish, a failure).
    """

    def __init__(self, redactor: Redactor, secrets: tuple[str, ...]) -> None:
        self._redactor = redactor
        self._secrets = secrets
        escaped = redactor._escaped(secrets)[1]
        self._content = TextRedactor(secrets, escaped)
        self._thinking = TextRedactor(secrets, escaped)
        self._framable, self._heads, self._suspect = checks(secrets, PREFIX)
        self._certified: tuple[bytes, bool] = (b"", False)
        self.plain = False

    def certifies(self, framing: bytes) -> bool:
        """
        Whether the outbound byte filter may skip what an encoder writes
        for the read just fed, L{plain} text in C{framing}: the filter
        would change nothing.  Its bytes are the texts as JSON strings and
        the framing (L{ollama_proxy.protocol.dialect.Encoder.framing}).
        Any match of the filter (a secret in any spelling, a prefix to
        cut) holds a secret's first L{PREFIX} characters, and, as no secret
        here holds a quote, backslash, newline or control character, lies
        inside one run without quotes or newlines: inside a text (where
        L{feed} found none, and a plain text is written as it is), inside
        a piece of C{framing} (checked here, once per framing), or inside
        a run holding numbers or a timestamp (which no head fits).

        @param framing: the encoder's constant pieces for plain text.
        """
        known, verdict = self._certified
        if framing is known:
            return verdict
        verdict = self._framable and b"\\" not in framing and not any(
            head in framing for head in self._heads
        )
        self._certified = (framing, verdict)
        return verdict

    def feed(self, events: Sequence[Event]) -> list[Event]:
        """
        @param events: the events of one read.
        @return: the events to encode now; L{plain} says whether they were
            only deltas of content, passed as they were, whose text holds
            no character JSON escapes.
        """
        self.plain = False
        if self._clean(events):
            return events if isinstance(events, list) else list(events)
        out: list[Event] = []
        for event in events:
            if type(event) is Delta:
                assert isinstance(event, Delta)
                content = self._content.feed(event.content)
                thinking = self._thinking.feed(event.thinking)
                logprobs = event.logprobs
                if logprobs:
                    logprobs = _redactValue(self._redactor, logprobs, self._secrets)
                if content or thinking or logprobs:
                    out.append(Delta(content, thinking, logprobs))
                continue
            self._flush(out)
            if isinstance(event, ToolCalls):
                event = ToolCalls(
                    tuple(_redactCall(self._redactor, c, self._secrets) for c in event.calls)
                )
            elif isinstance(event, Finish) and event.logprobs:
                event = event._replace(
                    logprobs=_redactValue(self._redactor, event.logprobs, self._secrets)
                )
            out.append(event)
        return out

    def _clean(self, events: Sequence[Event]) -> bool:
        """
        The common case, checked once per read rather than per delta: no
        text is held, the read's text and thinking, joined, hold no secret
        (nor the first L{PREFIX} characters of one) and end in nothing that
        could begin one, and there are no tool calls or log-probabilities
        to look into.  The events then pass as they are.
        """
        if self._content._carry or self._thinking._carry:
            return False
        content: list[str] = []
        thinking: list[str] = []
        plain = True
        for event in events:
            if type(event) is Delta:
                if event.logprobs:
                    return False
                content.append(event.content)
                if event.thinking:
                    thinking.append(event.thinking)
            elif type(event) is not Finish or event.logprobs:
                return False
            else:
                plain = False
        joined = content[0] if len(content) == 1 else "".join(content)
        search = self._suspect.search
        if search(joined) or (thinking and search("".join(thinking))):
            return False
        self.plain = plain and not thinking and not ESCAPED.search(joined)
        return True

    def end(self) -> list[Event]:
        """
        @return: the held text, as a last delta (the stream ended or failed).
        """
        out: list[Event] = []
        self._flush(out)
        return out

    def _flush(self, out: list[Event]) -> None:
        content, thinking = self._content.end(), self._thinking.end()
        if content or thinking:
            out.append(Delta(content, thinking))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT = {"\r": "\\r", "\n": "\\n", "\t": "\\t"}


def _escapeControl(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def printable(text: str) -> str:
    """
    @param text: a client's or a backend's text (a model name, a path).
    @return: C{text} with control characters written as escapes (C{\\r},
        C{\\x1b}), so that it cannot forge a second log line or drive a
        terminal.
    """
    return _CONTROL.sub(_escapeControl, text) if _CONTROL.search(text) else text
