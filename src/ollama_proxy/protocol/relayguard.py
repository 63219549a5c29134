# -*- test-case-name: tests.protocol.test_relayguard -*-
"""
Secrets out of a relayed OpenAI stream's texts, across events.

The relayed routes (C{/v1/chat/completions}, C{/chat/completions},
C{/v1/completions}) send the backend's SSE bytes on as they are, through
the outbound byte filter (L{ollama_proxy.protocol.redact.StreamRedactor}),
which sees a secret whole or split across reads.  It cannot see one split
across I{events}: a backend (or a model echoing a key token by token, the
natural case) that sends C{"s"} in one delta and C{"k-..."} in the next
gets the key to the client, which joins the deltas; each piece alone is
no secret, and the JSON between them is no part of it.

L{RelayGuard} splits the body into whole SSE events and feeds every text a
client joins (each choice's C{delta.content}, C{reasoning_content},
C{reasoning}, each tool call's C{function.name} and C{arguments}, and
C{text} for C{/v1/completions}) into a L{TextRedactor} per text, as
L{ollama_proxy.protocol.redact.EventRedactor} does for translated streams:
a tail that could begin a secret waits for the next piece of the same text
and the secret, once whole, becomes C{<redacted>}.  An event whose texts
pass as they are goes out byte for byte as it came; only an event whose
text changed (or was held) is written again.  The byte filter still runs
after this on everything: this is in addition, not instead.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.certify import suspect
from ollama_proxy.protocol.events import StreamFailed
from ollama_proxy.protocol.redact import PREFIX, Redactor, TextRedactor
from ollama_proxy.protocol.stream import DEFAULT_MAX_LINE_LENGTH, SSELineTooLong

DELTA_TEXTS = ("content", "reasoning_content", "reasoning")
"""The texts of a chat delta a client joins across events."""

CALL_TEXTS = ("name", "arguments")
"""The texts of a streamed tool call's C{function} a client joins: the
arguments always; the name too (a client concatenates it as it does the
arguments, and it costs nothing while clean)."""

MAX_HELD = 1024
"""The most texts that may hold a tail at once: each holds at most a small
window (L{TextRedactor}), and a hostile stream inventing choice or call
indexes must not grow the proxy without bound."""

_EOL = re.compile(rb"\r\n|\r|\n")
_LAST = ("id", "object", "created", "model", "system_fingerprint")

Key = tuple[int, str, int]
"""A text: its choice's index, its field, its tool call's index (-1 for none)."""


def relayGuard(redactor: Redactor, extra: Iterable[str | None] = ()) -> RelayGuard | None:
    """
    @param redactor: the proxy's secrets.
    @param extra: per-request secrets (the client's key).
    @return: a guard for one relayed stream, or C{None} when there is no
        secret to look for.
    """
    secrets = redactor.all(extra)
    return RelayGuard(secrets, redactor._escaped(secrets)[1]) if secrets else None


def certifiable(secrets: tuple[str, ...]) -> bool:
    """
    Whether a guard's clean read may skip the outbound byte filter
    (L{ollama_proxy.protocol.redact.StreamRedactor}): a read of whole lines
    or events, with no backslash, no percent sign and none of a secret's
    first L{PREFIX} characters (the guard's one search, L{quickSearch}, looks for
    them) is one the filter passes as it is, holding nothing, after the
    same search, when the filter's heads are these (every secret ASCII: a
    head is then 6 bytes as the filter counts them) and no secret has a
    line end (a read ending in one could otherwise end a secret's start).
    """
    return all(secret.isascii() and "\n" not in secret and "\r" not in secret for secret in secrets)


def quickSearch(secret: str) -> re.Pattern[bytes]:
    """
    @return: one search over an event's JSON for anything of C{secret} that
        could make a text change or hold (L{ollama_proxy.protocol.certify.suspect}
        as the text is written in JSON, escapes aside): its first L{PREFIX}
        characters, or a string value (a quote then C{,}, C{}}, C{]} or
        white space: a text is a value, never a key) ending in a shorter
        proper prefix of it.  Every form begins with the secret's first
        byte, which the regular expression engine then looks for as fast
        as a substring search (one pattern for several secrets, with
        several first bytes, is some ten times slower).
    """
    head = secret[:PREFIX].encode("utf-8")
    first = re.escape(head[:1])
    shorts = [secret[:k].encode("utf-8")[1:] for k in range(min(len(secret) - 1, PREFIX - 1), 0, -1)]
    if not shorts:
        return re.compile(re.escape(head))
    tails = b"|".join(re.escape(short) for short in shorts)
    return re.compile(first + b"(?:" + re.escape(head[1:]) + b"|(?:" + tails + rb')"[\s,}\]])')


def cleanOf(quicks: tuple[re.Pattern[bytes], ...], data: bytes) -> bool:
    """
    @param quicks: the L{quickSearch} of every secret.
    @return: whether no text in C{data} (JSON: events or lines) could
        change or hold: no backslash (no escape, so every text is written
        as it is), no percent sign (no percent-encoded spelling) and no form
        a search in C{quicks} finds.
    """
    if b"\\" in data or b"%" in data:
        return False
    for quick in quicks:
        if quick.search(data):
            return False
    return True


def feedHeld(held: dict[Any, TextRedactor], key: Any, value: str, redactor: TextRedactor) -> str:
    """
    One piece of a text a client joins, through its redactor: the one
    C{held} keeps for C{key}, or a fresh one.  The guards' one way to feed
    a text (L{RelayGuard}, the NDJSON and agent guards).

    @param held: the redactors holding a tail, by text; C{key}'s is kept
        there while it holds one, and removed once it does not.
    @return: C{value} itself when it passes as it is, otherwise what may go
        now.
    """
    try:
        new = redactor.feed(value)
    except UnicodeEncodeError:
        # A lone surrogate (Python's decoder takes one) has no UTF-8.
        value = value.encode("utf-8", "replace").decode("utf-8")
        new = redactor.feed(value)
    if redactor._carry:
        held[key] = redactor
    else:
        held.pop(key, None)
    return value if new == value else new


def endHeld(held: dict[Any, TextRedactor], keys: Iterable[Any]) -> dict[Any, str]:
    """
    The texts C{keys} name end: their held tails released.

    @param held: the redactors holding a tail, by text; C{keys}' are removed.
    @return: each non-empty tail, by text.
    """
    out = {}
    for key in list(keys):
        tail = held.pop(key).end()
        if tail:
            out[key] = tail
    return out


def eventData(raw: bytes) -> bytes | None:
    """
    @param raw: one whole SSE event, its blank line included.
    @return: its C{data} field (several lines joined with C{\\n}, as a
        client joins them), or C{None} if it has none.
    """
    if raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2 and b"\r" not in raw:
        return raw[6:-2]  # the common event: one data line
    parts = []
    for line in raw.splitlines():
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


def decodeLenient(data: bytes) -> Any:
    """
    @return: the event's JSON as a lenient client reads it (orjson first;
        Python's C{json}, which takes C{NaN} and lone surrogates, after),
        or C{None}.
    """
    try:
        return codec.loadsBounded(data)
    except (codec.JSONDecodeError, codec.TooDeep):
        pass
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def dumpLenient(obj: Any) -> bytes:
    """
    @return: C{obj} (from L{decodeLenient}) as compact JSON again.
    """
    try:
        return codec.dumps(obj)
    except TypeError:  # an integer beyond 64 bits, from the lenient decoder
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


class RelayGuard:
    """
    A relayed OpenAI stream's body in, the same body out with every secret
    split across events replaced (see the module docstring).  One per
    stream; L{feed} once per read, L{end} once at the end.

    A held tail is released into the next event of the same text (the
    redactor prepends it), into the event that carries its choice's
    C{finish_reason} or an error, or, at C{[DONE]} or the body's end, in one
    chunk built from the last event's C{id}, C{object}, C{model} and
    C{created}: never dropped, never after C{[DONE]}.
    """

    def __init__(self, secrets: tuple[str, ...], escaped: re.Pattern[bytes] | None = None,
                 maxEvent: int = DEFAULT_MAX_LINE_LENGTH) -> None:
        self._secrets = secrets
        self._escaped = escaped
        self._suspect = suspect(secrets, PREFIX)
        self._quicks = tuple(quickSearch(secret) for secret in secrets)
        self._maxEvent = maxEvent
        self._certifies = certifiable(secrets)
        self.certified = False
        """Whether the last L{feed} passed its read as it came after the
        outbound filter's own search (see L{certifiable})."""
        self._partial = b""
        self._held: dict[Key, TextRedactor] = {}
        self._spare: TextRedactor | None = None
        self._last: dict[str, Any] = {}

    @property
    def holding(self) -> bool:
        """
        Whether some text holds a tail, or a partial event waits.
        """
        return bool(self._held or self._partial)

    def feed(self, data: bytes) -> bytes:
        """
        @param data: the next read of the body.
        @return: the whole events it completed, as they came or with their
            texts redacted.
        @raise SSELineTooLong: if an unfinished event outgrows the line limit.
        @raise StreamFailed: if too many texts hold a tail at once (its
            C{output} is what this read completed before).
        """
        if (not self._partial and not self._held and data[-2:] == b"\n\n"
                and b"\r" not in data and self._clean(data)):
            self.certified = self._certifies
            return data  # whole events, none with a text to change or hold
        self.certified = False
        buf = self._partial + data if self._partial else data
        events, self._partial = _split(buf)
        if len(self._partial) > self._maxEvent:
            self._partial = b""  # what broke: not passed on at the end
            raise SSELineTooLong(f"upstream SSE event longer than {self._maxEvent} bytes")
        if not events:
            return b""
        out = []
        for raw in events:
            try:
                out.append(self._event(raw))
            except StreamFailed as e:
                e.output = b"".join(out)
                raise
        return out[0] if len(out) == 1 else b"".join(out)

    def end(self) -> bytes:
        """
        @return: an unfinished last event (guarded as a whole one: after a
            failure the relay ends it, so a client reads it) and every held
            tail, in one last chunk (the body ended, or failed).
        """
        partial, self._partial = self._partial, b""
        out = self._event(partial) if partial.strip() else partial
        held = self._release()
        if held and out and not out.endswith(b"\n\n"):
            out += b"\n\n"  # or the held text would join its last line
        return out + held

    def _clean(self, data: bytes) -> bool:
        """
        @return: whether no text in C{data} (events' JSON) could change or
            hold (L{cleanOf}).  Such events pass without being split or
            decoded; the id and model the released chunk reuses come from
            the event that began a hold, decoded.
        """
        return cleanOf(self._quicks, data)

    def _event(self, raw: bytes) -> bytes:
        data = eventData(raw)
        if data is None:
            return raw
        if not self._held and self._clean(data):
            return raw
        if data.strip() == b"[DONE]":
            return self._release() + raw
        obj = decodeLenient(data)
        if not isinstance(obj, dict):
            return raw
        choices = obj.get("choices")
        if not isinstance(choices, list):
            if "error" in obj and self._held:
                return self._release() + raw  # the texts end here
            return raw
        last = self._last
        for name in _LAST:
            if name in obj:
                last[name] = obj[name]
        changed = False
        for position, choice in enumerate(choices):
            if isinstance(choice, dict):
                changed |= self._choice(choice, position)
        if not changed:
            return raw
        return rewriteEvent(raw, dumpLenient(obj))

    def _choice(self, choice: dict[str, Any], position: int) -> bool:
        """
        Feed one choice's texts, release its held tails if it finishes.

        @return: whether the choice changed.
        """
        index = choice.get("index")
        if type(index) is not int:
            index = position
        changed = False
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for field in DELTA_TEXTS:
                value = delta.get(field)
                if isinstance(value, str):
                    new = self._text((index, field, -1), value)
                    if new is not value:
                        delta[field] = new
                        changed = True
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for j, call in enumerate(calls):
                    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
                        continue
                    function = call["function"]
                    number = call.get("index")
                    if type(number) is not int:
                        number = j
                    for field in CALL_TEXTS:
                        value = function.get(field)
                        if isinstance(value, str):
                            new = self._text((index, field, number), value)
                            if new is not value:
                                function[field] = new
                                changed = True
        value = choice.get("text")
        if isinstance(value, str):
            new = self._text((index, "text", -1), value)
            if new is not value:
                choice["text"] = new
                changed = True
        if choice.get("finish_reason") is not None and self._held:
            tails = self._tails(index)
            if tails:
                _place(choice, tails, append=True)
                changed = True
        return changed

    def _text(self, key: Key, value: str) -> str:
        """
        @return: C{value} itself when it passes as it is (the common case:
            nothing held, nothing suspect), otherwise what may go now.
        """
        redactor = self._held.get(key)
        if redactor is None:
            if not self._suspect.search(value):
                return value
            # A redactor holding nothing has no state: one is kept for the
            # next text (making one costs more than the text's search).
            redactor, self._spare = self._spare or TextRedactor(self._secrets, self._escaped), None
        new = feedHeld(self._held, key, value, redactor)
        if key not in self._held:
            self._spare = redactor
        elif len(self._held) > MAX_HELD:
            del self._held[key]
            raise StreamFailed(f"backend stream holds more than {MAX_HELD} texts at once")
        return new

    def _tails(self, index: int | None) -> dict[Key, str]:
        """
        @param index: a choice's index, or C{None} for every choice.
        @return: the held tails of that choice, released.
        """
        return endHeld(self._held, [k for k in self._held if index is None or k[0] == index])

    def _release(self) -> bytes:
        """
        @return: every held tail, in one chunk like the last event.
        """
        if not self._held:
            return b""
        tails = self._tails(None)
        if not tails:
            return b""
        choices: dict[int, dict[str, Any]] = {}
        for key, tail in tails.items():
            choice = choices.setdefault(key[0], {"index": key[0]})
            _place(choice, {key: tail}, append=False)
        for choice in choices.values():
            choice["finish_reason"] = None
        chunk = {name: self._last[name] for name in _LAST if name in self._last}
        chunk["choices"] = list(choices.values())
        return b"data: " + dumpLenient(chunk) + b"\n\n"


