# -*- test-case-name: tests.service.test_options -*-
"""
The twistd plugin's command line: L{Options} parses C{twistd ollama-proxy}'s
arguments (and a C{--config} file's C{[server]} table under them), and
C{postOptions} validates them into one frozen L{Settings}.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Mapping, Sequence

from twisted.python import usage

from ollama_proxy import __version__
from ollama_proxy.protocol.flavors import FLAVOR_NAMES
from ollama_proxy.protocol.stream import DEFAULT_MAX_LINE_LENGTH
from ollama_proxy.service.config import Config, ConfigError, loadConfig
from ollama_proxy.service.settings import (
    API_KEY_ENV,
    DEFAULT_BACKEND,
    DEFAULT_LISTEN,
    DEMO_PORT,
    HTTP_PARSERS,
    REQUIRE_KEY_ENV,
    FileProblem,
    Reads,
    Settings,
    Unreadable,
)
from ollama_proxy.web.budget import DEFAULT_BODY_BUDGET
from ollama_proxy.web.context import DEFAULT_VERSION
from ollama_proxy.web.channel import DEFAULT_HEADER_TIMEOUT
from ollama_proxy.web.context import DEFAULT_MAX_BODY

__all__ = ["API_KEY_ENV", "DEFAULT_BACKEND", "DEFAULT_LISTEN", "HTTP_PARSERS",
           "REQUIRE_KEY_ENV", "FileProblem", "Options", "readInputs"]

DEFAULT_FALLBACK = "http://127.0.0.1:11505"


def demoListen(port: int) -> str:
    """
    @return: the fake backend's endpoint for C{--demo}: C{port}, loopback only.
    """
    return f"tcp:{port}:interface=127.0.0.1"


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
                # Used by Settings.fromOptions when no --listen is given.
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
        Read what the options name (L{readInputs}), validate it all into
        L{settings} (L{Settings.fromOptions}, pure), and make twistd log
        the plugin's way.  The parsed values themselves are left as given.

        @raise usage.UsageError: for a missing or malformed option.
        @raise FileProblem: for a file that cannot be read or used.
        """
        reads = readInputs(self, self.fileConfig)
        self.settings = Settings.fromOptions(self, reads, self.rawArgs)
        self._useOwnLog(self["log-format"])

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


def readInputs(
    values: Mapping[str, Any], config: Config | None,
    environ: Mapping[str, str] | None = None,
) -> Reads:
    """
    The one step that reads what the options name: the key files and the
    C{--model-info} file, and the environment variables the options fall
    back to.  (The C{--config} file is read earlier, by
    L{Options.parseOptions}, because its C{[server]} values are the
    command line's defaults.)  A file that cannot be read is recorded as
    L{Unreadable}, for L{Settings.fromOptions} to report in its place.

    @param values: the option values.
    @param config: the parsed C{--config} file, if any.
    @param environ: the environment (the process's when C{None}).
    @return: what L{Settings.fromOptions} needs besides the values.
    """
    env = os.environ if environ is None else environ
    return Reads(
        config=config,
        environ={name: env[name] for name in (API_KEY_ENV, REQUIRE_KEY_ENV) if name in env},
        apiKeyFile=_readText(values["api-key-file"]),
        requireKeyFile=_readText(values["require-key-file"]),
        modelInfo=_readBytes(values["model-info"]),
        reusePort=hasattr(socket, "SO_REUSEPORT"),
    )


def _readText(path: str | None) -> str | Unreadable | None:
    """
    @param path: a key file an option names, if any.
    @return: its UTF-8 text, L{Unreadable}, or C{None} without a path.
    """
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        return Unreadable(e.strerror or str(e))


def _readBytes(path: str | None) -> bytes | Unreadable | None:
    """
    @param path: a file an option names, if any.
    @return: its bytes, L{Unreadable}, or C{None} without a path.
    """
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return Unreadable(e.strerror or str(e))
