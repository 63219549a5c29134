"""
Faults over real loopback sockets with real twistd processes: an
unreachable backend, a client that hangs up mid-stream, and SIGTERM during a
stream (graceful shutdown).  Every wait is bounded.
"""

from __future__ import annotations

import http.client
import signal
import socket
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Stack, Twistd, freePort

CHAT = codec.dumps(
    {"model": "fake-model:proxy", "messages": [{"role": "user", "content": "hello"}]}
)


EXIT_ON_SIGTERM = -signal.SIGTERM
"""twistd re-raises the signal that stopped it once shutdown is complete,
so a clean SIGTERM shutdown exits with that signal's status."""


def establishedTo(port: int) -> int:
    """
    @param port: a local TCP port.
    @return: how many ESTABLISHED IPv4 connections have it as their remote
        port (read from C{/proc/net/tcp}; Linux only).
    """
    count = 0
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.split(":")[1], 16) == port:
                count += 1
    return count


def _status(port: int, path: str) -> int:
    """
    @return: the status of C{GET path} on 127.0.0.1:C{port} (0 when it
        cannot connect).
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        connection.close()


def waitFor(predicate: object, timeout: float) -> bool:
    """
    Poll C{predicate} every 20 ms for at most C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


class RealSocketFaultTests(SynchronousTestCase):
    """
    Each test starts its own processes (they are stopped or killed).
    """

    def stack(self, proxyArgs: list[str], backendArgs: list[str]) -> Stack:
        stack = Stack(proxyArgs, backendArgs)
        self.addCleanup(stack.stop)
        return stack

    def test_connectionRefused(self) -> None:
        """
        A C{--target} where nothing listens: 502 JSON naming the failed
        connection, quickly.
        """
        port = freePort()
        deadPort = freePort()
        proxy = Twistd(
            "ollama-proxy",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--target",
             f"http://127.0.0.1:{deadPort}", "--fallback", ""],
            port,
        )
        self.addCleanup(proxy.stop)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/api/chat", CHAT)
        response = connection.getresponse()
        self.assertEqual(response.status, 502)
        self.assertIn("cannot connect to the backend", codec.loads(response.read())["error"])

    def test_hangUpClosesUpstream(self) -> None:
        """
        A client that closes its socket after the first line makes the proxy
        close its backend connection at once (a finished stream would have
        stayed open in the keep-alive pool instead).
        """
        stack = self.stack([], ["--delay", "0.1"])
        backendPort = int(stack.backendURL.rsplit(":", 1)[1])
        # The proxy lists the backend's models at start-up; once it is ready
        # that connection sits idle in the keep-alive pool (the chat may
        # reuse it), so the chat's own connection is counted relative to it.
        self.assertTrue(waitFor(lambda: _status(stack.proxy.port, "/health/ready") == 200, 5))
        client = socket.create_connection(("127.0.0.1", stack.proxy.port), timeout=10)
        client.sendall(
            b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(CHAT) + CHAT
        )
        self.assertIn(b"200 OK", client.recv(4096))
        streaming = establishedTo(backendPort)
        self.assertGreaterEqual(streaming, 1)
        client.close()
        # The reply has about 20 chunks 0.1 s apart: a stream left running
        # would hold its connection for ~2 s more.
        self.assertTrue(waitFor(lambda: establishedTo(backendPort) == streaming - 1, 1.0))

    def readLines(self, response: http.client.HTTPResponse) -> list[Any]:
        lines: list[Any] = []
        while True:
            line = response.readline()
            if not line:
                return lines
            lines.append(codec.loads(line))

    def test_sigtermLetsStreamFinish(self) -> None:
        """
        SIGTERM during a stream: the proxy stops accepting connections but
        the stream runs to its C{done: true} line within the grace period,
        then the process exits.
        """
        stack = self.stack(["--shutdown-grace", "10"], ["--delay", "0.05"])
        connection = http.client.HTTPConnection("127.0.0.1", stack.proxy.port, timeout=10)
        connection.request("POST", "/api/chat", CHAT)
        response = connection.getresponse()
        first: Any = codec.loads(response.readline())
        stack.proxy.process.send_signal(signal.SIGTERM)
        self.assertTrue(
            waitFor(lambda: not _accepts(stack.proxy.port), 5), "still accepting connections"
        )
        lines = [first, *self.readLines(response)]
        self.assertIs(lines[-1]["done"], True)
        self.assertGreater(len(lines), 5)
        self.assertEqual(stack.proxy.process.wait(timeout=10), EXIT_ON_SIGTERM)

    def test_sigtermGraceExpires(self) -> None:
        """
        A stream that outlasts C{--shutdown-grace} is cut (no fake
        C{done: true}) and the process still exits promptly.
        """
        stack = self.stack(["--shutdown-grace", "0.3"], ["--delay", "1"])
        connection = http.client.HTTPConnection("127.0.0.1", stack.proxy.port, timeout=10)
        connection.request("POST", "/api/chat", CHAT)
        response = connection.getresponse()
        response.readline()
        started = time.monotonic()
        stack.proxy.process.send_signal(signal.SIGTERM)
        try:
            lines = self.readLines(response)
        except (http.client.IncompleteRead, ConnectionError):
            lines = []
        self.assertNotIn(True, [line.get("done") for line in lines])
        self.assertEqual(stack.proxy.process.wait(timeout=10), EXIT_ON_SIGTERM)
        self.assertLess(time.monotonic() - started, 5)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RealSocketAuthTests(SynchronousTestCase):
    """
    C{--require-key} with the official C{ollama} client over a real socket.
    """

    def test_officialClientWithKey(self) -> None:
        """
        The client configured with the key (as its C{Authorization} header)
        chats; without it, it gets a 401 error; the health check stays open.
        """
        import ollama

        stack = Stack(["--require-key", "k-123"], [])
        self.addCleanup(stack.stop)
        keyed = ollama.Client(host=stack.url, timeout=20, headers={"Authorization": "Bearer k-123"})
        reply = keyed.chat(model="fake-model:proxy", messages=[{"role": "user", "content": "hi"}])
        self.assertTrue(reply.done)
        with self.assertRaises(ollama.ResponseError) as e:
            ollama.Client(host=stack.url, timeout=20).list()
        self.assertEqual(e.exception.status_code, 401)
        self.assertEqual(e.exception.error, "unauthorized")
        connection = http.client.HTTPConnection("127.0.0.1", stack.proxy.port, timeout=10)
        connection.request("GET", "/")
        self.assertEqual(connection.getresponse().read(), b"Ollama is running")