def _place(choice: dict[str, Any], tails: dict[Key, str], append: bool) -> None:
    """
    Put released tails into a choice: appended to its texts (the tails come
    after what this event carried), or added where it has none.
    """
    for (_, field, number), tail in tails.items():
        if field == "text":
            target = choice
        else:
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            target = delta
            if number >= 0:
                calls = delta.get("tool_calls")
                if not isinstance(calls, list):
                    calls = delta["tool_calls"] = []
                found = None
                for position, call in enumerate(calls):
                    if isinstance(call, dict) and call.get("index", position) == number:
                        found = call
                if found is None:
                    found = {"index": number}
                    calls.append(found)
                function = found.get("function")
                if not isinstance(function, dict):
                    function = found["function"] = {}
                target = function
        before = target.get(field)
        target[field] = (before + tail) if append and isinstance(before, str) else tail


def _split(buf: bytes) -> tuple[list[bytes], bytes]:
    """
    @return: the whole events in C{buf} (each with its blank line, bytes as
        they came) and the unfinished rest.
    """
    events = []
    start = 0
    if b"\r" not in buf:
        index = buf.find(b"\n\n")
        while index != -1:
            events.append(buf[start : index + 2])
            start = index + 2
            index = buf.find(b"\n\n", start)
        return events, buf[start:]
    line = 0
    size = len(buf)
    for match in _EOL.finditer(buf):
        if match.end() == size and match.group() == b"\r":
            break  # may be the first half of a CRLF
        if match.start() == line:  # an empty line ends the event
            events.append(buf[start : match.end()])
            start = match.end()
        line = match.end()
    return events, buf[start:]


def rewriteEvent(raw: bytes, data: bytes) -> bytes:
    """
    @return: the event C{raw} with its data replaced by C{data}; its other
        fields (C{event}, C{id}) kept, in order.
    """
    lines = []
    placed = False
    for line in raw.splitlines():
        if not line:
            continue
        if line.partition(b":")[0] == b"data":
            if not placed:
                lines.append(b"data: " + data)
                placed = True
        else:
            lines.append(line)
    return b"\n".join(lines) + b"\n\n"
