"""
Several backends for one model on real sockets: three C{twistd -n
fake-openai} processes serving the same models behind C{twistd -n
ollama-proxy} with a C{[routing]} table.  A backend killed while streaming
(its streams end with the error line, new requests fail over, its circuit
opens, it rejoins after it comes back within one check interval) and a
backend that refuses the proxy's key (excluded and reported, the others
serve).  Everything on 127.0.0.1, every wait bounded.
"""

from __future__ import annotations

import http.client
import os
import time
from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Twistd, freePort
from tests.tempdirs import tempDir

CHECK = 0.5
"""The proxy's health_interval in these tests (seconds)."""


def until(condition: Callable[[], bool], timeout: float) -> float:
    """
    Poll C{condition} every 20 ms for at most C{timeout} seconds.

    @return: the seconds it took.
    @raise AssertionError: if it never held.
    """
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"condition not met within {timeout} s")


class Fleet:
    """
    Three fake backends and the proxy.
    """

    def __init__(self, case: SynchronousTestCase, keys: tuple[str | None, ...] = (None, None, None),
                 delay: float = 0.0) -> None:
        self.delay = delay
        self.keys = keys
        self.ports = [freePort() for _ in range(3)]
        self.backends: list[Twistd | None] = [None, None, None]
        for i in range(3):
            self.start(i)
            case.addCleanup(self.stop, i)
        folder = tempDir(case, "ollama-proxy-fleet-")
        config = os.path.join(folder, "proxy.toml")
        with open(config, "w") as f:
            f.write(f"[routing]\nhealth_interval = {CHECK}\nhealth_timeout = 0.5\n"
                    "failures = 2\nbackoff = 30\n")
            for i, port in enumerate(self.ports):
                f.write(f'[[backend]]\nname = "b{i}"\nurl = "http://127.0.0.1:{port}"\n'
                        f'api_key = "{"wrong" if keys[i] else "sk-any"}"\n')
        self.port = freePort()
        self.proxy = Twistd("ollama-proxy", ["--listen", f"tcp:{self.port}:interface=127.0.0.1",
                                             "--config", config, "--fallback", ""], self.port)
        case.addCleanup(self.proxy.stop)
        until(lambda: self.ready()[0] == 200, 10)

    def start(self, i: int) -> None:
        args = ["--listen", f"tcp:{self.ports[i]}:interface=127.0.0.1", "--delay", str(self.delay)]
        key = self.keys[i]
        if key:
            args += ["--api-key", key]
        self.backends[i] = Twistd("fake-openai", args, self.ports[i])

    def stop(self, i: int) -> None:
        backend = self.backends[i]
        if backend is not None:
            backend.stop()
            self.backends[i] = None

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def chat(self, stream: bool = False) -> tuple[int, str, list[Any]]:
        """
        @return: status, the backend header and the NDJSON lines.
        """
        conn = self.connection()
        try:
            conn.request("POST", "/api/chat", codec.dumps(
                {"model": "fake-model", "stream": stream,
                 "messages": [{"role": "user", "content": "hi"}]}))
            response = conn.getresponse()
            lines = [codec.loads(line) for line in response.read().splitlines() if line.strip()]
            return response.status, response.getheader("X-Ollama-Proxy-Backend") or "", lines
        finally:
            conn.close()

    def ready(self) -> tuple[int, Any]:
        conn = self.connection()
        try:
            conn.request("GET", "/health/ready")
            response = conn.getresponse()
            return response.status, codec.loads(response.read())
        except OSError:
            return 0, None
        finally:
            conn.close()

    def state(self, name: str) -> str:
        return str((self.ready()[1] or {}).get("backends", {}).get(name, ""))


class KilledBackendTests(SynchronousTestCase):
    """
    A backend that dies under load.
    """

    def test_killedWhileStreaming(self) -> None:
        """
        A stream in flight on a backend that is killed ends with the error
        line (never C{done: true}); every new request succeeds on the
        others; the dead backend's circuit opens within a second; started
        again, it is back within one check interval.
        """
        fleet = Fleet(self, delay=0.2)
        conn = fleet.connection()
        self.addCleanup(conn.close)
        conn.request("POST", "/api/chat", codec.dumps(
            {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
             "stream": True}))
        response = conn.getresponse()
        victim = response.getheader("X-Ollama-Proxy-Backend") or ""
        self.assertTrue(victim.startswith("b"), victim)
        first = codec.loads(response.readline())
        self.assertIn("message", first)
        killedAt = time.monotonic()
        fleet.stop(int(victim[1:]))
        rest = [codec.loads(line) for line in response.read().splitlines() if line.strip()]
        self.assertIn("error", rest[-1])
        self.assertFalse(any(line.get("done") for line in rest))
        # Requests right after the kill fail over (connection refused)...
        results = [fleet.chat() for _ in range(4)]
        # ...and the circuit is open within a second of the kill.
        until(lambda: fleet.state(victim).startswith("circuit open"), 1.0)
        self.assertLess(time.monotonic() - killedAt, 1.0)
        results += [fleet.chat() for _ in range(8)]
        self.assertEqual([status for status, _, _ in results], [200] * 12)
        self.assertNotIn(victim, {name for _, name, _ in results})
        fleet.start(int(victim[1:]))
        took = until(lambda: fleet.state(victim) == "ok", 3 * CHECK)
        self.assertLessEqual(took, 2 * CHECK + 0.5)
        served = {fleet.chat()[1] for _ in range(20)}
        self.assertIn(victim, served)


class MisconfiguredTests(SynchronousTestCase):
    """
    A backend that refuses the proxy's key.
    """

    def test_401ExcludedAndReported(self) -> None:
        """
        It is reported by C{/health/ready} in the proxy's words (no backend
        text), gets no requests, and the others keep serving.
        """
        fleet = Fleet(self, keys=(None, "right-key", None))
        until(lambda: fleet.state("b1") == "backend answered 401", 3 * CHECK)
        status, body = fleet.ready()
        self.assertEqual(status, 200)
        self.assertNotIn("invalid API key", codec.dumps(body).decode())
        results = [fleet.chat() for _ in range(12)]
        self.assertEqual([s for s, _, _ in results], [200] * 12)
        self.assertEqual({name for _, name, _ in results}, {"b0", "b2"})
