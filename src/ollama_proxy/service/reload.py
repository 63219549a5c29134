# -*- test-case-name: tests.service.test_reload -*-
"""
C{SIGHUP}: read the command line and C{--config} again and serve new
requests with the result, without a restart.

A reload parses the process's own arguments again (so the file, the key
files and the environment variables it names are all read afresh) into a
new L{Settings}; a file that does not parse is logged as C{file:line: key:
reason} and nothing changes.  Otherwise a new L{Router} (new backends, keys,
aliases, overrides, allow/deny lists, timeouts) and L{ModelDirectory} are
built and swapped onto the shared L{ProxyContext} in one assignment, between
two requests: the reactor runs one thing at a time, so no request ever sees
half of each.  A request in flight keeps the L{Route} (and with it the
upstream client) it chose, so streams that began before the reload finish
on the old configuration.  The inbound keys and CORS origins are swapped the
same way, and with them the secrets redacted from answers, the CORS
origins of the site's own answers and the C{--allow-host} names.

What a running process cannot change (its ports, the worker count, the
connection pool, the site's limits) is compared and, if it differs, logged
as needing a restart.  With C{--workers}, the parent forwards the signal to
every worker, and each reloads itself.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Sequence

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage

from ollama_proxy.service.options import FileProblem, Options
from ollama_proxy.service.settings import Settings
from ollama_proxy.upstream.directory import ModelDirectory
from ollama_proxy.upstream.routing import BackendModels, Router
from ollama_proxy.web.auth import KeyGate
from ollama_proxy.web.context import Fallback, ProxyContext
from ollama_proxy.web.cors import CORSResource, HostPolicy, OriginPolicy
from ollama_proxy.web.observe import watchFleet, watchUpstream
from ollama_proxy.web.site import ProxySite

log = Logger()

RESTART_ONLY = (
    "listen", "workers", "poolSize", "connectTimeout", "clientTimeout", "bodyTimeout",
    "clientHeaderTimeout", "maxConnections", "httpParser",
    "maxBody", "bodyBudget", "shutdownGrace", "drainDelay", "metrics", "metricsDir",
    "logFormat", "demo", "demoPort",
)
"""Settings a running process keeps until it is restarted."""


@attrs.define
class LiveConfig:
    """
    The parts of a running proxy that a reload replaces.

    @ivar settings: what is served now.
    @ivar ctx: the context the resources read at every request.
    @ivar makeRouter: builds the backends and their caches from settings.
    @ivar makeFallback: builds the fallback Ollama client from settings.
    @ivar gate: the inbound key check, if the tree has one.
    @ivar cors: the CORS wrapper, if the tree has one.
    @ivar site: the site, whose own answers follow the CORS origins and
        whose C{Host} check (on or off with the listeners, which take a
        restart) follows C{--allow-host}.
    @ivar checks: whether the routers' active health checks run (the
        service is started).
    """

    settings: Settings
    ctx: ProxyContext
    makeRouter: Callable[[Settings], Router]
    makeFallback: Callable[[Settings], Fallback | None]
    gate: KeyGate | None = None
    cors: CORSResource | None = None
    site: ProxySite | None = None
    checks: bool = False

    def apply(self, new: Settings) -> None:
        """
        Serve new requests with C{new}.

        @param new: the settings just parsed.
        """
        changed = [name for name in RESTART_ONLY
                   if getattr(new, name) != getattr(self.settings, name)]
        if changed:
            log.warn("reload: {names} changed; that takes a restart, the running values stay",
                     names=", ".join(changed))
        router = self.makeRouter(new)
        if self.ctx.metrics is not None:
            watchUpstream(self.ctx.metrics, [entry.backend for entry in router.backends])
            watchFleet(self.ctx.metrics, router.fleet)
        ctx = self.ctx
        # The old fleet's checks stop; the new one's start (its circuits
        # start closed: a reload is an operator's "try again").
        old = ctx.models.router.fleet
        if old is not None:
            old.stop()
        if router.fleet is not None and self.checks:
            router.fleet.start()
        ctx.models = ModelDirectory(router, new.modelOverrides, new.remoteHost)
        ctx.fallback = self.makeFallback(new)
        ctx.debug = new.debug
        ctx.version = new.version
        ctx.maxLineLength = new.maxLine
        ctx.corsOrigins = new.corsOrigins
        # The redactor follows: new backend keys and inbound keys are
        # redacted from the next request on.
        ctx.secrets = tuple(new.requireKeys)
        if self.gate is not None:
            self.gate.keys = [key.encode("utf-8") for key in new.requireKeys]
        if self.cors is not None:
            self.cors.policy = OriginPolicy(new.corsOrigins)
        if self.site is not None:
            self.site.origins = OriginPolicy(new.corsOrigins)
            if self.site.hosts is not None:
                self.site.hosts = HostPolicy(new.allowHosts)
        self.settings = new
        log.info(
            "reloaded: {count} backend(s) ({names}), {keys} inbound key(s)",
            count=len(router.backends), names=", ".join(b.name for b in router.backends),
            keys=len(new.requireKeys),
        )
        d = Deferred.fromCoroutine(router.lists())
        d.addCallback(_report)
        d.addErrback(lambda f: log.failure("listing models after the reload failed", f))


def _report(lists: list[tuple[BackendModels, list[Any] | None]]) -> None:
    for backend, entries in lists:
        if entries is not None:
            log.info("backend {backend} at {url} offers {count} models",
                     backend=backend.name, url=backend.config.url, count=len(entries))


def reload(live: LiveConfig, parse: Callable[[], Settings]) -> bool:
    """
    Parse the configuration again and apply it, or keep the old one.

    @param live: what to update.
    @param parse: reads the arguments, the file and the keys again.
    @return: whether the new configuration is being served.
    """
    try:
        new = parse()
    except usage.UsageError as e:
        log.error("reload refused, the running configuration stays: {error}", error=str(e))
        return False
    except FileProblem as e:
        log.error("reload refused, the running configuration stays: {error}", error=e.message)
        return False
    except Exception:
        log.failure("reload failed, the running configuration stays")
        return False
    try:
        live.apply(new)
    except Exception:
        log.failure("reload failed, the running configuration stays")
        return False
    return True


def parser(rawArgs: Sequence[str]) -> Callable[[], Settings]:
    """
    @param rawArgs: the plugin arguments the process was started with.
    @return: a function that parses them again, as at start-up.
    """

    def parse() -> Settings:
        options = Options()
        options.parseOptions(list(rawArgs))
        settings: Settings = options.settings
        return settings

    return parse


class ReloadOnHangup(Service):
    """
    Runs L{reload} on C{SIGHUP}, then passes the signal on to the workers.

    @ivar forward: sends a signal to every worker (the parent's
        L{ollama_proxy.service.workers.WorkerPool.signalAll}), or C{None}.
    """

    def __init__(
        self,
        reactor: Any,
        reloadNow: Callable[[], object],
        forward: Callable[[str], None] | None = None,
    ) -> None:
        self.reactor = reactor
        self.reloadNow = reloadNow
        self.forward = forward
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._signalled)

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            signal.signal(signal.SIGHUP, self._previous)
            self._previous = None

    def _signalled(self, signum: int, frame: object) -> None:
        # A signal handler may run between any two bytecodes: hand the work
        # to the reactor's own turn.
        self.reactor.callFromThread(self.hangup)

    def hangup(self) -> None:
        """
        Reload this process, then every worker.
        """
        log.info("SIGHUP: reloading the configuration")
        self.reloadNow()
        if self.forward is not None:
            self.forward("HUP")
