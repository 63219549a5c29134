"""
The scale-out recipes of C{docs/operations.md}, run on the real engines:
the HAProxy and nginx configurations are read from the document itself
(only the ports are changed) and put in front of two proxy instances with
the default C{--drain-delay}, under a streamed C{/api/chat} load of 16
clients (the fake backend's 17-word reply, 30 ms apart: half a second each).

    - first line: through the balancer within a few ms of the proxy alone
      (HAProxy without C{option http-no-delay} adds ~175 ms);
    - C{SIGTERM} to one instance, then its restart (a rolling restart):
      no request fails;
    - C{SIGKILL} to one instance: only streams it carried fail, each with
      an error line or a cut connection (or the balancer's 502 for one
      that had no answer byte yet), never a C{done} after a cut reply;
      every request that starts after the kill succeeds.

Opt-in: set C{OLLAMA_PROXY_HAPROXY} and/or C{OLLAMA_PROXY_NGINX} to the
executables (C{.ci/balancers.sh} installs Debian's C{haproxy} and
C{nginx-light}).  The numbers are printed for C{docs/operations.md}.
"""

from __future__ import annotations

import collections
import http.client
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
from typing import Any

import attrs
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Twistd, freePort
from tests.tempdirs import makeTempDir, removeTempDir

HAPROXY = os.environ.get("OLLAMA_PROXY_HAPROXY", "")
NGINX = os.environ.get("OLLAMA_PROXY_NGINX", "")
DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "operations.md")
CLIENTS = 16
BODY = codec.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]})


def recipe(language: str) -> str:
    """
    @param language: the fenced block's language in C{docs/operations.md}.
    @return: the block's text.
    """
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    [block] = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    return str(block)


@attrs.define
class Result:
    """
    One streamed chat through the balancer.

    @ivar outcome: C{ok} (every line, then C{done} counting them),
        C{error} (an error line), C{cut} (the connection ended early),
        C{fake} (C{done} after fewer lines than it counts), or C{status N}.
    """

    start: float
    end: float = 0.0
    firstLine: float | None = None
    lines: int = 0
    outcome: str = "cut"


def chat(port: int) -> Result:
    """
    One streamed C{/api/chat}, classified.
    """
    result = Result(time.monotonic())
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", "/api/chat", body=BODY,
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            response.read()
            result.outcome = f"status {response.status}"
            return result
        while True:
            line = response.readline()
            if not line:
                break
            if result.firstLine is None:
                result.firstLine = time.monotonic() - result.start
            item = codec.loads(line)
            if "error" in item:
                result.outcome = "error"
                break
            if item.get("done"):
                whole = result.lines == item.get("eval_count") and result.lines > 10
                result.outcome = "ok" if whole else "fake"
                break
            result.lines += 1
    except (OSError, http.client.HTTPException, ValueError):
        result.outcome = "cut"
    finally:
        result.end = time.monotonic()
        connection.close()
    return result


class Load:
    """
    C{CLIENTS} threads streaming chats back to back until stopped, spread
    over C{ports} in turn.
    """

    def __init__(self, *ports: int, clients: int = CLIENTS, alternate: bool = False) -> None:
        """
        @param ports: where to send.
        @param clients: how many at a time.
        @param alternate: each client sends to every port in turn (paired
            measurements) instead of to one port.
        """
        self.results: dict[int, list[Result]] = {port: [] for port in ports}
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(
                ports if alternate else (ports[i % len(ports)],),))
            for i in range(clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, ports: tuple[int, ...]) -> None:
        while not self._stop.is_set():
            for port in ports:
                self.results[port].append(chat(port))

    def stop(self) -> list[Result]:
        """
        @return: every result, whatever the port.
        """
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return [r for results in self.results.values() for r in results]


