# -*- test-case-name: tests.service.test_options -*-
"""
The twistd plugin's command line: L{Options} parses C{twistd ollama-proxy}'s
arguments (and a C{--config} file's C{[server]} table under them), and
C{postOptions} validates them into one frozen L{Settings}.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Sequence
from urllib.parse import urlsplit

import attrs
from twisted.python import usage

from ollama_proxy import __version__
from ollama_proxy.protocol.balance import DEFAULT_ROUTING
from ollama_proxy.protocol.catalog import Facts
from ollama_proxy.protocol.flavors import FLAVOR_NAMES, flavorFor
from ollama_proxy.protocol.stream import DEFAULT_MAX_LINE_LENGTH
from ollama_proxy.service.config import BackendConfig, Config, ConfigError, loadConfig
from ollama_proxy.service.overrides import loadOverrides
from ollama_proxy.service.settings import DEMO_PORT, Settings
from ollama_proxy.service.workers import (
    parseTCP,
)
from ollama_proxy.web.auth import readKeys
from ollama_proxy.web.budget import DEFAULT_BODY_BUDGET
from ollama_proxy.web.context import DEFAULT_VERSION
from ollama_proxy.web.channel import DEFAULT_HEADER_TIMEOUT
from ollama_proxy.web.context import DEFAULT_MAX_BODY

DEFAULT_LISTEN = "tcp:11434:interface=127.0.0.1"
DEFAULT_FALLBACK = "http://127.0.0.1:11505"
API_KEY_ENV = "OLLAMA_PROXY_API_KEY"
REQUIRE_KEY_ENV = "OLLAMA_PROXY_REQUIRE_KEY"
DEFAULT_BACKEND = "default"
"""The name of the backend that C{--target} defines."""


def demoListen(port: int) -> str:
    """
    @return: the fake backend's endpoint for C{--demo}: C{port}, loopback only.
    """
    return f"tcp:{port}:interface=127.0.0.1"


def _checkURL(value: str, option: str) -> str:
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


def _count(value: str) -> int:
    """
    @param value: text from the command line.
    @return: the whole number.
    @raise ValueError: unless it is a whole number of zero or more.
    """
    number = int(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {value}")
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
        ["demo", None,
         "Start the built-in fake OpenAI backend on 127.0.0.1 (--demo-port) and target it."],
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
        ["remote-host", None, "auto",
         "remote_host of the served models in /api/tags and /api/show: 'auto' for each "
         "backend's scheme://host:port, '' for none, else this value."],
        ["model-info", None, None,
         "JSON (or .toml) file of per-model metadata overrides for /api/show, e.g. "
         '{"my-model": {"context_length": 131072, "capabilities": ["completion", "tools"]}}; '
         'key "*" applies to every model.'],
        ["connect-timeout", None, 10.0, "Seconds to wait for a TCP connection upstream.", _positive],
        ["header-timeout", None, 600.0, "Seconds to wait for upstream response headers.", _positive],
        ["idle-timeout", None, 300.0, "Seconds of upstream silence before a stream is abandoned.", _positive],
        ["client-timeout", None, 60.0, "Seconds an idle client connection is kept open.", _positive],
        ["client-header-timeout", None, DEFAULT_HEADER_TIMEOUT,
         "Seconds a client may take to send a request line and headers (408 after).", _positive],
        ["max-connections", None, 0,
         "Open client connections per process; more get a 503 (0: no cap).", _count],
        ["max-body", None, DEFAULT_MAX_BODY, "Largest accepted request body in bytes.", int],
        ["body-budget", None, DEFAULT_BODY_BUDGET,
         "Bytes of request bodies (raw and decompressed) held at once by all requests "
         "together; past it, 503 with Retry-After.", int],
        ["max-line", None, DEFAULT_MAX_LINE_LENGTH, "Largest accepted upstream SSE line in bytes.", int],
        ["pool-size", None, 64, "Persistent upstream connections kept per host.", int],
        ["http-parser", None, "httptools",
         "HTTP/1.1 parser: httptools (llhttp) or twisted (Twisted's own)."],
        ["demo-port", None, DEMO_PORT, "The TCP port of --demo's fake backend on 127.0.0.1.", int],
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
        ["drain-delay", None, 5.0,
         "Seconds between SIGTERM and closing the listeners: /health/ready answers 503 at "
         "once and requests are still served, so that a load balancer's probes take the "
         "instance out first (at least HAProxy's inter x fall, or Kubernetes' endpoint "
         "update); 0 closes at once.", _nonNegative],
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
        ["metrics-dir", None, None,
         "With --workers: the directory the workers share their metrics in (emptied at "
         "start; default: a new temporary directory, removed at stop)."],
        ["log-format", None, "text", "text or json (one JSON object per line, for log "
         "shippers; honours twistd's --logfile).", _logFormat],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["cors-origin"] = []
        self["allow-host"] = []
        self["backends"] = ()
        self.fileConfig: Config | None = None
        self._fileListen: list[str] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """
        Read C{--config} first, so that its C{[server]} values become
        defaults, then parse the command line over them.

        @param options: the arguments (C{sys.argv[1:]} when C{None}).
        @raise FileProblem: for an invalid file, with its line and key.
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
                raise FileProblem(str(e)) from None
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
            elif name in ("cors-origin", "allow-host"):
                items = [value] if isinstance(value, str) else value
                if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                    raise config.error(key, "must be a string or a list of strings")
                self[name] = list(items)
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
                known = sorted([*flags, *coercers, "listen", "cors-origin", "allow-host"])
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

    def opt_allow_host(self, pattern: str) -> None:
        """
        Also serve requests whose Host header is this name (repeatable; globs,
        e.g. *.example.internal). Only matters when every --listen is on
        loopback: then other names get a 403 against DNS rebinding, as with
        Ollama. localhost, *.localhost, *.local, *.internal, this machine's
        name and private or loopback IP addresses are always served.
        """
        self["allow-host"].append(pattern)

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
        Validate, and gather the result in L{settings}.  The parsed values
        themselves are left as given.

        @raise usage.UsageError: for a missing or malformed URL.
        @raise FileProblem: for a file that cannot be read or used.
        """
        if self["config"] and self.fileConfig is None:
            # getopt accepted an abbreviation (--conf) that the early scan
            # for --config did not see.
            raise usage.UsageError("spell the option --config in full")
        listen = tuple(self["listen"] or self._fileListen or [DEFAULT_LISTEN])
        target: str | None = self["target"]
        if not 0 < self["demo-port"] < 65536:
            raise usage.UsageError("--demo-port must be a TCP port (1-65535)")
        if self["demo"] and not target:
            target = f"http://127.0.0.1:{self['demo-port']}"
        fileBackends = self.fileConfig.backends if self.fileConfig is not None else ()
        if not target and not fileBackends:
            raise usage.UsageError(
                "--target is required (the OpenAI-compatible server, e.g. "
                "http://127.0.0.1:4000), or --config with [[backend]] tables, or --demo"
            )
        fallback = _checkURL(self["fallback"], "--fallback") if self["fallback"] else None
        overrides: dict[str, Facts] = {}
        if self["model-info"]:
            try:
                overrides = loadOverrides(self["model-info"])
            except ValueError as e:
                raise FileProblem(f"--model-info {self['model-info']}: {e}") from None
        for name in ("max-body", "body-budget", "max-line", "pool-size", "workers"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")
        # A worker reads the same --config; its "workers" must not make it
        # start workers of its own.
        workers = 1 if self["worker-of"] is not None else self["workers"]
        if workers > 1 or self["worker-of"] is not None:
            if not hasattr(socket, "SO_REUSEPORT"):
                raise usage.UsageError("--workers needs SO_REUSEPORT (Linux, BSD, macOS)")
            for description in listen:
                parseTCP(description)
        try:
            flavorFor(self["backend-flavor"], "http://localhost")
        except ValueError as e:
            raise usage.UsageError(f"--backend-flavor: {e}")
        if self["http-parser"] not in HTTP_PARSERS:
            raise usage.UsageError(
                f"--http-parser must be one of {', '.join(HTTP_PARSERS)}")
        if self["retry-429"] < 0:
            raise usage.UsageError("--retry-429 must not be negative")
        if self["require-key-file"]:
            try:
                with open(self["require-key-file"], encoding="utf-8") as f:
                    keys = readKeys(f.read())
            except OSError as e:
                raise FileProblem(
                    f"cannot read --require-key-file {self['require-key-file']}: {e.strerror}"
                ) from None
            if not keys:
                raise FileProblem(f"--require-key-file {self['require-key-file']} holds no key")
        else:
            keys = readKeys(self["require-key"] or os.environ.get(REQUIRE_KEY_ENV) or "")
        apiKey: str | None = None
        if target:
            target = _checkURL(target, "--target")
            apiKey = self._readKey()
        elif self["api-key"] or self["api-key-file"]:
            raise usage.UsageError(
                "--api-key and --api-key-file go with --target; with --config, set "
                "api_key, api_key_file or api_key_env in the [[backend]] table"
            )
        self.settings = Settings(
            listen=listen,
            backends=_backends(fileBackends, target, apiKey),
            routing=self.fileConfig.routing if self.fileConfig is not None else DEFAULT_ROUTING,
            fallback=fallback,
            tag=self["tag"],
            version=self["ollama-version"],
            modelOverrides=overrides,
            connectTimeout=self["connect-timeout"],
            headerTimeout=self["header-timeout"],
            idleTimeout=self["idle-timeout"],
            clientTimeout=self["client-timeout"],
            bodyTimeout=self["body-timeout"],
            clientHeaderTimeout=self["client-header-timeout"],
            maxConnections=self["max-connections"] or None,
            shutdownGrace=self["shutdown-grace"],
            drainDelay=self["drain-delay"],
            maxBody=self["max-body"],
            bodyBudget=self["body-budget"],
            maxLine=self["max-line"],
            poolSize=self["pool-size"],
            httpParser=self["http-parser"],
            workers=workers,
            workerOf=self["worker-of"],
            backendFlavor=self["backend-flavor"],
            retries=self["retry-429"],
            retryMaxWait=self["retry-max-wait"],
            requireKeys=tuple(keys),
            forwardClientKey=bool(self["forward-client-key"]),
            debug=bool(self["debug"]),
            demo=bool(self["demo"]),
            demoPort=self["demo-port"],
            metrics=not self["no-metrics"],
            corsOrigins=tuple(self["cors-origin"]),
            allowHosts=tuple(self["allow-host"]),
            modelsTTL=self["models-ttl"],
            logFormat=self["log-format"],
            metricsDir=self["metrics-dir"],
            rawArgs=tuple(self.rawArgs),
            remoteHost=self["remote-host"],
        )
        self._useOwnLog(self["log-format"])

    def _readKey(self) -> str | None:
        """
        Resolve the C{--target} backend's key: C{--api-key-file}, then
        C{--api-key}, then C{$OLLAMA_PROXY_API_KEY}.

        @return: the key, or C{None} for none.
        @raise FileProblem: for an unreadable key file.
        """
        if self["api-key-file"]:
            try:
                with open(self["api-key-file"], encoding="utf-8") as f:
                    return f.read().strip()
            except OSError as e:
                raise FileProblem(
                    f"cannot read --api-key-file {self['api-key-file']}: {e.strerror}"
                ) from None
        key: str | None = self["api-key"] or os.environ.get(API_KEY_ENV) or None
        return key

    def _useOwnLog(self, logFormat: str) -> None:
        """
        Under twistd, make its log observer the plugin's, writing where its
        C{--logfile} says (twistd builds the observer after this parse): the
        JSON one, or for text twistd's own format made cheaper
        (L{ollama_proxy.service.logging.textLogger}).  Without twistd (a
        test), with C{--logger} already given, or with C{--syslog}, nothing
        to do.

        @param logFormat: C{text} or C{json}.
        """
        parent = self.parent
        if parent is None or "logger" not in parent or parent["logger"] is not None:
            return
        if parent.get("syslog"):
            return
        from ollama_proxy.service.logging import useJSON

        useJSON(parent.get("logfile"), bool(parent.get("nodaemon")))
        parent["logger"] = (
            "ollama_proxy.service.logging.jsonLogger" if logFormat == "json"
            else "ollama_proxy.service.logging.textLogger"
        )


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


