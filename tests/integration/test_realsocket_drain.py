"""
The drain on real sockets: C{twistd -n ollama-proxy --drain-delay S} gets
C{SIGTERM} while a stream runs.  C{/health/ready} turns 503 at once, new
connections are still served until the delay is over, then the port
refuses them; the stream in flight ends with C{done: true} and the process
exits cleanly.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Stack

DELAY = 2.5


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def refuses(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


class DrainTests(SynchronousTestCase):
    """
    C{SIGTERM} with C{--drain-delay}, observed from outside.
    """

    def setUp(self) -> None:
        self.stack = Stack(
            proxyArgs=["--drain-delay", str(DELAY), "--shutdown-grace", "30"],
            # The fake's 17-word reply 0.4 s apart: a 6.8 s stream, well
            # past the delay even on a loaded machine.
            backendArgs=["--delay", "0.4"],
        )
        self.addCleanup(self.stack.stop)
        self.port = self.stack.proxy.port
        deadline = time.monotonic() + 10
        while get(self.port, "/health/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.05)

    def stream(self, out: list[bytes]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=40)
        try:
            body = codec.dumps({"model": "fake-model", "options": {},
                                "messages": [{"role": "user", "content": "hi"}]})
            connection.request("POST", "/api/chat", body=body)
            out.append(connection.getresponse().read())
        finally:
            connection.close()

    def test_sigterm(self) -> None:
        """
        Readiness 503 at once, service for the delay, then refused
        connections; the stream in flight finishes; exit status 0.
        """
        streamed: list[bytes] = []
        thread = threading.Thread(target=self.stream, args=(streamed,))
        thread.start()
        time.sleep(0.3)  # the stream is under way
        process = self.stack.proxy.process
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # "At once": well before the delay ends, with room for a loaded machine.
        deadline = sent + DELAY - 1.0
        status, answer = get(self.port, "/health/ready")
        while status != 503 and time.monotonic() < deadline:
            time.sleep(0.02)
            status, answer = get(self.port, "/health/ready")
        self.assertEqual(status, 503)
        self.assertEqual(codec.loads(answer)["status"], "draining")
        self.assertLess(time.monotonic() - sent, DELAY - 1.0)
        # Still served during the delay, on a new connection.
        status, tags = get(self.port, "/api/tags")
        self.assertEqual(status, 200)
        self.assertIn(b"fake-model", tags)
        while not refuses(self.port) and time.monotonic() < sent + DELAY + 3:
            time.sleep(0.05)
        closedAfter = time.monotonic() - sent
        self.assertTrue(refuses(self.port))
        self.assertGreaterEqual(closedAfter, DELAY - 0.1)
        self.assertTrue(thread.is_alive(),
                        f"the stream should outlive the listener (closed after {closedAfter:.1f} s; "
                        f"streamed {len(streamed[0]) if streamed else None} bytes ending {streamed[0][-200:] if streamed else None!r})")
        thread.join(timeout=40)
        self.assertFalse(thread.is_alive())
        [data] = streamed
        lines = [codec.loads(line) for line in data.splitlines() if line.strip()]
        self.assertTrue(lines[-1]["done"])
        self.assertEqual(len([line for line in lines if not line["done"]]), lines[-1]["eval_count"])
        self.assertGreater(lines[-1]["eval_count"], 10)
        # twistd ends a clean SIGTERM stop by re-raising the signal.
        self.assertIn(process.wait(timeout=20), (0, -signal.SIGTERM))
        self.assertIn("draining", self.stack.proxy.log())
