"""
Slow clients over real loopback sockets: headers dribbled a byte at a time
are cut by C{--client-header-timeout}, C{--max-connections} answers the
connection over the cap with a 503, and running out of file descriptors
(accept failing with C{EMFILE}) neither spins nor stops the proxy.  Every
loop and wait is bounded; each test takes a few seconds.
"""

from __future__ import annotations

import os
import resource
import select
import socket
import time

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Twistd, freePort

REQUEST = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"


def startProxy(testCase: SynchronousTestCase, *args: str) -> int:
    """
    Start the proxy (no backend, no fallback) with C{args}.

    @return: its port.
    """
    port = freePort()
    proxy = Twistd(
        "ollama-proxy",
        ["--listen", f"tcp:{port}:interface=127.0.0.1", "--target", "http://127.0.0.1:9",
         "--fallback", "", *args],
        port,
    )
    testCase.addCleanup(proxy.stop)
    testCase.proxy = proxy  # type: ignore[attr-defined]
    return port


def connect(testCase: SynchronousTestCase, port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    testCase.addCleanup(sock.close)
    return sock


def readUntilClosed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """
    @return: what arrived within C{seconds}, and whether the peer closed.
    """
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def readResponse(sock: socket.socket, seconds: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """
    Read one response with a C{Content-Length} (keeping the connection).

    @return: status, lower-cased headers, body.
    """
    data = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if sep:
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (line.partition(":") for line in lines[1:])}
            if len(rest) >= int(headers.get("content-length", "0")):
                return int(lines[0].split()[1]), headers, rest
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        chunk = sock.recv(65536) if ready else b""
        if not chunk:
            break
        data += chunk
    raise AssertionError(f"no complete response within {seconds} s: {data!r}")


def dribble(sockets: list[socket.socket], seconds: float) -> dict[socket.socket, bytes]:
    """
    Send the request a byte at a time to every socket every 0.2 s until
    each is closed or C{seconds} pass.

    @return: what each socket received before it was closed (sockets
        still open are left out).
    """
    received = {sock: b"" for sock in sockets}
    closed: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + seconds
    sent = 0
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for sock in sockets:
            if sock not in closed:
                try:
                    sock.send(REQUEST[sent % 20:sent % 20 + 1])
                except OSError:
                    pass
        sent += 1
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            open_ = [s for s in sockets if s not in closed]
            if not open_:
                break
            ready, _, _ = select.select(open_, [], [], max(0.0, end - time.monotonic()))
            for sock in ready:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[sock] += chunk
                else:
                    closed[sock] = received[sock]
    return closed


class HeaderDeadlineTests(SynchronousTestCase):
    """
    C{--client-header-timeout 1} with a four-second idle timer that a
    byte every 0.2 s keeps resetting.
    """

    def setUp(self) -> None:
        self.port = startProxy(self, "--client-header-timeout", "1", "--client-timeout", "4")

    def test_dribbledHeadersCut(self) -> None:
        """
        One header byte every 0.2 s: answered 408 JSON and closed about a
        second after the connect, far before the old "never".
        """
        sock = connect(self, self.port)
        started = time.monotonic()
        closed = dribble([sock], 5.0)
        elapsed = time.monotonic() - started
        self.assertIn(sock, closed, "still open after 5 s")
        self.assertLess(elapsed, 3.0)
        head, _, body = closed[sock].partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 408 "), head)
        self.assertIn(b"Connection: close", head)
        self.assertEqual(codec.loads(body),
                         {"error": "request headers not received within 1 seconds"})

    def test_fiftyDribblers(self) -> None:
        """
        Fifty such connections are all answered 408 and closed; the proxy
        still answers a normal request right away.
        """
        sockets = [connect(self, self.port) for _ in range(50)]
        closed = dribble(sockets, 4.0)
        self.assertEqual(len(closed), 50)
        self.assertTrue(all(data.startswith(b"HTTP/1.1 408 ") for data in closed.values()))
        sock = connect(self, self.port)
        sock.sendall(REQUEST)
        status, _, _ = readResponse(sock)
        self.assertEqual(status, 200)

    def test_keepAliveNotCut(self) -> None:
        """
        Requests on a kept-alive connection, each sent within the deadline,
        with idle gaps between them longer than the deadline: all served.
        """
        sock = connect(self, self.port)
        for _ in range(3):
            sock.sendall(REQUEST)
            status, _, _ = readResponse(sock)
            self.assertEqual(status, 200)
            time.sleep(1.3)


class WorkerHeaderDeadlineTests(SynchronousTestCase):
    """
    C{--workers 2}: every worker applies the deadline.
    """

    def test_dribblersCutByEveryWorker(self) -> None:
        """
        Twenty dribbling connections, spread over both workers by the
        kernel, are all answered 408 and closed.
        """
        port = startProxy(self, "--workers", "2", "--client-header-timeout", "1",
                          "--client-timeout", "4")
        sockets = [connect(self, port) for _ in range(20)]
        closed = dribble(sockets, 4.0)
        self.assertEqual(len(closed), 20)
        self.assertTrue(all(data.startswith(b"HTTP/1.1 408 ") for data in closed.values()))


class ConnectionCapTests(SynchronousTestCase):
    """
    C{--max-connections 5}.
    """

    def test_sixthRefused(self) -> None:
        """
        Five open connections are served; the sixth is answered 503 JSON
        with C{Retry-After} and closed; once one of the five closes, a new
        connection is served again.
        """
        port = startProxy(self, "--max-connections", "5")
        five: list[socket.socket] = []
        deadline = time.monotonic() + 3.0
        while len(five) < 5 and time.monotonic() < deadline:
            # Until the proxy has seen the start-up probe's close, it
            # still counts that connection: retry a refused one.
            sock = connect(self, port)
            sock.sendall(REQUEST)
            if readResponse(sock)[0] == 200:
                five.append(sock)
            else:
                sock.close()
                time.sleep(0.1)
        self.assertEqual(len(five), 5)
        sixth = connect(self, port)
        sixth.sendall(REQUEST)
        data, closed = readUntilClosed(sixth, 3.0)
        self.assertTrue(closed)
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 503 "), data)
        self.assertIn(b"Retry-After: 1", head)
        self.assertIn(b"Connection: close", head)
        self.assertIn("too many open connections", codec.loads(body)["error"])
        five[0].close()
        deadline = time.monotonic() + 3.0
        status = 0
        while time.monotonic() < deadline:
            again = connect(self, port)
            again.sendall(REQUEST)
            data, _ = readUntilClosed(again, 0.5)
            again.close()
            status = int(data.split(b" ", 2)[1]) if data else 0
            if status == 200:
                break
            time.sleep(0.1)
        self.assertEqual(status, 200)


class DescriptorExhaustionTests(SynchronousTestCase):
    """
    A low C{LimitNOFILE}: twisted's C{tcp.Port} closes the connections it
    cannot take (its reserved descriptor), so the accept loop neither
    spins nor stops.
    """

    def test_emfile(self) -> None:
        """
        With the proxy's descriptor limit a few above what it holds, 60
        connections exhaust it: the proxy uses little CPU meanwhile (no
        busy loop), and serves again once they are gone.
        """
        port = startProxy(self)
        pid = self.proxy.process.pid  # type: ignore[attr-defined]
        held = len(os.listdir(f"/proc/{pid}/fd"))
        try:
            before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (held + 4, before[1]))
        except (AttributeError, OSError, ValueError) as e:  # prlimit: Linux only
            raise self.skipTest(f"cannot lower the proxy's descriptor limit: {e}")
        sockets = []
        for _ in range(60):
            sock = socket.socket()
            self.addCleanup(sock.close)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        cpuBefore = cpuSeconds(pid)
        time.sleep(1.0)
        self.assertLess(cpuSeconds(pid) - cpuBefore, 0.5)
        self.assertIsNone(self.proxy.process.poll())  # type: ignore[attr-defined]
        self.assertIn("EMFILE", self.proxy.log())  # type: ignore[attr-defined]
        for sock in sockets:
            sock.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
        deadline = time.monotonic() + 3.0
        status = 0
        while time.monotonic() < deadline and status != 200:
            sock = connect(self, port)
            sock.sendall(REQUEST)
            try:
                status = readResponse(sock, 1.0)[0]
            except (AssertionError, OSError):
                time.sleep(0.1)
            sock.close()
        self.assertEqual(status, 200)


def cpuSeconds(pid: int) -> float:
    """
    @return: the user and system CPU time of process C{pid}.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class HeaderDeadlineTwistedTests(HeaderDeadlineTests):
    """
    L{HeaderDeadlineTests} with C{--http-parser twisted} (the others run on
    the default, llhttp).
    """

    def setUp(self) -> None:
        self.port = startProxy(self, "--client-header-timeout", "1", "--client-timeout", "4",
                               "--http-parser", "twisted")
