# -*- test-case-name: tests.protocol.test_spelling -*-
"""
How a secret may be spelled in what the proxy passes on, and what of it
counts: the patterns and searches behind L{ollama_proxy.protocol.redact}.

A client reads a JSON string with its escapes decoded (C{\\u0073}, C{\\/}),
and may percent-decode a URL, so a secret written that way is the secret;
and the first L{PREFIX} characters of a secret give that much of it away,
however they are spelled.  A run that may still grow into the whole secret
(it reaches the end of what has arrived) is not cut but held, so that the
whole secret becomes one marker when the rest comes.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, AnyStr, NamedTuple, Sequence

PREFIX = 6
"""The shortest piece of a secret that counts as the secret: a gateway's
masked echo (C{sk-proj-****wxyz}) or a cut value gives away a prefix, and a
prefix narrows the search for the rest."""

_NEVER = "(?!)"
"""A pattern that matches nothing: the search for no secret at all."""

_SHORT = {"/": r"\\+/", '"': r'\\+"', "\\": r"\\\\", "\n": r"\\+n", "\r": r"\\+r", "\t": r"\\+t"}


def escapedChar(char: str) -> str:
    """
    @return: a regular expression for C{char} as it may appear inside a
        JSON string: itself, or any C{\\uXXXX} escape of it (either case of
        hex digit), or its short escape, or percent-encoded.
    """
    code = ord(char)
    forms = [re.escape(char)]
    # One backslash or more: JSON text inside a JSON string (a tool's
    # arguments, a body quoted in an error) doubles the backslash of each
    # escape at each level, and a relayed body is searched as it is.
    if code < 0x10000:
        forms.append(r"\\+u(?i:%04x)" % code)
    else:
        high = 0xD800 + ((code - 0x10000) >> 10)
        low = 0xDC00 + ((code - 0x10000) & 0x3FF)
        forms.append(r"\\+u(?i:%04x)\\+u(?i:%04x)" % (high, low))
    if char in _SHORT:
        forms.append(_SHORT[char])
    # Percent-encoded once or more (%2F, %252f): a key in a URL, as logged.
    forms.append("".join(f"%(?:25)*(?i:{byte:02x})" for byte in char.encode("utf-8")))
    return "(?:" + "|".join(forms) + ")"


def escapedPattern(secrets: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
    """
    @return: one pattern (text, and UTF-8 bytes) matching any of C{secrets}
        with any of its characters JSON-escaped or percent-encoded, longest
        first.
    """
    text = "|".join("".join(escapedChar(c) for c in secret) for secret in secrets) or _NEVER
    return re.compile(text), re.compile(text.encode("utf-8"))


def prefixPattern(secrets: Sequence[str]) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
    """
    @return: one pattern (text, and UTF-8 bytes) matching a run of
        L{PREFIX} characters or more that begins one of C{secrets}, each
        character in any spelling L{escapedChar} knows, as long as it goes
        on matching (the whole secret included).
    """
    forms = []
    for secret in secrets:
        tail = ""
        for char in reversed(secret[PREFIX:]):
            tail = f"(?:{escapedChar(char)}{tail})?"
        forms.append("".join(escapedChar(c) for c in secret[:PREFIX]) + tail)
    text = "|".join(forms) or _NEVER
    return re.compile(text), re.compile(text.encode("utf-8"))


class Patterns(NamedTuple):
    """
    The searches for one set of secrets, as text and as UTF-8 bytes.
    """

    whole: re.Pattern[str]
    wholeBytes: re.Pattern[bytes]
    prefix: re.Pattern[str]
    prefixBytes: re.Pattern[bytes]


@lru_cache(maxsize=64)
def patterns(secrets: tuple[str, ...]) -> Patterns:
    """
    @param secrets: the secrets, longest first.
    @return: their L{escapedPattern} and L{prefixPattern}, made once (a
        redactor per text of a stream asks again; per-request client keys
        are why the cache is bounded).
    """
    return Patterns(*escapedPattern(secrets), *prefixPattern(secrets))


def cutPrefixes(data: AnyStr, secrets: Sequence[AnyStr], marker: AnyStr, keepEnd: bool = False,
                spelled: Sequence[str] = ()) -> AnyStr:
    """
    @param data: text or bytes whose whole secrets are already replaced.
    @param secrets: the secrets, of the same type.
    @param marker: what a secret becomes, of the same type.
    @param keepEnd: leave a run that reaches the end of C{data} (it may
        grow into the whole secret with what comes next; the caller holds
        it).
    @param spelled: with C{keepEnd}, for bytes: the secrets as text, so
        that a run going on to the end in another spelling (C{sk-host}
        then C{\\/ILE+b}) is left too.
    @return: C{data} with every run of L{PREFIX} or more characters that
        begins a secret replaced too: a gateway's masked echo
        (C{sk-proj-abc****wxyz}) or a cut key gives that much away.
    """
    for secret in secrets:
        if len(secret) <= PREFIX:
            continue  # its prefix is itself, replaced already
        head = secret[:PREFIX]
        index = data.find(head)
        while index != -1:
            end = index + PREFIX
            limit = index + min(len(secret), len(data) - index)
            while end < limit and data[end] == secret[end - index]:
                end += 1
            if keepEnd and (end == len(data) or (
                    spelled and isinstance(data, bytes)
                    and any(escapedPrefixAt(data, index, text) for text in spelled))):
                index = data.find(head, end)  # may still grow: held
                continue
            data = data[:index] + marker + data[end:]
            index = data.find(head, index + len(marker))
    return data


def cutEscaped(data: AnyStr, pattern: re.Pattern[AnyStr], marker: AnyStr) -> AnyStr:
    """
    @param pattern: a L{prefixPattern} of the same type.
    @return: C{data} with every run C{pattern} finds replaced by C{marker}.
    """
    return pattern.sub(marker, data)


def cutFinal(data: bytes, pattern: re.Pattern[bytes], marker: bytes, secrets: Sequence[str]) -> bytes:
    """
    L{cutEscaped}, except for a run that may still grow into the whole
    secret: from its start to the end of C{data}, a proper prefix of one
    of C{secrets} in some spelling (cut inside an escape included).  The
    caller holds that run (L{escapedPrefixAt} finds it again).
    """

    def cut(match: re.Match[bytes]) -> bytes:
        start = match.start()
        if any(escapedPrefixAt(data, start, secret) for secret in secrets):
            return match.group()
        return marker

    return pattern.sub(cut, data)


def heldBack(data: Any, secrets: Sequence[Any]) -> int:
    """
    @param data: text or bytes.
    @param secrets: the secrets, of the same type.
    @return: the length of the longest tail of C{data} that is a proper
        prefix of a secret (literally).
    """
    longest = 0
    size = len(data)
    for secret in secrets:
        first = secret[:1]
        index = data.find(first, max(0, size - len(secret) + 1))
        while index != -1:
            if secret.startswith(data[index:]):
                longest = max(longest, size - index)
                break
            index = data.find(first, index + 1)
    return longest


_PERCENT = re.compile(rb"%(?:25)*([0-9a-fA-F]{0,2})")


def _percentAt(data: bytes, at: int, raw: bytes) -> int | None:
    """
    @return: where C{raw} (a character's UTF-8) ends when it is spelled
        percent-encoded (once or more) at C{data[at:]}, C{len(data)} if the
        data ends inside that spelling, or C{None} if it is not there.
    """
    for byte in raw:
        if at == len(data):
            return at
        found = _PERCENT.match(data, at)
        if found is None:
            return None
        digits = found.group(1)
        if found.end() == len(data):
            # Cut inside the spelling: "%", "%2", "%25", "%7".
            wanted = b"%02x" % byte
            if wanted.startswith(digits.lower()) or b"25".startswith(digits):
                return len(data)
            return None
        if len(digits) != 2 or int(digits, 16) != byte:
            return None
        at = found.end()
    return at


def escapedPrefixAt(data: bytes, index: int, secret: str) -> bool:
    """
    @return: whether C{data[index:]} is a proper prefix of C{secret} as a
        JSON string or a URL may spell it (any character C{\\uXXXX}-escaped
        or percent-encoded, possibly cut inside the escape).
    """
    at = index
    for char in secret:
        if at == len(data):
            return True
        raw = char.encode("utf-8")
        if data.startswith(raw, at):
            at += len(raw)
            continue
        if len(data) - at < len(raw) and raw.startswith(data[at:]):
            return True
        if data[at] == 0x25:  # percent
            end = _percentAt(data, at, raw)
            if end is None:
                return False
            at = end
            continue
        if data[at] != 0x5C:  # backslash
            return False
        while data[at + 1 : at + 2] == b"\\":
            at += 1  # an escape escaped again (JSON text in a JSON string)
        escape = b"\\u%04x" % ord(char) if ord(char) < 0x10000 else b""
        piece = data[at : at + 6]
        if not escape or not escape.lower().startswith(piece.lower()[:2]):
            short = {"/": b"\\/", '"': b'\\"', "\\": b"\\\\"}.get(char)
            if short is not None and short.startswith(data[at : at + 2]):
                at += 2
                continue
            return False
        if piece.lower() != escape[: len(piece)]:
            return False
        at += len(piece)
        if len(piece) < 6:
            return at == len(data)
    return False
