"""
Tests for L{ollama_proxy.upstream.fleet} through the proxy's public
surface: three scripted backends serving one model on a memory reactor
(L{MultiBackendHarness}), failover before the first byte, attempt limits,
429/401 handling, circuits and active checks, stickiness, the backend
header, in-flight accounting.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.balance import CLOSED, OPEN, PoolPolicy, RoutingPolicy
from ollama_proxy.service.config import BackendConfig
from ollama_proxy.testing.fake_openai import Received
from ollama_proxy.testing.harness import MultiBackendHarness

REPLY = {
    "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
NAMES = ("a", "b", "c")


def drop(request: Received) -> None:
    """
    Break the backend's connection (as a backend that dies does).
    """
    transport = request.request.channel.transport
    assert transport is not None
    transport.loseConnection()


def chat(text: str = "hi", stream: bool = False) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "system", "content": "sys"},
                                       {"role": "user", "content": text}], "stream": stream}


class FleetHarness(MultiBackendHarness):
    """
    Three backends that all list model C{m}.
    """

    def __init__(self, case: SynchronousTestCase, routing: RoutingPolicy | None = None,
                 priorities: tuple[int, int, int] = (0, 0, 0)) -> None:
        super().__init__([BackendConfig(name=n, url=f"http://{n}.test:4000", priority=p)
                          for n, p in zip(NAMES, priorities)], routing=routing)
        self.case = case
        fleet = self.router.fleet
        assert fleet is not None
        self.fleet = fleet

    def listAll(self) -> None:
        for name in NAMES:
            self.answerModels(name, "m")
        self.pump()

    def pending(self) -> list[tuple[str, Received]]:
        """
        @return: the chat requests no backend answered yet, as C{(backend,
            request)}.
        """
        return [(name, r) for name, fake in self.backends.items() for r in fake.received
                if r.path.endswith("chat/completions") and not r.request.finished and not r.lost]

    def one(self) -> tuple[str, Received]:
        [only] = self.pending()
        return only

    def chats(self, name: str) -> int:
        return sum(r.path.endswith("chat/completions") for r in self.backends[name].received)

    def send(self, body: Any, **kwargs: Any) -> Any:
        d = self.post("/api/chat", body, **kwargs)
        self.listAll()
        return d

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        @return: every sample of C{GET /metrics}, by name and sorted labels.
        """
        response = self.case.successResultOf(self.get("/metrics"))
        text = self.case.successResultOf(self.client.content(response)).decode()
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def finished(self, d: Any) -> tuple[int, Any, str | None]:
        """
        @return: status, decoded body (or NDJSON lines) and the backend
            header of a finished answer.
        """
        response = self.case.successResultOf(d)
        raw = self.case.successResultOf(self.client.content(response))
        header = response.headers.getRawHeaders(b"x-ollama-proxy-backend")
        lines = [codec.loads(line) for line in raw.splitlines() if line.strip()]
        body = lines[0] if len(lines) == 1 else lines
        return response.code, body, header[0].decode() if header else None


