# -*- test-case-name: tests.web.test_generation -*-
"""
One resource for every generation dialect: name the model, route, parse,
generate.

L{GenerationResource} serves a L{RouteDialect} at a route template
(C{/api/chat}, C{/v1/messages}, C{/v1beta/models/{model}:{method}}): the
dialect names the model (in the body, or in the URL through the
template's parameters), the route is chosen, the dialect parses the body
(with the routed model's configuration) into the hub's typed request and
its reply side, or answers by itself, and the request goes the one way to
a backend, L{ollama_proxy.web.chat.generate} (the model's configured
C{extra} fields added by C{upstreamBody}).  A
backend that serves the dialect itself (its C{native} list) gets the body
relayed instead.  The route's label in logs and metrics is the template,
not the path.  Adding a dialect is its protocol module and one line in
L{ollama_proxy.web.tree}.

Claude Code gives up on a stream after about 20 seconds without a byte, and
a local backend can spend minutes evaluating a long prompt before its
first token (or even its response headers).  L{Heartbeat} writes the
dialect's keep-alive event every C{pingInterval} seconds while a streamed
request is in flight (for dialects whose encoders can ping, the block
dialects); if the backend has not answered yet, the first one commits the
stream (200 and the dialect's opening events), and any later failure
becomes the dialect's mid-stream error instead of an HTTP status.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.http import parse_qs
from twisted.web.resource import IResource
from twisted.web.server import Request

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.blocks import BlockEncoder
from ollama_proxy.protocol.errors import NotFound
from ollama_proxy.protocol.agentguard import agentGuard
from ollama_proxy.protocol.backends import NO_OVERRIDE
from ollama_proxy.protocol.dialect import (DONE, Answer, Generation, RouteDialect,
                                           Template)
from ollama_proxy.upstream.routing import Route
from ollama_proxy.web.bridge import DEBUG_EXCERPT, Exchange, ProxyResource, errorAnswer
from ollama_proxy.web.chat import generate
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.observe import noteRoute
from ollama_proxy.web.passthrough import forwardToBackend

log = Logger()

NATIVE_HEADERS = frozenset({
    b"content-type", b"accept", b"user-agent", b"anthropic-version", b"anthropic-beta",
})
"""Client headers a native backend gets (its key is the proxy's)."""


class Heartbeat:
    """
    Keep-alive events on one streamed request, every C{interval} seconds,
    until L{stop}.
    """

    def __init__(
        self,
        ex: Exchange,
        encoder: BlockEncoder,
        clock: IReactorTime,
        interval: float,
    ) -> None:
        self._ex = ex
        self._encoder = encoder
        self._clock = clock
        self._interval = interval
        self._call: IDelayedCall | None = clock.callLater(interval, self._beat)

    def _beat(self) -> None:
        ex = self._ex
        if ex.client.gone or self._encoder.state is DONE:
            self._call = None
            return
        if not ex.request.startedWriting:
            ex.startEncoded(self._encoder)
        ex.write(self._encoder.ping())
        self._call = self._clock.callLater(self._interval, self._beat)

    def stop(self) -> None:
        """
        No more keep-alives (the reply is complete or failed).
        """
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None


async def translate(
    ctx: ProxyContext,
    ex: Exchange,
    route: Route,
    generation: Generation,
) -> JSON | None:
    """
    Send a parsed request to the routed backend and answer in its
    dialect, with keep-alives on a stream if its encoder can ping.

    @return: the non-streamed object, or C{None} after streaming.
    """
    heartbeat = None
    request, dialect = generation.request, generation.reply
    encoder = dialect.streamEncoder(request.model, ex.start) if request.stream else None
    if isinstance(encoder, BlockEncoder) and ctx.pingInterval > 0:
        # One encoder for the stream: the keep-alives and the reply.
        heartbeat = Heartbeat(ex, encoder, route.backend.reactor, ctx.pingInterval)
    try:
        return await generate(ctx, ex, route, request, dialect, encoder, generation.asChat)
    finally:
        if heartbeat is not None:
            heartbeat.stop()


def logDropped(route: Route, generation: Generation, label: str) -> None:
    """
    Name, in the debug log, what of a request the backend gets nothing
    for: the fields its dialect's parser dropped, and a C{top_k} the
    backend's flavor does not take.
    """
    dropped = list(generation.dropped)
    flavor = route.backend.flavor
    if generation.request.sampling.topK is not None and not flavor.samplingExtras:
        dropped.append(f"top_k ({flavor.name} takes no top_k)")
    if dropped:
        log.debug("{route}: fields the backend cannot take, dropped: {fields}",
                  route=label, fields=", ".join(dropped))


def nativeRoute(route: Route, api: str) -> bool:
    """
    @param api: C{"messages"} or C{"responses"}.
    @return: whether the routed backend serves C{api} itself (its
        configuration's C{native} list).
    """
    return api in route.backend.native


async def relayNative(
    ctx: ProxyContext, ex: Exchange, route: Route, api: str, body: JSON
) -> None:
    """
    Relay an agent request to a backend that speaks its API (LiteLLM
    serves both, OpenAI C{/v1/responses}), with the model name mapped and
    the model's C{extra} fields; the answer, streamed or not, goes to the
    client as it arrives.
    """

    def bodyFor(member: Route) -> bytes:
        data = {**body, **member.override.extra, "model": member.modelId}
        if ctx.debug:
            log.debug("upstream request {url} {body}", url=member.backend.url(api),
                      body=ex.excerpt(codec.dumps(data).decode(), DEBUG_EXCERPT))
        return codec.dumps(data)

    # The texts a client joins across the answer's delta events are
    # watched (a key split over them), as on the relayed OpenAI routes.
    await forwardToBackend(ctx, ex, route, api, bodyFor, NATIVE_HEADERS, texts=True,
                           streamed=isinstance(body, dict) and body.get("stream") is True,
                           guard=agentGuard)


class NotServed(ProxyResource):
    """
    A 404 for any method, in the error shape of the resource it stands
    under (C{/v1/messages/x} answers Anthropic's error, not twisted.web's
    HTML page).
    """

    def __init__(self, ctx: ProxyContext, parent: ProxyResource) -> None:
        super().__init__(ctx)
        self.parent = parent
        self.errors = parent.errors

    def servesSubPath(self, request: Request) -> bool:
        return False

    def routeLabel(self, request: Request) -> str:
        """
        @return: C{"not served"}: the paths that end here are the client's
            choice, not label values.
        """
        return "not served"

    def render(self, request: Request) -> Any:
        noteRoute(request, self.routeLabel(request))
        path = (request.path or b"").decode("latin-1")
        return errorAnswer(request, self.errors, 404, f"{path} is not served by this proxy")


class RouteTemplate:
    """
    A route's path with parameters (C{/v1beta/models/{model}:{method}}):
    the fixed segments it is mounted at, and the rest matched against the
    request's remaining path.  The template itself, not the path, is the
    route's label in logs and metrics, so a URL-borne model never becomes a
    label value.

    @ivar template: the template as written.
    @ivar label: the template, the route's label.
    @ivar prefix: the fixed segments before the first parameter.
    """

    _PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")

    def __init__(self, template: str) -> None:
        if not template.startswith("/"):
            raise ValueError(f"route template {template!r} must start with /")
        self.template = template
        self.label = template
        segments = template.strip("/").split("/")
        fixed: list[str] = []
        for segment in segments:
            if "{" in segment:
                break
            fixed.append(segment)
        self.prefix = tuple(fixed)
        rest = "/".join(segments[len(fixed):])
        pattern, at = [], 0
        for found in self._PARAM.finditer(rest):
            pattern.append(re.escape(rest[at:found.start()]))
            # A parameter is within one path segment, never empty; greedy,
            # so that in {model}:{method} a model named qwen3:8b keeps its
            # colon and the method is what follows the last one.
            pattern.append(f"(?P<{found.group(1)}>[^/]+)")
            at = found.end()
        pattern.append(re.escape(rest[at:]))
        self._rest = re.compile("".join(pattern)) if rest else None

    @property
    def parameters(self) -> bool:
        """
        Whether the template has parameters (paths below its prefix).
        """
        return self._rest is not None

    def match(self, rest: Sequence[str]) -> dict[str, str] | None:
        """
        @param rest: the request's decoded path segments after L{prefix}.
        @return: the parameters, or C{None} if the path is not this route.
        """
        if self._rest is None:
            return {} if not rest else None
        found = self._rest.fullmatch("/".join(rest))
        return found.groupdict() if found is not None else None


class GenerationResource(ProxyResource):
    """
    C{POST} at a route template, in a L{RouteDialect}: whole or streamed,
    with the dialect's errors before and during the stream.

    @ivar dialect: the route's dialect.
    @ivar template: the route's template.
    """

    def __init__(
        self, ctx: ProxyContext, dialect: RouteDialect, template: str | Template
    ) -> None:
        """
        @param ctx: the shared context.
        @param dialect: the dialect the route speaks.
        @param template: the route's path, with C{{name}} parameters after
            its fixed segments (see L{RouteTemplate}), or a dialect's own
            L{Template}; the resource is mounted at its fixed segments.
        """
        super().__init__(ctx)
        self.dialect = dialect
        self.template = RouteTemplate(template) if isinstance(template, str) else template
        # A fixed path (no parameters): its own path needs no matching.
        self._fixed = isinstance(self.template, RouteTemplate) and not self.template.parameters
        self.errors = dialect.errors
        self.label = self.template.label

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        Any path below the route that is not a registered child is a 404
        in the dialect's shape (when the resource has children and so is
        not a leaf).
        """
        return NotServed(self.ctx, self)

    def _params(self, request: Request) -> dict[str, str] | None:
        if self._fixed and not request.postpath and len(request.prepath or ()) == len(self.template.prefix):
            # The route's own path (every request to a fixed route): no
            # segments to decode and match.
            return {}
        segments = [*(request.prepath or []), *(request.postpath or [])]
        rest = [s.decode("utf-8", "surrogateescape") for s in segments[len(self.template.prefix):]]
        return self.template.match(rest)

    def servesSubPath(self, request: Request) -> bool:
        """
        @return: whether the path below the mount point fills the
            template's parameters.
        """
        return self._params(request) is not None

    def routeLabel(self, request: Request) -> str:
        """
        @return: the template: a model in the URL is no label value.
        """
        return self.template.label

    async def handle_POST(self, ex: Exchange) -> JSON | None:
        request = ex.request
        params: Mapping[str, str] | None = self._params(request)
        if params is None:
            path = (request.path or b"").decode("latin-1")
            raise NotFound(f"{path} is not served by this proxy")
        query = request.uri.partition(b"?")[2]
        if query:
            params = {**{k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                         for k, v in parse_qs(query).items()}, **params}
        body = ex.json(keep=False)
        dialect = self.dialect
        model = dialect.model(body, params)
        route = await self.route(ex, model, body) if isinstance(model, str) and model else None
        native = dialect.native
        if route is not None and native is not None and nativeRoute(route, native):
            # The backend keeps its own state (previous_response_id and
            # friends are its business).
            await relayNative(self.ctx, ex, route, native, body)
            return None
        parsed = dialect.parse(body, params, route.override if route is not None else NO_OVERRIDE)
        if isinstance(parsed, Answer):
            return parsed.body
        assert route is not None  # every parser insists on a model name
        if self.ctx.debug:
            logDropped(route, parsed, self.template.label)
        return await translate(self.ctx, ex, route, parsed)
