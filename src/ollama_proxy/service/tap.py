# -*- test-case-name: tests.service.test_tap -*-
"""
The twistd plugin's service wiring.

C{twistd -n ollama-proxy --target http://127.0.0.1:4000} parses
L{Options} (L{ollama_proxy.service.options}) into L{Settings} and calls
L{makeService}, the only place that imports the global reactor.
Everything below it receives the reactor, the HTTP client and the clock as
arguments.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import errno
import gc
import shutil
import sys
import tempfile
from types import TracebackType
from typing import Any, Callable

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.client import HTTPConnectionPool

from ollama_proxy import __version__
from ollama_proxy.protocol.clock import wallClock
from ollama_proxy.protocol.flavors import flavorFor
from ollama_proxy.service.drain import DrainService
from ollama_proxy.service.listen import loopbackOnly, somaxconn, withBacklog
from ollama_proxy.service.demo import demoService
from ollama_proxy.service.logging import bufferPerTurn, redactLogsWith
from ollama_proxy.service.options import Options
from ollama_proxy.service.reload import LiveConfig, ReloadOnHangup, parser, reload
from ollama_proxy.service.settings import Settings
from ollama_proxy.service.workers import (
    ParentWatch,
    ReusePortService,
    WorkerPool,
    childArguments,
)
from ollama_proxy.upstream.backend import Backend, HTTPClient
from ollama_proxy.upstream.cache import TTLCache
from ollama_proxy.upstream.directory import ModelDirectory
from ollama_proxy.upstream.compat import ConnectionPool
from ollama_proxy.upstream.agent import KeepAlivePool
from ollama_proxy.upstream.pool import makeClient
from ollama_proxy.upstream.routing import BackendModels, Router, makeFetcher
from ollama_proxy.web.auth import KeyGate, requireKeys
from ollama_proxy.web.budget import BodyBudget
from ollama_proxy.web.context import Fallback, Lifecycle, ProxyContext
from ollama_proxy.web.cors import CORSResource, HostPolicy, OriginPolicy
from ollama_proxy.web.metrics import (
    Metrics,
    RateHistory,
    sampleHistory,
    shareAcrossProcesses,
    sharedDirectory,
)
from ollama_proxy.web.site import ProxySite, makeSite
from ollama_proxy.web.tree import buildRoot

__all__ = ["DrainService", "Options", "Settings", "makeService"]

def makeRouter(
    settings: Settings, http: HTTPClient, reactor: IReactorTime
) -> Router:
    """
    One L{Backend} and model-list cache per configured backend.

    @param settings: the backends, in order, and what they share (timeouts,
        retries, C{--backend-flavor} for backends whose table has no
        C{flavor} key, the cache lifetime and the C{/api/tags} suffix).
    @param http: the shared treq client.
    @param reactor: the reactor.
    @return: the router.
    """
    entries = []
    for backend in settings.backends:
        client = Backend(
            http, backend.url, reactor, apiKey=backend.apiKey, name=backend.name,
            flavor=flavorFor(backend.flavor or settings.backendFlavor, backend.url),
            headerTimeout=settings.headerTimeout,
            idleTimeout=settings.idleTimeout,
            retries=settings.retries,
            maxRetryWait=settings.retryMaxWait,
            forwardClientKey=settings.forwardClientKey,
            native=frozenset(backend.native),
        )
        cache = TTLCache(makeFetcher(client, backend), reactor, settings.modelsTTL, backend.name)
        entries.append(BackendModels(backend, client, cache))
    return Router(entries, settings.tag, settings.requireKeys, settings.routing)


class ModelListing(Service):
    """
    Lists every backend's models once at start-up, so that a backend that
    is down, or a model name that two backends offer, is in the log at once
    rather than at the first request, the readiness probe has an answer,
    and the metrics know the served names (a single backend is routed to
    without waiting for a list, and its requests are labelled with the
    names it listed).
    """

    log = Logger()

    def __init__(self, router: Router, live: LiveConfig | None = None) -> None:
        self.router = router
        self.live = live

    def startService(self) -> None:
        """
        Start the listing and, with several backends, their active health
        checks; the service does not wait for them.
        """
        super().startService()
        if self.live is not None:
            self.live.checks = True
            self.router = self.live.ctx.models.router
        if self.router.fleet is not None:
            self.router.fleet.start()
        d = Deferred.fromCoroutine(self.router.lists())
        d.addCallback(self._report)
        d.addErrback(lambda f: self.log.failure("listing models at start-up failed", f))

    def stopService(self) -> None:
        """
        Stop the health checks.
        """
        super().stopService()
        if self.live is not None:
            self.live.checks = False
            self.router = self.live.ctx.models.router
        if self.router.fleet is not None:
            self.router.fleet.stop()

    def _report(self, lists: list[tuple[BackendModels, list[Any] | None]]) -> None:
        for backend, entries in lists:
            if entries is not None:
                self.log.info("backend {backend} at {url} offers {count} models",
                              backend=backend.name, url=backend.config.url, count=len(entries))


class PoolService(Service):
    """
    Owns the upstream connection pool and closes it on shutdown, so
    twistd exits without dangling sockets.
    """

    def __init__(self, pool: HTTPConnectionPool | KeepAlivePool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        """
        @return: fires when every cached connection is closed.
        """
        super().stopService()
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class StartupError(Exception):
    """
    The service cannot start, for a reason one line says (a port that is
    taken).  L{oneLineErrors} prints just that line when it ends twistd.
    """


OLLAMA_PORT = 11434


def listenFailure(error: CannotListenError) -> str:
    """
    @param error: why a port could not be bound.
    @return: one line for the operator: which address, why, and for
        Ollama's own port what to do about it.
    """
    reason = error.socketError
    why = getattr(reason, "strerror", None) or str(reason)
    where = f"{error.interface or '*'}:{error.port}"
    line = f"ollama-proxy: cannot listen on {where}: {why}"
    if error.port == OLLAMA_PORT and getattr(reason, "errno", None) == errno.EADDRINUSE:
        line += (
            " (probably Ollama itself, which listens there). Either move Ollama, e.g. to "
            "the proxy's fallback port: OLLAMA_HOST=127.0.0.1:11505 ollama serve, or run "
            "the proxy elsewhere: --listen tcp:11435:interface=127.0.0.1"
        )
    return line


class ProxyService(MultiService):
    """
    The proxy's services; a port that cannot be bound becomes a
    L{StartupError} with one clear line instead of a traceback.

    @ivar temporary: directories of this run (the workers' metrics) to
        remove when the start fails: the stop that would remove them never
        comes.
    """

    log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.temporary: list[str] = []

    def privilegedStartService(self) -> None:
        self._starting(super().privilegedStartService)

    def startService(self) -> None:
        self._starting(super().startService)

    def _starting(self, start: Callable[[], None]) -> None:
        """
        Run one of the start steps (a privileged port binds in the first);
        whatever it raises first removes the temporary directories, and a
        port that cannot be bound becomes one clear line.
        """
        try:
            start()
        except CannotListenError as e:
            self._removeTemporary()
            self._fail(e)
        except BaseException:
            self._removeTemporary()
            raise

    def _removeTemporary(self) -> None:
        for directory in self.temporary:
            shutil.rmtree(directory, ignore_errors=True)

    def _fail(self, error: CannotListenError) -> None:
        line = listenFailure(error)
        self.log.critical("{line}", line=line)
        raise StartupError(line) from None


def oneLineErrors() -> None:
    """
    Make a L{StartupError} that ends the process print its line alone (to
    the original standard error, which twistd may have redirected into its
    log) rather than a traceback; the exit status stays 1.  Other errors
    keep Python's report.
    """
    previous = sys.excepthook

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if isinstance(value, StartupError):
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"{value}\n")
            stream.flush()
        else:
            previous(kind, value, tb)

    sys.excepthook = hook


M_MMAP_THRESHOLD = -3
"""glibc's C{mallopt} parameter for the size above which C{malloc} maps
memory of its own (returned to the system on C{free})."""


def returnLargeAllocations(threshold: int = 128 * 1024) -> bool:
    """
    Make every allocation of C{threshold} bytes or more its own mapping,
    given back to the system when freed (glibc only; elsewhere nothing).

    glibc raises that threshold by itself, up to 32 MiB, after large
    blocks are freed; from then on the megabyte-sized pieces of decoded
    request bodies come from the heap, and a burst of them (a hundred
    compression bombs refused by the body budget) leaves the heap
    fragmented and the process hundreds of MB larger than its budget:
    C{bench/bombs.py} measured 457 MB peak and 285 MB kept afterwards
    with glibc's default, 289 MB and 97 MB with a fixed 128 KiB threshold.

    @return: whether the threshold was set.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))