class FailoverTests(SynchronousTestCase):
    """
    Failover before the first byte, and never after it.
    """

    def test_503MovesToAnotherMember(self) -> None:
        """
        A 503 from the chosen member sends the request to another one; the
        client sees only the success, named in C{X-Ollama-Proxy-Backend}.
        """
        h = FleetHarness(self)
        d = h.send(chat())
        first, request = h.one()
        request.respond(503, {"error": {"message": "overloaded"}})
        h.pump()
        second, request = h.one()
        self.assertNotEqual(first, second)
        request.respond(200, REPLY)
        h.pump()
        status, body, header = h.finished(d)
        self.assertEqual((status, body["message"]["content"], header), (200, "hello", second))
        samples = h.samples()
        self.assertEqual(samples[("ollama_proxy_backend_failovers_total", (("backend", first),))], 1)
        self.assertEqual(samples[("ollama_proxy_backend_failures_total",
                                  (("backend", first), ("kind", "http_5xx")))], 1)

    def test_connectionLostMovesOn(self) -> None:
        """
        A connection that breaks before the response headers is failed over
        too.
        """
        h = FleetHarness(self)
        d = h.send(chat())
        first, request = h.one()
        drop(request)
        h.pump()
        second, request = h.one()
        self.assertNotEqual(first, second)
        request.respond(200, REPLY)
        h.pump()
        self.assertEqual(h.finished(d)[0], 200)
        self.assertIn(h.fleet.members[first].reason, ("connection failed", "connection refused"))

    def test_attemptLimit(self) -> None:
        """
        At most C{attempts} members are tried; then the client gets the last
        error, from the backend that gave it (named).
        """
        h = FleetHarness(self, RoutingPolicy(attempts=2))
        d = h.send(chat())
        tried = []
        for _ in range(2):
            name, request = h.one()
            tried.append(name)
            request.respond(502, {"error": {"message": "bad gateway"}})
            h.pump()
        self.assertEqual(h.pending(), [])
        status, body, header = h.finished(d)
        self.assertEqual((status, header), (502, tried[-1]))
        self.assertEqual(sum(h.chats(n) for n in NAMES), 2)

    def test_clientErrorIsTheAnswer(self) -> None:
        """
        A 400 is the client's answer: no other member is asked.
        """
        h = FleetHarness(self)
        d = h.send(chat())
        name, request = h.one()
        request.respond(400, {"error": {"message": "bad tool schema"}})
        h.pump()
        status, body, header = h.finished(d)
        self.assertEqual((status, body["error"], header), (400, "bad tool schema", name))
        self.assertEqual(sum(h.chats(n) for n in NAMES), 1)
        self.assertEqual(h.fleet.members[name].circuit.failures, 0)

    def test_passthroughFailsOverOnStatus(self) -> None:
        """
        The relayed OpenAI routes fail over on a 503 answer too (its body
        drained, not relayed); the client gets the next member's answer as
        it is, with the model id mapped, named in the header.
        """
        h = FleetHarness(self)
        d = h.post("/v1/chat/completions", {"model": "m:proxy", "messages": [
            {"role": "user", "content": "hi"}]})
        h.listAll()
        first, request = h.one()
        request.respond(503, {"error": {"message": "warming up"}})
        h.pump()
        second, request = h.one()
        self.assertNotEqual(first, second)
        self.assertEqual(request.json()["model"], "m")
        request.respond(200, REPLY)
        h.pump()
        response = self.successResultOf(d)
        body = codec.loads(self.successResultOf(h.client.content(response)))
        self.assertEqual((response.code, body["choices"][0]["message"]["content"]), (200, "hello"))
        self.assertEqual(response.headers.getRawHeaders(b"x-ollama-proxy-backend"),
                         [second.encode()])

    def test_spoofedHeaderDropped(self) -> None:
        """
        A backend cannot name another: its own C{X-Ollama-Proxy-Backend}
        is not relayed, the proxy's is.
        """
        h = FleetHarness(self)
        d = h.post("/v1/chat/completions", {"model": "m", "messages": []})
        h.listAll()
        name, request = h.one()
        request.request.setHeader(b"X-Ollama-Proxy-Backend", b"someone-else")
        request.respond(200, REPLY)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"x-ollama-proxy-backend"), [name.encode()])

    def test_500CountsWithoutFailover(self) -> None:
        """
        A 500 is passed on (it may be this request's doing) but counts
        against the member's circuit: a backend that fails everything is
        ejected.
        """
        h = FleetHarness(self, RoutingPolicy(failures=2))
        name = None
        for _ in range(2):
            d = h.send(chat())
            name, request = h.one()
            request.respond(500, {"error": {"message": "model crashed"}})
            h.pump()
            self.assertEqual(h.finished(d)[0], 500)
            for other in NAMES:
                if other != name:
                    h.fleet.members[other].inFlight = 100  # keep least-busy on it
        assert name is not None
        self.assertEqual(h.fleet.members[name].circuit.state, OPEN)

    def test_noFailoverAfterFirstByte(self) -> None:
        """
        A stream that breaks after its first byte ends with the dialect's
        error line (no fake C{done}), no other member is asked, and the
        break counts against the member that broke.
        """
        h = FleetHarness(self)
        d = h.send(chat(stream=True))
        name, request = h.one()
        request.startSSE()
        request.event({"choices": [{"index": 0, "delta": {"content": "par"}}]})
        h.pump()
        drop(request)
        h.pump()
        status, lines, header = h.finished(d)
        self.assertEqual((status, header), (200, name))
        self.assertEqual(lines[0]["message"]["content"], "par")
        self.assertIn("error", lines[-1])
        self.assertNotIn("done", lines[-1])
        self.assertEqual(sum(h.chats(n) for n in NAMES), 1)
        member = h.fleet.members[name]
        self.assertEqual((member.circuit.failures, member.inFlight), (1, 0))

    def test_inFlightCountsUntilTheAnswerEnds(self) -> None:
        """
        A request is in flight on its member from the send to the end of
        its stream; C{least-busy} sends the next one elsewhere meanwhile.
        """
        h = FleetHarness(self)
        h.send(chat(stream=True))
        first, request = h.one()
        request.startSSE()
        request.event({"choices": [{"index": 0, "delta": {"content": "x"}}]})
        h.pump()
        self.assertEqual(h.fleet.members[first].inFlight, 1)
        h.post("/api/chat", chat("again"))
        names = {n for n, _ in h.pending()}
        self.assertEqual(len(names), 2)
        request.done()
        h.pump()
        self.assertEqual(h.fleet.members[first].inFlight, 0)


