# -*- test-case-name: tests.protocol.test_responses_request -*-
"""
The OpenAI Responses dialect's request side: C{/v1/responses} bodies
validated, once, into the hub's L{ChatRequest}, plus what the reply needs
from the request (L{ResponsesContext}: the fields a response object echoes
and how tool names map back).

The proxy keeps no responses: a request that leans on server-side state
(C{previous_response_id}, C{conversation}, C{background}, an
C{item_reference}) is refused with a 400 naming the field, rather than
answered without the history it assumes.

Codex declares tools the backend does not know as such: C{namespace} tools
(one per MCP server) are flattened to C{<namespace>__<name>} functions and
split again in the reply; C{custom} (freeform) tools such as
C{apply_patch} become functions with one string parameter C{input} and
come back as C{custom_tool_call}s.  Hosted tools (C{web_search}, ...) run on
OpenAI's servers, which the backend is not, and are dropped.
"""

from __future__ import annotations

import hashlib
import re

import attrs

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON, Obj
from ollama_proxy.protocol.conversation import Shape, Turn, Walker, walk
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import booleanAt, listAt, numberField, requireObject, stringAt
from ollama_proxy.protocol.requests import (
    ChatRequest,
    FunctionTool,
    Message,
    Sampling,
    Think,
    ToolCallRequest,
    ToolChoice,
    functionTool,
    namedChoice,
)

EFFORTS: dict[str, Think] = {
    "none": False, "minimal": "low", "low": "low", "medium": "medium", "high": "high",
    "xhigh": "max", "ultra": "max", "max": "max",
}
"""C{reasoning.effort} as the hub's reasoning switch (Ollama's mapping)."""

SKIPPED_ITEMS = frozenset({
    "web_search_call", "file_search_call", "image_generation_call", "code_interpreter_call",
    "mcp_list_tools", "mcp_approval_request", "mcp_approval_response", "compaction",
})
"""History items of hosted tools: nothing a chat backend can replay."""

_NAME = re.compile(r"[^a-zA-Z0-9_-]")


class Unsupported(BadRequest):
    """
    A field the proxy cannot honour (400, with the field named as
    C{param}).

    @ivar param: the field.
    """

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@attrs.frozen
class ToolName:
    """
    How a backend function name reads in a Responses reply.

    @ivar name: the tool's own name.
    @ivar namespace: its namespace, for a namespace member.
    @ivar custom: whether it is a freeform (C{custom}) tool.
    """

    name: str
    namespace: str | None = None
    custom: bool = False


@attrs.frozen
class ResponsesContext:
    """
    What the reply of one Responses request needs besides the events.

    @ivar echo: the request fields a response object repeats.
    @ivar names: backend function names that read differently in the reply.
    """

    echo: JSON
    names: dict[str, ToolName] = attrs.field(factory=dict)


def flatName(namespace: str | None, name: str) -> str:
    """
    The backend function name of a (namespaced) tool: C{ns__name}, cleaned
    to OpenAI's C{[a-zA-Z0-9_-]{1,64}} (longer names shortened with a
    hash, so two long names stay apart).
    """
    if namespace:
        name = namespace + name if namespace.endswith("__") else f"{namespace}__{name}"
    name = _NAME.sub("_", name)
    if len(name) > 64:
        name = name[:55] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def _function(name: str, tool: Obj, parameters: object) -> FunctionTool:
    return functionTool(name, parameters if isinstance(parameters, dict)
                        else {"type": "object", "properties": {}},
                        tool.get("description"), tool.get("strict"))


