# -*- test-case-name: tests.service.test_options -*-
"""
The proxy's settings: what L{ollama_proxy.service.options.Options} parses
and validates, as one immutable value that L{ollama_proxy.service.tap}
wires from.  Nothing retypes an option in place.
"""

from __future__ import annotations

from typing import Mapping

import attrs

from ollama_proxy.protocol.catalog import Facts
from ollama_proxy.protocol.balance import DEFAULT_ROUTING, RoutingPolicy
from ollama_proxy.service.config import BackendConfig

DEMO_PORT = 11435
"""Where C{--demo} runs the fake backend unless C{--demo-port} says."""


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
    requireKeys: tuple[str, ...]
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