class StateTests(SynchronousTestCase):
    """
    429, 401/403, circuits and active checks.
    """

    def setUp(self) -> None:
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)
        self.addCleanup(globalLogPublisher.removeObserver, self.events)

    def test_429HonoursRetryAfter(self) -> None:
        """
        A 429 fails over and keeps its member out for its C{Retry-After};
        it is not a circuit failure.
        """
        h = FleetHarness(self)
        d = h.send(chat())
        limited, request = h.one()
        request.request.setHeader(b"Retry-After", b"30")
        request.respond(429, {"error": {"message": "slow down"}})
        h.pump()
        h.one()[1].respond(200, REPLY)
        h.pump()
        self.assertEqual(h.finished(d)[0], 200)
        member = h.fleet.members[limited]
        self.assertFalse(member.routable())
        self.assertEqual(member.circuit.state, CLOSED)
        self.assertEqual(h.ctx.models.readiness()[1][limited], "rate limited (429)")
        h.clock.advance(30)
        self.assertTrue(member.routable())

    def test_429WaitCapped(self) -> None:
        """
        A C{Retry-After} longer than C{backoff_max} keeps the member out
        for C{backoff_max} only.
        """
        h = FleetHarness(self, RoutingPolicy(backoffMax=20))
        h.send(chat())
        limited, request = h.one()
        request.request.setHeader(b"Retry-After", b"86400")
        request.respond(429, {"error": {"message": "come back tomorrow"}})
        h.pump()
        member = h.fleet.members[limited]
        h.clock.advance(19)
        self.assertFalse(member.routable())
        h.clock.advance(1)
        self.assertTrue(member.routable())

    def test_401Misconfigured(self) -> None:
        """
        A 401 to the proxy's key fails over, marks the member misconfigured
        (not routable, reported, no circuit trip, one error log line); a
        check that passes brings it back.
        """
        h = FleetHarness(self)
        d = h.send(chat())
        bad, request = h.one()
        request.respond(401, {"error": {"message": "invalid key sk-secret"}})
        h.pump()
        h.one()[1].respond(200, REPLY)
        h.pump()
        self.assertEqual(h.finished(d)[0], 200)
        member = h.fleet.members[bad]
        self.assertEqual(member.whyNot(), "backend answered 401")
        self.assertEqual(member.circuit.state, CLOSED)
        ready, states = h.ctx.models.readiness()
        self.assertTrue(ready)
        self.assertEqual(states[bad], "backend answered 401")
        lines = [e for e in self.events if "misconfigured" in e.get("log_format", "")]
        self.assertEqual(len(lines), 1)
        for _ in range(3):
            h.post("/api/chat", chat())
            self.assertNotIn(bad, {n for n, _ in h.pending()})
            for _, r in h.pending():
                r.respond(200, REPLY)
            h.pump()
        entry = next(e for e in h.router.backends if e.name == bad)
        check = Deferred.fromCoroutine(h.fleet.check(entry))
        h.answerModels(bad, "m")
        h.pump()
        self.assertTrue(self.successResultOf(check))
        self.assertTrue(member.routable())

    def test_circuitOpensAndACheckClosesIt(self) -> None:
        """
        C{failures} consecutive failures open the circuit (one log line per
        change, the gauge follows); the member gets no request while open;
        an active check that passes closes it and refreshes its list.
        """
        h = FleetHarness(self, RoutingPolicy(failures=2, attempts=1))
        victim = None
        while victim is None or h.fleet.members[victim].circuit.state != OPEN:
            d = h.send(chat())
            name, request = h.one()
            if victim is None:
                victim = name
            request.respond(503 if name == victim else 200,
                            {"error": {"message": "x"}} if name == victim else REPLY)
            h.pump()
            self.successResultOf(d)
        assert victim is not None
        changes = [e for e in self.events if "circuit" in e.get("log_format", "")]
        self.assertEqual([(e["backend"], e["old"], e["new"], e["why"]) for e in changes],
                         [(victim, CLOSED, OPEN, " after backend answered 503")])
        self.assertEqual(h.samples()[("ollama_proxy_backend_circuit", (("backend", victim),))], 2)
        for _ in range(6):
            h.post("/api/chat", chat())
            self.assertNotIn(victim, {n for n, _ in h.pending()})
            for _, r in h.pending():
                r.respond(200, REPLY)
            h.pump()
        entry = next(e for e in h.router.backends if e.name == victim)
        check = Deferred.fromCoroutine(h.fleet.check(entry))
        h.answerModels(victim, "m", "new-model")
        h.pump()
        self.assertTrue(self.successResultOf(check))
        self.assertEqual(h.fleet.members[victim].circuit.state, CLOSED)
        self.assertIn("new-model", [e["id"] for e in entry.cache.value or []])

    def test_periodicChecksFindADeadBackend(self) -> None:
        """
        Started, the fleet checks every backend every C{health_interval};
        a check that times out is a failure; the checks stop with the
        fleet.
        """
        h = FleetHarness(self, RoutingPolicy(healthInterval=5, healthTimeout=1, failures=2))
        h.fleet.start()
        self.addCleanup(h.fleet.stop)
        h.pump()
        for name in ("a", "b"):
            h.answerModels(name, "m")
        h.pump()
        h.clock.advance(1)  # c's check times out
        self.assertEqual(h.fleet.members["c"].reason, "timeout")
        self.assertEqual(h.fleet.members["c"].circuit.state, CLOSED)
        h.clock.advance(5)  # the next round, one interval after the last ended
        h.pump()
        for name in ("a", "b"):
            h.answerModels(name, "m")
        h.clock.advance(1)
        self.assertEqual(h.fleet.members["c"].circuit.state, OPEN)
        self.assertIsNotNone(h.fleet.members["a"].lastCheck)
        h.fleet.stop()
        self.assertEqual(h.clock.getDelayedCalls(), [])

    def test_noRoutableMember(self) -> None:
        """
        Every member out: a 503 naming each one's reason, in the proxy's
        words; C{/health/ready} says not ready, naming the model.
        """
        h = FleetHarness(self)
        h.send(chat())
        h.one()[1].respond(200, REPLY)
        h.pump()
        for member in h.fleet.members.values():
            member.misconfigured = "backend answered 403"
        d = h.post("/api/chat", chat())
        status, body, header = h.finished(d)
        self.assertEqual(status, 503)
        self.assertIn('no backend can serve model "m" now', body["error"])
        self.assertIn("a: backend answered 403", body["error"])
        d = h.get("/health/ready")
        status, body, _ = h.finished(d)
        self.assertEqual(status, 503)
        self.assertIn("a: backend answered 403", body["reason"])

    def test_priorityTiers(self) -> None:
        """
        A lower tier gets requests only when the higher one has no routable
        member (local first, cloud second).
        """
        h = FleetHarness(self, priorities=(10, 10, 0))
        for _ in range(4):
            h.send(chat())
            name, request = h.one()
            self.assertIn(name, ("a", "b"))
            request.respond(200, REPLY)
            h.pump()
        h.fleet.members["a"].misconfigured = "backend answered 401"
        h.fleet.members["b"].limitedUntil = h.clock.seconds() + 60
        d = h.send(chat())
        self.assertEqual(h.one()[0], "c")


