# -*- test-case-name: tests.web.test_status -*-
"""
The status page: the running service at a glance, without Prometheus or a
dashboard elsewhere.

C{GET /status} is a small HTML page, C{GET /status.js} the few lines of
plain JavaScript that poll C{GET /status.json} every two seconds and draw
it (L{ollama_proxy.web.statuspage} holds both): version, uptime, workers,
each backend's reachability, last model-list check, recent latency,
requests, errors, requests in flight and models, and the request and error
rates of the last ten minutes as inline SVG charts.  No external asset, no
inline script (the page sends a C{Content-Security-Policy} that forbids
both), so it works offline and behind a strict CSP.

The numbers come from the metrics (L{ollama_proxy.web.metrics.totals}),
which with C{--workers} are the sum over every process, so whichever
worker answers, the page shows the whole service.  Backend states are the
answering process's own (each worker lists the backends itself).

The three paths sit behind the inbound key like C{/metrics} (the key gate
guards everything but C{/} and C{/health}); with C{--require-key} a browser
is asked for it (HTTP Basic, the key as the password, see
L{ollama_proxy.web.auth.BROWSER_PATHS}).  They are exempt from the request log and the
request metrics, so a page left open does not move the counters it shows.
A backend's state is the readiness probe's own words for it (what went
wrong at its last listing), and everything that came from a backend (model
ids, any text) passes the proxy's redactor first: no byte of the page
carries a secret the proxy holds.

With several backends (a fleet, where one model may be served by several
of them) each backend's C{circuit} is its breaker's state (C{closed},
C{half-open}, C{open}) and a backend no request could go to now (circuit
open, key refused, paused by a 429) is shown down with the reason; with
one backend there is no circuit (C{null}) and the page leaves the column
out.
"""

from __future__ import annotations

import os
import time

from twisted.web.resource import Resource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.balance import MemberSnapshot
from ollama_proxy.protocol.listing import remoteHost
from ollama_proxy.upstream.routing import BackendModels
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.metrics import BackendTotals, Metrics, totals
from ollama_proxy.web.observe import OBSERVED
from ollama_proxy.web.statuspage import CSP, PAGE, SCRIPT

JSON_TYPE = b"application/json; charset=utf-8"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def backendReport(ctx: ProxyContext, entry: BackendModels, state: str, now: float,
                  current: BackendTotals, old: BackendTotals | None,
                  member: MemberSnapshot | None = None) -> JSON:
    """
    One backend's row.

    @param ctx: the context (for the redactor).
    @param entry: the backend, its client and its model-list cache.
    @param state: its state in the readiness probe's words (C{"ok"}, why
        its last listing failed, C{"not listed yet"}).
    @param now: the clock's seconds (that of the model-list cache).
    @param current: its totals now.
    @param old: its totals at the start of the history window, if any.
    @param member: its state in the fleet (several backends): circuit and
        whether a request could go to it now; C{None} with one backend.
    @return: the row.
    """
    redact = ctx.redactor.text
    cache = entry.cache
    reachable: bool | None = True
    if cache.error is not None or (member is not None and not member.routable):
        reachable = False
    elif cache.value is None:
        reachable = None
    count, total = current.latencyCount, current.latencySum
    if old is not None and count > old.latencyCount:
        count, total = count - old.latencyCount, total - old.latencySum
    known = entry.known() or []
    return {
        "name": redact(entry.name),
        "host": redact(remoteHost(entry.config.url)),
        "reachable": reachable,
        "state": redact(state),
        "checked_seconds_ago": (
            round(max(now - cache.lastCheck, 0.0), 1) if cache.lastCheck is not None else None
        ),
        "latency_ms": round(total / count * 1000, 1) if count else None,
        "requests": int(current.requests),
        "errors": int(current.errors),
        "in_flight": int(current.inFlight),
        "models": [redact(str(model.get("id", ""))) for model in known],
        "circuit": member.circuit if member is not None else None,
    }


