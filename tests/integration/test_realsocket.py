"""
End to end over real loopback sockets: C{twistd -n ollama-proxy} in front of
C{twistd -n fake-openai}, driven by the official C{ollama} Python client.
These are the checks a new user's first try-out makes.
"""

from __future__ import annotations

import urllib.request

import ollama
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.web.context import DEFAULT_VERSION
from tests.integration.servers import sharedStack


class OllamaClientTests(SynchronousTestCase):
    """
    The official client against the running proxy.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.stack.url, timeout=20)

    def test_list(self) -> None:
        """
        C{list()} sees the backend's models with the C{:proxy} tag.
        """
        models = self.client().list().models
        names = [m.model for m in models]
        self.assertIn("fake-model:proxy", names)
        self.assertEqual(len(names), len(set(names)))
        self.assertIsNotNone(models[0].modified_at)
        self.assertEqual(len(models[0].digest or ""), 64)

    def test_chatStream(self) -> None:
        """
        A streamed chat yields content pieces and ends with C{done}.
        """
        parts = list(
            self.client().chat(
                model="fake-model:proxy",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
            )
        )
        self.assertGreater(len(parts), 2)
        self.assertTrue(all(p.message.role == "assistant" for p in parts))
        text = "".join(p.message.content or "" for p in parts)
        self.assertTrue(text.startswith("Hello! I am the ollama-proxy fake backend"))
        self.assertTrue(parts[-1].done)
        self.assertEqual(parts[-1].done_reason, "stop")
        self.assertFalse(any(p.done for p in parts[:-1]))
        self.assertGreater(parts[-1].eval_count or 0, 0)

    def test_chatNonStream(self) -> None:
        """
        A non-streamed chat returns the whole text at once.
        """
        response = self.client().chat(
            model="fake-model:proxy", messages=[{"role": "user", "content": "hello"}]
        )
        self.assertTrue(response.done)
        self.assertIn("word by word.", response.message.content or "")

    def test_curlTags(self) -> None:
        """
        The raw C{/api/tags} body lists models with C{:proxy} (the README's
        curl check).
        """
        with urllib.request.urlopen(self.stack.url + "/api/tags", timeout=10) as r:
            body = codec.loads(r.read())
        self.assertIn("fake-model:proxy", [m["name"] for m in body["models"]])

    def test_unknownModel(self) -> None:
        """
        A model the backend does not have is an error with the backend's
        status and message, raised by the client.
        """
        with self.assertRaises(ollama.ResponseError) as e:
            self.client().chat(model="nope", messages=[{"role": "user", "content": "x"}])
        self.assertEqual(e.exception.status_code, 404)
        self.assertIn("nope", e.exception.error)


class DaemonTests(SynchronousTestCase):
    """
    twistd's own daemon mode: pid file, log file, clean stop on SIGTERM.
    """

    def test_daemonized(self) -> None:
        """
        C{twistd --pidfile=P --logfile=L ollama-proxy ...} detaches, writes
        its pid, serves, logs requests to L, and removes P when stopped.
        """
        import os
        import signal
        import socket
        import subprocess
        import time

        from tests.integration.servers import freePort, twistdCommand

        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        pidfile = os.path.join(base, "proxy.pid")
        logfile = os.path.join(base, "proxy.log")
        port = freePort()
        subprocess.run(
            [*twistdCommand(), f"--pidfile={pidfile}", f"--logfile={logfile}", "ollama-proxy",
             "--target", "http://127.0.0.1:9", "--fallback", "",
             "--listen", f"tcp:{port}:interface=127.0.0.1"],
            cwd=base, check=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(pidfile) as f:
            pid = int(f.read().strip())
        try:
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    time.sleep(0.05)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=10) as r:
                self.assertEqual(codec.loads(r.read()), {"version": DEFAULT_VERSION})
        finally:
            os.kill(pid, signal.SIGTERM)
        while os.path.exists(pidfile) and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        self.assertFalse(os.path.exists(pidfile))
        with open(logfile) as f:
            log = f.read()
        self.assertIn("GET /api/version model=- status=200", log)
        self.assertIn("Main loop terminated", log)
