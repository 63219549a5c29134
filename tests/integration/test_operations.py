"""
Operations end to end over real loopback sockets: C{twistd -n ollama-proxy
--config FILE} in front of two C{fake-openai} processes, driven by the
official C{ollama} client; its JSON log file and C{/metrics}; and a broken
configuration file that stops twistd before it listens.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import ollama
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.web.context import DEFAULT_VERSION
from tests.integration.servers import Stack, Twistd, freePort, twistdCommand, workerPids
from tests.tempdirs import makeTempDir, removeTempDir, tempDir

_stack: dict[str, object] = {}


class TwoBackends:
    """
    Two fake backends and the proxy configured for both.
    """

    def __init__(self) -> None:
        self.backends = []
        ports = []
        for _ in range(2):
            port = freePort()
            self.backends.append(
                Twistd("fake-openai", ["--listen", f"tcp:{port}:interface=127.0.0.1"], port)
            )
            ports.append(port)
        self.dir = makeTempDir("ollama-proxy-ops-")
        self.config = os.path.join(self.dir, "proxy.toml")
        self.jsonLog = os.path.join(self.dir, "proxy.json")
        proxyPort = freePort()
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(
                f"""\
[server]
fallback = ""
listen = "tcp:{proxyPort}:interface=127.0.0.1"
models-ttl = 30

[[backend]]
name = "alpha"
url = "http://127.0.0.1:{ports[0]}"
allow = ["fake-model"]

[backend.aliases]
quick = "fake-model"

