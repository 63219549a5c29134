"""
Sticky conversations with the real coding-agent CLIs: Claude Code, Codex
and (when installed) Copilot CLI run one session each through a proxy in
front of three C{twistd -n fake-openai} backends with C{sticky = true};
every request of the session must land on one backend (their session ids,
captured from these CLIs: docs/operations.md).

Opt-in like L{tests.integration.test_agent_clis}: C{OLLAMA_PROXY_AGENT_CLIS}
names the folder with the CLIs (C{.ci/agents.sh} installs them); without it
the tests are skipped, saying so.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import REPLY
from tests.integration.servers import Twistd, freePort
from tests.integration.test_agent_clis import executable
from tests.tempdirs import tempDir

WORDS = len(REPLY.split(" "))


class StickyAgentTests(SynchronousTestCase):
    """
    One agent session, one backend.
    """

    def setUp(self) -> None:
        executable("claude")  # skips without the CLIs
        self.home = tempDir(self, "ollama-proxy-sticky-agents-")
        self.ports = [freePort() for _ in range(3)]
        self.backends = []
        for port in self.ports:
            backend = Twistd("fake-openai", ["--listen", f"tcp:{port}:interface=127.0.0.1"], port)
            self.addCleanup(backend.stop)
            self.backends.append(backend)
        config = os.path.join(self.home, "proxy.toml")
        with open(config, "w") as f:
            f.write("[routing]\nsticky = true\n")
            for i, port in enumerate(self.ports):
                f.write(f'[[backend]]\nname = "b{i}"\nurl = "http://127.0.0.1:{port}"\n')
        port = freePort()
        self.proxy = Twistd("ollama-proxy", ["--listen", f"tcp:{port}:interface=127.0.0.1",
                                             "--config", config, "--fallback", ""], port)
        self.addCleanup(self.proxy.stop)
        self.url = f"http://127.0.0.1:{port}"

    def chats(self) -> dict[int, list[Any]]:
        """
        @return: per backend, the chat requests it received.
        """
        out = {}
        for i, port in enumerate(self.ports):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/requests", timeout=10) as r:
                requests = codec.loads(r.read())["requests"]
            out[i] = [q for q in requests if q["path"] == "/chat/completions"]
        return out

    def run_(self, argv: list[str], env: dict[str, str]) -> str:
        base = {"PATH": os.environ.get("PATH", ""), "HOME": self.home, "LANG": "C.UTF-8"}
        done = subprocess.run(argv, env={**base, **env}, cwd=self.home, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        return done.stdout + done.stderr

    def assertOneBackendPerModel(self, minimum: int) -> None:
        """
        Every model's requests of the session went to one backend, and the
        session made at least C{minimum} requests.
        """
        where: dict[str, set[int]] = {}
        total = 0
        for i, requests in self.chats().items():
            for q in requests:
                where.setdefault(q["body"]["model"], set()).add(i)
                total += 1
        self.assertGreaterEqual(total, minimum)
        for model, backends in where.items():
            self.assertEqual(len(backends), 1, f"{model} went to {backends}")

    def test_claudeCode(self) -> None:
        """
        Claude Code's tool loop (its C{X-Claude-Code-Session-Id}) stays on
        one backend.
        """
        models = {name: "fake-tools" for name in (
            "ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL")}
        output = self.run_([executable("claude"), "-p", "what is the weather"], {
            "ANTHROPIC_BASE_URL": self.url, "ANTHROPIC_AUTH_TOKEN": "ollama",
            "ANTHROPIC_API_KEY": "", **models, "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(WORDS),
            "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        })
        self.assertIn(REPLY, output)
        self.assertOneBackendPerModel(2)

    def test_codex(self) -> None:
        """
        Codex's tool call and answer (its C{Session-Id}) stay on one
        backend.
        """
        home = os.path.join(self.home, "codex")
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write("check_for_update_on_startup = false\n[analytics]\nenabled = false\n\n"
                    "[model_providers.ollama-proxy]\nname = \"ollama-proxy\"\n"
                    f"base_url = \"{self.url}/v1\"\nwire_api = \"responses\"\n")
        with open(os.path.join(home, "proxy.config.toml"), "w") as f:
            f.write('model_provider = "ollama-proxy"\nmodel = "fake-tools"\n')
        output = self.run_([executable("codex"), "exec", "--profile", "proxy",
                            "--skip-git-repo-check", "--disable", "plugins",
                            "what is the weather"], {"CODEX_HOME": home})
        self.assertIn(REPLY, output)
        self.assertOneBackendPerModel(2)

    def test_copilot(self) -> None:
        """
        Copilot CLI's session (its C{prompt_cache_key}) stays on one
        backend.
        """
        try:
            copilot = executable("copilot")
        except SkipTest:
            raise SkipTest("Copilot CLI (@github/copilot) is not in OLLAMA_PROXY_AGENT_CLIS")
        output = self.run_([copilot, "-p", "what is the weather", "--allow-all-tools"], {
            "COPILOT_PROVIDER_TYPE": "openai", "COPILOT_PROVIDER_BASE_URL": self.url + "/v1",
            "COPILOT_PROVIDER_WIRE_API": "responses", "COPILOT_MODEL": "fake-tools",
            "COPILOT_OFFLINE": "true",
        })
        self.assertIn(REPLY.split(" ")[0], output)
        self.assertOneBackendPerModel(2)
