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


class Live(Resource):
    """
    C{GET /health/live}: 200 C{{"status": "ok"}}.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return codec.dumps({"status": "ok"})


class Ready(Resource):
    """
    C{GET /health/ready}: 200 C{{"status": "ready", "backends": {...}}}, or
    503 C{{"status": "not ready", "reason": ..., "backends": {...}}}, or
    from C{SIGTERM} on 503 C{{"status": "draining", ...}} (see
    L{ollama_proxy.service.drain}).
    """

    isLeaf = True

    def __init__(self, ctx: ProxyContext) -> None:
        super().__init__()
        self.ctx = ctx

    def render_GET(self, request: Request) -> bytes:
        # Read at each probe: a reload swaps the directory.
        ready, states = self.ctx.models.readiness()
        request.setHeader(b"Content-Type", JSON_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        if self.ctx.lifecycle.draining:
            # SIGTERM: the balancer must stop sending before the listener
            # closes (--drain-delay), whatever the backends say.
            request.setResponseCode(503)
            return codec.dumps({"status": "draining", "reason": "the proxy is shutting down",
                                "backends": states})
        if ready:
            return codec.dumps({"status": "ready", "backends": states})
        request.setResponseCode(503)
        reason = "no backend answered its model list: " + "; ".join(
            f"{name}: {state}" for name, state in states.items()
        )
        return codec.dumps({"status": "not ready", "reason": reason, "backends": states})


def healthTree(ctx: ProxyContext) -> Resource:
    """
    @param ctx: the shared context.
    @return: the C{/health} directory with C{live} and C{ready}.
    """
    health = Resource()
    health.putChild(b"live", Live())
    health.putChild(b"ready", Ready(ctx))
    return health
