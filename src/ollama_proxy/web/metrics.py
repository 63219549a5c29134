# -*- test-case-name: tests.web.test_metrics -*-
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
(L{Metrics.render} through L{SharedFilesCollector}).  The library chooses
its value store from C{PROMETHEUS_MULTIPROC_DIR} when it is imported; the
parent process learns it runs workers only after that, so the switch sets
the variable (the workers inherit it) and the store for this process.
"""

from __future__ import annotations

import glob
import os
from collections import deque
from typing import Any, Iterable, Mapping, TypeVar

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

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


class SharedFilesCollector(Collector):
    """
    C{MultiProcessCollector}'s sum over every worker's value files, minus
    the files a worker is creating at this moment.

    C{prometheus_client} creates a value file (C{MmapedDict}) in two
    steps: C{open} (empty) then C{truncate} to its size, and a worker does
    so whenever it records its first value of a kind (its first request
    counts, its first latency).  The library's collector reads every file
    the directory lists and fails on an empty one (C{struct.error}), so a
    scrape or status page answered by another worker in that instant was a
    500.  A file shorter than its 8-byte header holds no value yet and is
    left out of this scrape; value files only grow, so one this check
    passes cannot turn unreadable later.  A file that vanishes between the
    listing and the check (a live gauge of a worker that left, removed by
    L{processGone}) is left out too; between the check and the read the
    library itself skips it.
    """

    HEADER = 8
    """Bytes before a value file's first entry (its used size, padding)."""

    def __init__(self, directory: str) -> None:
        """
        @param directory: the shared directory of L{shareAcrossProcesses}.
        """
        self.directory = directory

    def collect(self) -> Iterable[Metric]:
        """
        @return: the families summed over every worker's initialised files.
        """
        ready = []
        for path in glob.glob(os.path.join(self.directory, "*.db")):
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                continue
            if size >= self.HEADER:
                ready.append(path)
        families: Iterable[Metric] = MultiProcessCollector.merge(ready, accumulate=True)
        return families