def statusReport(ctx: ProxyContext, metrics: Metrics) -> JSON:
    """
    What C{/status.json} answers.

    @param ctx: the context.
    @param metrics: its metrics.
    @return: the report.
    """
    router = ctx.models.router
    nowNs = ctx.now()
    lifecycle = ctx.lifecycle
    started = lifecycle.started if lifecycle.started is not None else nowNs
    current = totals(metrics)
    oldest = metrics.history.oldest()
    ready, states = ctx.models.readiness()
    # Circuits exist only in a fleet (several backends); one backend has none.
    members = {m.name: m for m in router.snapshot()} if router.fleet is not None else {}
    rows = []
    for entry in router.backends:
        clock = entry.cache.clock.seconds()
        rows.append(backendReport(
            ctx, entry, states.get(entry.name, ""), clock,
            current.backends.get(entry.name, BackendTotals()),
            oldest.backends.get(entry.name) if oldest is not None else None,
            members.get(entry.name),
        ))
    requests, errors = metrics.history.rates()
    return {
        "service": "ollama-proxy",
        "version": lifecycle.version,
        "ollama_version": ctx.version,
        "pid": os.getpid(),
        "workers": lifecycle.workers,
        "started": _iso(started / 1e9),
        "uptime_seconds": round(max(nowNs - started, 0) / 1e9, 1),
        "ready": bool(ready) and not lifecycle.draining,
        "draining": lifecycle.draining,
        "totals": {
            "requests": int(current.requests),
            "errors": int(current.errors),
            "active_streams": int(current.activeStreams),
        },
        "history": {
            "interval_seconds": metrics.history.interval,
            "requests_per_minute": [round(v, 2) for v in requests],
            "errors_per_minute": [round(v, 2) for v in errors],
        },
        "backends": rows,
    }


class _StatusResource(Resource):
    """
    What the three status paths share: exactly their own path (a JSON 404
    for a sub-path), C{GET}/C{HEAD} only (a JSON 405 otherwise), no
    caching, no log line or request metric.
    """

    isLeaf = True
    contentType = b""

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__()
        self.ctx = ctx

    def render(self, request: Request) -> bytes:
        # The page polls; its requests are not the traffic it reports.
        setattr(request, OBSERVED, True)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if request.postpath:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", JSON_TYPE)
            path = (request.path or b"").decode("latin-1")
            return codec.dumps({"error": f"{path} is not served"})
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            request.setHeader(b"Content-Type", JSON_TYPE)
            method = (request.method or b"").decode("ascii", "replace")
            return codec.dumps({"error": f"method {method} not allowed"})
        request.setHeader(b"Content-Type", self.contentType)
        return self.body(request)

    def body(self, request: Request) -> bytes:
        raise NotImplementedError


class StatusPage(_StatusResource):
    """
    C{GET /status}: the HTML shell, with a CSP that allows only this
    origin's script and data and the page's own inline style (by hash).
    """

    contentType = b"text/html; charset=utf-8"

    def body(self, request: Request) -> bytes:
        request.setHeader(b"Content-Security-Policy", CSP)
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        return PAGE


class StatusScript(_StatusResource):
    """
    C{GET /status.js}: the page's script.
    """

    contentType = b"text/javascript; charset=utf-8"

    def body(self, request: Request) -> bytes:
        return SCRIPT


class StatusJSON(_StatusResource):
    """
    C{GET /status.json}: L{statusReport}.
    """

    contentType = JSON_TYPE

    def body(self, request: Request) -> bytes:
        metrics = self.ctx.metrics
        assert metrics is not None
        return codec.dumps(statusReport(self.ctx, metrics))


def statusResources(ctx: ProxyContext) -> dict[bytes, Resource]:
    """
    @param ctx: the shared context (with metrics).
    @return: the root's children for the status page.
    """
    return {
        b"status": StatusPage(ctx),
        b"status.json": StatusJSON(ctx),
        b"status.js": StatusScript(ctx),
    }
