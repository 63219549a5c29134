# -*- test-case-name: tests.upstream.test_cache -*-
"""
The one TTL cache behind everything the proxy learns from its backends:
each backend's model list and its model metadata (LiteLLM's
C{/v1/model/info}) are each a L{TTLCache}, so nothing derived from them is
ever older than the TTL (there is no second cache stacked on top).
"""

from __future__ import annotations

from typing import Awaitable, Callable, Generic, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ollama_proxy.protocol.errors import ProxyError, UpstreamError, describe

T = TypeVar("T")

DEFAULT_TTL = 60.0
"""Seconds a backend's model list is reused before it is fetched again."""

log = Logger()


class TTLCache(Generic[T]):
    """
    One value from a backend (a model list, its metadata), fetched at most
    once per C{ttl}.

    Concurrent callers share one fetch.  A failed fetch is logged and, when
    an earlier list exists, that list is served until the next try (C{ttl}
    later); without one, the error is raised and the next call tries again.

    @ivar value: the last good value, or C{None} before the first success.
    @ivar clock: the clock that times it.
    @ivar error: the error of the last fetch, or C{None} if it worked.
    @ivar lastCheck: the clock's seconds when the last fetch ended, or
        C{None} before the first (shown by the status page).
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[T]],
        clock: IReactorTime,
        ttl: float = DEFAULT_TTL,
        name: str = "backend",
        what: str = "the model list",
    ) -> None:
        """
        @param fetch: returns the backend's current list; raises a
            L{ProxyError} when it cannot.
        @param clock: for the age of the list.
        @param ttl: seconds a list (or a failure, when a list exists) is
            reused; C{0} fetches on every call.
        @param name: the backend's name, for log lines.
        @param what: what is fetched, for log lines.
        """
        self._fetch = fetch
        self.clock = clock
        self.ttl = ttl
        self.name = name
        self.what = what
        self.value: T | None = None
        self.error: ProxyError | None = None
        self.lastCheck: float | None = None
        self._checked: float | None = None
        self._waiting: list[Deferred[T]] | None = None

    def fresh(self) -> bool:
        """
        @return: whether the last check is younger than C{ttl}.
        """
        return (
            self._checked is not None
            and self.ttl > 0
            and self.clock.seconds() - self._checked < self.ttl
        )

    def store(self, value: T) -> None:
        """
        Take a value fetched by someone else (an active health check):
        fresh from now.

        @param value: the new value.
        """
        self.value = value
        self.error = None
        self._checked = self.lastCheck = self.clock.seconds()

    async def get(self) -> T:
        """
        @return: the value, fresh or cached.
        @raise ProxyError: if the fetch failed and no earlier value exists.
        """
        if self.fresh():
            if self.value is not None:
                return self.value
            if self.error is not None:
                raise self.error
        waiter: Deferred[T] = Deferred()
        if self._waiting is not None:
            self._waiting.append(waiter)
        else:
            self._waiting = [waiter]
            Deferred.fromCoroutine(self._refresh())
        return await waiter

    async def _refresh(self) -> None:
        """
        Fetch once and hand the outcome to everyone waiting.  Runs on its
        own, so a client that leaves does not cancel a fetch others share.
        """
        result: T | ProxyError
        try:
            result = await self._fetch()
        except ProxyError as e:
            result = e
        except CancelledError:
            result = UpstreamError(f"asking backend {self.name} for {self.what} was cancelled")
        except Exception as e:
            log.failure("asking backend {backend} for {what} failed", backend=self.name, what=self.what)
            result = UpstreamError(f"asking backend {self.name} for {self.what} failed: {e}")
        self._checked = self.lastCheck = self.clock.seconds()
        waiting, self._waiting = self._waiting or [], None
        if isinstance(result, ProxyError):
            self.error = result
            log.error(
                "cannot get {what} of backend {backend}: {error}; {action}",
                what=self.what,
                backend=self.name,
                error=describe(result),
                action="keeping the last one" if self.value is not None else "none known",
            )
            if self.value is None:
                # No list to fall back on: let the next call try at once.
                self._checked = None
                for waiter in waiting:
                    if not waiter.called:  # a cancelled waiter is already called
                        waiter.errback(result)
                return
        else:
            self.error = None
            self.value = result
        value = self.value
        assert value is not None
        for waiter in waiting:
            if not waiter.called:
                waiter.callback(value)


