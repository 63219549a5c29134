# -*- test-case-name: tests.web.test_routing -*-
"""
Prometheus metrics, in a registry of their own.

Each L{Metrics} owns a C{CollectorRegistry} rather than using
C{prometheus_client}'s global one, so that two proxies in one process (the
tests build dozens) never share counters.  C{GET /metrics} renders it with
C{prometheus_client}'s own exposition code (L{render}).

C{prometheus_client.twisted.MetricsResource} is not used: it imports the
global reactor when its module is imported and serves a WSGI app from the
reactor's thread pool, which the memory reactor of the tests cannot run;
the exposition it wraps (C{choose_encoder} + the registry) is what L{render}
calls, on the reactor thread, in microseconds.

Label values are bounded: C{route} is one of the proxy's own paths, C{model}
is a model name some backend offers (anything else a client sends is
counted as C{"other"}), C{backend} a configured name, C{kind} one of a few
error kinds.

With C{--workers}, every process writes its values to files in one shared
directory (C{prometheus_client}'s multiprocess mode, L{shareAcrossProcesses})
and a scrape, whichever process answers it, renders the sum of all of them
(L{Metrics.render} through C{MultiProcessCollector}).  The library chooses
its value store from C{PROMETHEUS_MULTIPROC_DIR} when it is imported; the
parent process learns it runs workers only after that, so the switch sets
the variable (the workers inherit it) and the store for this process.
"""

from __future__ import annotations

import glob
import os
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0)
"""Seconds: from a local vLLM's first byte to a slow hosted model's answer."""

_M = TypeVar("_M", Counter, Histogram, Gauge)

OTHER = "other"
"""The C{model} label of names no backend offers."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Where C{prometheus_client} keeps the per-process value files."""


def shareAcrossProcesses(directory: str, clean: bool = False) -> None:
    """
    Put this process's metrics (those created after the call) in files
    under C{directory}, and have the processes it starts do the same.

    @param directory: the directory every worker shares.
    @param clean: remove the value files of earlier runs (the parent does,
        before it starts any worker: counters of a process long gone would
        otherwise be added to the new ones).
    """
    os.makedirs(directory, exist_ok=True)
    if clean:
        for stale in glob.glob(os.path.join(directory, "*.db")):
            os.remove(stale)
    os.environ[MULTIPROC_ENV] = directory
    values.ValueClass = values.MultiProcessValue()


def sharedDirectory() -> str | None:
    """
    @return: the directory of L{shareAcrossProcesses} when this process
        writes its metrics there (a worker inherits it), else C{None}.
    """
    directory = os.environ.get(MULTIPROC_ENV)
    if directory and values.ValueClass is not values.MutexValue:
        return directory
    return None


def singleProcess() -> None:
    """
    Undo L{shareAcrossProcesses} for metrics created after the call (for
    tests that build a multi-worker service in their own process).
    """
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.MutexValue


def processGone(directory: str, pid: int) -> None:
    """
    Drop a dead worker's live gauge values (C{active_streams}); its
    counters and histograms stay in the sum, so totals never go down.

    @param directory: the shared directory.
    @param pid: the worker's process id.
    """
    mark_process_dead(pid, directory)


class Metrics:
    """
    The proxy's counters, gauges and histograms.

    @ivar registry: the registry they are in, rendered by L{render}.
    """

    def __init__(self, namespace: str = "ollama_proxy", shared: str | None = None) -> None:
        """
        @param namespace: the metric name prefix.
        @param shared: the directory of L{shareAcrossProcesses} when this
            process is one of several workers: a scrape then renders every
            worker's values, summed.
        """
        self.shared = shared
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[Any, ...], Any] = {}
        r = self.registry
        self.requests = Counter(
            "requests", "Client requests by route, model and final HTTP status.",
            ["route", "model", "status"], namespace=namespace, registry=r,
        )
        self.requestDuration = Histogram(
            "request_duration_seconds", "Time from a client request to its last byte.",
            ["route"], namespace=namespace, registry=r, buckets=LATENCY_BUCKETS,
        )
        self.upstreamLatency = Histogram(
            "upstream_latency_seconds", "Time from sending an upstream request to its "
            "response headers.", ["backend"], namespace=namespace, registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.firstToken = Histogram(
            "time_to_first_token_seconds", "Time from a client request to the first "
            "generated token.", ["backend", "model"], namespace=namespace, registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.tokens = Counter(
            "tokens", "Tokens reported by the backends: in = prompt, out = completion.",
            ["backend", "model", "direction"], namespace=namespace, registry=r,
        )
        self.activeStreams = Gauge(
            "active_streams", "Responses being streamed to clients now.",
            namespace=namespace, registry=r, multiprocess_mode="livesum",
        )
        self.backendRequests = Counter(
            "backend_requests", "Requests sent to each backend of a pool (failovers "
            "included).", ["backend"], namespace=namespace, registry=r,
        )
        self.backendFailures = Counter(
            "backend_failures", "Pool member failures by kind (connection, timeout, "
            "http_429, http_5xx, misconfigured, stream, check).", ["backend", "kind"],
            namespace=namespace, registry=r,
        )
        self.backendFailovers = Counter(
            "backend_failovers", "Requests that left a backend for another member before "
            "their first byte.", ["backend"], namespace=namespace, registry=r,
        )
        self.backendInFlight = Gauge(
            "backend_in_flight", "Requests in flight on each pool member.", ["backend"],
            namespace=namespace, registry=r, multiprocess_mode="livesum",
        )
        self.backendCircuit = Gauge(
            "backend_circuit", "Each pool member's circuit: 0 closed, 1 half-open, 2 open.",
            ["backend"], namespace=namespace, registry=r, multiprocess_mode="livemax",
        )
        self.sticky = Counter(
            "sticky", "Sticky conversation lookups: hit, miss or repin, by the backend chosen.",
            ["backend", "outcome"], namespace=namespace, registry=r,
        )
        self.upstreamErrors = Counter(
            "upstream_errors", "Upstream failures by backend and kind (connect, "
            "timeout, http_4xx, http_5xx, stream, protocol).",
            ["backend", "kind"], namespace=namespace, registry=r,
        )

    def child(self, metric: _M, *labels: str) -> _M:
        """
        C{metric.labels(*labels)}, looked up once per label set.

        C{labels()} validates and locks on every call; a request records
        three or four labelled values, always the same few sets.  The label
        values are bounded (see the module docstring), so is this cache.

        @param metric: one of this object's labelled metrics.
        @param labels: its label values, in order.
        @return: the child to record on.
        """
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """
        The exposition for a scrape.

        @param accept: the scraper's C{Accept} header (OpenMetrics or the
            classic text format are negotiated from it).
        @return: the body and its content type.
        """
        encoder, contentType = choose_encoder(accept or "")
        registry = self.registry
        if self.shared is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, self.shared)
        return encoder(registry), contentType