class Metrics:
    """
    The proxy's counters, gauges and histograms.

    @ivar registry: the registry they are in, rendered by L{render}.
    @ivar history: their totals over the last minutes, for the status page
        (sampled by the service, see L{ollama_proxy.service.tap}).
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
        self._answered: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._routed: dict[str, tuple[Any, Any]] = {}
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
        self.routedRequests = Counter(
            "routed_requests", "Client requests routed to each backend, when they end.",
            ["backend"], namespace=namespace, registry=r,
        )
        self.routedInFlight = Gauge(
            "routed_in_flight", "Client requests routed to each backend and not yet "
            "ended (streams included).", ["backend"], namespace=namespace, registry=r,
            multiprocess_mode="livesum",
        )
        self.namespace = namespace
        self.history = RateHistory()

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

    def answered(self, route: str, model: str, status: str) -> tuple[Any, Any]:
        """
        The C{requests} and C{request_duration_seconds} children every
        answer records, found with one key (the same children as
        L{child}'s: the same values, the same series).

        @return: C{(requests child, requestDuration child)}.
        """
        key = (route, model, status)
        found = self._answered.get(key)
        if found is None:
            found = self._answered[key] = (
                self.child(self.requests, route, model, status),
                self.child(self.requestDuration, route),
            )
        return found

    def routedEnd(self, backend: str) -> tuple[Any, Any]:
        """
        The C{routed_in_flight} and C{routed_requests} children a routed
        request's end records (both at once: no series is made early).

        @return: C{(routedInFlight child, routedRequests child)}.
        """
        found = self._routed.get(backend)
        if found is None:
            found = self._routed[backend] = (
                self.child(self.routedInFlight, backend),
                self.child(self.routedRequests, backend),
            )
        return found

    def collect(self) -> Iterable[Metric]:
        """
        The metric families as a scrape sees them: this process's, or with
        workers the sum over all of them (what L{render} renders).

        @return: the families.
        """
        return self._scraped().collect()

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """
        The exposition for a scrape.

        @param accept: the scraper's C{Accept} header (OpenMetrics or the
            classic text format are negotiated from it).
        @return: the body and its content type.
        """
        encoder, contentType = choose_encoder(accept or "")
        return encoder(self._scraped()), contentType

    def _scraped(self) -> CollectorRegistry:
        """
        @return: the registry a scrape reads: this process's own, or with
            workers one holding a L{SharedFilesCollector} over them all.
        """
        if self.shared is None:
            return self.registry
        registry = CollectorRegistry()
        registry.register(SharedFilesCollector(self.shared))
        return registry


@attrs.frozen
class BackendTotals:
    """
    One backend's counters as a scrape would sum them.

    @ivar requests: client requests routed to it that ended.
    @ivar errors: its upstream failures, every kind.
    @ivar inFlight: requests routed to it and running now.
    @ivar latencySum: seconds of response-header latency, summed.
    @ivar latencyCount: responses those seconds are over.
    """

    requests: float = 0.0
    errors: float = 0.0
    inFlight: float = 0.0
    latencySum: float = 0.0
    latencyCount: float = 0.0


@attrs.frozen
class Totals:
    """
    The counters the status page shows, summed over every label (and,
    with workers, over every process).

    @ivar requests: client requests answered.
    @ivar errors: of those, answered with a 5xx status.
    @ivar activeStreams: responses being streamed now.
    @ivar backends: per backend name.
    """

    requests: float = 0.0
    errors: float = 0.0
    activeStreams: float = 0.0
    backends: Mapping[str, BackendTotals] = attrs.field(factory=dict)


def totals(metrics: Metrics) -> Totals:
    """
    Read L{Totals} off the families a scrape would render.

    @param metrics: the metrics.
    @return: the sums.
    """
    prefix = metrics.namespace + "_"
    requests = errors = streams = 0.0
    backends: dict[str, dict[str, float]] = {}

    def add(name: str, field: str, value: float) -> None:
        entry = backends.setdefault(name, {})
        entry[field] = entry.get(field, 0.0) + value

    for family in metrics.collect():
        for sample in family.samples:
            name, labels, value = sample.name[len(prefix):], sample.labels, sample.value
            if name == "requests_total":
                requests += value
                if labels.get("status", "").startswith("5"):
                    errors += value
            elif name == "active_streams":
                streams += value
            elif name == "routed_requests_total":
                add(labels["backend"], "requests", value)
            elif name == "routed_in_flight":
                add(labels["backend"], "inFlight", value)
            elif name == "upstream_errors_total":
                add(labels["backend"], "errors", value)
            elif name == "upstream_latency_seconds_sum":
                add(labels["backend"], "latencySum", value)
            elif name == "upstream_latency_seconds_count":
                add(labels["backend"], "latencyCount", value)
    return Totals(requests, errors, streams,
                  {name: BackendTotals(**fields) for name, fields in backends.items()})


class RateHistory:
    """
    L{Totals} sampled every L{interval} seconds for the last L{size}
    samples, from which the status page draws its request and error rates
    (and recent per-backend latency).  With workers the totals are the
    sum of all of them, so every process's history shows the whole service
    (since that process started sampling).

    @ivar samples: C{(seconds, totals)}, oldest first.
    """

    interval = 10.0
    size = 61

    def __init__(self) -> None:
        self.samples: deque[tuple[float, Totals]] = deque(maxlen=self.size)

    def sample(self, now: float, current: Totals) -> None:
        """
        @param now: the clock's seconds.
        @param current: the totals now.
        """
        self.samples.append((now, current))

    def rates(self) -> tuple[list[float], list[float]]:
        """
        @return: requests and errors per minute over each interval between
            two samples, oldest first.
        """
        requests: list[float] = []
        errors: list[float] = []
        pairs = list(self.samples)
        for (then, old), (now, new) in zip(pairs, pairs[1:]):
            span = max(now - then, 1e-9)
            requests.append(max(new.requests - old.requests, 0.0) * 60 / span)
            errors.append(max(new.errors - old.errors, 0.0) * 60 / span)
        return requests, errors

    def oldest(self) -> Totals | None:
        """
        @return: the first sample in the window, or C{None}.
        """
        return self.samples[0][1] if self.samples else None


def sampleHistory(metrics: Metrics, now: float) -> None:
    """
    Add the current totals to C{metrics.history} (every
    L{RateHistory.interval} seconds, by the service).

    @param metrics: the metrics.
    @param now: the clock's seconds.
    """
    metrics.history.sample(now, totals(metrics))
