# -*- test-case-name: tests.protocol.test_certify -*-
"""
The checks behind the outbound filter's one skip (issue 23), for
L{ollama_proxy.protocol.redact.EventRedactor}: which text the event
redactor cannot pass as it is (one search per read), which text a dialect
writes as it is, and which secrets no dialect's framing can help spell.
Why together they make the byte filter's search needless for a read:
C{docs/reliability.md}, "The one skip".
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

from ollama_proxy.protocol.dialect import VARYING

ESCAPED = re.compile(r'["\\\x00-\x1f]')
"""What JSON writes as an escape (C{codec.dumps}: nothing else); a text
without any is written as it is."""

_DELIMITERS = re.compile(r'["\\\x00-\x1f\x7f]')


def suspect(secrets: Sequence[str], prefix: int) -> re.Pattern[str]:
    """
    @param secrets: the secrets.
    @param prefix: how many leading characters of a secret count as the
        secret (L{ollama_proxy.protocol.redact.PREFIX}).
    @return: one pattern for text that cannot pass as it is: a backslash
        or a percent sign (an escaped or percent-encoded spelling, which
        a client decoding the text reads as the secret), the first
        C{prefix} characters of a secret,
        or a tail that is a proper prefix of one; one search instead of a
        loop per secret.  A tail of C{prefix} characters or more holds the
        first C{prefix}, so only the shorter tails need a form of their own
        (and a secret of thousands of characters makes a small pattern).
    """
    forms = [re.escape("\\"), "%"]
    for secret in secrets:
        forms.append(re.escape(secret[:prefix]))
        short = secret[: min(len(secret) - 1, prefix - 1)]
        if short:
            tail = re.escape(short[-1])
            for char in reversed(short[:-1]):
                tail = re.escape(char) + "(?:" + tail + ")?"
            forms.append(tail + r"\Z")
    return re.compile("|".join(forms))


def framable(secrets: Sequence[str], prefix: int) -> bool:
    """
    @return: whether no secret is one a dialect's framing could help
        spell: none has a quote, backslash or control character (the
        framing's delimiters and escapes), and none begins with C{prefix}
        characters a number or a timestamp could spell.
    """
    return not any(
        _DELIMITERS.search(secret) or VARYING.issuperset(secret[:prefix]) for secret in secrets
    )


class SecretChecks(NamedTuple):
    """
    What the event redactor checks a request's reads against, made once
    for its secrets (L{checks}).

    @ivar framable: L{framable}.
    @ivar heads: each secret's first C{prefix} characters, encoded: a
        framing that holds one could help spell a secret.
    @ivar suspect: L{suspect}.
    """

    framable: bool
    heads: tuple[bytes, ...]
    suspect: re.Pattern[str]


def checks(secrets: Sequence[str], prefix: int) -> SecretChecks:
    """
    Everything the certified skip needs to know of a request's secrets, in
    one question (the event redactor asks once, when it is made).

    @param secrets: the secrets.
    @param prefix: how many leading characters of a secret count as the
        secret (L{ollama_proxy.protocol.redact.PREFIX}).
    @return: the checks.
    """
    return SecretChecks(
        framable(secrets, prefix),
        tuple(secret[:prefix].encode("utf-8") for secret in secrets),
        suspect(secrets, prefix),
    )
