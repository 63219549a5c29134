# -*- test-case-name: tests.web.test_observe -*-
"""
Watching requests: the one log line per request and the request metrics,
read off the finished L{ollama_proxy.web.bridge.Exchange} (not computed in
the error funnel), the active-stream gauge and the upstream latency.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Protocol, Sequence

import attrs
from time import time

from twisted.logger import Logger, LogLevel

from ollama_proxy.protocol.balance import CLOSED, HALF_OPEN, OPEN

from ollama_proxy.protocol.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from ollama_proxy.protocol.redact import printable
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.fleet import Fleet
from ollama_proxy.web.metrics import OTHER, Metrics

class _AccessLogger(Logger):
    """
    A C{Logger} whose C{info} events skip C{emit}'s check that the level
    is one of C{LogLevel}'s (a walk over the constants' generator per
    event: a tenth of what logging the access line cost): the same event,
    the same keys, to the same observer.  Other levels, and traced events,
    take C{Logger.emit} itself.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level is not LogLevel.info or "log_trace" in kwargs:
            super().emit(level, format, **kwargs)
            return
        kwargs.update(
            log_logger=self, log_level=level, log_namespace=self.namespace,
            log_source=self.source, log_format=format, log_time=time(),
        )
        self.observer(kwargs)

    def access(self, fields: dict[str, object]) -> None:
        """
        The access line: the event C{self.info("{line}", **fields)} emits,
        made from C{fields} itself (C{info} and C{emit} each copied its
        keyword arguments into a new dict: two copies of ~15 fields per
        request).

        @param fields: the event's own keys (C{line} and the fields the
            JSON log carries); the event becomes this dict.
        """
        fields.update(
            log_logger=self, log_level=LogLevel.info, log_namespace=self.namespace,
            log_source=self.source, log_format="{line}", log_time=time(),
        )
        self.observer(fields)


log = _AccessLogger(__name__)


class _Client(Protocol):
    @property
    def gone(self) -> bool:
        """Whether the client left (or the answer finished)."""


class Observed(Protocol):
    """
    What the log line and the metrics read off a finished request: the
    fields of L{ollama_proxy.web.bridge.Exchange} they need, named here so
    that this module does not import the bridge that calls it.
    """

    request: Any
    start: int
    model: str | None
    backend: str | None
    modelLabel: str
    tokensIn: int | None
    tokensOut: int | None
    firstToken: int | None
    upstreamError: str | None

    @property
    def client(self) -> _Client:
        """Whether the client is still there."""

    def redactText(self, text: str) -> str:
        """@return: C{text} without the proxy's secrets."""


def upstreamErrorKind(error: UpstreamError, midStream: bool) -> str:
    """
    The C{kind} label of an upstream failure.

    @param error: the error.
    @param midStream: whether the client had already received bytes.
    @return: C{stream}, C{timeout}, C{http_4xx}, C{http_5xx}, C{connection}
        or C{protocol} (the backend answered something unusable).
    """
    if midStream:
        return "stream"
    if isinstance(error, UpstreamTimeout):
        return "timeout"
    if isinstance(error, UpstreamHTTPError):
        return "http_4xx" if error.status < 500 else "http_5xx"
    if isinstance(error, UpstreamConnectError):
        return "connection"
    return "protocol"


@contextmanager
def streaming(metrics: Metrics | None) -> Iterator[None]:
    """
    Count a response being streamed in the C{active_streams} gauge.

    @param metrics: the metrics, or C{None}.
    """
    if metrics is None:
        yield
        return
    metrics.activeStreams.inc()
    try:
        yield
    finally:
        metrics.activeStreams.dec()


def watchUpstream(metrics: Metrics, backends: Sequence[Backend]) -> None:
    """
    Have every backend report the time its response headers took.

    @param metrics: where to record it.
    @param backends: the upstream clients (those already watched are left).
    """

    def observe(backend: str, seconds: float) -> None:
        metrics.child(metrics.upstreamLatency, backend).observe(seconds)

    for backend in backends:
        if backend.onResponse is None:
            backend.onResponse = observe