def parseTools(tools: object, names: dict[str, ToolName]) -> tuple[FunctionTool, ...]:
    """
    Responses tools as OpenAI chat function tools, noting in C{names} the
    ones that read differently in the reply.

    @raise BadRequest: for a function tool without a name.
    """
    tools = listAt(tools, "tools")
    out: list[FunctionTool] = []
    plain = {flatName(None, t["name"]) for t in tools if isinstance(t, dict)
             and t.get("type") in ("function", "custom") and isinstance(t.get("name"), str)}
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}]: expected an object")
        kind = tool.get("type")
        name = tool.get("name")
        if kind in ("function", "custom") and (not isinstance(name, str) or not name):
            raise BadRequest(f"tools[{i}]: missing required 'name' field")
        if kind == "function":
            assert isinstance(name, str)
            out.append(_function(flatName(None, name), tool, tool.get("parameters")))
        elif kind == "custom":
            assert isinstance(name, str)
            flat = flatName(None, name)
            names[flat] = ToolName(name, custom=True)
            out.append(_function(flat, tool, {
                "type": "object",
                "properties": {"input": {"type": "string", "description": "the raw tool input"}},
                "required": ["input"],
            }))
        elif kind == "namespace" and isinstance(name, str) and isinstance(tool.get("tools"), list):
            for member in tool["tools"]:
                if isinstance(member, dict) and isinstance(member.get("name"), str):
                    flat = flatName(name, member["name"])
                    if flat in plain or flat in names:
                        continue  # a flat function of the same name wins
                    names[flat] = ToolName(member["name"], name)
                    out.append(_function(flat, member, member.get("parameters")))
    return tuple(out)


_TEXTS = frozenset({"input_text", "output_text", "text", "summary_text", "reasoning_text"})


class _Input(Shape):
    """
    Responses' C{input}: messages (C{developer} is C{system}), function and
    custom tool calls merged into the assistant turn before them, their
    outputs as C{role: tool} messages, reasoning items as the next
    assistant turn's thinking.  File inputs and unknown part types are
    refused (Ollama's messages).
    """

    name = "input"
    partKey = ": content"

    def entries(self, value: object) -> list[object]:
        if not isinstance(value, list):
            raise BadRequest("input: expected a string or a list of items")
        return value

    def entry(self, entry: Obj, where: str, walker: Walker) -> None:
        kind = entry.get("type")
        if kind is None and "role" in entry:
            kind = "message"
        if kind == "message":
            role = entry.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(f"{where}: unknown role {role!r}")
            walker.turn("system" if role == "developer" else str(role),
                        _content(entry.get("content"), where), where)
        elif kind == "function_call":
            namespace = entry.get("namespace")
            name = flatName(namespace if isinstance(namespace, str) else None,
                            stringAt(entry.get("name"), f"{where}.name"))
            arguments = entry.get("arguments")
            walker.call(ToolCallRequest(
                stringAt(entry.get("call_id"), f"{where}.call_id"), name,
                arguments if isinstance(arguments, str) and arguments else "{}",
            ))
        elif kind == "custom_tool_call":
            walker.call(ToolCallRequest(
                stringAt(entry.get("call_id"), f"{where}.call_id"),
                flatName(None, stringAt(entry.get("name"), f"{where}.name")),
                codec.dumps({"input": stringAt(entry.get("input"), f"{where}.input")}).decode(),
            ))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = entry.get("output")
            text = output if isinstance(output, str) else "".join(
                walker.turn("tool", _content(output, where), where, add=False).texts)
            walker.append(Message("tool", text,
                                  toolCallId=stringAt(entry.get("call_id"), f"{where}.call_id")))
        elif kind == "reasoning":
            for key in ("content", "summary"):
                parts = entry.get(key)
                if isinstance(parts, list) and parts:
                    walker.thought("".join(walker.turn("assistant", parts, where, add=False).texts))
                    break
        elif kind == "item_reference":
            raise Unsupported("input", f"{where}: item_reference is not supported: this server "
                              "keeps no responses; send the items themselves")
        elif kind in SKIPPED_ITEMS:
            return
        elif kind is None:
            raise BadRequest(f"{where}: input item missing required 'type' field")
        else:
            raise BadRequest(f"{where}: unknown input item type: {codec.dumps(kind).decode()}")

    def part(self, part: Obj, at: str, turn: Turn) -> None:
        kind = part.get("type")
        if kind in _TEXTS:
            text = part.get("text")
            if isinstance(text, str):
                turn.texts.append(text)
        elif kind == "refusal":
            refusal = part.get("refusal")
            if isinstance(refusal, str):
                turn.texts.append(refusal)
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if isinstance(url, str) and url:
                turn.images.append(url)
        elif kind == "input_file":
            raise BadRequest("file inputs are not currently supported")
        else:
            raise BadRequest(f"{at}: unknown content type: {kind}")