class StickyTests(SynchronousTestCase):
    """
    Sticky conversations through the proxy.
    """

    def test_turnsStayAndRepin(self) -> None:
        """
        With C{sticky}, every turn of a conversation (same session header)
        lands on turn 1's member; when that member is not routable the
        next turn goes elsewhere and stays there.
        """
        h = FleetHarness(self, RoutingPolicy(pool=PoolPolicy(sticky=True)))
        homes = set()
        for turn in range(5):
            d = h.send(chat(f"turn {turn}"), headers={"X-Session-Id": ["conv-1"]})
            name, request = h.one()
            homes.add(name)
            request.respond(200, REPLY)
            h.pump()
            self.assertEqual(h.finished(d)[2], name)
        self.assertEqual(len(homes), 1)
        [home] = homes
        h.fleet.members[home].misconfigured = "backend answered 401"
        d = h.send(chat("turn 5"), headers={"X-Session-Id": ["conv-1"]})
        moved, request = h.one()
        self.assertNotEqual(moved, home)
        request.respond(200, REPLY)
        h.pump()
        h.send(chat("turn 6"), headers={"X-Session-Id": ["conv-1"]})
        self.assertEqual(h.one()[0], moved)
        samples = h.samples()
        self.assertEqual(samples[("ollama_proxy_sticky_total",
                                  (("backend", home), ("outcome", "hit")))], 4)
        self.assertEqual(samples[("ollama_proxy_sticky_total",
                                  (("backend", moved), ("outcome", "repin")))], 1)

    def test_prefixHashWithoutHeader(self) -> None:
        """
        Without an id, the system prompt and first user message keep a
        conversation on its member.
        """
        h = FleetHarness(self, RoutingPolicy(pool=PoolPolicy(sticky=True)))
        homes = set()
        messages = chat("first")["messages"]
        for turn in range(4):
            body = {"model": "m", "stream": False, "messages": messages}
            h.send(body)
            name, request = h.one()
            homes.add(name)
            request.respond(200, REPLY)
            h.pump()
            messages = messages + [{"role": "assistant", "content": "ok"},
                                   {"role": "user", "content": f"more {turn}"}]
        self.assertEqual(len(homes), 1)

    def test_notStickyByDefault(self) -> None:
        """
        Without C{sticky}, one session spreads over the members.
        """
        h = FleetHarness(self)
        homes = set()
        for turn in range(12):
            h.send(chat(), headers={"X-Session-Id": ["conv-1"]})
            name, request = h.one()
            homes.add(name)
            request.respond(200, REPLY)
            h.pump()
        self.assertGreater(len(homes), 1)


