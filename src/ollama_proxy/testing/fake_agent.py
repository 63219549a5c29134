# -*- test-case-name: tests.testing.test_fake_agent -*-
"""
The C{fake-agent} demo model's mind: a coding agent's first tool run,
without a real model.

Offered a shell tool it knows (L{SHELL_TOOLS}: Claude Code's C{Bash},
Copilot CLI's C{bash}, Codex's C{exec_command}, Gemini CLI's
C{run_shell_command}, ...), it calls that tool once with a harmless command
(L{COMMAND}), its arguments built from the tool's own JSON schema as the
request defines it; once the agent has sent the result back, it answers in
text quoting what the tool returned.  So a new user sees a real round
trip, agent -> proxy -> backend -> proxy -> agent runs the command ->
proxy -> backend -> answer, with nothing but C{--demo}.

Everything here reads and returns plain JSON values: the fake backend
(L{ollama_proxy.testing.fake_openai}) streams what it decides.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import attrs

from ollama_proxy.protocol.codec import JSON

COMMAND = "pwd"
"""The harmless command: read-only, and its output (the agent's working
directory) is not in the request, so it shows the tool really ran."""

DESCRIPTION = "Print the working directory"
"""Any other required string argument (agents ask for a description)."""

OUTPUT_LIMIT = 4000
"""At most this many characters of the tool's output are quoted back."""

NO_SHELL = (
    "Hello! I am the ollama-proxy fake agent. Offer me a shell tool (Bash, bash, shell, "
    f"exec_command, run_shell_command) and I will run `{COMMAND}` with it."
)
"""The answer when the request offers no shell tool this model knows."""


@attrs.frozen
class ShellTool:
    """
    A shell tool an agent defines.

    @ivar name: the tool's name in the request.
    @ivar field: the argument that holds the command (a string, or an
        argv list when the tool's schema says C{"type": "array"}).
    @ivar agent: who defines it (for people reading the table).
    """

    name: str
    field: str
    agent: str


SHELL_TOOLS: tuple[ShellTool, ...] = (
    ShellTool("Bash", "command", "Claude Code"),
    ShellTool("bash", "command", "GitHub Copilot CLI"),
    ShellTool("exec_command", "cmd", "Codex CLI"),
    ShellTool("shell_command", "command", "Codex CLI, older releases"),
    ShellTool("shell", "command", "Codex CLI, older releases (an argv list)"),
    ShellTool("run_shell_command", "command", "Gemini CLI"),
)
"""The shell tools C{fake-agent} calls, first match in this order.  Another
agent's tool is one more line: its name and its command argument; the
other arguments come from the tool's schema."""


@attrs.frozen
class Call:
    """
    C{fake-agent} calls a tool.

    @ivar name: the tool's name.
    @ivar arguments: its arguments, a JSON object.
    """

    name: str
    arguments: JSON


Turn = Union[Call, str]
"""What C{fake-agent} does next: call a tool, or answer this text."""


def _function(tool: object) -> JSON:
    """
    @return: an OpenAI tool definition's C{function} object, or C{{}}.
    """
    if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
        function: JSON = tool["function"]
        return function
    return {}


def findShellTool(tools: Sequence[Any]) -> tuple[ShellTool, JSON] | None:
    """
    @param tools: the request's OpenAI-shaped tool definitions.
    @return: the first known shell tool offered, with its parameter schema.
    """
    offered: dict[str, object] = {}
    for tool in tools:
        function = _function(tool)
        if isinstance(function.get("name"), str):
            offered.setdefault(function["name"], function.get("parameters"))
    for shell in SHELL_TOOLS:
        if shell.name in offered:
            schema = offered[shell.name]
            return shell, schema if isinstance(schema, dict) else {}
    return None


def _placeholder(schema: object) -> Any:
    """
    A value for a required argument the command does not fill, by its
    schema: the first C{enum} value, the C{default}, or one of its type.
    """
    if not isinstance(schema, dict):
        return DESCRIPTION
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind in ("number", "integer"):
        return schema.get("minimum", 1)
    empty: dict[object, Any] = {"boolean": False, "array": [], "object": {}}
    return empty.get(kind, DESCRIPTION) if isinstance(kind, str) else DESCRIPTION


def shellArguments(shell: ShellTool, schema: JSON) -> JSON:
    """
    The arguments of one call of C{shell} running L{COMMAND}, in the
    tool's own schema: the command in its field (a string, or C{["bash",
    "-lc", command]} where the schema wants a list), and every other
    required argument given a plain value of its type.

    @param shell: the tool.
    @param schema: its C{parameters} as the request defines them.
    @return: the arguments object.
    """
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    field = properties.get(shell.field)
    wantsList = isinstance(field, dict) and field.get("type") == "array"
    arguments: JSON = {shell.field: ["bash", "-lc", COMMAND] if wantsList else COMMAND}
    required = schema.get("required")
    for name in required if isinstance(required, list) else ():
        if isinstance(name, str) and name not in arguments:
            arguments[name] = _placeholder(properties.get(name))
    return arguments


def _text(content: object) -> str:
    """
    @return: a message's text: the string, or its text parts joined.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def latestResult(messages: Sequence[Any]) -> str | None:
    """
    The output of the tool call made for the current prompt, if the agent
    already sent it back.

    Walking back from the end, a tool result comes before any assistant
    answer in text; user and system turns in between (agents add
    reminders beside results) do not count.  A new prompt after an answer
    starts over, so each prompt gets its own tool run.

    @param messages: the request's OpenAI-shaped conversation.
    @return: the latest tool result's text, or C{None}.
    """
    for message in reversed(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "tool":
            return _text(message.get("content"))
        if role == "assistant" and not message.get("tool_calls"):
            return None
    return None


def answerWith(output: str) -> str:
    """
    @return: the text answer quoting the tool's output (cut to
        L{OUTPUT_LIMIT} characters).
    """
    output = output.strip()
    if len(output) > OUTPUT_LIMIT:
        output = output[:OUTPUT_LIMIT] + " [...]"
    return f"I ran `{COMMAND}` with your shell tool. It returned:\n\n{output}"


def agentTurn(messages: Sequence[Any], tools: Sequence[Any]) -> Turn:
    """
    What C{fake-agent} does with a chat request.

    @param messages: the request's conversation.
    @param tools: the request's tool definitions.
    @return: a L{Call} of the shell tool, or the text to answer.
    """
    result = latestResult(messages)
    if result is not None:
        return answerWith(result)
    found = findShellTool(tools)
    if found is None:
        return NO_SHELL
    shell, schema = found
    return Call(shell.name, shellArguments(shell, schema))