def p50(results: list[Result]) -> float:
    return statistics.median(r.firstLine for r in results if r.firstLine is not None) * 1000


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class BalancerMixin:
    """
    Two proxies behind one balancer (subclasses start the balancer).
    """

    executable = ""
    language = ""

    def setUp(self) -> None:
        if not self.executable:
            raise SkipTest(f"set OLLAMA_PROXY_{self.language.upper()} (see .ci/balancers.sh)")
        case: Any = self
        backendPort = freePort()
        self.backend = Twistd("fake-openai", ["--listen", f"tcp:{backendPort}:interface=127.0.0.1",
                                              "--delay", "0.03"], backendPort)
        case.addCleanup(self.backend.stop)
        self.backendURL = f"http://127.0.0.1:{backendPort}"
        self.ports = [freePort(), freePort()]
        self.proxies = [self.startProxy(port) for port in self.ports]
        case.addCleanup(self.stopProxies)
        self.dir = makeTempDir(f"ollama-proxy-{self.language}-")
        case.addCleanup(removeTempDir, self.dir)
        self.port = freePort()
        text = recipe(self.language)
        text = text.replace("11435", str(self.ports[0])).replace("11436", str(self.ports[1]))
        text = text.replace("11434", str(self.port))
        self.balancer = self.startBalancer(text)
        case.addCleanup(self.stopBalancer)
        deadline = time.monotonic() + 20
        while not accepts(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.waitHealthy()

    def stopProxies(self) -> None:
        for proxy in self.proxies:
            proxy.stop()

    def startProxy(self, port: int) -> Twistd:
        # The documented default drain delay, said explicitly: the test
        # helper turns it off for every other test.
        return Twistd("ollama-proxy", ["--listen", f"tcp:{port}:interface=127.0.0.1",
                                       "--target", self.backendURL, "--fallback", "",
                                       "--drain-delay", "5"], port)

    def startBalancer(self, recipeText: str) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def stopBalancer(self) -> None:
        if self.balancer.poll() is None:
            self.balancer.terminate()
            try:
                self.balancer.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.balancer.kill()
                self.balancer.wait(timeout=5)

    def waitHealthy(self) -> None:
        """
        Until both instances take requests through the balancer (its
        health checks have seen them).
        """
        time.sleep(3)  # HAProxy: rise 2 x inter 1s

    def test_recipe(self) -> None:
        """
        First-line latency, a rolling restart with SIGTERM (nothing fails)
        and a SIGKILL (only the killed instance's streams fail, honestly).
        """
        case: Any = self
        # First line: each of 4 clients asks the proxy alone and through
        # the balancer in turn (paired, so that the machine's load, shared
        # by both, does not tilt the comparison).
        load = Load(self.ports[0], self.port, clients=4, alternate=True)
        time.sleep(4)
        load.stop()
        direct, balanced = load.results[self.ports[0]], load.results[self.port]
        case.assertEqual({r.outcome for r in direct + balanced}, {"ok"})
        alone, through = p50(direct), p50(balanced)
        # SIGTERM to p1 under load, wait for it to exit, start it again.
        load = Load(self.port)
        time.sleep(1)
        stopping = self.proxies[0].process
        sent = time.monotonic()
        stopping.send_signal(signal.SIGTERM)
        stopping.wait(timeout=30)
        drained = time.monotonic() - sent
        self.proxies[0].stop()  # gone already: removes its directory
        self.proxies[0] = self.startProxy(self.ports[0])
        self.waitHealthy()
        time.sleep(1)
        rolling = load.stop()
        failedTerm = [r for r in rolling if r.outcome != "ok"]
        # SIGKILL p2 under load.
        load = Load(self.port)
        time.sleep(1.5)
        killed = time.monotonic()
        self.proxies[1].process.kill()
        time.sleep(3)
        afterKill = load.stop()
        failedKill = [r for r in afterKill if r.outcome != "ok"]
        print(f"\n{self.language}: first line p50 {alone:.1f} ms alone, {through:.1f} ms through "
              f"the balancer; SIGTERM: {len(failedTerm)} of {len(rolling)} failed (drained in "
              f"{drained:.1f} s); SIGKILL: {len(failedKill)} of {len(afterKill)} failed "
              f"({dict(collections.Counter(r.outcome for r in failedKill))})")
        case.assertLess(through - alone, 15.0, (alone, through))
        case.assertEqual(
            [(r.outcome, round(r.start - sent, 2), round(r.end - sent, 2)) for r in failedTerm], [])
        case.assertGreaterEqual(drained, 5.0)
        # Only streams running on p2 when it died: started before, cut
        # after, at most one per client, each visibly failed.
        case.assertTrue(failedKill, "the killed instance carried no stream?")
        case.assertLessEqual(len(failedKill), CLIENTS)
        detail = [(r.outcome, round(r.start - killed, 3), round(r.end - killed, 3))
                  for r in failedKill]
        for r in failedKill:
            # A stream cut or ended by an error line; or, now and then, a
            # request that had no answer byte yet when the instance died
            # comes back as the balancer's 502 instead of being retried:
            # an honest error too, never a done.
            case.assertIn(r.outcome, ("cut", "error", "status 502"), detail)
            # (or it raced the kill: sent to the dying instance within a few
            # ms of its death, before anything could notice)
            case.assertLess(r.start, killed + 0.05, detail)
            case.assertGreater(r.end, killed - 0.05, detail)
        later = [r for r in afterKill if r.start > killed + 0.05]
        case.assertTrue(later)
        case.assertEqual({r.outcome for r in later}, {"ok"}, detail)


class HAProxyTests(BalancerMixin, SynchronousTestCase):
    """
    The HAProxy recipe on Debian's C{haproxy}.
    """

    executable = HAPROXY
    language = "haproxy"

    def startBalancer(self, recipeText: str) -> subprocess.Popen[bytes]:
        config = os.path.join(self.dir, "haproxy.cfg")
        with open(config, "w", encoding="utf-8") as f:
            f.write("global\n    maxconn 1024\n\n" + recipeText)
        return subprocess.Popen([self.executable, "-db", "-f", config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class NginxTests(BalancerMixin, SynchronousTestCase):
    """
    The nginx recipe on Debian's C{nginx-light}.
    """

    executable = NGINX
    language = "nginx"

    def startBalancer(self, recipeText: str) -> subprocess.Popen[bytes]:
        d = self.dir
        config = os.path.join(d, "nginx.conf")
        recipeText = recipeText.replace(f"listen {self.port};",
                                        f"listen 127.0.0.1:{self.port};")
        temps = "\n".join(f"    {kind}_temp_path {d}/{kind};"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\n"
                    f"error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n"
                    f"http {{\n    access_log off;\n{temps}\n{recipeText}}}\n")
        return subprocess.Popen([self.executable, "-p", d, "-e", f"{d}/error.log", "-c", config],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def waitHealthy(self) -> None:
        """
        nginx has no active checks: an instance that listens takes requests.
        """
        time.sleep(0.5)