CIRCUIT_VALUES = {CLOSED: 0.0, HALF_OPEN: 1.0, OPEN: 2.0}


@attrs.define
class FleetMetrics:
    """
    A fleet's reports as Prometheus values (an
    L{ollama_proxy.upstream.fleet.FleetObserver}).
    """

    metrics: Metrics

    def fleetRequest(self, backend: str) -> None:
        self.metrics.child(self.metrics.backendRequests, backend).inc()

    def fleetFailure(self, backend: str, kind: str) -> None:
        self.metrics.child(self.metrics.backendFailures, backend, kind).inc()

    def fleetFailover(self, backend: str) -> None:
        self.metrics.child(self.metrics.backendFailovers, backend).inc()

    def fleetInFlight(self, backend: str, delta: int) -> None:
        self.metrics.child(self.metrics.backendInFlight, backend).inc(delta)

    def fleetCircuit(self, backend: str, state: str) -> None:
        self.metrics.child(self.metrics.backendCircuit, backend).set(CIRCUIT_VALUES[state])

    def fleetSticky(self, backend: str, outcome: str) -> None:
        self.metrics.child(self.metrics.sticky, backend, outcome).inc()


def watchFleet(metrics: Metrics, fleet: Fleet | None) -> None:
    """
    Have a router's fleet (if it has one) report to C{metrics}; every
    member's circuit starts at closed.

    @param metrics: where to record.
    @param fleet: the router's fleet.
    """
    if fleet is None:
        return
    fleet.observer = FleetMetrics(metrics)
    for name, member in fleet.members.items():
        FleetMetrics(metrics).fleetCircuit(name, member.circuit.state)


def modelLabel(known: bool, modelId: str) -> str:
    """
    @param known: whether a listing named the model.
    @param modelId: the backend id.
    @return: the C{model} metrics label: the id, or L{OTHER} for guesses (so
        clients cannot create label values at will).
    """
    return modelId if known else OTHER


OBSERVED = "_ollamaProxyObserved"
"""The request attribute that says its answer was logged and counted."""

ROUTE = "_ollamaProxyRoute"
"""The request attribute with the route label of a resource that answered
without an exchange (a 405)."""

SITE_ROUTE = "-"
"""The route label of answers given before any resource was reached (the
site's 408, 413, 503 and C{Host} 403, the key gate's 401, the CORS 403):
the client's path is no label value."""


def noteRoute(request: Any, label: str) -> None:
    """
    Name the route of an answer that L{logAnswer} will observe.

    @param request: the request.
    @param label: the resource's route label.
    """
    setattr(request, ROUTE, label)


COUNTED = "_ollamaProxyCounted"
"""The request attribute naming the backend whose in-flight gauge counts
the request (L{routed}) until it ends (L{logRequest})."""


def routed(ex: Observed, metrics: Metrics | None) -> None:
    """
    Count C{ex} as in flight on the backend it was just routed to (the
    status page's per-backend column); L{logRequest} ends it.

    @param ex: the exchange, its C{backend} set.
    @param metrics: the metrics, or C{None}.
    """
    counted = getattr(ex.request, COUNTED, None)
    if metrics is None or ex.backend is None or counted == ex.backend:
        return
    if counted is not None:
        metrics.child(metrics.routedInFlight, counted).dec()
    setattr(ex.request, COUNTED, ex.backend)
    metrics.child(metrics.routedInFlight, ex.backend).inc()