[[backend]]
name = "beta"
url = "http://127.0.0.1:{ports[1]}/v1"
allow = ["fake-reasoner", "fake-tools"]
"""
            )
        self.proxy = Twistd(
            "ollama-proxy", ["--config", self.config, "--log-format", "json"], proxyPort
        )
        self.url = f"http://127.0.0.1:{proxyPort}"

    def stop(self) -> None:
        self.proxy.stop()
        for backend in self.backends:
            backend.stop()
        removeTempDir(self.dir)


def stack() -> TwoBackends:
    """
    @return: the shared L{TwoBackends}, started on first use.
    """
    if "two" not in _stack:
        import atexit

        running = TwoBackends()
        atexit.register(running.stop)
        _stack["two"] = running
    result = _stack["two"]
    assert isinstance(result, TwoBackends)
    return result


class ConfiguredProxyTests(SynchronousTestCase):
    """
    The official client against a proxy with two configured backends.
    """

    def setUp(self) -> None:
        self.stack = stack()
        self.client = ollama.Client(host=self.stack.url, timeout=20)

    def test_listMerged(self) -> None:
        """
        C{list()} shows what each backend's globs let through, and the
        alias.
        """
        names = [m.model for m in self.client.list().models]
        self.assertEqual(names, ["fake-model:proxy", "quick:proxy", "fake-reasoner:proxy",
                                 "fake-tools:proxy"])

    def test_chatThroughAliasAndSecondBackend(self) -> None:
        """
        A chat through the alias and a streamed chat to the second backend
        both answer, and C{/metrics} counts them under each backend.
        """
        reply = self.client.chat(model="quick", messages=[{"role": "user", "content": "hi"}])
        self.assertIn("word by word", reply.message.content or "")
        parts = list(self.client.chat(model="fake-reasoner:proxy",
                                      messages=[{"role": "user", "content": "hi"}], stream=True))
        self.assertTrue(parts[-1].done)
        with urllib.request.urlopen(self.stack.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        self.assertIn('ollama_proxy_tokens_total{backend="alpha",direction="out",'
                      'model="fake-model"}', text)
        self.assertIn('ollama_proxy_time_to_first_token_seconds_count{backend="beta",'
                      'model="fake-reasoner"} ', text)

    def test_jsonLog(self) -> None:
        """
        C{--log-format json} writes the proxy's log, request lines included,
        as one JSON object per line into twistd's C{--logfile}.
        """
        self.client.chat(model="quick", messages=[{"role": "user", "content": "log me"}])
        # The answer leaves before its access line is written (the line
        # times the whole answer): wait, boundedly, for the line.
        deadline = time.monotonic() + 10
        while True:
            with open(self.stack.proxy.logPath, encoding="utf-8") as f:
                records = [codec.loads(line) for line in f if line.endswith("\n")]
            requests = [r for r in records if r.get("route") == "/api/chat"]
            if requests or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(requests)
        self.assertEqual((requests[-1]["backend"], requests[-1]["model"], requests[-1]["status"]),
                         ("alpha", "quick", 200))


class BrokenConfigTests(SynchronousTestCase):
    """
    An invalid file stops the service before it starts.
    """

    def test_twistdRefuses(self) -> None:
        """
        twistd exits non-zero and prints the file, line and key.
        """
        directory = tempDir(self, "ollama-proxy-bad-")
        path = os.path.join(directory, "proxy.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write('[[backend]]\nurl = "http://127.0.0.1:1"\ndiscovr = false\n')
        result = subprocess.run(
            [*twistdCommand(), "-n", "--pidfile=", "ollama-proxy", "--config", path],
            cwd=directory, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        self.assertNotEqual(result.returncode, 0)
        self.assertIn(f"{path}:3: backend[0].discovr: unknown key", result.stdout + result.stderr)


ACTIVATE = shutil.which("systemd-socket-activate")


class SocketActivationTests(SynchronousTestCase):
    """
    C{--listen systemd:domain=INET:index=0} serves on a socket that systemd
    (here its C{systemd-socket-activate} test tool) opened and passed on.
    """

    skip = None if ACTIVATE else "systemd-socket-activate is not installed"

    def test_inheritedSocket(self) -> None:
        """
        The first request, made before twistd even started, is answered on
        the inherited socket.  (Twisted needs C{LISTEN_FDNAMES}, which
        systemd 227 and later always set; the test tool only with
        C{--fdname}.)
        """
        assert ACTIVATE is not None
        port = freePort()
        directory = tempDir(self, "ollama-proxy-sd-")
        process = subprocess.Popen(
            [ACTIVATE, "--fdname=ollama-proxy", "-l", f"127.0.0.1:{port}",
             *twistdCommand(), "-n", "--pidfile=", "--logfile=proxy.log", "ollama-proxy",
             "--target", "http://127.0.0.1:9", "--fallback", "", "--listen",
             "systemd:domain=INET:index=0"],
            cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

        def stop() -> None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

        self.addCleanup(stop)
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version",
                                            timeout=20) as r:
                    self.assertEqual(codec.loads(r.read()), {"version": DEFAULT_VERSION})
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with open(os.path.join(directory, "proxy.log"), encoding="utf-8") as f:
            self.assertIn(f"ProxySite starting on {port}", f.read())


class StartupFailureTests(SynchronousTestCase):
    """
    A port that is taken stops twistd with one line and exit status 1.
    """

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        directory = tempDir(self, "ollama-proxy-port-")
        return subprocess.run(
            [*twistdCommand(), "-n", "--pidfile=", "--logfile=proxy.log", "ollama-proxy",
             "--target", "http://127.0.0.1:9", *args],
            # A proxy that fails to start leaves its --workers metrics
            # directory behind: in this test's own directory.
            env={**os.environ, "TMPDIR": directory},
            cwd=directory, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )

    def test_portTaken(self) -> None:
        """
        With the port held by another socket, twistd prints which address
        and why on one line of standard error, and exits with status 1;
        the same with C{--workers} (C{SO_REUSEPORT} cannot share a socket
        that did not ask for it).
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        for extra in ([], ["--workers", "2"]):
            result = self.twistd("--listen", f"tcp:{port}:interface=127.0.0.1", *extra)
            self.assertEqual(result.returncode, 1, result.stderr)
            self.assertEqual(
                result.stderr,
                f"ollama-proxy: cannot listen on 127.0.0.1:{port}: Address already in use\n",
            )

    def test_unreadableKeyFile(self) -> None:
        """
        An unreadable key file is one line too, without twistd's usage text.
        """
        result = self.twistd("--api-key-file", "/nonexistent/key")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            "ollama-proxy: cannot read --api-key-file /nonexistent/key: No such file or directory\n",
        )
        self.assertEqual(result.stdout, "")


