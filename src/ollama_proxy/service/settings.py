# -*- test-case-name: tests.service.test_settings -*-
"""
The proxy's settings: what L{ollama_proxy.service.options.Options} parses,
validated by L{Settings.fromOptions} into one immutable value that
L{ollama_proxy.service.tap} wires from.  Nothing retypes an option in
place.

L{Settings.fromOptions} is pure: the parsed option values and L{Reads}
(what the files the options name and the environment held, read in one
step by L{ollama_proxy.service.options.readInputs}) go in; a L{Settings}
or a typed error (C{usage.UsageError} for a wrong option, L{FileProblem}
for a file that cannot be used) comes out.  So every rule is tested on
plain values, and a C{SIGHUP} reload validates exactly as start-up does.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import attrs
from twisted.python import usage

from ollama_proxy.protocol.catalog import Facts
from ollama_proxy.protocol.balance import DEFAULT_ROUTING, RoutingPolicy
from ollama_proxy.protocol.flavors import flavorFor
from ollama_proxy.service.config import BackendConfig, Config
from ollama_proxy.service.overrides import parseOverridesFile
from ollama_proxy.service.workers import parseTCP
from ollama_proxy.web.auth import readKeys

DEMO_PORT = 11435
"""Where C{--demo} runs the fake backend unless C{--demo-port} says."""
DEFAULT_LISTEN = "tcp:11434:interface=127.0.0.1"
API_KEY_ENV = "OLLAMA_PROXY_API_KEY"
REQUIRE_KEY_ENV = "OLLAMA_PROXY_REQUIRE_KEY"
DEFAULT_BACKEND = "default"
"""The name of the backend that C{--target} defines."""
HTTP_PARSERS = ("httptools", "twisted")
"""C{--http-parser} values: llhttp (the default) or Twisted's own parser."""


class FileProblem(SystemExit):
    """
    A file the options name (C{--config}, a key file, C{--model-info})
    cannot be used.  Not a C{UsageError}, for which twistd prints its whole
    usage text: the option was right, the file is not, and one line
    (C{proxy.toml:12: backend[1].url: ...}) says so; twistd ends with exit
    status 1.  A reload (L{ollama_proxy.service.reload}) catches it and
    keeps the running configuration.

    @ivar message: the line, without the program name.
    """

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"ollama-proxy: {message}")


@attrs.frozen
class Unreadable:
    """
    A file the reading step could not read: the error is raised by
    L{Settings.fromOptions} where the file is used, so that problems are
    reported in the same order whether or not a file was involved.

    @ivar reason: the system's reason (C{strerror}).
    """

    reason: str


@attrs.frozen
class Reads:
    """
    What the options' files and the environment held: everything
    L{Settings.fromOptions} needs beyond the option values.

    @ivar config: the parsed C{--config} file, or C{None} for none.
    @ivar environ: the environment variables the options fall back to
        (C{$OLLAMA_PROXY_API_KEY}, C{$OLLAMA_PROXY_REQUIRE_KEY}), only
        those.
    @ivar apiKeyFile: C{--api-key-file}'s text.
    @ivar requireKeyFile: C{--require-key-file}'s text.
    @ivar modelInfo: C{--model-info}'s bytes.
    @ivar reusePort: whether this platform has C{SO_REUSEPORT} (which
        C{--workers} needs).
    """

    # Keys, never in a repr (a traceback, a log line, a test failure).
    config: Config | None = None
    environ: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    apiKeyFile: str | Unreadable | None = attrs.field(default=None, repr=False)
    requireKeyFile: str | Unreadable | None = attrs.field(default=None, repr=False)
    modelInfo: bytes | Unreadable | None = None
    reusePort: bool = True


