# -*- test-case-name: tests.test_tap -*-
"""
The twistd plugin's command line and service wiring.

C{twistd -n ollama-proxy --target http://127.0.0.1:4000} parses L{Options}
and calls L{makeService}, the only place that imports the global reactor.
Everything below it receives the reactor, the HTTP client and the clock as
arguments.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Sequence
from urllib.parse import urlsplit

import attrs
from twisted.application import strports
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.client import HTTPConnectionPool

from ollama_proxy import __version__
from ollama_proxy.auth import readKeys, requireKeys
from ollama_proxy.catalog import ModelCatalog, loadOverrides
from ollama_proxy.client import makeClient
from ollama_proxy.config import BackendConfig, Config, ConfigError, loadConfig
from ollama_proxy.metrics import Metrics
from ollama_proxy.models import BackendModels, ModelListCache, Router, makeFetcher
from ollama_proxy.resources import DEFAULT_VERSION, Fallback, ProxyContext, buildRoot
from ollama_proxy.site import DEFAULT_MAX_BODY, ProxySite, makeSite
from ollama_proxy.sse import DEFAULT_MAX_LINE_LENGTH
from ollama_proxy.translate import FLAVOR_NAMES, flavorFor
from ollama_proxy.upstream import Backend, ConnectionPool
from ollama_proxy.workers import (
    ParentWatch,
    ReusePortService,
    WorkerPool,
    childArguments,
    parseTCP,
)

DEFAULT_LISTEN = "tcp:11434:interface=127.0.0.1"
DEFAULT_FALLBACK = "http://127.0.0.1:11505"
DEMO_LISTEN = "tcp:11435:interface=127.0.0.1"
API_KEY_ENV = "OLLAMA_PROXY_API_KEY"
REQUIRE_KEY_ENV = "OLLAMA_PROXY_REQUIRE_KEY"
DEFAULT_BACKEND = "default"
"""The name of the backend that C{--target} defines."""


def _checkURL(value: str, option: str) -> str:
    """
    Validate a base URL option.

    @param value: the URL.
    @param option: the option name, for the message.
    @return: C{value} without a trailing slash.
    @raise usage.UsageError: unless the scheme is http/https and a host is set.
    """
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(
            f"{option} must be an http:// or https:// URL with a host, got {value!r}"
        )
    return value.rstrip("/")


def _logFormat(value: str) -> str:
    """
    @param value: text from the command line.
    @return: C{"text"} or C{"json"}.
    @raise ValueError: for anything else.
    """
    if value not in ("text", "json"):
        raise ValueError(f"must be text or json, got {value!r}")
    return value


def _configArgument(argv: Sequence[str]) -> str | None:
    """
    Find C{--config FILE} (or C{--config=FILE}) before the full parse, so
    that the file's values can become the defaults the command line
    overrides.  (This is why the option has no short form and must be
    spelt in full.)

    @param argv: the plugin's arguments.
    @return: the file name, or C{None}.
    """
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg[len("--config=") :]
    return None


SERVER_FORBIDDEN = frozenset(
    {"config", "target", "api-key", "api-key-file", "help", "version", "worker-of"}
)
"""Options a file's C{[server]} table may not set: backends go in
C{[[backend]]} tables."""


def _positive(value: str) -> float:
    """
    @param value: text from the command line.
    @return: the number.
    @raise ValueError: unless it is a positive number.
    """
    number = float(value)
    if number <= 0:
        raise ValueError(f"must be positive, got {value}")
    return number


def _nonNegative(value: str) -> float:
    """
    @param value: text from the command line.
    @return: the number.
    @raise ValueError: if it is negative.
    """
    number = float(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {value}")
    return number


class Options(usage.Options):
    """
    Command-line options for C{twistd ollama-proxy}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the Ollama REST API and forward to an OpenAI-compatible backend "
        "(LiteLLM, vLLM, OpenAI, OpenRouter). Use --demo for a built-in fake backend."
    )

    optFlags = [
        ["debug", None, "Log requests, upstream payloads and chunks (secrets redacted)."],
        ["demo", None, f"Start the built-in fake OpenAI backend on {DEMO_LISTEN} and target it."],
        ["forward-client-key", None,
         "Send the client's own bearer token (or X-API-Key) upstream instead of --api-key."],
        ["no-metrics", None, "Do not serve GET /metrics (Prometheus)."],
    ]

    optParameters = [
        ["target", "t", None, "Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:4000."],
        ["api-key", None, None, f"API key for the backend (prefer ${API_KEY_ENV} or --api-key-file)."],
        ["api-key-file", None, None, "Read the backend API key from this file."],
        ["fallback", None, DEFAULT_FALLBACK,
         "Base URL of a real Ollama for paths the proxy cannot answer; empty disables it."],
        ["tag", None, "proxy", "Tag appended to backend model ids without one in /api/tags."],
        ["ollama-version", None, DEFAULT_VERSION, "Version reported by /api/version."],
        ["model-info", None, None,
         "JSON (or .toml) file of per-model metadata overrides for /api/show, e.g. "
         '{"my-model": {"context_length": 131072, "capabilities": ["completion", "tools"]}}; '
         'key "*" applies to every model.'],
        ["connect-timeout", None, 10.0, "Seconds to wait for a TCP connection upstream.", _positive],
        ["header-timeout", None, 600.0, "Seconds to wait for upstream response headers.", _positive],
        ["idle-timeout", None, 300.0, "Seconds of upstream silence before a stream is abandoned.", _positive],
        ["client-timeout", None, 60.0, "Seconds an idle client connection is kept open.", _positive],
        ["max-body", None, DEFAULT_MAX_BODY, "Largest accepted request body in bytes.", int],
        ["max-line", None, DEFAULT_MAX_LINE_LENGTH, "Largest accepted upstream SSE line in bytes.", int],
        ["pool-size", None, 64, "Persistent upstream connections kept per host.", int],
        ["workers", None, 1,
         "Processes serving the tcp: ports together (SO_REUSEPORT; one per core).", int],
        ["worker-of", None, None, "(internal) run as an extra worker of this parent pid.", int],
        ["backend-flavor", None, "auto",
         "Which non-OpenAI fields the backend takes (top_k/min_p/repetition_penalty, how think "
         f"is spelled): {'|'.join(FLAVOR_NAMES)}. auto: by host (OpenAI, OpenRouter, DeepSeek), "
         "else generic. A [[backend]] table's flavor key wins for that backend."],
        ["body-timeout", None, 300.0,
         "Seconds a client may take to send a whole request body (408 after).", _positive],
        ["shutdown-grace", None, 10.0,
         "Seconds in-flight requests may run after SIGTERM before they are cut.", _nonNegative],
        ["retry-429", None, 0,
         "Retry a backend 429 this many times (before any byte is sent; 0 disables).", int],
        ["retry-max-wait", None, 10.0,
         "Longest Retry-After honoured by --retry-429, in seconds.", _positive],
        ["require-key", None, None,
         f"Require this key from clients, as 'Authorization: Bearer' or 'X-API-Key' "
         f"(comma-separated for several; prefer ${REQUIRE_KEY_ENV} or --require-key-file)."],
        ["require-key-file", None, None,
         "Read the accepted client keys from this file (one per line)."],
        ["config", None, None, "TOML file with backends, aliases, model overrides and any of "
         "these options in [server]; the command line wins."],
        ["models-ttl", None, 60.0, "Seconds a backend's model list is reused; 0 lists on "
         "every /api/tags call.", _nonNegative],
        ["log-format", None, "text", "text or json (one JSON object per line, for log "
         "shippers; honours twistd's --logfile).", _logFormat],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["cors-origin"] = []
        self["backends"] = ()
        self.fileConfig: Config | None = None
        self._fileListen: list[str] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Read C{--config} first, so that its C{[server]} values become
        defaults, then parse the command line over them.

        @param options: the arguments (C{sys.argv[1:]} when C{None}).
        @raise usage.UsageError: for an invalid file, with its line and key.
        """
        import sys

        argv = list(sys.argv[1:] if options is None else options)
        # Kept as given: extra workers (--workers) are started with them.
        self.rawArgs = argv
        path = _configArgument(argv)
        if path is not None:
            try:
                self.fileConfig = loadConfig(path)
                self._applyServer(self.fileConfig)
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        super().parseOptions(argv)

    def _applyServer(self, config: Config) -> None:
        """
        Use the file's C{[server]} table as option defaults.

        @param config: the parsed file.
        @raise ConfigError: for an unknown option or a value of the wrong type.
        """
        flags = {str(flag[0]) for flag in self.optFlags}
        parameters: list[Any] = list(self.optParameters)
        coercers = {p[0]: (p[4] if len(p) > 4 else None) for p in parameters}
        for name, value in config.server.items():
            key = ("server", name)
            if name == "listen":
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                    raise config.error(key, "must be a string or a list of strings")
                self._fileListen = list(items)
            elif name in SERVER_FORBIDDEN:
                raise config.error(key, "cannot be set in [server]; use a [[backend]] table"
                                   if name != "config" else "cannot be set in the file")
            elif name in flags:
                if not isinstance(value, bool):
                    raise config.error(key, "must be true or false")
                self[name] = value
            elif name in coercers:
                if isinstance(value, (bool, list, dict)):
                    raise config.error(key, "must be a string or a number")
                coerce = coercers[name]
                try:
                    self[name] = coerce(str(value)) if coerce else str(value)
                except ValueError as e:
                    raise config.error(key, str(e)) from None
            else:
                known = sorted([*flags, *coercers, "listen"])
                raise config.error(
                    key, f"unknown option (expected one of: {', '.join(known)})"
                )

    def opt_cors_origin(self, pattern: str) -> None:
        """
        Also allow browser requests from this origin (repeatable; globs like
        OLLAMA_ORIGINS, e.g. chrome-extension://*). localhost, 127.0.0.1,
        0.0.0.0, app://, file://, tauri://, vscode-webview:// and
        vscode-file:// are always allowed.
        """
        self["cors-origin"].append(pattern)

    def opt_listen(self, description: str) -> None:
        """
        Listen on this strports description (repeatable), e.g.
        tcp:11434:interface=127.0.0.1, unix:/run/ollama.sock, systemd:domain=INET:index=0.
        Default: tcp:11434:interface=127.0.0.1.
        """
        self["listen"].append(description)

    def opt_version(self) -> None:
        """
        Print the ollama-proxy version and exit.
        """
        print(f"ollama-proxy {__version__.public()}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """
        Fill defaults and validate.

        @raise usage.UsageError: for a missing or malformed URL, or an
            unreadable key file.
        """
        if self["config"] and self.fileConfig is None:
            # getopt accepted an abbreviation (--conf) that the early scan
            # for --config did not see.
            raise usage.UsageError("spell the option --config in full")
        if not self["listen"]:
            self["listen"] = self._fileListen or [DEFAULT_LISTEN]
        if self["demo"] and not self["target"]:
            port = DEMO_LISTEN.split(":")[1]
            self["target"] = f"http://127.0.0.1:{port}"
        fileBackends = self.fileConfig.backends if self.fileConfig is not None else ()
        if not self["target"] and not fileBackends:
            raise usage.UsageError(
                "--target is required (the OpenAI-compatible server, e.g. "
                "http://127.0.0.1:4000), or --config with [[backend]] tables, or --demo"
            )
        if self["fallback"]:
            self["fallback"] = _checkURL(self["fallback"], "--fallback")
        else:
            self["fallback"] = None
        self["model-overrides"] = {}
        if self["model-info"]:
            try:
                self["model-overrides"] = loadOverrides(self["model-info"])
            except ValueError as e:
                raise usage.UsageError(f"--model-info: {e}")
        for name in ("max-body", "max-line", "pool-size", "workers"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        if self["worker-of"] is not None:
            # A worker reads the same --config; its "workers" must not make
            # it start workers of its own.
            self["workers"] = 1
        if self["workers"] > 1 or self["worker-of"] is not None:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise usage.UsageError("--workers needs SO_REUSEPORT (Linux, BSD, macOS)")
            for description in self["listen"]:
                parseTCP(description)
        try:
            flavorFor(self["backend-flavor"], "http://localhost")
        except ValueError as e:
            raise usage.UsageError(f"--backend-flavor: {e}")
        if self["retry-429"] < 0:
            raise usage.UsageError("--retry-429 must not be negative")
        if self["require-key-file"]:
            try:
                with open(self["require-key-file"], encoding="utf-8") as f:
                    keys = readKeys(f.read())
            except OSError as e:
                raise usage.UsageError(f"cannot read --require-key-file: {e.strerror}")
            if not keys:
                raise usage.UsageError("--require-key-file holds no key")
        else:
            keys = readKeys(self["require-key"] or os.environ.get(REQUIRE_KEY_ENV) or "")
        self["require-key"] = keys or None
        if self["target"]:
            self["target"] = _checkURL(self["target"], "--target")
            self._readKey()
        elif self["api-key"] or self["api-key-file"]:
            raise usage.UsageError(
                "--api-key and --api-key-file go with --target; with --config, set "
                "api_key, api_key_file or api_key_env in the [[backend]] table"
            )
        self["backends"] = self._backends(fileBackends)
        self["target"] = self["backends"][0].url
        if self["log-format"] == "json":
            self._useJSONLog()

    def _readKey(self) -> None:
        """
        Resolve the C{--target} backend's key: C{--api-key-file}, then
        C{--api-key}, then C{$OLLAMA_PROXY_API_KEY}.

        @raise usage.UsageError: for an unreadable key file.
        """
        if self["api-key-file"]:
            try:
                with open(self["api-key-file"], encoding="utf-8") as f:
                    self["api-key"] = f.read().strip()
            except OSError as e:
                raise usage.UsageError(f"cannot read --api-key-file: {e.strerror}")
        elif not self["api-key"]:
            self["api-key"] = os.environ.get(API_KEY_ENV) or None

    def _backends(self, fileBackends: Sequence[BackendConfig]) -> tuple[BackendConfig, ...]:
        """
        The backends to serve: the file's, with C{--target} (and its key)
        as the backend named C{default}: it replaces the URL and key of a
        file backend of that name, or comes first.

        @param fileBackends: from the file, in order.
        @return: at least one backend.
        """
        if not self["target"]:
            return tuple(fileBackends)
        out = list(fileBackends)
        for i, backend in enumerate(out):
            if backend.name == DEFAULT_BACKEND:
                out[i] = _evolve(backend, self["target"], self["api-key"] or backend.apiKey)
                return tuple(out)
        return (BackendConfig(DEFAULT_BACKEND, self["target"], self["api-key"]), *out)

    def _useJSONLog(self) -> None:
        """
        Under twistd, make its log observer the JSON one, writing where its
        C{--logfile} says (twistd builds the observer after this parse).
        Without twistd (a test, or C{--logger} already given), nothing to do.
        """
        parent = self.parent
        if parent is None or "logger" not in parent or parent["logger"] is not None:
            return
        from ollama_proxy.logging import useJSON

        useJSON(parent.get("logfile"), bool(parent.get("nodaemon")))
        parent["logger"] = "ollama_proxy.logging.jsonLogger"


def _evolve(backend: BackendConfig, url: str, apiKey: str | None) -> BackendConfig:
    """
    @return: C{backend} with another URL and key.
    """
    return attrs.evolve(backend, url=url, apiKey=apiKey)


def makeRouter(
    backends: Sequence[BackendConfig],
    http: Any,
    reactor: Any,
    ttl: float,
    tag: str,
    flavor: str = "auto",
    **options: Any,
) -> Router:
    """
    One L{Backend} and model-list cache per configured backend.

    @param backends: from L{Options}, in order.
    @param http: the shared treq client.
    @param reactor: the reactor.
    @param ttl: the model-list cache lifetime.
    @param tag: the C{/api/tags} suffix.
    @param flavor: C{--backend-flavor}, for backends whose table has no
        C{flavor} key.
    @param options: further L{Backend} arguments shared by all backends
        (timeouts, retries).
    @return: the router.
    """
    entries = []
    for backend in backends:
        client = Backend(http, backend.url, reactor, apiKey=backend.apiKey, name=backend.name,
                         flavor=flavorFor(backend.flavor or flavor, backend.url), **options)
        cache = ModelListCache(makeFetcher(client, backend), reactor, ttl, backend.name)
        entries.append(BackendModels(backend, client, cache))
    return Router(entries, tag)


class ModelListing(Service):
    """
    Lists every backend's models once at start-up, so that a backend that
    is down, or a model name that two backends offer, is in the log at once
    rather than at the first request.  Only used with several backends: a
    single one has no names to share, and is listed on first use as before.
    """

    log = Logger()

    def __init__(self, router: Router) -> None:
        self.router = router

    def startService(self) -> None:
        """
        Start the listing; the service does not wait for it.
        """
        super().startService()
        d = Deferred.fromCoroutine(self.router.lists())
        d.addCallback(self._report)
        d.addErrback(lambda f: self.log.failure("listing models at start-up failed", f))

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

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """
        @return: fires when every cached connection is closed.
        """
        super().stopService()
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed


class DrainService(Service):
    """
    Lets requests in flight finish when twistd stops (SIGTERM): the
    listening ports close at once (their services stop alongside), this
    service's C{stopService} waits up to the grace period for the site to
    drain, then cuts what is left, which closes the upstream connections.
    """

    def __init__(self, site: ProxySite, grace: float) -> None:
        self.site = site
        self.grace = grace

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """
        @return: fires when no request is in flight.
        """
        super().stopService()
        return self.site.drain(self.grace)


def makeService(config: Options, reactor: Any = None) -> IService:
    """
    Build the proxy: one listening service per C{--listen} plus the pool owner.

    @param config: parsed L{Options}.
    @param reactor: the reactor; the global one when C{None}.
    @return: a L{MultiService}.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    http, pool = makeClient(
        reactor, config["pool-size"], config["connect-timeout"], ConnectionPool
    )
    router = makeRouter(
        config["backends"], http, reactor, config["models-ttl"], config["tag"],
        config["backend-flavor"],
        headerTimeout=config["header-timeout"],
        idleTimeout=config["idle-timeout"],
        retries=config["retry-429"],
        maxRetryWait=config["retry-max-wait"],
        forwardClientKey=config["forward-client-key"],
    )
    fallback = Fallback(http, config["fallback"]) if config["fallback"] else None
    ctx = ProxyContext(
        backend=router.backends[0].backend,
        clock=reactor,
        fallback=fallback,
        tag=config["tag"],
        debug=config["debug"],
        idleTimeout=config["idle-timeout"],
        maxLineLength=config["max-line"],
        version=config["ollama-version"],
        catalog=ModelCatalog(
            reactor.seconds, ttl=config["models-ttl"], overrides=config["model-overrides"]
        ),
        corsOrigins=tuple(config["cors-origin"]),
        router=router,
        metrics=None if config["no-metrics"] else Metrics(),
    )
    root = buildRoot(ctx)
    if config["require-key"]:
        root = requireKeys(root, config["require-key"])
    site = makeSite(
        root,
        reactor,
        timeout=config["client-timeout"],
        maxBody=config["max-body"],
        bodyTimeout=config["body-timeout"],
    )
    service = MultiService()
    shared = config["workers"] > 1 or config["worker-of"] is not None
    for description in config["listen"]:
        if shared:
            ReusePortService(reactor, description, site).setServiceParent(service)
        else:
            strports.service(description, site, reactor=reactor).setServiceParent(service)
    PoolService(pool).setServiceParent(service)
    DrainService(site, config["shutdown-grace"]).setServiceParent(service)
    if config["workers"] > 1:
        rawArgs = getattr(config, "rawArgs", [])
        WorkerPool(
            reactor,
            config["workers"] - 1,
            lambda parentPid: childArguments(rawArgs, parentPid, config["target"]),
        ).setServiceParent(service)
    if config["worker-of"] is not None:
        ParentWatch(reactor, config["worker-of"]).setServiceParent(service)
    if len(router.backends) > 1:
        ModelListing(router).setServiceParent(service)
    if config["demo"]:
        from ollama_proxy.testing.fake_openai import FakeOpenAI

        demoSite = makeSite(FakeOpenAI(reactor), reactor)
        strports.service(DEMO_LISTEN, demoSite, reactor=reactor).setServiceParent(service)
    return service