class ReloadedWorkersTests(SynchronousTestCase):
    """
    C{SIGHUP} to the parent of C{--workers 2} reloads every process.
    """

    def test_everyWorkerReloads(self) -> None:
        """
        After the file gains an alias and the parent gets C{SIGHUP}, every
        connection (the kernel spreads them over both processes) lists the
        new alias, and the parent's and the worker's logs both say so.
        """
        if not hasattr(socket, "SO_REUSEPORT"):
            raise SkipTest("no SO_REUSEPORT")
        directory = tempDir(self, "ollama-proxy-hup-")
        config = os.path.join(directory, "proxy.toml")
        table = '[[backend]]\nname = "default"\nurl = "http://127.0.0.1:9"\n[backend.aliases]\n'
        with open(config, "w", encoding="utf-8") as f:
            f.write(table + 'before = "fake-model"\n')
        stack = Stack(["--workers", "2", "--config", config])
        self.addCleanup(stack.stop)

        def names() -> set[str]:
            found: set[str] = set()
            for _ in range(16):  # new connections, spread over both processes
                with urllib.request.urlopen(stack.url + "/api/tags", timeout=10) as r:
                    found.update(m["name"] for m in codec.loads(r.read())["models"])
            return found

        workers = workerPids(stack.proxy.process.pid, 1, stack.proxy.port)
        self.assertEqual(len(workers), 1, stack.proxy.log())
        self.assertIn("before:proxy", names())
        with open(config, "w", encoding="utf-8") as f:
            f.write(table + 'after = "fake-model"\n')
        stack.proxy.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "before:proxy" in names():
            self.assertLess(time.monotonic(), deadline, stack.proxy.log())
            time.sleep(0.1)
        for _ in range(3):
            found = names()
            self.assertIn("after:proxy", found)
            self.assertNotIn("before:proxy", found)
        self.assertIn("reloaded: 1 backend(s)", stack.proxy.log())
        # The worker reloaded rather than died and came back.
        self.assertEqual(workerPids(stack.proxy.process.pid, 1, stack.proxy.port), workers)


class AccessLogTests(SynchronousTestCase):
    """
    The access lines of a burst of requests, written a reactor turn at a
    time (L{ollama_proxy.service.logging.TurnBufferedLogObserver}), all
    reach twistd's log file, in each connection's order, when the proxy is
    stopped with C{SIGTERM} right after the last answer.
    """

    def test_burstThenSigterm(self) -> None:
        """
        16 keep-alive connections x 40 requests, then C{SIGTERM}: 640 access
        lines, each connection's in the order it sent them.
        """
        running = Stack()
        self.addCleanup(running.stop)
        host, port = "127.0.0.1", running.proxy.port
        errors: list[BaseException] = []

        def client(n: int) -> None:
            try:
                connection = http.client.HTTPConnection(host, port, timeout=20)
                for i in range(40):
                    connection.request("GET", f"/api/burst/c{n}/r{i}")
                    answer = connection.getresponse()
                    answer.read()
                    if answer.status != 404:
                        raise AssertionError(answer.status)
                connection.close()
            except BaseException as e:  # reported by the test below
                errors.append(e)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        self.assertEqual(errors, [])
        running.proxy.stop()
        seen: dict[int, list[int]] = {}
        for match in re.finditer(r"GET /api/burst/c(\d+)/r(\d+) model=- status=404 ", running.proxy.log()):
            seen.setdefault(int(match.group(1)), []).append(int(match.group(2)))
        self.assertEqual(seen, {n: list(range(40)) for n in range(16)})