@attrs.frozen
class Settings:
    """
    Everything the command line and the configuration file decide.

    @ivar listen: strports descriptions to listen on.
    @ivar backends: the OpenAI-compatible servers, in routing order (at
        least one; C{--target} is the one named C{default}).
    @ivar fallback: the real Ollama's base URL, or C{None} for none.
    @ivar tag: the C{/api/tags} suffix for untagged ids.
    @ivar version: what C{/api/version} reports.
    @ivar modelOverrides: the C{--model-info} file's facts.
    @ivar connectTimeout: seconds to connect upstream.
    @ivar headerTimeout: seconds to wait for upstream response headers.
    @ivar idleTimeout: seconds of upstream silence before giving up.
    @ivar clientTimeout: seconds an idle client connection is kept.
    @ivar bodyTimeout: seconds a client may take to send its body.
    @ivar clientHeaderTimeout: seconds a client may take to send a request
        line and its headers.
    @ivar maxConnections: open client connections per process, or C{None}
        for no cap.
    @ivar shutdownGrace: seconds requests may run on after SIGTERM.
    @ivar drainDelay: seconds between SIGTERM (readiness 503) and closing
        the listeners.
    @ivar maxBody: the largest request body accepted.
    @ivar bodyBudget: bytes of request bodies held at once by all requests.
    @ivar maxLine: the largest upstream SSE line accepted.
    @ivar poolSize: persistent upstream connections per host.
    @ivar httpParser: C{--http-parser}: C{httptools} (llhttp) or C{twisted}.
    @ivar workers: processes serving the ports (1: this one alone).
    @ivar workerOf: the parent's pid when this process is an extra worker.
    @ivar backendFlavor: C{--backend-flavor}, for backends without their own.
    @ivar retries: how often a 429 is retried.
    @ivar retryMaxWait: the longest C{Retry-After} honoured.
    @ivar requireKeys: keys clients must present (empty: none required).
    @ivar forwardClientKey: send the client's key upstream.
    @ivar debug: log payloads and chunks.
    @ivar demo: also run the built-in fake backend.
    @ivar demoPort: its port on 127.0.0.1.
    @ivar metrics: serve C{/metrics}.
    @ivar corsOrigins: extra allowed browser origins.
    @ivar modelsTTL: seconds a model list or its metadata is reused.
    @ivar logFormat: C{text} or C{json}.
    @ivar metricsDir: where workers share their metrics (C{None}: a new
        temporary directory).
    @ivar rawArgs: the arguments as given, for starting extra workers and
        for reading them again on C{SIGHUP}.
    @ivar allowHosts: C{Host} globs served besides the local names (when
        every listener is on loopback).
    @ivar remoteHost: C{--remote-host}: C{auto}, C{""} or a fixed value.
    @ivar routing: the configuration file's C{[routing]} table.
    """

    listen: tuple[str, ...]
    backends: tuple[BackendConfig, ...]
    fallback: str | None
    tag: str
    version: str
    modelOverrides: Mapping[str, Facts]
    connectTimeout: float
    headerTimeout: float
    idleTimeout: float
    clientTimeout: float
    bodyTimeout: float
    clientHeaderTimeout: float
    maxConnections: int | None
    shutdownGrace: float
    drainDelay: float
    maxBody: int
    bodyBudget: int
    maxLine: int
    poolSize: int
    workers: int
    workerOf: int | None
    backendFlavor: str
    retries: int
    retryMaxWait: float
    requireKeys: tuple[str, ...] = attrs.field(repr=False)
    forwardClientKey: bool
    debug: bool
    demo: bool
    metrics: bool
    corsOrigins: tuple[str, ...]
    modelsTTL: float
    logFormat: str
    metricsDir: str | None = None
    rawArgs: tuple[str, ...] = ()
    allowHosts: tuple[str, ...] = ()
    remoteHost: str = "auto"
    demoPort: int = DEMO_PORT
    routing: RoutingPolicy = DEFAULT_ROUTING
    httpParser: str = "httptools"

    @property
    def target(self) -> str:
        """
        The first backend's URL (what extra workers are told to use).
        """
        return self.backends[0].url

    @classmethod
    def fromOptions(
        cls, values: Mapping[str, Any], reads: Reads, rawArgs: Sequence[str] = ()
    ) -> Settings:
        """
        Validate parsed options into settings.  Pure: no file, no
        environment, no log, no clock.

        @param values: the option values by long name, as
            L{ollama_proxy.service.options.Options} holds them.
        @param reads: what the named files and the environment held.
        @param rawArgs: the arguments as given (kept for extra workers and
            reloads).
        @return: the settings.
        @raise usage.UsageError: for a missing, malformed or conflicting
            option.
        @raise FileProblem: for a file that cannot be read or used.
        """
        config = reads.config
        if values["config"] and config is None:
            # getopt accepted an abbreviation (--conf) that the early scan
            # for --config did not see.
            raise usage.UsageError("spell the option --config in full")
        listen = tuple(values["listen"] or _fileListen(config) or [DEFAULT_LISTEN])
        target: str | None = values["target"]
        if not 0 < values["demo-port"] < 65536:
            raise usage.UsageError("--demo-port must be a TCP port (1-65535)")
        if values["demo"] and not target:
            target = f"http://127.0.0.1:{values['demo-port']}"
        fileBackends = config.backends if config is not None else ()
        if not target and not fileBackends:
            raise usage.UsageError(
                "--target is required (the OpenAI-compatible server, e.g. "
                "http://127.0.0.1:4000), or --config with [[backend]] tables, or --demo"
            )
        fallback = checkURL(values["fallback"], "--fallback") if values["fallback"] else None
        overrides = _modelInfo(values["model-info"], reads.modelInfo)
        for name in ("max-body", "body-budget", "max-line", "pool-size", "workers"):
            if values[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        # A worker reads the same --config; its "workers" must not make it
        # start workers of its own.
        workers = 1 if values["worker-of"] is not None else values["workers"]
        if workers > 1 or values["worker-of"] is not None:
            if not reads.reusePort:
                raise usage.UsageError("--workers needs SO_REUSEPORT (Linux, BSD, macOS)")
            for description in listen:
                parseTCP(description)
        try:
            flavorFor(values["backend-flavor"], "http://localhost")
        except ValueError as e:
            raise usage.UsageError(f"--backend-flavor: {e}")
        if values["http-parser"] not in HTTP_PARSERS:
            raise usage.UsageError(
                f"--http-parser must be one of {', '.join(HTTP_PARSERS)}")
        if values["retry-429"] < 0:
            raise usage.UsageError("--retry-429 must not be negative")
        keys = _requireKeys(values, reads)
        apiKey: str | None = None
        if target:
            target = checkURL(target, "--target")
            apiKey = _apiKey(values, reads)
        elif values["api-key"] or values["api-key-file"]:
            raise usage.UsageError(
                "--api-key and --api-key-file go with --target; with --config, set "
                "api_key, api_key_file or api_key_env in the [[backend]] table"
            )
        return cls(
            listen=listen,
            backends=_backends(fileBackends, target, apiKey),
            routing=config.routing if config is not None else DEFAULT_ROUTING,
            fallback=fallback,
            tag=values["tag"],
            version=values["ollama-version"],
            modelOverrides=overrides,
            connectTimeout=values["connect-timeout"],
            headerTimeout=values["header-timeout"],
            idleTimeout=values["idle-timeout"],
            clientTimeout=values["client-timeout"],
            bodyTimeout=values["body-timeout"],
            clientHeaderTimeout=values["client-header-timeout"],
            maxConnections=values["max-connections"] or None,
            shutdownGrace=values["shutdown-grace"],
            drainDelay=values["drain-delay"],
            maxBody=values["max-body"],
            bodyBudget=values["body-budget"],
            maxLine=values["max-line"],
            poolSize=values["pool-size"],
            httpParser=values["http-parser"],
            workers=workers,
            workerOf=values["worker-of"],
            backendFlavor=values["backend-flavor"],
            retries=values["retry-429"],
            retryMaxWait=values["retry-max-wait"],
            requireKeys=tuple(keys),
            forwardClientKey=bool(values["forward-client-key"]),
            debug=bool(values["debug"]),
            demo=bool(values["demo"]),
            demoPort=values["demo-port"],
            metrics=not values["no-metrics"],
            corsOrigins=tuple(values["cors-origin"]),
            allowHosts=tuple(values["allow-host"]),
            modelsTTL=values["models-ttl"],
            logFormat=values["log-format"],
            metricsDir=values["metrics-dir"],
            rawArgs=tuple(rawArgs),
            remoteHost=values["remote-host"],
        )


def checkURL(value: str, option: str) -> str:
    """
    Validate a base URL option.

    @param value: the URL.
    @param option: the option name, for the message.
    @return: C{value} without a trailing slash.
    @raise usage.UsageError: unless the scheme is http/https and a host is
        set, and no user-info (C{user:pass@}) is given.
    """
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # Never echoed: the value holds a password.  Refused rather than
        # sent as Basic auth: the backend key already is the one
        # Authorization header, and a URL's password ends up in logs,
        # ps and error messages.
        raise usage.UsageError(
            f"{option} must not contain a user name or password (user:pass@host); "
            "give the backend key with --api-key-file or OLLAMA_PROXY_API_KEY"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(
            f"{option} must be an http:// or https:// URL with a host, got {value!r}"
        )
    return value.rstrip("/")


def _fileListen(config: Config | None) -> list[str]:
    """
    @param config: the parsed file, if any.
    @return: its C{[server]} C{listen} descriptions (one string or a list;
        the option parser has checked which).
    """
    if config is None:
        return []
    value = config.server.get("listen", [])
    return [value] if isinstance(value, str) else list(value)


def _modelInfo(path: str | None, raw: bytes | Unreadable | None) -> dict[str, Facts]:
    """
    @param path: C{--model-info}, if given.
    @param raw: the file's bytes.
    @return: the validated overrides (none without the option).
    @raise FileProblem: for an unreadable or malformed file.
    """
    if not path:
        return {}
    if raw is None or isinstance(raw, Unreadable):
        reason = raw.reason if raw is not None else "not read"
        raise FileProblem(f"--model-info {path}: cannot read {path}: {reason}")
    try:
        return parseOverridesFile(path, raw)
    except ValueError as e:
        raise FileProblem(f"--model-info {path}: {e}") from None


def _requireKeys(values: Mapping[str, Any], reads: Reads) -> list[str]:
    """
    The keys clients must present: C{--require-key-file}'s, else
    C{--require-key}, else C{$OLLAMA_PROXY_REQUIRE_KEY}.

    @raise FileProblem: for an unreadable key file, or one without a key
        (rather than silently turning authentication off).
    """
    path = values["require-key-file"]
    if not path:
        return readKeys(values["require-key"] or reads.environ.get(REQUIRE_KEY_ENV) or "")
    text = reads.requireKeyFile
    if text is None or isinstance(text, Unreadable):
        reason = text.reason if text is not None else "not read"
        raise FileProblem(f"cannot read --require-key-file {path}: {reason}")
    keys = readKeys(text)
    if not keys:
        raise FileProblem(f"--require-key-file {path} holds no key")
    return keys


def _apiKey(values: Mapping[str, Any], reads: Reads) -> str | None:
    """
    The C{--target} backend's key: C{--api-key-file}, then C{--api-key},
    then C{$OLLAMA_PROXY_API_KEY}.

    @return: the key, or C{None} for none.
    @raise FileProblem: for an unreadable key file.
    """
    path = values["api-key-file"]
    if path:
        text = reads.apiKeyFile
        if text is None or isinstance(text, Unreadable):
            reason = text.reason if text is not None else "not read"
            raise FileProblem(f"cannot read --api-key-file {path}: {reason}")
        return text.strip()
    key: str | None = values["api-key"] or reads.environ.get(API_KEY_ENV) or None
    return key


def _backends(
    fileBackends: Sequence[BackendConfig], target: str | None, apiKey: str | None
) -> tuple[BackendConfig, ...]:
    """
    The backends to serve: the file's, with C{--target} (and its key) as the
    backend named C{default}: it replaces the URL and key of a file backend
    of that name, or comes first.

    @param fileBackends: from the file, in order.
    @param target: the C{--target} URL, if any.
    @param apiKey: its key.
    @return: at least one backend.
    """
    if not target:
        return tuple(fileBackends)
    out = list(fileBackends)
    for i, backend in enumerate(out):
        if backend.name == DEFAULT_BACKEND:
            out[i] = attrs.evolve(backend, url=target, apiKey=apiKey or backend.apiKey)
            return tuple(out)
    return (BackendConfig(DEFAULT_BACKEND, target, apiKey), *out)
