# -*- test-case-name: tests.web.test_context -*-
"""
What the resources share: a plain container, built once by
L{ollama_proxy.service.tap.makeService} (or a test harness) and handed to
L{ollama_proxy.web.tree.buildRoot}.  It holds values and collaborators, no
behaviour: model lookups live in L{ollama_proxy.upstream.directory}, request
observation in L{ollama_proxy.web.observe}.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator

from ollama_proxy.protocol.clock import Clock, wallClock
from ollama_proxy.protocol.redact import Redactor
from ollama_proxy.protocol.stream import DEFAULT_MAX_LINE_LENGTH
from ollama_proxy.upstream.backend import HTTPClient
from ollama_proxy.upstream.directory import ModelDirectory
from ollama_proxy.web.budget import cooperator
from ollama_proxy.web.metrics import Metrics
from ollama_proxy.web.observe import watchFleet, watchUpstream

DEFAULT_VERSION = "0.32.15"
"""
What C{/api/version} reports: the newest Ollama release (0.33.0 was still a
release candidate) whose client-facing surface the proxy
serves -- C{/v1/responses} (0.13.3), C{/v1/messages} (0.14),
C{/api/tags} with C{capabilities} and C{details.context_length}
(0.30.0), C{/api/status} (0.16.2), C{/api/experimental/model-recommendations}
(0.22.1), C{model_info} always in show (0.14.3), C{/api/ps}
C{context_length}.  Clients gate on it: Copilot needs 0.6.4, Codex 0.13.4
for the Responses API (C{/v1/responses}).  Plain C{MAJOR.MINOR.PATCH}, which
Codex's semver, Copilot's C{parseInt} split and Open WebUI's C{int} split
all parse.
"""

DEFAULT_MAX_BODY = 64 * 1024 * 1024
"""Default request body cap: large enough for several base64 images."""


@attrs.frozen
class Fallback:
    """
    A real Ollama that receives what the proxy cannot answer itself.

    @ivar http: the treq-style client.
    @ivar base: its base URL, e.g. C{http://127.0.0.1:11505}.
    @ivar reactor: the clock for its timeouts.
    @ivar headerTimeout: seconds to wait for its response headers.
    @ivar idleTimeout: seconds of silence before its body is given up.
    """

    http: HTTPClient
    base: str
    reactor: IReactorTime
    headerTimeout: float = 600.0
    idleTimeout: float | None = 300.0


@attrs.define
class Lifecycle:
    """
    The process's place in its life, shared by the readiness probe, the
    status page and the shutdown sequence (L{ollama_proxy.service.drain}).

    @ivar started: wall-clock ns when the service was built, or C{None}.
    @ivar draining: set on C{SIGTERM}: the readiness probe answers 503 so
        that load balancers stop sending, while requests are still served
        until C{--drain-delay} has passed.
    @ivar workers: the processes serving the ports (C{--workers}).
    @ivar version: the proxy's own version, for the status page.
    """

    started: int | None = None
    draining: bool = False
    workers: int = 1
    version: str = "unknown"


@attrs.define
class ProxyContext:
    """
    Everything the resources share.

    @ivar models: the backends (each with its clock and timeouts), their
        routes and the model catalog.
    @ivar now: wall-clock nanoseconds, for Ollama's timestamps and durations.
    @ivar fallback: the Ollama for unknown paths, or C{None}.
    @ivar debug: whether to log payloads and chunks.
    @ivar maxLineLength: the SSE line cap.
    @ivar version: what C{/api/version} reports.
    @ivar corsOrigins: origin globs allowed in addition to Ollama's
        built-in list.
    @ivar metrics: the Prometheus metrics, or C{None} for none (and no
        C{/metrics}); when set, every backend reports its header latency to
        them.
    @ivar secrets: secrets the proxy holds besides the backends' keys (the
        inbound keys of C{--require-key}).
    @ivar redactor: replaces every backend key and every one of L{secrets}
        in upstream text before it reaches a client.
    @ivar maxBody: the request body cap, applied again to the decompressed
        size of compressed bodies (the site only sees the wire size).
    @ivar pingInterval: seconds between keep-alive events on the agent
        routes' streams (Claude Code gives up after about 20 s of silence).
    @ivar reactor: the reactor a compressed body's decoding yields to
        between steps; C{None} for the first backend's (the same one
        outside tests).
    @ivar lifecycle: start time, draining state and worker count.
    """

    models: ModelDirectory
    now: Clock = wallClock
    fallback: Fallback | None = None
    debug: bool = False
    maxLineLength: int = DEFAULT_MAX_LINE_LENGTH
    version: str = DEFAULT_VERSION
    corsOrigins: tuple[str, ...] = ()
    metrics: Metrics | None = None
    secrets: tuple[str, ...] = attrs.field(default=(), repr=False)
    maxBody: int = DEFAULT_MAX_BODY
    pingInterval: float = 10.0
    reactor: IReactorTime | None = None
    lifecycle: Lifecycle = attrs.field(factory=Lifecycle)
    _redactor: tuple[ModelDirectory, tuple[str, ...], Redactor] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _cooperator: Cooperator | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.metrics is not None:
            watchUpstream(self.metrics, [entry.backend for entry in self.models.router.backends])
            watchFleet(self.metrics, self.models.router.fleet)

    @property
    def redactor(self) -> Redactor:
        """
        Every backend key and every one of L{secrets}, as they are now: a
        reload (C{SIGHUP}) replaces L{models} and L{secrets}, and the
        redactor is rebuilt on the next request.
        """
        cached = self._redactor
        if cached is None or cached[0] is not self.models or cached[1] != self.secrets:
            cached = self._redactor = (self.models, self.secrets, Redactor(
                [*(entry.backend.apiKey for entry in self.models.router.backends), *self.secrets]
            ))
        return cached[2]

    @property
    def clock(self) -> IReactorTime:
        """
        The reactor to yield to between steps of work on one request.
        """
        if self.reactor is not None:
            return self.reactor
        return self.models.router.backends[0].backend.reactor

    @property
    def cooperator(self) -> Cooperator:
        """
        The one cooperator that runs every request's decoding steps (see
        L{ollama_proxy.web.budget.cooperator}).
        """
        if self._cooperator is None:
            self._cooperator = cooperator(self.clock)
        return self._cooperator

    @property
    def tag(self) -> str:
        """
        The suffix added to untagged model ids in C{/api/tags}.
        """
        return self.models.tag
