"""
The real coding-agent CLIs, end to end and offline: Claude Code (C{claude
-p}), Codex (C{codex exec}, with a provider profile and with C{--oss}) and
Gemini CLI (C{gemini -p}, on the Gemini API) against C{twistd -n ollama-proxy} in front of C{twistd -n fake-openai}.

Opt-in: the CLIs come from npm (C{.ci/agents.sh} installs pinned
releases); set C{OLLAMA_PROXY_AGENT_CLIS} to the folder holding the
C{claude}, C{codex} and C{gemini} executables (a C{node_modules/.bin}).  Without it
the tests are skipped, saying so.  Every CLI runs with its phone-home
switched off, in a temporary home, with a bounded timeout.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import REPLY
from tests.integration.servers import sharedStack
from tests.tempdirs import tempDir

CLIS = os.environ.get("OLLAMA_PROXY_AGENT_CLIS", "")
WORDS = len(REPLY.split(" "))


def executable(name: str) -> str:
    """
    @return: the path of CLI C{name} in C{OLLAMA_PROXY_AGENT_CLIS}.
    @raise SkipTest: when the variable is unset or the CLI is missing.
    """
    if not CLIS:
        raise SkipTest("set OLLAMA_PROXY_AGENT_CLIS to a folder with the claude, codex and gemini CLIs "
                       "(.ci/agents.sh installs them from npm)")
    path = os.path.join(CLIS, name)
    if not os.access(path, os.X_OK):
        raise SkipTest(f"{name} not found in OLLAMA_PROXY_AGENT_CLIS={CLIS}")
    return path


def backendRequests(backendURL: str) -> list[Any]:
    """
    @return: the chat requests the fake backend received so far.
    """
    with urllib.request.urlopen(backendURL + "/_fake/requests", timeout=10) as r:
        requests = codec.loads(r.read())["requests"]
    return [q for q in requests if q["path"] == "/chat/completions"]


class AgentCLITests(SynchronousTestCase):
    """
    Claude Code, Codex and Gemini CLI through the proxy.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()
        self.home = tempDir(self, "ollama-proxy-agents-")

    def runCLI(self, argv: list[str], env: dict[str, str]) -> str:
        """
        Run a CLI to its end (at most two minutes).

        @return: its output.
        """
        base = {"PATH": os.environ.get("PATH", ""), "HOME": self.home, "LANG": "C.UTF-8"}
        done = subprocess.run(argv, env={**base, **env}, cwd=self.home, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output)
        return output

    def claude(self, model: str, prompt: str) -> str:
        models = {name: model for name in (
            "ANTHROPIC_MODEL", "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL")}
        return self.runCLI([executable("claude"), "-p", prompt], {
            "ANTHROPIC_BASE_URL": self.stack.url, "ANTHROPIC_AUTH_TOKEN": "ollama",
            "ANTHROPIC_API_KEY": "", **models,
            # The fake backend repeats its reply up to max_tokens words.
            "CLAUDE_CODE_MAX_OUTPUT_TOKENS": str(WORDS),
            "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        })

    def codexHome(self) -> str:
        home = os.path.join(self.home, "codex")
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write("check_for_update_on_startup = false\n[analytics]\nenabled = false\n\n"
                    "[model_providers.ollama-proxy]\nname = \"ollama-proxy\"\n"
                    f"base_url = \"{self.stack.url}/v1\"\nwire_api = \"responses\"\n")
        with open(os.path.join(home, "proxy.config.toml"), "w") as f:
            f.write('model_provider = "ollama-proxy"\nmodel = "fake-tools"\n')
        return home

    def test_claudeCode(self) -> None:
        """
        C{claude -p} prints the fake backend's reply.
        """
        self.assertIn(REPLY, self.claude("fake-model", "say hi"))

    def test_claudeCodeToolLoop(self) -> None:
        """
        With a model that calls a tool, Claude Code runs the call, sends the
        result back (a tool message paired with the call's id), and prints
        the answer that follows.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertIn(REPLY, self.claude("fake-tools", "what is the weather"))
        requests = backendRequests(self.stack.backendURL)[before:]
        self.assertGreaterEqual(len(requests), 2)
        last = requests[-1]["body"]["messages"]
        [call] = last[-2]["tool_calls"]
        self.assertEqual((last[-1]["role"], last[-1]["tool_call_id"]), ("tool", call["id"]))

    def test_codexProfile(self) -> None:
        """
        C{codex exec} with a Responses provider profile: the tool call goes
        out and back, and the answer is printed.
        """
        before = len(backendRequests(self.stack.backendURL))
        output = self.runCLI([executable("codex"), "exec", "--profile", "proxy",
                           "--skip-git-repo-check", "--disable", "plugins", "what is the weather"],
                          {"CODEX_HOME": self.codexHome()})
        self.assertIn(REPLY, output)
        requests = backendRequests(self.stack.backendURL)[before:]
        self.assertGreaterEqual(len(requests), 2)
        self.assertEqual(requests[-1]["body"]["messages"][-1]["role"], "tool")

    def test_codexOss(self) -> None:
        """
        C{codex --oss}: Codex checks C{/api/version} and C{/api/tags}, then
        talks Responses.
        """
        output = self.runCLI([executable("codex"), "exec", "--oss", "--local-provider", "ollama",
                           "-m", "fake-model:proxy", "--skip-git-repo-check",
                           "--disable", "plugins", "say hi"],
                          {"CODEX_HOME": self.codexHome(),
                           "CODEX_OSS_BASE_URL": self.stack.url + "/v1"})
        self.assertIn(REPLY, output)

    def gemini(self, model: str, prompt: str, *flags: str) -> str:
        """
        Run C{gemini -p} as the README sets it up: the base URL and any key
        in the environment, API-key auth, telemetry and updates off in
        C{~/.gemini/settings.json}; no Google account, no network.
        """
        settings = os.path.join(self.home, ".gemini")
        os.makedirs(settings, exist_ok=True)
        with open(os.path.join(settings, "settings.json"), "w") as f:
            f.write(codec.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}},
                                 "telemetry": {"enabled": False},
                                 "general": {"disableAutoUpdate": True}}).decode())
        return self.runCLI([executable("gemini"), *flags, "-m", model, "-p", prompt], {
            "GEMINI_API_KEY": "ollama", "GOOGLE_GEMINI_BASE_URL": self.stack.url,
            "GEMINI_CLI_TRUST_WORKSPACE": "true",
        })

    def test_geminiCLI(self) -> None:
        """
        C{gemini -p} streams from C{/v1beta/models/{model}:streamGenerateContent}
        and prints the fake backend's reply.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertIn(REPLY, self.gemini("fake-model", "say hi"))
        [request] = backendRequests(self.stack.backendURL)[before:]
        self.assertEqual((request["body"]["model"], request["body"]["stream"]), ("fake-model", True))
        self.assertEqual(request["body"]["messages"][0]["role"], "system")

    def test_geminiCLIToolLoop(self) -> None:
        """
        With a model that calls a tool, Gemini CLI runs the call and sends
        the result back as a C{functionResponse} with the call's id (a tool
        message paired with the OpenAI call), and prints the answer that
        follows.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertIn(REPLY, self.gemini("fake-tools", "what is the weather"))
        requests = backendRequests(self.stack.backendURL)[before:]
        self.assertEqual(len(requests), 2)
        last = requests[-1]["body"]["messages"]
        [call] = last[-2]["tool_calls"]
        self.assertEqual((last[-1]["role"], last[-1]["tool_call_id"]), ("tool", call["id"]))
        self.assertEqual(call["function"]["name"], requests[0]["body"]["tools"][0]["function"]["name"])

    def test_geminiCLIShellTool(self) -> None:
        """
        With the demo's agent model (C{fake-agent}, issue 24), Gemini CLI
        runs its real shell tool (C{run_shell_command}, offered headless
        only with C{--yolo}): C{pwd} prints the CLI's working folder, which
        goes back as the C{functionResponse} and is quoted in the answer.
        """
        with urllib.request.urlopen(self.stack.backendURL + "/v1/models", timeout=10) as r:
            served = [m["id"] for m in codec.loads(r.read())["data"]]
        if "fake-agent" not in served:
            raise SkipTest("the fake backend of this build has no fake-agent model (issue 24)")
        before = len(backendRequests(self.stack.backendURL))
        output = self.gemini("fake-agent", "where am I", "--yolo")
        home = os.path.realpath(self.home)
        self.assertIn(home, output)
        requests = backendRequests(self.stack.backendURL)[before:]
        last = requests[-1]["body"]["messages"]
        [call] = last[-2]["tool_calls"]
        self.assertEqual(call["function"]["name"], "run_shell_command")
        self.assertEqual((last[-1]["role"], last[-1]["tool_call_id"]), ("tool", call["id"]))
        self.assertIn(home, last[-1]["content"])
