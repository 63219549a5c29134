# -*- test-case-name: tests.web.test_fleet -*-
"""
The web side of several backends for one model: a request sent through the
router's fleet (L{ollama_proxy.upstream.fleet}), and the backend that
answered named in C{X-Ollama-Proxy-Backend} and on the exchange.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Awaitable, Callable, TypeVar

from ollama_proxy.protocol.errors import UpstreamError, UpstreamHTTPError
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.bridge import Exchange
from ollama_proxy.web.context import ProxyContext

BACKEND_HEADER = b"X-Ollama-Proxy-Backend"
"""Names the backend that answered (its configured name, never its URL)."""

T = TypeVar("T")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@lru_cache(maxsize=256)
def backendHeader(name: str) -> bytes:
    """
    @param name: a configured backend name (one of a few: each is made
        once, not on every request).
    @return: the L{BACKEND_HEADER} value: the name, control characters
        replaced (a header cannot carry them).
    """
    return _CONTROL.sub("?", name).encode("utf-8")


async def send(
    ctx: ProxyContext, ex: Exchange, route: Route, call: Callable[[Route], Awaitable[T]]
) -> tuple[Route, T]:
    """
    Send a request to C{route}'s backend, or with several backends to the
    member of its pool the router's fleet picks (failing over before the
    first byte), and name the backend that answered: on the exchange (log
    line, metrics) and in L{BACKEND_HEADER}.

    @param ctx: the shared context.
    @param ex: the exchange.
    @param route: what L{ProxyResource.route} resolved.
    @param call: sends to one member, returns its answer's headers.
    @return: the member that answered, and its answer.
    @raise ProxyError: the last member's error (a backend that answered
        with an error is named too).
    """
    fleet = ctx.models.router.fleet
    try:
        if fleet is None:
            answered, result = route, await call(route)
        else:
            answered, result, lease = await fleet.send(route, call, route.key,
                                                        clientKey=ex.presented)
            if lease is not None:
                # Finished (or the client gone): a stream the backend broke
                # after its first byte counts against it.
                ex.request.notifyFinish().addBoth(
                    lambda _: lease.release(failed=ex.upstreamError == "stream"))
    except UpstreamError as e:
        if e.backend is not None:
            ex.backend = e.backend
            ex.request.setHeader(BACKEND_HEADER, backendHeader(e.backend))
        elif fleet is None and isinstance(e, UpstreamHTTPError):
            ex.request.setHeader(BACKEND_HEADER, backendHeader(route.name))
        raise
    ex.backend = answered.name
    ex.request.setHeader(BACKEND_HEADER, backendHeader(answered.name))
    return answered, result
