"""
The real coding-agent CLIs, end to end and offline, set up as the README's
"Coding agents" section says, against C{twistd -n ollama-proxy --demo}:
Claude Code (C{claude -p}), Codex (C{codex exec}, with a provider profile
and with C{--oss}), GitHub Copilot CLI (C{copilot -p}, bring-your-own
provider, no GitHub login) and Gemini CLI (C{gemini -p} on the Gemini API,
no Google account).  Each answers a plain prompt, and each completes
a real tool run with the C{fake-agent} model: the model calls the agent's
own shell tool, the agent runs C{pwd}, and the directory it printed is in
the answer.  No output-token cap or other crutch is set.

Opt-in: the CLIs come from npm (C{.ci/agents.sh} installs pinned
releases); set C{OLLAMA_PROXY_AGENT_CLIS} to the folder holding the
C{claude}, C{codex}, C{copilot} and C{gemini} executables (a
C{node_modules/.bin}).
Without it the tests are skipped, saying so.  Every CLI runs with its
phone-home switched off, in a temporary home, with a bounded timeout.
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_agent import COMMAND
from ollama_proxy.testing.fake_openai import REPLY
from tests.integration.servers import Stack, sharedDemo
from tests.tempdirs import tempDir

CLIS = os.environ.get("OLLAMA_PROXY_AGENT_CLIS", "")
TOOL_RUN = f"I ran `{COMMAND}` with your shell tool. It returned:"
"""How C{fake-agent}'s answer after a tool run begins."""


def executable(name: str) -> str:
    """
    @return: the path of CLI C{name} in C{OLLAMA_PROXY_AGENT_CLIS}.
    @raise SkipTest: when the variable is unset or the CLI is missing.
    """
    if not CLIS:
        raise SkipTest("set OLLAMA_PROXY_AGENT_CLIS to a folder with the claude, codex, "
                       "copilot and gemini CLIs (.ci/agents.sh installs them from npm)")
    path = os.path.join(CLIS, name)
    if not os.access(path, os.X_OK):
        raise SkipTest(f"{name} not found in OLLAMA_PROXY_AGENT_CLIS={CLIS}")
    return path


def backendRequests(backendURL: str) -> list[Any]:
    """
    @return: the chat requests the demo backend received so far.
    """
    with urllib.request.urlopen(backendURL + "/_fake/requests", timeout=10) as r:
        requests = codec.loads(r.read())["requests"]
    return [q for q in requests if q["path"] == "/chat/completions"]