def logRequest(ex: Observed, route: str, now: int, metrics: Metrics | None) -> None:
    """
    One info line per request, without bodies or secrets, and the
    request metrics.  The fields are also event keys, so that a JSON log
    (L{ollama_proxy.service.logging}) carries them as values.

    @param ex: the finished exchange.
    @param route: the route label (the resource's own path).
    @param now: the current wall-clock time (ns).
    @param metrics: the metrics, or C{None}.
    """
    request = ex.request
    setattr(request, OBSERVED, True)
    counted = getattr(request, COUNTED, None)
    if metrics is not None and counted is not None:
        inFlight, ended = metrics.routedEnd(counted)
        inFlight.dec()
        ended.inc()
        setattr(request, COUNTED, None)
    _record(
        request, route, (now - ex.start) / 1e6, metrics,
        model=ex.redactText(ex.model) if ex.model is not None else None,
        path=ex.redactText((request.path or b"").decode("latin-1")),
        backend=ex.backend, modelLabel=ex.modelLabel,
        tokensIn=ex.tokensIn, tokensOut=ex.tokensOut, firstToken=ex.firstToken,
        upstreamError=ex.upstreamError, gone=bool(ex.client.gone and not request.finished),
    )


def logAnswer(request: Any, durationMs: float, metrics: Metrics | None) -> None:
    """
    The same line and metrics for an answer no L{logRequest} saw: those
    of the site, the key gate, the CORS layer and a 405.  Called by the
    site for every finished request; a request already observed is left.

    @param request: the finished request.
    @param durationMs: since its headers arrived.
    @param metrics: the metrics, or C{None}.
    """
    if getattr(request, OBSERVED, False):
        return
    setattr(request, OBSERVED, True)
    _record(request, getattr(request, ROUTE, SITE_ROUTE), durationMs, metrics)


def _record(
    request: Any,
    route: str,
    durationMs: float,
    metrics: Metrics | None,
    model: str | None = None,
    path: str | None = None,
    backend: str | None = None,
    modelLabel: str = "",
    tokensIn: int | None = None,
    tokensOut: int | None = None,
    firstToken: int | None = None,
    upstreamError: str | None = None,
    gone: bool = False,
) -> None:
    ttftMs = firstToken / 1e6 if firstToken is not None else None
    method = (request.method or b"").decode("ascii", "replace")
    path = printable(path if path is not None else (request.path or b"").decode("latin-1"))
    modelText = printable(model) if model else "-"
    backendText = backend or "-"
    tokens = f"{tokensIn}/{tokensOut}" if tokensIn is not None else "-"
    ttft = f"{ttftMs:.1f}ms" if ttftMs is not None else "-"
    # The line is formatted here, once, with f-strings: a many-field
    # log_format costs the log observer a string.Formatter pass per field,
    # which was a quarter of a cached /api/tags (bench/RESULTS.md).  The
    # fields stay event keys for the JSON log.
    log.access({
        "line": f"{method} {path} model={modelText} status={request.code} backend={backendText} "
        f"tokens={tokens} ttft={ttft} duration={durationMs:.1f}ms"
        + (" (client disconnected)" if gone else ""),
        "method": method,
        "path": path,
        "route": route,
        "model": modelText,
        "backend": backendText,
        "status": request.code,
        "tokens": tokens,
        "tokens_in": tokensIn,
        "tokens_out": tokensOut,
        "ttft": ttft,
        "ttft_ms": ttftMs,
        "duration_ms": durationMs,
        "client_gone": gone,
    })
    if metrics is None:
        return
    if upstreamError is not None:
        metrics.child(metrics.upstreamErrors, backendText, upstreamError).inc()
    requests, duration = metrics.answered(route, modelLabel, "499" if gone else str(request.code))
    requests.inc()
    duration.observe(durationMs / 1000)
    if tokensIn:
        metrics.child(metrics.tokens, backendText, modelLabel, "in").inc(tokensIn)
    if tokensOut:
        metrics.child(metrics.tokens, backendText, modelLabel, "out").inc(tokensOut)
    if firstToken is not None:
        metrics.child(metrics.firstToken, backendText, modelLabel).observe(firstToken / 1e9)
