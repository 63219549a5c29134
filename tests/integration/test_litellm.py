"""
Against a real LiteLLM proxy, offline on 127.0.0.1 with C{mock_response}
models: our proxy (with a config file naming LiteLLM and the built-in fake
backend) driven by the official C{ollama} client.

Opt-in: set C{OLLAMA_PROXY_LITELLM} to a C{litellm} executable (from a venv
with C{litellm[proxy]==1.108.7}; C{.ci/litellm.sh} makes one and runs this
module).  Without it the tests are skipped, saying why.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
import urllib.request

import ollama
from twisted.trial.unittest import SynchronousTestCase

from tests.integration.servers import Twistd, freePort
from tests.tempdirs import makeTempDir, removeTempDir

LITELLM = os.environ.get("OLLAMA_PROXY_LITELLM", "")
MASTER_KEY = "sk-test-master-1234"
MOCK_TEXT = "Hello from the LiteLLM mock!"

if not LITELLM:
    SKIP: str | None = (
        "set OLLAMA_PROXY_LITELLM to a litellm executable (see .ci/litellm.sh) to run "
        "the real LiteLLM end-to-end tests"
    )
elif not os.access(LITELLM, os.X_OK):
    SKIP = f"OLLAMA_PROXY_LITELLM={LITELLM} is not an executable file"
else:
    SKIP = None

CONFIG = f"""\
model_list:
  - model_name: mock-gpt
    litellm_params:
      model: openai/mock-gpt
      api_key: sk-fake
      mock_response: "{MOCK_TEXT}"
  - model_name: mock-429
    litellm_params: {{model: openai/mock-429, api_key: sk-fake, mock_response: "litellm.RateLimitError"}}
  - model_name: mock-500
    litellm_params: {{model: openai/mock-500, api_key: sk-fake, mock_response: "litellm.InternalServerError"}}
general_settings:
  master_key: {MASTER_KEY}
router_settings:
  num_retries: 0
"""


class LiteLLM:
    """
    A LiteLLM proxy process on a free loopback port.
    """

    def __init__(self, executable: str, timeout: float = 120.0) -> None:
        self.port = freePort()
        self.dir = makeTempDir("ollama-proxy-litellm-")
        config = os.path.join(self.dir, "config.yaml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(CONFIG)
        self.logPath = os.path.join(self.dir, "litellm.log")
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        with open(self.logPath, "wb") as log:
            self.process = subprocess.Popen(
                [executable, "--config", config, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.dir, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"
        self._waitReady(timeout)

    def _waitReady(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.log()
                removeTempDir(self.dir)
                raise RuntimeError(f"litellm exited early:\n{log}")
            try:
                with urllib.request.urlopen(self.url + "/health/liveliness", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        log = self.log()
        self.stop()
        raise RuntimeError(f"litellm was not ready after {timeout:g} s:\n{log}")

    def log(self) -> str:
        with open(self.logPath, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        removeTempDir(self.dir)


class Stack:
    """
    LiteLLM, the fake backend, and our proxy configured for both.
    """

    def __init__(self) -> None:
        self.litellm = LiteLLM(LITELLM)
        fakePort = freePort()
        try:
            self.fake = Twistd("fake-openai", ["--listen", f"tcp:{fakePort}:interface=127.0.0.1"],
                               fakePort)
        except Exception:
            self.litellm.stop()
            raise
        config = os.path.join(self.litellm.dir, "proxy.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f"""\
[server]
fallback = ""

[[backend]]
name = "litellm"
url = "{self.litellm.url}"
api_key = "{MASTER_KEY}"

[[backend]]
name = "fake"
url = "http://127.0.0.1:{fakePort}"
allow = ["fake-model"]
"""
            )
        proxyPort = freePort()
        try:
            self.proxy = Twistd(
                "ollama-proxy",
                ["--config", config, "--listen", f"tcp:{proxyPort}:interface=127.0.0.1"],
                proxyPort,
            )
        except Exception:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{proxyPort}"

    def stop(self) -> None:
        for part in ("proxy", "fake", "litellm"):
            if hasattr(self, part):
                getattr(self, part).stop()


_shared: list[Stack] = []


def sharedStack() -> Stack:
    """
    @return: the L{Stack}, started on first use, stopped at exit.
    """
    if not _shared:
        stack = Stack()
        atexit.register(stack.stop)
        _shared.append(stack)
    return _shared[0]


class LiteLLMTests(SynchronousTestCase):
    """
    The official ollama client, our proxy, a real LiteLLM.
    """

    skip = SKIP

    def setUp(self) -> None:
        self.stack = sharedStack()
        self.client = ollama.Client(host=self.stack.url, timeout=60)

    def chat(self, model: str, stream: bool) -> str:
        messages = [{"role": "user", "content": "hi"}]
        if stream:
            parts = list(self.client.chat(model=model, messages=messages, stream=True))
            self.assertTrue(parts[-1].done)
            self.assertFalse(any(p.done for p in parts[:-1]))
            self.assertEqual(parts[-1].done_reason, "stop")
            return "".join(p.message.content or "" for p in parts)
        response = self.client.chat(model=model, messages=messages)
        self.assertTrue(response.done)
        return response.message.content or ""

    def test_list(self) -> None:
        """
        LiteLLM's models and the fake backend's are listed together.
        """
        names = [m.model for m in self.client.list().models]
        self.assertEqual(names, ["mock-gpt:proxy", "mock-429:proxy", "mock-500:proxy",
                                 "fake-model:proxy"])

    def test_chatNonStream(self) -> None:
        """
        A non-streamed chat returns LiteLLM's mock text.
        """
        self.assertEqual(self.chat("mock-gpt:proxy", stream=False), MOCK_TEXT)

    def test_chatStream(self) -> None:
        """
        A streamed chat (LiteLLM sends 3-character deltas, then a
        finish_reason chunk, then usage) adds up to the mock text and ends
        with one C{done}, with token counts.
        """
        self.assertEqual(self.chat("mock-gpt", stream=True), MOCK_TEXT)

    def test_routedToOtherBackend(self) -> None:
        """
        The fake backend's model is served by the fake backend, not LiteLLM.
        """
        self.assertIn("word by word", self.chat("fake-model", stream=False))

    def test_rateLimitStatus(self) -> None:
        """
        LiteLLM's 429 reaches the client as a 429 with LiteLLM's message,
        streamed or not.
        """
        for stream in (False, True):
            with self.assertRaises(ollama.ResponseError) as e:
                self.chat("mock-429", stream=stream)
            self.assertEqual(e.exception.status_code, 429)
            self.assertIn("RateLimitError", e.exception.error)

    def test_serverErrorStatus(self) -> None:
        """
        LiteLLM's 500 reaches the client as a 500.
        """
        with self.assertRaises(ollama.ResponseError) as e:
            self.chat("mock-500", stream=False)
        self.assertEqual(e.exception.status_code, 500)

    def test_show(self) -> None:
        """
        C{show()} of a LiteLLM model answers with metadata (the proxy also
        asks LiteLLM's C{/v1/model/info}, and the fake backend's missing
        route does not break it).
        """
        response = self.client.show("mock-gpt:proxy")
        self.assertEqual((response.modelinfo or {}).get("general.basename"), "mock-gpt")
        self.assertIn("completion", response.capabilities or [])
