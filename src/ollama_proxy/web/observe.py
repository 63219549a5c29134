# -*- test-case-name: tests.web.test_routing -*-
"""
Watching requests: the one log line per request and the request metrics,
read off the finished L{ollama_proxy.web.bridge.Exchange} (not computed in
the error funnel), the active-stream gauge and the upstream latency.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from twisted.logger import Logger

from ollama_proxy.protocol.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamTimeout,
)
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.metrics import OTHER, Metrics

if TYPE_CHECKING:
    from ollama_proxy.web.bridge import Exchange

log = Logger()


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
        metrics.upstreamLatency.labels(backend).observe(seconds)

    for backend in backends:
        if backend.onResponse is None:
            backend.onResponse = observe


def modelLabel(known: bool, modelId: str) -> str:
    """
    @param known: whether a listing named the model.
    @param modelId: the backend id.
    @return: the C{model} metrics label: the id, or L{OTHER} for guesses (so
        clients cannot create label values at will).
    """
    return modelId if known else OTHER


def logRequest(ex: Exchange, route: str, now: int, metrics: Metrics | None) -> None:
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
    durationMs = (now - ex.start) / 1e6
    ttftMs = ex.firstToken / 1e6 if ex.firstToken is not None else None
    gone = bool(ex.client.gone and not request.finished)
    method = (request.method or b"").decode("ascii", "replace")
    path = request.path.decode("latin-1")
    model = ex.model or "-"
    backend = ex.backend or "-"
    tokens = f"{ex.tokensIn}/{ex.tokensOut}" if ex.tokensIn is not None else "-"
    ttft = f"{ttftMs:.1f}ms" if ttftMs is not None else "-"
    # The line is formatted here, once, with f-strings: a many-field
    # log_format costs the log observer a string.Formatter pass per field,
    # which was a quarter of a cached /api/tags (bench/RESULTS.md).  The
    # fields stay event keys for the JSON log.
    log.info(
        "{line}",
        line=f"{method} {path} model={model} status={request.code} backend={backend} "
        f"tokens={tokens} ttft={ttft} duration={durationMs:.1f}ms"
        + (" (client disconnected)" if gone else ""),
        method=method,
        path=path,
        route=route,
        model=model,
        backend=backend,
        status=request.code,
        tokens=tokens,
        tokens_in=ex.tokensIn,
        tokens_out=ex.tokensOut,
        ttft=ttft,
        ttft_ms=ttftMs,
        duration_ms=durationMs,
        client_gone=gone,
    )
    if metrics is None:
        return
    if ex.upstreamError is not None:
        metrics.upstreamErrors.labels(backend, ex.upstreamError).inc()
    status = "499" if gone else str(request.code)
    metrics.child(metrics.requests, route, ex.modelLabel, status).inc()
    metrics.child(metrics.requestDuration, route).observe(durationMs / 1000)
    if ex.tokensIn:
        metrics.child(metrics.tokens, backend, ex.modelLabel, "in").inc(ex.tokensIn)
    if ex.tokensOut:
        metrics.child(metrics.tokens, backend, ex.modelLabel, "out").inc(ex.tokensOut)
    if ex.firstToken is not None:
        metrics.child(metrics.firstToken, backend, ex.modelLabel).observe(ex.firstToken / 1e9)