def _content(content: object, where: str) -> str | list[object]:
    """
    @return: a message's content: plain text or a list of parts.
    @raise BadRequest: for anything else (Ollama's message).
    """
    if not isinstance(content, (str, list)):
        raise BadRequest(f"{where}: content must be a string or a list of parts")
    return content


_INPUT = _Input()


def parseInput(value: object) -> tuple[Message, ...]:
    """
    C{input} as typed turns (L{_Input}: the dialect's shape for the one
    walker); a string is one user turn.

    @raise BadRequest: with the item's position.
    """
    if isinstance(value, str):
        return (Message("user", value),)
    return walk(value, _INPUT)


def _stateless(body: JSON) -> None:
    """
    @raise Unsupported: for fields that need state the proxy does not keep.
    """
    for field in ("previous_response_id", "conversation"):
        if body.get(field) not in (None, ""):
            raise Unsupported(field, f"{field} is not supported: this server keeps no "
                              "responses; send the whole conversation in input")
    if body.get("background") is True:
        raise Unsupported("background", "background is not supported: responses are not "
                          "stored; use stream instead")


def _think(reasoning: object) -> Think:
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else None
    if effort is None:
        return None
    level = EFFORTS.get(effort) if isinstance(effort, str) else None
    if effort not in EFFORTS:
        raise BadRequest(
            f"invalid reasoning value: {codec.dumps(effort).decode()} (must be \"minimal\", "
            '"low", "medium", "high", "xhigh", "ultra", "max", or "none")'
        )
    return level


def _format(text: object) -> str | JSON | None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        schema: JSON = fmt["schema"]
        return schema
    if fmt.get("type") == "json_object":
        return "json"
    return None


def _toolChoice(choice: object, names: dict[str, ToolName]) -> ToolChoice | None:
    if choice in ("auto", "none", "required"):
        return str(choice)
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        name = choice.get("name")
        if isinstance(name, str) and name:
            return namedChoice(flatName(None, name))
    return None


def parseResponsesRequest(body: object) -> tuple[ChatRequest, ResponsesContext]:
    """
    Validate a C{/v1/responses} body.

    @param body: the decoded body.
    @return: the typed request (C{stream} defaults to false) and the
        context its reply needs.
    @raise BadRequest: for malformed input; L{Unsupported} for stateful
        fields.
    """
    body = requireObject(body)
    _stateless(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    stream = booleanAt(body.get("stream", False), "stream")
    maxTokens = numberField(body, "max_output_tokens", int)
    if maxTokens is not None and maxTokens <= 0:
        raise BadRequest("max_output_tokens must be positive")
    instructions = body.get("instructions")
    if instructions is not None:
        instructions = stringAt(instructions, "instructions")
    messages = parseInput(body.get("input"))
    if instructions:
        messages = (Message("system", instructions), *messages)
    if not messages:
        raise BadRequest("input is required")
    names: dict[str, ToolName] = {}
    tools = parseTools(body.get("tools"), names)
    parallel = body.get("parallel_tool_calls")
    temperature = numberField(body, "temperature", (int, float))
    topP = numberField(body, "top_p", (int, float))
    request = ChatRequest(
        model=model,
        messages=messages,
        stream=stream is True,
        think=_think(body.get("reasoning")),
        sampling=Sampling(maxTokens=maxTokens, temperature=temperature, topP=topP),
        format=_format(body.get("text")),
        tools=tools,
        toolChoice=_toolChoice(body.get("tool_choice"), names),
        parallelToolCalls=parallel if isinstance(parallel, bool) else None,
    )
    reasoning = body.get("reasoning")
    echo: JSON = {
        "instructions": instructions,
        "max_output_tokens": maxTokens,
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "reasoning": reasoning if isinstance(reasoning, dict) else None,
        "temperature": temperature if temperature is not None else 1,
        "text": body.get("text") if isinstance(body.get("text"), dict)
        else {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") if isinstance(body.get("tools"), list) else [],
        "top_p": topP if topP is not None else 1,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
    }
    return request, ResponsesContext(echo, names)
