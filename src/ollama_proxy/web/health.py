# -*- test-case-name: tests.web.test_health -*-
"""
Health endpoints for load balancers and orchestrators.

C{GET /health/live} answers 200 while the process serves HTTP (a liveness
probe: restart the process when it stops answering).  C{GET /health/ready}
answers 200 when at least one backend answered its model list at its last
check, and 503 with the reason otherwise (a readiness probe: send no
traffic to this instance meanwhile).  Both are open without the inbound key
(L{ollama_proxy.web.auth.KeyGate} lets them through: a balancer has no key)
and tell nothing secret: backend names and error messages, which never
carry keys.  They are plain resources, not L{ollama_proxy.web.bridge.ProxyResource}s,
so a probe every few seconds adds no request log line and no request
metric.

C{GET /} keeps answering C{Ollama is running} for clients that check it.
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.web.context import ProxyContext

JSON_TYPE = b"application/json; charset=utf-8"


def _error(request: Request, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON_TYPE)
    return codec.dumps({"error": message})


class Probe(Resource):
    """
    A health endpoint: C{GET} and C{HEAD} on exactly its path; any other
    method is a 405 JSON with C{Allow}, a sub-path a 404 JSON (never
    twisted.web's HTML pages).
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.postpath:
            return _error(request, 404, f"{(request.path or b'').decode('latin-1')} is not served")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            method = (request.method or b"").decode("latin-1")
            return _error(request, 405, f"method {method} not allowed")
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return self.answer(request)

    def answer(self, request: Request) -> bytes:
        """
        @return: the probe's body (its status set on C{request}).
        """
        raise NotImplementedError


class Live(Probe):
    """
    C{GET /health/live}: 200 C{{"status": "ok"}}.
    """

    def answer(self, request: Request) -> bytes:
        return codec.dumps({"status": "ok"})


class Ready(Probe):
    """
    C{GET /health/ready}: 200 C{{"status": "ready", "backends": {...}}}, or
    503 C{{"status": "not ready", "reason": ..., "backends": {...}}}, or
    from C{SIGTERM} on 503 C{{"status": "draining", ...}} (see
    L{ollama_proxy.service.drain}).
    """

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__()
        self.ctx = ctx

    def answer(self, request: Request) -> bytes:
        # Read at each probe: a reload swaps the directory.
        ready, states = self.ctx.models.readiness()
        if self.ctx.lifecycle.draining:
            # SIGTERM: the balancer must stop sending before the listener
            # closes (--drain-delay), whatever the backends say.
            request.setResponseCode(503)
            return codec.dumps({"status": "draining", "reason": "the proxy is shutting down",
                                "backends": states})
        if ready:
            return codec.dumps({"status": "ready", "backends": states})
        request.setResponseCode(503)
        unserved = self.ctx.models.unserved(states) if self.ctx.models.router.fleet else []
        if unserved and any(state == "ok" for state in states.values()):
            reason = "no routable backend for " + ", ".join(unserved[:10]) + "; " + "; ".join(
                f"{name}: {state}" for name, state in states.items()
            )
        else:
            reason = "no backend answered its model list: " + "; ".join(
                f"{name}: {state}" for name, state in states.items()
            )
        return codec.dumps({"status": "not ready", "reason": reason, "backends": states})


class HealthDirectory(Resource):
    """
    C{/health}: C{live} and C{ready}; the directory itself and any other
    child are a 404 JSON.
    """

    def getChild(self, path: bytes, request: Request) -> Resource:
        return _NotFound()

    def render(self, request: Request) -> bytes:
        return _NotFound().render(request)


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        path = (request.path or b"").decode("latin-1")
        return _error(request, 404, f"{path} is not served (try /health/live or /health/ready)")


def healthTree(ctx: ProxyContext) -> Resource:
    """
    @param ctx: the shared context.
    @return: the C{/health} directory with C{live} and C{ready}.
    """
    health = HealthDirectory()
    health.putChild(b"live", Live())
    health.putChild(b"ready", Ready(ctx))
    return health