def freezeStartup() -> int:
    """
    Exempt what start-up made (modules, the resource tree, the metrics
    registry: some sixty thousand objects) from the cyclic garbage
    collector, after collecting start-up's own garbage (C{gc.freeze}, as
    Python's documentation suggests for long-lived servers).

    Every full collection walked all of them: about one per thousand
    streams, each a pause of tens of milliseconds in which no stream got a
    byte (C{bench/RESULTS.md}, "firstline"), and its share of every
    request's CPU.  What requests make is collected as before; a cycle
    among the start-up objects that breaks later would stay, so a reload,
    which replaces some of them, thaws them for a while
    (L{StartupFreezer}).

    @return: how many objects are now exempt.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class StartupFreezer:
    """
    L{freezeStartup} at start-up, undone by a reload for a while.

    A reload replaces objects start-up made (the router, the fallback, the
    context's parts); frozen, any cycle among them would never be
    collected, a little more memory held at every C{SIGHUP}.  So a reload
    thaws everything at once (full collections walk it again, and collect
    what the old configuration leaves) and freezes again once requests
    that began under the old configuration had time to end.

    @ivar settle: seconds from a reload to the next freeze.
    """

    settle = 60.0

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._pending: Any = None

    def freeze(self) -> int:
        """
        @return: how many objects are now exempt (L{freezeStartup}).
        """
        self._pending = None
        return freezeStartup()

    def thaw(self) -> None:
        """
        After a reload: nothing frozen now, a freeze in L{settle} seconds
        (one, however many reloads come before it).
        """
        gc.unfreeze()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = self.reactor.callLater(self.settle, self.freeze)


def reloadAndThaw(live: LiveConfig, parse: Callable[[], Settings], freezer: StartupFreezer) -> bool:
    """
    L{reload}, and after one that took effect, L{StartupFreezer.thaw}.

    @return: whether the new configuration is being served.
    """
    if not reload(live, parse):
        return False
    freezer.thaw()
    return True


def metricsDirectory(settings: Settings) -> str | None:
    """
    Where the processes share their metrics (C{--workers}), made ready.

    @return: the directory, or C{None} when one process counts alone.
    """
    if settings.metrics and settings.workers > 1:
        directory = settings.metricsDir or tempfile.mkdtemp(prefix="ollama-proxy-metrics-")
        shareAcrossProcesses(directory, clean=True)
        return directory
    if settings.metrics and settings.workerOf is not None:
        return sharedDirectory()
    return None


def makeContext(
    settings: Settings, router: Router, fallback: Fallback | None, metricsDir: str | None,
    reactor: Any,
) -> ProxyContext:
    """
    @return: the context the resources share, from C{settings}.
    """
    return ProxyContext(
        lifecycle=Lifecycle(started=wallClock(), workers=settings.workers,
                            version=__version__.public()),
        models=ModelDirectory(router, settings.modelOverrides, settings.remoteHost),
        fallback=fallback,
        debug=settings.debug,
        maxLineLength=settings.maxLine,
        version=settings.version,
        corsOrigins=settings.corsOrigins,
        metrics=Metrics(shared=metricsDir) if settings.metrics else None,
        secrets=tuple(settings.requireKeys),
        maxBody=settings.maxBody,
        reactor=reactor,
    )


def makeProxySite(settings: Settings, ctx: ProxyContext, reactor: Any) -> ProxySite:
    """
    @return: the site: the resource tree behind the key gate, with the
        door's limits from C{settings}.
    """
    root = buildRoot(ctx)
    # Always gated, so that a reload can add the first key (no key: open).
    root = requireKeys(root, list(settings.requireKeys))
    assert isinstance(root, CORSResource) and isinstance(root.wrapped, KeyGate)
    return makeSite(
        root,
        reactor,
        timeout=settings.clientTimeout,
        maxBody=settings.maxBody,
        bodyTimeout=settings.bodyTimeout,
        headerTimeout=settings.clientHeaderTimeout,
        maxConnections=settings.maxConnections,
        httpParser=settings.httpParser,
        metrics=ctx.metrics,
        budget=BodyBudget(settings.bodyBudget),
        origins=OriginPolicy(settings.corsOrigins),
        # Ollama's DNS-rebinding guard: only when nothing but loopback
        # listens (a proxy reachable by other names is meant to be).
        hosts=HostPolicy(settings.allowHosts) if loopbackOnly(settings.listen) else None,
    )


def addListeners(
    service: MultiService, settings: Settings, ctx: ProxyContext, site: ProxySite, reactor: Any
) -> DrainService:
    """
    The drain, and under it one listening service per C{--listen} (sharing
    the port with the other workers under C{--workers}): they stop through
    the drain, readiness 503, C{--drain-delay}, close, C{--shutdown-grace}
    for what is in flight.

    @return: the drain (what must stop after the listeners, the pool, is
        added to it by the caller).
    """
    drain = DrainService(site, settings.shutdownGrace, reactor, ctx.lifecycle,
                         settings.drainDelay)
    drain.setServiceParent(service)
    shared = settings.workers > 1 or settings.workerOf is not None
    backlog = somaxconn()
    for description in settings.listen:
        # A burst of connections must wait in the accept queue, not in SYN
        # retransmits: the kernel's ceiling unless --listen names one.
        description = withBacklog(description, backlog)
        if shared:
            ReusePortService(reactor, description, site).setServiceParent(drain)
        else:
            strports.service(description, site, reactor=reactor).setServiceParent(drain)
    return drain


def addWorkers(
    service: MultiService, settings: Settings, metricsDir: str | None, reactor: Any
) -> WorkerPool | None:
    """
    The worker processes of C{--workers}, or the watch on the parent of a
    worker.

    @return: the pool, if this process supervises one.
    """
    workers: WorkerPool | None = None
    if settings.workers > 1:
        workers = WorkerPool(
            reactor,
            settings.workers - 1,
            lambda parentPid: childArguments(list(settings.rawArgs), parentPid, settings.target),
            stopTimeout=settings.drainDelay + settings.shutdownGrace + 5.0,
            metricsDirectory=metricsDir,
            removeDirectory=not settings.metricsDir,
        )
        workers.setServiceParent(service)
    if settings.workerOf is not None:
        ParentWatch(reactor, settings.workerOf).setServiceParent(service)
    return workers


def addSampler(service: MultiService, metrics: Metrics | None, reactor: Any) -> None:
    """
    The status page's rates of the last minutes: a sample of the metrics
    every L{RateHistory.interval} (nothing without metrics).
    """
    if metrics is None:
        return
    sampler = TimerService(RateHistory.interval,
                           lambda: sampleHistory(metrics, reactor.seconds()))
    sampler.clock = reactor
    sampler.setServiceParent(service)


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Build the proxy from small named builders: the upstream client and
    router, the shared context, the site, one listening service per
    C{--listen}, the pool owner, the drain, workers, the model listing,
    reload on C{SIGHUP}, and the demo backend.

    @param options: parsed L{Options} (their L{Settings}).
    @param reactor: the reactor; the global one when C{None} (which also
        means a real process: signals are handled and start-up failures
        are one line).
    @return: a L{MultiService}.
    """
    real = reactor is None
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
        oneLineErrors()
        returnLargeAllocations()
        # The log's info lines (one access line per request) are written
        # once per reactor turn from here to the reactor's shutdown.
        bufferPerTurn(reactor)
    freezer = StartupFreezer(reactor)
    if real:
        # Once the services have started: what start-up made is never
        # walked by a full collection again (until a reload).
        reactor.callWhenRunning(freezer.freeze)
    settings = options.settings
    http, pool = makeClient(reactor, settings.poolSize, settings.connectTimeout, ConnectionPool,
                            settings.httpParser)
    router = makeRouter(settings, http, reactor)

    def makeFallback(current: Settings) -> Fallback | None:
        if not current.fallback:
            return None
        return Fallback(http, current.fallback, reactor, current.headerTimeout,
                        current.idleTimeout)

    metricsDir = metricsDirectory(settings)
    ctx = makeContext(settings, router, makeFallback(settings), metricsDir, reactor)
    # The last filter before the log file: every line, tracebacks included.
    redactLogsWith(lambda line: ctx.redactor.text(line))
    site = makeProxySite(settings, ctx, reactor)
    root = site.resource
    live = LiveConfig(settings, ctx, lambda current: makeRouter(current, http, reactor),
                      makeFallback, root.wrapped, root, site)
    service = ProxyService()
    if metricsDir is not None and settings.workers > 1 and not settings.metricsDir:
        service.temporary.append(metricsDir)
    drain = addListeners(service, settings, ctx, site, reactor)
    drain.stopAfter(PoolService(pool))
    workers = addWorkers(service, settings, metricsDir, reactor)
    ModelListing(router, live).setServiceParent(service)
    addSampler(service, ctx.metrics, reactor)
    if real:
        ReloadOnHangup(
            reactor, lambda: reloadAndThaw(live, parser(settings.rawArgs), freezer),
            workers.signalAll if workers is not None else None,
        ).setServiceParent(service)
    demo = demoService(settings, reactor)
    if demo is not None:
        demo.setServiceParent(service)
    return service
