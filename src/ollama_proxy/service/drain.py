# -*- test-case-name: tests.service.test_drain -*-
"""
A shutdown that a load balancer sees coming.

On C{SIGTERM} (a rolling restart, C{kubectl delete pod}, C{systemctl stop})
twistd stops the service tree.  Closing the listening sockets at once, as
a plain C{strports} service does, refuses the connections that a balancer
still sends until its next health check notices: HAProxy's 503, nginx's
C{502}.  L{DrainService} owns the listeners and stops them in three steps:

    1. at once: C{/health/ready} answers 503 C{draining}
       (L{ollama_proxy.web.context.Lifecycle.draining}), while every
       request is still served as usual;
    2. after C{--drain-delay} seconds, long enough for the balancer's
       probes to take the instance out (HAProxy: C{inter} x C{fall};
       Kubernetes: the endpoint update after the pod is marked
       terminating), the listeners close;
    3. requests in flight, streams included, finish within
       C{--shutdown-grace} (L{ollama_proxy.web.site.ProxySite.drain});
       then the services stopped after the drain (the upstream pool) stop.

A worker (C{--workers}) gets the same C{SIGTERM} from its parent and runs
the same sequence.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from ollama_proxy.web.context import Lifecycle
from ollama_proxy.web.site import ProxySite

log = Logger()


class DrainService(MultiService):
    """
    The listening services (its children) and the drain sequence that
    stops them.

    @ivar site: the site whose requests are drained.
    @ivar lifecycle: where the draining state is announced (read by the
        readiness probe and the status page).
    @ivar delay: seconds between the announcement and closing the listeners.
    @ivar grace: seconds in-flight requests may run once the listeners close.
    @ivar after: services stopped once the drain is over (the upstream
        pool: streams in flight still use it).
    """

    def __init__(
        self,
        site: ProxySite,
        grace: float,
        reactor: IReactorTime | None = None,
        lifecycle: Lifecycle | None = None,
        delay: float = 0.0,
    ) -> None:
        super().__init__()
        self.site = site
        self.grace = grace
        self.reactor = reactor if reactor is not None else site.reactor
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle()
        self.delay = delay
        self.after: list[IService] = []

    def stopAfter(self, service: IService) -> None:
        """
        Stop C{service} only when the drain is over.  It is not a child:
        the parent's stop does not reach it directly.

        @param service: a started-with-us service.
        """
        self.after.append(service)

    def startService(self) -> None:
        super().startService()
        for service in self.after:
            service.startService()

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        for service in self.after:
            service.privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """
        Announce, wait L{delay}, close the listeners, drain, then stop
        L{after}.

        @return: fires when all of that is done.
        """
        self.lifecycle.draining = True
        d: Deferred[Any]
        if self.delay > 0:
            log.info(
                "draining: /health/ready answers 503; still serving for {delay:g}s "
                "(--drain-delay), then {grace:g}s for requests in flight (--shutdown-grace)",
                delay=self.delay, grace=self.grace,
            )
            d = deferLater(self.reactor, self.delay, lambda: None)
        else:
            d = Deferred()
            d.callback(None)
        d.addCallback(lambda _: MultiService.stopService(self))
        d.addCallback(lambda _: self._drainRequests())
        d.addCallback(lambda _: self._stopAfter())
        return d

    def _drainRequests(self) -> Deferred[None]:
        inFlight = len(self.site.inFlight)
        if inFlight:
            log.info("stopped listening; {n} request(s) in flight get up to {grace:g}s",
                     n=inFlight, grace=self.grace)
        return self.site.drain(self.grace)

    def _stopAfter(self) -> Deferred[Any]:
        return DeferredList([maybeDeferred(s.stopService) for s in self.after])