class PolicyTests(SynchronousTestCase):
    """
    Per-model policies and the status snapshot.
    """

    def test_modelOwnPolicy(self) -> None:
        """
        C{[routing.models."m"]} makes only C{m}'s pool sticky.
        """
        h = FleetHarness(self, RoutingPolicy(models={"m": PoolPolicy(sticky=True)}))
        for _ in range(2):
            h.send(chat(), headers={"X-Session-Id": ["s"]})
            h.one()[1].respond(200, REPLY)
            h.pump()
        route = h.router.lookup("m")
        assert route is not None and route.pool is not None
        self.assertEqual(route.pool.policy, PoolPolicy(sticky=True))
        self.assertEqual(len(h.fleet.sticky), 1)

    def test_snapshot(self) -> None:
        """
        C{Router.snapshot()}: one read-only entry per backend, in
        configuration order, for a status page.
        """
        h = FleetHarness(self)
        h.send(chat(stream=True))
        name, request = h.one()
        h.fleet.members["c"].misconfigured = "backend answered 401"
        snap = {s.name: s for s in h.router.snapshot()}
        self.assertEqual(list(snap), ["a", "b", "c"])
        self.assertEqual(snap[name].inFlight, 1)
        self.assertEqual((snap["c"].routable, snap["c"].reason), (False, "backend answered 401"))
        single = MultiBackendHarness([BackendConfig(name="only", url="http://only.test:4000")])
        [only] = single.router.snapshot()
        self.assertEqual((only.name, only.routable, only.circuit), ("only", True, CLOSED))


class SingleBackendTests(SynchronousTestCase):
    """
    One backend: no fleet, today's path, and the header all the same.
    """

    def test_noFleetHeaderStill(self) -> None:
        """
        A router over one backend has no fleet; answers still name it.
        """
        h = MultiBackendHarness([BackendConfig(name="only", url="http://only.test:4000")])
        self.assertIsNone(h.router.fleet)
        d = h.post("/api/chat", chat())
        h.pump()
        [request] = [r for r in h.backends["only"].received if r.path.endswith("completions")]
        request.respond(200, REPLY)
        h.pump()
        response = self.successResultOf(d)
        self.assertEqual(response.headers.getRawHeaders(b"x-ollama-proxy-backend"), [b"only"])
