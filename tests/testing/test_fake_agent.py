"""
The C{fake-agent} demo model: which tool it calls with which arguments, for
the shell tools the real agents define (their schemas as the CLIs sent
them, cut to the fields that matter), and when it answers in text.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec

from ollama_proxy.testing.fake_agent import (
    COMMAND,
    DESCRIPTION,
    NO_SHELL,
    OUTPUT_LIMIT,
    SHELL_TOOLS,
    Call,
    agentTurn,
)


def tool(name: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": properties, "required": required,
        "additionalProperties": False}}}


STRING = {"type": "string"}
CLAUDE_BASH = tool("Bash", {"command": STRING, "timeout": {"type": "number"},
                            "description": STRING, "run_in_background": {"type": "boolean"}},
                   ["command"])
COPILOT_BASH = tool("bash", {"command": STRING, "description": STRING, "shellId": STRING,
                             "mode": {"type": "string", "enum": ["sync", "async"]},
                             "initial_wait": {"type": "number"}}, ["command", "description"])
CODEX_EXEC = tool("exec_command", {"cmd": STRING, "workdir": STRING, "login": {"type": "boolean"},
                                   "yield_time_ms": {"type": "number"}}, ["cmd"])
CODEX_SHELL = tool("shell", {"command": {"type": "array", "items": STRING},
                             "workdir": STRING, "timeout_ms": {"type": "number"}}, ["command"])
GEMINI_SHELL = tool("run_shell_command", {"command": STRING, "description": STRING,
                                          "dir_path": STRING, "is_background": {"type": "boolean"}},
                    ["command"])
OTHER = tool("Read", {"file_path": STRING}, ["file_path"])
USER = {"role": "user", "content": "what is here?"}


class ShellCallTests(SynchronousTestCase):
    """
    A request offering a known shell tool gets one call of it.
    """

    def test_eachAgentsSchema(self) -> None:
        """
        Each agent's shell tool is called with the command in its own
        field, and only the required arguments besides it, typed by its
        schema.
        """
        cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
            (CLAUDE_BASH, {"command": COMMAND}),
            (COPILOT_BASH, {"command": COMMAND, "description": DESCRIPTION}),
            (CODEX_EXEC, {"cmd": COMMAND}),
            (CODEX_SHELL, {"command": ["bash", "-lc", COMMAND]}),
            (GEMINI_SHELL, {"command": COMMAND}),
        ]
        for shell, arguments in cases:
            name = shell["function"]["name"]
            self.assertEqual(agentTurn([USER], [OTHER, shell]), Call(name, arguments), name)

    def test_placeholders(self) -> None:
        """
        A required argument gets its enum's first value, its default, its
        minimum, or an empty value of its type.
        """
        shell = tool("bash", {"command": STRING, "mode": {"enum": ["sync", "async"]},
                              "shell": {"type": "string", "default": "sh"},
                              "wait": {"type": "integer", "minimum": 5},
                              "count": {"type": ["null", "number"]},
                              "env": {"type": "object"}, "args": {"type": "array"},
                              "bg": {"type": "boolean"}, "why": {}},
                     ["command", "mode", "shell", "wait", "count", "env", "args", "bg", "why"])
        self.assertEqual(agentTurn([USER], [shell]), Call("bash", {
            "command": COMMAND, "mode": "sync", "shell": "sh", "wait": 5, "count": 1,
            "env": {}, "args": [], "bg": False, "why": DESCRIPTION}))

    def test_tableOrder(self) -> None:
        """
        With several known shell tools offered, the table's order decides;
        a tool without a schema still gets its command.
        """
        bare = {"type": "function", "function": {"name": "run_shell_command"}}
        self.assertEqual(agentTurn([USER], [bare, CODEX_EXEC]), Call("exec_command", {"cmd": COMMAND}))
        self.assertEqual(agentTurn([USER], [bare]), Call("run_shell_command", {"command": COMMAND}))
        self.assertEqual([s.name for s in SHELL_TOOLS][:3], ["Bash", "bash", "exec_command"])

    def test_noShell(self) -> None:
        """
        Without a shell tool it knows (or with malformed tools) it says so
        in text.
        """
        for tools in ([], [OTHER], [1, {"function": "x"}, {"function": {"name": 3}}]):
            self.assertEqual(agentTurn([USER], tools), NO_SHELL)


class AnswerTests(SynchronousTestCase):
    """
    Once the result is back, it answers with it.
    """

    def call(self) -> dict[str, Any]:
        return {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "Bash", "arguments": "{}"}}]}

    def test_answersWithOutput(self) -> None:
        """
        The text quotes the tool's output, given as a string or as parts,
        even with a user turn (an agent's reminder) after the result.
        """
        for content in ("/home/me\n", [{"type": "text", "text": "/home/me"}]):
            result = {"role": "tool", "tool_call_id": "c1", "content": content}
            for messages in ([USER, self.call(), result],
                             [USER, self.call(), result, {"role": "user", "content": "note"}]):
                answer = agentTurn(messages, [CLAUDE_BASH])
                self.assertIsInstance(answer, str)
                assert isinstance(answer, str)
                self.assertTrue(answer.endswith("returned:\n\n/home/me"), answer)
                self.assertIn(f"`{COMMAND}`", answer)

    def test_newPromptRunsAgain(self) -> None:
        """
        After a text answer, the next prompt gets a tool run of its own.
        """
        messages = [USER, self.call(), {"role": "tool", "tool_call_id": "c1", "content": "/x"},
                    {"role": "assistant", "content": "I ran it"}, USER]
        self.assertEqual(agentTurn(messages, [CLAUDE_BASH]), Call("Bash", {"command": COMMAND}))

    def test_longOutputCut(self) -> None:
        """
        A huge output is quoted only up to the limit.
        """
        result = {"role": "tool", "tool_call_id": "c1", "content": "x" * (OUTPUT_LIMIT * 3)}
        answer = agentTurn([USER, self.call(), result], [CLAUDE_BASH])
        assert isinstance(answer, str)
        self.assertLess(len(answer), OUTPUT_LIMIT + 200)
        self.assertTrue(answer.endswith("x [...]"))


json = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10,
)
schemaLike = st.one_of(json, st.fixed_dictionaries({}, optional={
    "properties": st.dictionaries(st.sampled_from(["command", "cmd", "mode", "x"]), json, max_size=3),
    "required": st.one_of(json, st.lists(st.one_of(st.sampled_from(["command", "cmd", "mode"]), json),
                                         max_size=3)),
}))
toolsLike = st.lists(st.one_of(json, st.fixed_dictionaries({"type": st.just("function"), "function": (
    st.fixed_dictionaries({"name": st.sampled_from([s.name for s in SHELL_TOOLS] + ["Read"])},
                          optional={"parameters": schemaLike}))})), max_size=3)
messagesLike = st.lists(st.one_of(json, st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool", "system"])},
    optional={"content": json, "tool_calls": json})), max_size=4)


class MalformedTests(SynchronousTestCase):
    """
    Whatever an agent (or a fuzzer) sends, C{fake-agent} answers.
    """

    @settings(max_examples=150, deadline=None)
    @given(messagesLike, toolsLike)
    def test_alwaysAnswers(self, messages: list[Any], tools: list[Any]) -> None:
        """
        It returns text, or a call of a known shell tool whose arguments
        are a JSON object holding the command.
        """
        turn = agentTurn(messages, tools)
        if isinstance(turn, Call):
            shell = {s.name: s for s in SHELL_TOOLS}[turn.name]
            self.assertIn(turn.arguments[shell.field], (COMMAND, ["bash", "-lc", COMMAND]))
            codec.dumps(turn.arguments)
        else:
            self.assertIsInstance(turn, str)
