# -*- test-case-name: tests.service.test_listen -*-
"""
What the C{--listen} descriptions say about the proxy's own sockets: the
listen backlog they get, and whether every one of them is on loopback.

A burst of clients that connect at once (a batch job, a UI reconnecting
after a restart) fills the kernel's accept queue faster than one reactor
turn empties it.  strports' default backlog of 50 drops the rest of the
SYNs, and those clients wait for retransmits (1, 3, 7, 15 s ...).  Like Go
and nginx, the proxy asks for the kernel's own ceiling (C{somaxconn})
unless the description names a C{backlog=}.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"

FALLBACK_BACKLOG = 4096
"""The backlog where the kernel's ceiling cannot be read (Linux's default
C{somaxconn} since 5.4; the kernel caps any larger request anyway)."""

_BACKLOG_KINDS = frozenset({"tcp", "tcp6", "ssl", "unix"})
"""The strports endpoint types that take C{backlog=}."""

_TCP_KINDS = frozenset({"tcp", "tcp6", "ssl"})


def somaxconn(path: str = SOMAXCONN_PATH) -> int:
    """
    @param path: where the kernel publishes its accept-queue ceiling.
    @return: that ceiling, or L{FALLBACK_BACKLOG} where it is unknown.
    """
    try:
        with open(path, encoding="ascii") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return FALLBACK_BACKLOG
    return value if value > 0 else FALLBACK_BACKLOG


def _split(description: str) -> list[str]:
    """
    Split a strports description at the colons that are not escaped.

    @param description: e.g. C{tcp:11434:interface=127.0.0.1}.
    @return: its parts, escapes kept.
    """
    parts, current, escaped = [], "", False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            current += char
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def withBacklog(description: str, backlog: int) -> str:
    """
    The description with a listen backlog, unless it names one.

    @param description: a C{--listen} value.
    @param backlog: the backlog to ask for.
    @return: C{description} plus C{:backlog=N} for C{tcp}, C{tcp6},
        C{ssl} and C{unix}; other kinds (C{systemd}: the socket is already
        listening) and descriptions with their own C{backlog=} unchanged.
    """
    parts = _split(description)
    if parts[0].lower() not in _BACKLOG_KINDS or len(parts) < 2:
        return description
    if any(part.startswith("backlog=") for part in parts[1:]):
        return description
    return f"{description}:backlog={backlog}"


def _interface(description: str) -> str | None:
    """
    @param description: a C{--listen} value.
    @return: the interface a TCP description binds (C{""} for all), or
        C{None} for other kinds.
    """
    parts = _split(description)
    if parts[0].lower() not in _TCP_KINDS:
        return None
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep and key == "interface":
            return value.replace("\\:", ":")
    return ""


def isLoopback(host: str) -> bool:
    """
    @param host: an interface or C{Host} name, IPv6 possibly in brackets.
    @return: whether it is a loopback address or C{localhost}.
    """
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def loopbackOnly(descriptions: Sequence[str]) -> bool:
    """
    Whether a browser elsewhere cannot reach the proxy except through a
    name that resolves to this machine (the DNS-rebinding case the C{Host}
    check guards, as Ollama does when it listens on loopback).

    @param descriptions: the C{--listen} values.
    @return: C{True} when there is at least one and every one is a TCP
        listener on a loopback interface; C{False} for any other
        interface, a UNIX socket (a reverse proxy in front forwards its
        own C{Host}) or a socket handed over by systemd.
    """
    interfaces = [_interface(description) for description in descriptions]
    return bool(interfaces) and all(
        interface is not None and isLoopback(interface) for interface in interfaces
    )
