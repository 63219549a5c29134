# -*- test-case-name: tests.protocol.test_clock -*-
"""
Time as Ollama clients read it: nanosecond wall-clock values formatted as
RFC 3339 with nine fractional digits.  The clock itself is passed in as a
function, so durations can be asserted exactly.
"""

from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], int]
"""A function returning the current wall-clock time in nanoseconds."""


class TimestampFormatter:
    """
    Format nanosecond timestamps as RFC 3339 UTC with nine fractional digits.

    Ollama clients parse C{created_at}/C{modified_at} strictly (OllamaKit
    uses a fixed nine-digit format), so the fraction is always present.
    The C{strftime} part is cached per second because a stream formats one
    timestamp per socket read.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        """
        @param ns: nanoseconds since the epoch.
        @return: e.g. C{"2025-07-07T20:22:19.184789000Z"}.
        """
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{frac:09d}Z"


formatTimestamp = TimestampFormatter()

_LAST_SECOND = 253_402_300_799
"""9999-12-31T23:59:59Z: the last second with a four-digit year, which
RFC 3339 requires and Go's and pydantic's parsers insist on."""


def createdTimestamp(created: object, nowNs: int) -> str:
    """
    C{modified_at} from a backend's C{created} (Unix seconds).

    Backends that report milliseconds, or nonsense, would give a year past
    9999 that no client parses, or overflow C{time_t}; then, as when there
    is no C{created}, the current time is used.

    @param created: the C{created} value, if any.
    @param nowNs: the current time (ns).
    @return: the formatted timestamp.
    """
    if (
        isinstance(created, int)
        and not isinstance(created, bool)
        and 0 < created <= _LAST_SECOND
    ):
        return formatTimestamp(created * 1_000_000_000)
    return formatTimestamp(nowNs)


wallClock: Clock = time.time_ns
"""The default L{Clock}: C{time.time_ns} itself (nanoseconds since the
epoch), not a function around it: a stream asks it once per socket read."""
