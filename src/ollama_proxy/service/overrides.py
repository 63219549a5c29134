# -*- test-case-name: tests.service.test_overrides -*-
"""
The C{--model-info} file: per-model metadata overrides, read and validated
at start-up (the validation itself is pure, in
L{ollama_proxy.protocol.catalog.parseOverrides}).
"""

from __future__ import annotations

import json
import sys

from ollama_proxy.protocol.catalog import Facts, parseOverrides


def loadOverrides(path: str) -> dict[str, Facts]:
    """
    Read the C{--model-info} file: JSON, or TOML when the name ends in
    C{.toml} (Python 3.11+).

    @param path: the file name.
    @return: the validated overrides.
    @raise ValueError: for unreadable or malformed files.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    return parseOverridesFile(path, raw)


def parseOverridesFile(path: str, raw: bytes) -> dict[str, Facts]:
    """
    Parse the C{--model-info} file's bytes (pure: the read is the
    caller's).

    @param path: the file name: C{.toml} means TOML, anything else JSON;
        also for messages.
    @param raw: the file's content.
    @return: the validated overrides.
    @raise ValueError: for a malformed file.
    """
    if path.endswith(".toml"):
        if sys.version_info < (3, 11):
            raise ValueError("TOML model-info files need Python 3.11; use JSON")
        import tomllib

        try:
            document = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: {e}") from None
    else:
        try:
            document = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    return parseOverrides(document)
