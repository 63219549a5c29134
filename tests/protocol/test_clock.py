"""
Timestamps: C{modified_at} from a backend's C{created}, however odd.
"""

from __future__ import annotations

import datetime
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import buildCatalog
from ollama_proxy.protocol.listing import showResponse, tagsResponse

NOW = 1_750_000_000_123_456_789


def tagsBody(models: Any) -> Any:
    """
    The C{/api/tags} body for an OpenAI model list, at L{NOW}.
    """
    return tagsResponse(buildCatalog(models, None).values(), NOW)


def _parseable(stamp: str) -> datetime.datetime:
    """
    Parse a C{modified_at} the way Go's RFC 3339 parser and pydantic do:
    a four-digit year, nine fractional digits, C{Z}.
    """
    return datetime.datetime.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")


class CreatedTimestampTests(SynchronousTestCase):
    """
    C{modified_at} built from a backend's C{created} must stay a parseable
    RFC 3339 time, whatever unit or size the backend used.
    """

    def test_tagsMillisecondCreated(self) -> None:
        """
        A C{created} in milliseconds (some proxies do this) would be a year
        past 9999, which no client parses: C{/api/tags} falls back to now.
        """
        tags = tagsBody({"data": [{"id": "m", "created": 1_700_000_000_000}]})
        stamp = tags["models"][0]["modified_at"]
        self.assertEqual(_parseable(stamp).year, 2025)

    def test_tagsHugeCreated(self) -> None:
        """
        A C{created} too large for the platform's C{time_t} must not crash
        C{/api/tags} (an C{OverflowError} would be a 500).
        """
        tags = tagsBody({"data": [{"id": "m", "created": 10**20}]})
        self.assertEqual(_parseable(tags["models"][0]["modified_at"]).year, 2025)

    def test_tagsPlausibleCreatedKept(self) -> None:
        """
        A C{created} in seconds is still used.
        """
        tags = tagsBody({"data": [{"id": "m", "created": 1_700_000_000}]})
        self.assertEqual(tags["models"][0]["modified_at"], "2023-11-14T22:13:20.000000000Z")

    def test_showHugeCreated(self) -> None:
        """
        C{/api/show}'s C{modified_at} has the same guard.
        """
        for created in (1_700_000_000_000, 10**20):
            catalog = buildCatalog({"data": [{"id": "m", "created": created}]}, None)
            stamp = showResponse(catalog["m"], NOW)["modified_at"]
            self.assertEqual(_parseable(stamp).year, 2025)
