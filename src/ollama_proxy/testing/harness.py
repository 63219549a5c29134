# -*- test-case-name: tests.testing.test_harness -*-
"""
Test doubles, public like C{treq.testing}: a scriptable OpenAI backend and a
harness that puts the proxy between two in-memory treq clients
(L{ollama_proxy.testing.memory.MemoryTreq}, C{StubTreq}'s shape).

How the pumping works: L{ProxyHarness.client} drives the proxy's resource
tree and L{ProxyHarness.upstream} drives L{ScriptedOpenAI}; both run over
C{iosim} on in-memory transports.  After anything happens on one side (a
request sent, a chunk written by the fake backend) call
L{ProxyHarness.pump}, which flushes every side and runs the clock's due
calls (the relay's end-of-turn C{callLater(0)}) until nothing moves, and
fails loudly, naming what is still pending, if that never happens.  Time
only passes when a test advances L{ProxyHarness.clock}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.testing import MemoryReactorClock

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import Facts
from ollama_proxy.testing.fake_openai import FakeOpenAI
from ollama_proxy.testing.memory import MemoryTreq
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.upstream.cache import DEFAULT_TTL, TTLCache
from ollama_proxy.upstream.directory import ModelDirectory
from ollama_proxy.upstream.routing import Router
from ollama_proxy.web.context import Fallback, ProxyContext
from ollama_proxy.web.tree import buildRoot

if TYPE_CHECKING:
    from ollama_proxy.service.config import BackendConfig
    from ollama_proxy.protocol.balance import RoutingPolicy

TARGET = "http://backend.test:4000"
PUMP_BOUND = 1000
"""Rounds L{ProxyHarness.pump} runs before it calls the system stuck (a
streamed answer needs a handful)."""
FALLBACK = "http://ollama.test:11505"


class Counter:
    """
    A fake wall clock for Ollama timestamps: each call advances 1 ms.
    """

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self.value = start

    def __call__(self) -> int:
        self.value += 1_000_000
        return self.value


def ScriptedOpenAI() -> FakeOpenAI:
    """
    The fake backend in scripted mode: it records every request and answers
    only when the test tells it to (through the L{Received} objects in its
    C{received} list).
    """
    return FakeOpenAI(scripted=True)


def delta(content: str | None = None, **fields: Any) -> dict[str, Any]:
    """
    An OpenAI stream chunk with one choice.

    @param content: C{delta.content}, if any.
    @param fields: other C{delta} fields, or C{finish_reason=}.
    @return: the chunk object.
    """
    finish = fields.pop("finish_reason", None)
    d: dict[str, Any] = dict(fields)
    if content is not None:
        d["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": d, "finish_reason": finish}],
    }


def dueCalls(clock: MemoryReactorClock) -> list[Any]:
    """
    @param clock: a memory clock.
    @return: its calls due now (not cancelled, not yet run).
    """
    now = clock.seconds()
    return [call for call in clock.getDelayedCalls() if call.getTime() <= now]


def pumpUntilQuiet(
    clock: MemoryReactorClock, sides: Sequence[Any], bound: int = PUMP_BOUND
) -> None:
    """
    The one pump: flush every in-memory client and run the clock's due
    calls until nothing moves: no byte or disconnect left to deliver, no
    call due now.  (The relay joins the reads of one reactor turn and
    flushes them at the end of the turn, with C{callLater(0)}; a body
    decoder works in steps between turns.)  Time does not pass.

    @param clock: the proxy's clock.
    @param sides: the L{MemoryTreq}s: the client's, each backend's.
    @param bound: rounds before giving up.
    @raise AssertionError: naming what is still pending after C{bound}
        rounds (a call that keeps rescheduling itself, a connection that
        keeps talking), or when a side cannot say whether anything moved
        (a C{StubTreq} put in a L{MemoryTreq}'s place).
    """
    for side in sides:
        if not isinstance(side, MemoryTreq):
            raise AssertionError(
                f"pump() needs MemoryTreq sides (whose flush says whether anything "
                f"moved), got {side!r}"
            )
    for _ in range(bound):
        moved = False
        for side in sides:
            moved = side.flush() or moved
        if dueCalls(clock):
            clock.advance(0)
            moved = True
        # A pull producer resumed by the last flush may have written
        # bytes no flush has delivered yet.
        if not moved and not any(side.agent.pending() for side in sides):
            return
    pending = [f"due: {call!r}" for call in dueCalls(clock)]
    for side in sides:
        pending.extend(side.agent.pending())
    raise AssertionError(
        f"pump() still not quiet after {bound} rounds; pending: "
        + ("; ".join(pending) or "nothing buffered, but every round moved something")
    )


class ProxyHarness:
    """
    The proxy wired to a L{ScriptedOpenAI} backend (and optionally a
    scripted fallback Ollama), driven through L{client}.
    """

    def __init__(
        self,
        fallback: bool = True,
        ttl: float = DEFAULT_TTL,
        overrides: Mapping[str, Facts] | None = None,
        idleTimeout: float | None = 300.0,
        apiKey: str = "sk-secret",
        **contextArgs: Any,
    ) -> None:
        """
        @param fallback: whether a (scripted) fallback Ollama is configured.
        @param apiKey: the backend's key (a secret the proxy must keep).
        @param ttl: how long model lists and metadata are reused.
        @param idleTimeout: the backend's (and the fallback's) idle timeout.
        @param overrides: per-model metadata overrides (C{--model-info}).
        @param contextArgs: further L{ProxyContext} arguments.
        """
        self.clock = MemoryReactorClock()
        self.backend = ScriptedOpenAI()
        self.upstream: Any = MemoryTreq(self.backend)
        self.stubs: list[Any] = [self.upstream]
        self.ollama = ScriptedOpenAI()
        self.fallbackStub: Any = MemoryTreq(self.ollama)
        self.now = Counter()
        self.backendClient = Backend(
            self.upstream, TARGET, self.clock, apiKey=apiKey, idleTimeout=idleTimeout
        )
        self.router = Router.single(self.backendClient, self.clock, ttl=ttl)
        self.ctx = ProxyContext(
            models=ModelDirectory(self.router, overrides or {}, now=self.now),
            now=self.now,
            fallback=(
                Fallback(self.fallbackStub, FALLBACK, self.clock, idleTimeout=idleTimeout)
                if fallback else None
            ),
            **contextArgs,
        )
        self.root = buildRoot(self.ctx)
        self.client: Any = MemoryTreq(self.root)

    def pump(self, bound: int = PUMP_BOUND) -> None:
        """
        Move bytes on every side (the client's, each backend's, the
        fallback's) and run the clock's due calls until quiet
        (L{pumpUntilQuiet}).

        @param bound: rounds before giving up.
        @raise AssertionError: naming what is still pending after C{bound}
            rounds.
        """
        pumpUntilQuiet(self.clock, [self.client, *self.stubs, self.fallbackStub], bound)

    def dueCalls(self) -> list[Any]:
        """
        @return: the clock's calls due now (not cancelled, not yet run).
        """
        return dueCalls(self.clock)

    def post(self, path: str, body: Any, **kwargs: Any) -> Deferred[Any]:
        """
        POST to the proxy.

        @param path: e.g. C{"/api/chat"}.
        @param body: bytes, or a value to send as JSON.
        @return: the client's response Deferred (unbuffered).
        """
        data = body if isinstance(body, bytes) else codec.dumps(body)
        d: Deferred[Any] = self.client.post(
            "http://proxy.test" + path, data=data, unbuffered=True, **kwargs
        )
        self.pump()
        return d

    def get(self, path: str, **kwargs: Any) -> Deferred[Any]:
        """
        GET from the proxy.
        """
        d: Deferred[Any] = self.client.get(
            "http://proxy.test" + path, unbuffered=True, **kwargs
        )
        self.pump()
        return d

    def request(self, method: str, path: str, **kwargs: Any) -> Deferred[Any]:
        """
        Any method.
        """
        d: Deferred[Any] = self.client.request(
            method, "http://proxy.test" + path, unbuffered=True, **kwargs
        )
        self.pump()
        return d

    def dropClients(self) -> None:
        """
        Disconnect every client connection to the proxy, as a client that
        closes its socket mid-request does, and deliver the disconnect.
        """
        for connection in list(self.client.agent.connections):
            connection.clientIO.abortConnection()
        self.pump()

    def proxyChannels(self) -> list[Any]:
        """
        @return: the proxy's server-side C{HTTPChannel}s, one per client
            connection still open (to simulate a slow client's full socket
            buffer with C{pauseProducing}).
        """
        return [connection.server for connection in self.client.agent.connections]

    def upstreamTransports(self) -> list[Any]:
        """
        @return: the proxy's client-side transports to the backend, one per
            upstream connection still open.
        """
        return [connection.clientIO for connection in self.upstream.agent.connections]


class BodyCollector:
    """
    Collects a response body as it streams, so tests can look at it before
    it ends.
    """

    def __init__(self, harness: ProxyHarness, response: Any) -> None:
        self.chunks: list[bytes] = []
        self.done = harness.client.collect(response, self.chunks.append)

    @property
    def data(self) -> bytes:
        """
        Everything received so far.
        """
        return b"".join(self.chunks)

    def lines(self) -> list[Any]:
        """
        The complete NDJSON lines received so far, decoded.
        """
        data = self.data
        return [codec.loads(line) for line in data.split(b"\n")[:-1]]


class MultiBackendHarness(ProxyHarness):
    """
    The proxy routing between two L{ScriptedOpenAI} backends, C{a} (also
    L{ProxyHarness.backend}) and C{b}, through a L{Router} whose model lists
    are cached for C{ttl} seconds of L{ProxyHarness.clock}; its fleet's
    C{routing} policy and its randomness (C{seed}) are the test's.

    @ivar backends: the fake backends by name.
    """

    def __init__(
        self,
        configs: Sequence[BackendConfig] | None = None,
        ttl: float = 60.0,
        metrics: bool = True,
        routing: RoutingPolicy | None = None,
        seed: int = 0,
        **contextArgs: Any,
    ) -> None:
        import random

        from ollama_proxy.protocol.balance import DEFAULT_ROUTING
        from ollama_proxy.service.config import BackendConfig
        from ollama_proxy.upstream.routing import BackendModels, makeFetcher
        from ollama_proxy.web.metrics import Metrics

        self.clock = MemoryReactorClock()
        self.now = Counter()
        self.ollama = ScriptedOpenAI()
        self.fallbackStub = MemoryTreq(self.ollama)
        if configs is None:
            configs = [
                BackendConfig(name="a", url="http://a.test:4000"),
                BackendConfig(name="b", url="http://b.test:8000/v1"),
            ]
        self.backends: dict[str, FakeOpenAI] = {}
        self.stubs: list[Any] = []
        entries = []
        for config in configs:
            fake = ScriptedOpenAI()
            stub: Any = MemoryTreq(fake)
            self.backends[config.name] = fake
            self.stubs.append(stub)
            client = Backend(stub, config.url, self.clock, apiKey=config.apiKey, name=config.name,
                             idleTimeout=300.0, native=frozenset(config.native))
            cache = TTLCache(makeFetcher(client, config), self.clock, ttl, config.name)
            entries.append(BackendModels(config, client, cache))
        self.backend = self.backends[configs[0].name]
        self.upstream = self.stubs[0]
        self.router = Router(entries, "proxy", routing=routing or DEFAULT_ROUTING,
                             rng=random.Random(seed))
        self.backendClient = entries[0].backend
        self.ctx = ProxyContext(
            models=ModelDirectory(self.router, {}, now=self.now),
            now=self.now,
            fallback=Fallback(self.fallbackStub, FALLBACK, self.clock),
            metrics=Metrics() if metrics else None,
            **contextArgs,
        )
        self.root = buildRoot(self.ctx)
        self.client = MemoryTreq(self.root)

    def answerModels(self, name: str, *ids: str) -> None:
        """
        Answer every pending C{GET /v1/models} of backend C{name}.

        @param name: the backend.
        @param ids: the model ids to list.
        """
        for received in self.backends[name].received:
            if received.path.endswith("/models") and not received.request.finished:
                received.respond(200, {"object": "list", "data": [
                    {"id": i, "object": "model", "created": 1700000000, "owned_by": name}
                    for i in ids]})
        self.pump()


def contextFor(
    backend: Backend, clock: IReactorTime, ttl: float = DEFAULT_TTL, **contextArgs: Any
) -> ProxyContext:
    """
    A L{ProxyContext} around one backend client, as C{--target} builds it.

    @param backend: the upstream client.
    @param clock: the reactor's clock.
    @param ttl: how long model lists and metadata are reused.
    @param contextArgs: further L{ProxyContext} arguments.
    @return: the context.
    """
    router = Router.single(backend, clock, ttl=ttl)
    return ProxyContext(models=ModelDirectory(router, {}), **contextArgs)