class AgentCLITests(SynchronousTestCase):
    """
    Claude Code, Codex, Copilot CLI and Gemini CLI through the proxy's demo.
    """

    def setUp(self) -> None:
        self.stack = sharedDemo()
        self.home = tempDir(self, "ollama-proxy-agents-")
        # The agents run in a folder of their own; fake-agent's answer can
        # only quote its path from the tool's output (it never repeats the
        # agent's system prompt, which names the folder too).
        self.work = os.path.realpath(os.path.join(self.home, "project"))
        os.makedirs(self.work)

    def runCLI(self, argv: list[str], env: dict[str, str], timeout: float = 120) -> str:
        """
        Run a CLI to its end (at most C{timeout} seconds).

        @return: its output.
        """
        base = {"PATH": os.environ.get("PATH", ""), "HOME": self.home, "LANG": "C.UTF-8"}
        done = subprocess.run(argv, env={**base, **env}, cwd=self.work, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        self.assertEqual(done.returncode, 0, output)
        return output

    def assertToolRun(self, output: str, before: int) -> None:
        """
        The agent ran C{pwd} with its shell tool and the answer quotes the
        directory; the backend saw the call and its result paired by id, in
        a handful of requests (no loop).
        """
        self.assertIn(TOOL_RUN, output)
        self.assertIn(self.work, output.split(TOOL_RUN, 1)[1])
        requests = backendRequests(self.stack.backendURL)[before:]
        self.assertLessEqual(len(requests), 6, [r["body"]["messages"][-1] for r in requests])
        [last] = [r["body"]["messages"] for r in requests
                  if r["body"]["messages"][-1]["role"] == "tool"][-1:]
        calls = [c for m in last if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        results = [m for m in last if m["role"] == "tool"]
        self.assertEqual([c["id"] for c in calls], [m["tool_call_id"] for m in results])
        self.assertIn(self.work, results[-1]["content"])

    def claude(self, model: str, prompt: str, *args: str, url: str = "",
               timeout: float = 120) -> str:
        models = {name: model for name in (
            "ANTHROPIC_DEFAULT_OPUS_MODEL", "ANTHROPIC_DEFAULT_SONNET_MODEL",
            "ANTHROPIC_DEFAULT_HAIKU_MODEL", "CLAUDE_CODE_SUBAGENT_MODEL")}
        return self.runCLI([executable("claude"), "--model", model, *args, "-p", prompt], {
            "ANTHROPIC_BASE_URL": url or self.stack.url, "ANTHROPIC_AUTH_TOKEN": "ollama",
            "ANTHROPIC_API_KEY": "", **models,
            "DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1", "DISABLE_ERROR_REPORTING": "1",
        }, timeout)

    def codexHome(self, model: str) -> str:
        home = os.path.join(self.home, "codex")
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w") as f:
            f.write("check_for_update_on_startup = false\n[analytics]\nenabled = false\n\n"
                    "[model_providers.ollama-proxy]\nname = \"ollama-proxy\"\n"
                    f"base_url = \"{self.stack.url}/v1\"\nwire_api = \"responses\"\n")
        with open(os.path.join(home, "proxy.config.toml"), "w") as f:
            f.write(f'model_provider = "ollama-proxy"\nmodel = "{model}"\n')
        return home

    def codex(self, args: list[str], prompt: str, env: dict[str, str]) -> str:
        return self.runCLI([executable("codex"), "exec", *args, "--skip-git-repo-check",
                            "--disable", "plugins", prompt], env)

    def copilot(self, model: str, prompt: str) -> str:
        return self.runCLI([executable("copilot"), "-p", prompt], {
            "COPILOT_PROVIDER_BASE_URL": self.stack.url + "/v1",
            "COPILOT_PROVIDER_WIRE_API": "responses", "COPILOT_MODEL": model,
            "COPILOT_OFFLINE": "true",
        })

    def test_claudeCode(self) -> None:
        """
        C{claude -p} prints the fake backend's reply, though Claude Code
        asks for 32,000 output tokens.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertIn(REPLY, self.claude("fake-model", "say hi"))
        self.assertIn(32000, [r["body"].get("max_tokens")
                              for r in backendRequests(self.stack.backendURL)[before:]])

    def test_claudeCodeToolRun(self) -> None:
        """
        With C{fake-agent}, Claude Code runs C{pwd} through its C{Bash} tool
        and prints the answer quoting the directory.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertToolRun(self.claude("fake-agent", "Where am I?"), before)

    def test_claudeCodeReusedIds(self) -> None:
        """
        A backend that gives every tool call the same id (as servers that
        number calls per request do): a conversation continued with a
        second tool run ends, because the proxy returns a fresh id where
        the history already holds the backend's (Claude Code loops forever
        on a repeated id).
        """
        stack = Stack(backendArgs=["--tool-call-id", "call_dup"])
        self.addCleanup(stack.stop)
        first = self.claude("fake-agent", "Where am I?", url=stack.url, timeout=60)
        second = self.claude("fake-agent", "And now?", "--continue", url=stack.url, timeout=60)
        for output in (first, second):
            self.assertIn(self.work, output.split(TOOL_RUN, 1)[1])
        requests = backendRequests(stack.backendURL)
        self.assertLessEqual(len(requests), 8)
        history = requests[-1]["body"]["messages"]
        ids = [c["id"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        self.assertEqual(len(ids), 2)
        self.assertEqual(ids[0], "call_dup")
        self.assertNotEqual(ids[1], "call_dup")

    def test_codexProfile(self) -> None:
        """
        C{codex exec} with a Responses provider profile answers a plain
        prompt.
        """
        output = self.codex(["--profile", "proxy"], "say hi",
                            {"CODEX_HOME": self.codexHome("fake-model")})
        self.assertIn(REPLY, output)

    def test_codexProfileToolRun(self) -> None:
        """
        With the profile and C{fake-agent}, Codex runs C{pwd} through
        C{exec_command} and prints the answer quoting the directory.
        """
        before = len(backendRequests(self.stack.backendURL))
        output = self.codex(["--profile", "proxy"], "Where am I?",
                            {"CODEX_HOME": self.codexHome("fake-agent")})
        self.assertToolRun(output, before)

    def test_codexOssToolRun(self) -> None:
        """
        C{codex exec --oss --local-provider ollama -m fake-agent}: Codex
        checks C{/api/version} and C{/api/tags}, "pulls" the name, then
        talks Responses and completes the tool run.
        """
        before = len(backendRequests(self.stack.backendURL))
        output = self.codex(["--oss", "--local-provider", "ollama", "-m", "fake-agent"],
                            "Where am I?", {"CODEX_HOME": self.codexHome("fake-agent"),
                                            "CODEX_OSS_BASE_URL": self.stack.url + "/v1"})
        self.assertToolRun(output, before)

    def test_copilot(self) -> None:
        """
        C{copilot -p} in bring-your-own-provider mode, offline and without
        a GitHub login, prints the fake backend's reply.
        """
        self.assertIn(REPLY, self.copilot("fake-model", "say hi"))

    def test_copilotToolRun(self) -> None:
        """
        With C{fake-agent}, Copilot CLI runs C{pwd} through its C{bash}
        tool and prints the answer quoting the directory.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertToolRun(self.copilot("fake-agent", "Where am I?"), before)

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

    def test_gemini(self) -> None:
        """
        C{gemini -p} streams from C{/v1beta/models/{model}:streamGenerateContent}
        and prints the fake backend's reply; the backend got one streamed
        chat with Gemini CLI's system instruction first.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertIn(REPLY, self.gemini("fake-model", "say hi"))
        [request] = backendRequests(self.stack.backendURL)[before:]
        self.assertEqual((request["body"]["model"], request["body"]["stream"]), ("fake-model", True))
        self.assertEqual(request["body"]["messages"][0]["role"], "system")

    def test_geminiToolRun(self) -> None:
        """
        With C{fake-agent}, Gemini CLI runs C{pwd} through its
        C{run_shell_command} tool (offered headless only with C{--yolo}),
        sends the output back as a C{functionResponse} with the call's id,
        and prints the answer quoting the directory.
        """
        before = len(backendRequests(self.stack.backendURL))
        self.assertToolRun(self.gemini("fake-agent", "Where am I?", "--yolo"), before)
        requests = backendRequests(self.stack.backendURL)[before:]
        calls = [c["function"]["name"] for r in requests for m in r["body"]["messages"]
                 if m["role"] == "assistant" for c in m.get("tool_calls") or []]
        self.assertIn("run_shell_command", calls)
