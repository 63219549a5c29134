# -*- test-case-name: tests.protocol.test_anthropic_request -*-
"""
The Anthropic Messages dialect's request side: C{/v1/messages} and
C{/v1/messages/count_tokens} bodies validated, once, into the hub's
L{ChatRequest}, with the messages real Ollama answers (its
C{middleware/anthropic.go}) where it has one.

Everything that only Anthropic's own servers understand (C{metadata},
C{cache_control}, C{context_management}, server tools such as
C{web_search_*}, C{anthropic-beta} features) is accepted and dropped here:
the typed request has no place for it, so it can never reach an OpenAI
backend, which answers 400 to unknown fields.
"""

from __future__ import annotations

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON, Obj
from ollama_proxy.protocol.conversation import Shape, Turn, walk
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import (
    booleanAt,
    inlineImage,
    listAt,
    numberField,
    requireObject,
    stringList,
)
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
    "low": "low", "medium": "medium", "high": "high", "xhigh": "max", "max": "max",
}
"""C{output_config.effort} as a reasoning level (C{xhigh} and C{max} are
the backend's top level)."""


def _text(blocks: object, where: str) -> str:
    """
    The text of a C{system} value or of a tool result: a string, or text
    blocks joined with blank lines (C{cache_control} and other block fields
    dropped).

    @raise BadRequest: for anything else.
    """
    if isinstance(blocks, str):
        return blocks
    if blocks is None:
        return ""
    if not isinstance(blocks, list):
        raise BadRequest(f"{where}: expected a string or a list of text blocks")
    texts = []
    for block in blocks:
        if not isinstance(block, dict):
            raise BadRequest(f"{where}: expected a string or a list of text blocks")
        text = block.get("text")
        if block.get("type") == "text" and isinstance(text, str):
            texts.append(text)
    return "\n\n".join(texts)


def imageSource(block: Obj, where: str) -> str:
    """
    An C{image} block's source as a URL for OpenAI's C{image_url}.

    @param block: the block.
    @param where: the block's position, for messages.
    @return: a C{data:} URL (base64 sources, strictly decoded) or the
        source's own URL.
    @raise BadRequest: without a usable source.
    """
    source = block.get("source")
    if not isinstance(source, dict):
        raise BadRequest(f"{where}: invalid image source")
    kind = source.get("type")
    url = source.get("url")
    if kind == "url" and isinstance(url, str):
        return url
    if kind != "base64":
        raise BadRequest(
            f"{where}: invalid image source type: {kind}. Only base64 and url images are supported."
        )
    data, mediaType = source.get("data"), source.get("media_type")
    if not isinstance(data, str) or not isinstance(mediaType, str) or not mediaType:
        raise BadRequest(f"{where}: image source needs media_type and data strings")
    return inlineImage(mediaType, data, where)


def _toolResult(block: Obj, where: str, turn: Turn) -> None:
    """
    A C{tool_result} block as a C{role: tool} message, and its images (an
    OpenAI tool message carries text only; the walker adds them as a user
    turn after the results).  C{is_error} is kept as an C{Error:} prefix so
    the model still learns that the tool failed.
    """
    callId = block.get("tool_use_id")
    if not isinstance(callId, str) or not callId:
        raise BadRequest(f"{where}: tool_result block missing required 'tool_use_id' field")
    content = block.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image":
                turn.resultImages.append(imageSource(part, f"{where}.content[{j}]"))
    text = _text(content, f"{where}.content")
    if block.get("is_error") is True and not text.startswith("Error"):
        text = "Error: " + text if text else "Error"
    turn.results.append(Message("tool", text, toolCallId=callId))


class _Messages(Shape):
    """
    Anthropic's C{messages}: a user turn's C{tool_result} blocks become
    C{role: tool} messages placed before the turn's own text; an assistant
    turn's C{tool_use} blocks become its tool calls and its C{thinking}
    block its reasoning.  C{role: system} turns (Claude Code sends one
    mid-conversation) are kept as system messages.  Unknown blocks
    (C{redacted_thinking}, C{server_tool_use}, documents) are skipped.
    An entry is one turn, read by the shape's defaults (the walker's
    L{Shape.entry}: C{user}, C{assistant}, C{system}; text or blocks).
    """

    def part(self, part: Obj, at: str, turn: Turn) -> None:
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequest(f"{at}.text: expected a string")
            turn.texts.append(text)
        elif kind == "image":
            turn.images.append(imageSource(part, at))
        elif kind == "tool_use":
            callId, name = part.get("id"), part.get("name")
            if not isinstance(callId, str) or not callId:
                raise BadRequest(f"{at}: tool_use block missing required 'id' field")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}: tool_use block missing required 'name' field")
            arguments = part.get("input")
            turn.calls.append(ToolCallRequest(
                callId, name,
                arguments if isinstance(arguments, str)
                else codec.dumps(arguments if arguments is not None else {}).decode(),
            ))
        elif kind == "tool_result":
            _toolResult(part, at, turn)
        elif kind == "thinking":
            thinking = part.get("thinking")
            if isinstance(thinking, str):
                turn.thinking.append(thinking)


_MESSAGES = _Messages()


def parseConversation(messages: object) -> tuple[Message, ...]:
    """
    Validate C{messages} into typed turns (L{_Messages}: the dialect's
    shape for the one walker).

    @raise BadRequest: with the position of what is wrong.
    """
    return walk(messages, _MESSAGES)


def parseTools(tools: object) -> tuple[FunctionTool, ...]:
    """
    Anthropic tools (C{name}, C{description}, C{input_schema}) as OpenAI
    function tools.  Server tools (a C{type} such as C{web_search_20250305},
    C{bash_20250124}) run on Anthropic's servers, which the backend is not:
    they are dropped.

    @raise BadRequest: for a tool without a name or with a bad schema.
    """
    out: list[FunctionTool] = []
    for i, tool in enumerate(listAt(tools, "tools")):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}]: expected an object")
        if tool.get("type") not in (None, "custom"):
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}]: tool missing required 'name' field")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise BadRequest(f'invalid input_schema for tool "{name}": expected an object')
        out.append(functionTool(name, schema, tool.get("description")))
    return tuple(out)


def toolChoice(choice: object) -> tuple[ToolChoice | None, bool | None]:
    """
    Anthropic's C{tool_choice} as OpenAI's C{tool_choice} and
    C{parallel_tool_calls} (Ollama ignores it; a backend that takes it does
    better with it).

    @return: C{(tool_choice, parallel_tool_calls)}, C{None} for unset.
    @raise BadRequest: for an unknown type or a C{tool} without a name.
    """
    if choice is None:
        return None, None
    if not isinstance(choice, dict):
        raise BadRequest("tool_choice: expected an object")
    kind = choice.get("type")
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind == "auto":
        return "auto", parallel
    if kind == "any":
        return "required", parallel
    if kind == "none":
        return "none", None
    if kind == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice: type tool needs a name")
        return namedChoice(name), parallel
    raise BadRequest(f"tool_choice.type: expected auto, any, tool or none, got {kind!r}")


def thinkFrom(body: JSON) -> Think:
    """
    C{thinking} and C{output_config.effort} as the hub's reasoning switch:
    C{disabled} is off, an effort is its level, C{enabled} without one is
    on; C{adaptive} (Claude Code) leaves the backend's default.

    @raise BadRequest: for an unknown type or effort.
    """
    thinking = body.get("thinking")
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if thinking is not None and kind not in ("enabled", "disabled", "adaptive"):
        raise BadRequest('thinking.type: expected "enabled", "disabled" or "adaptive"')
    if kind == "disabled":
        return False
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if effort is not None:
        level = EFFORTS.get(str(effort).lower())
        if level is None:
            raise BadRequest(f"output_config.effort: invalid value {effort!r}")
        return level
    return True if kind == "enabled" else None


def parseMessagesRequest(body: object, counting: bool = False) -> ChatRequest:
    """
    Validate a C{/v1/messages} body into a L{ChatRequest}.

    @param body: the decoded body.
    @param counting: a C{count_tokens} body, which has no C{max_tokens}.
    @return: the typed request (C{stream} defaults to false, as Anthropic's).
    @raise BadRequest: with Ollama's message where it has one.
    """
    body = requireObject(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model is required")
    maxTokens = body.get("max_tokens")
    if not counting and (
        not isinstance(maxTokens, int) or isinstance(maxTokens, bool) or maxTokens <= 0
    ):
        raise BadRequest("max_tokens is required and must be positive")
    stream = booleanAt(body.get("stream", False), "stream")
    stop = stringList(body.get("stop_sequences"), "stop_sequences")
    conversation = parseConversation(body.get("messages"))
    system = _text(body.get("system"), "system")
    messages = ((Message("system", system),) if system else ()) + conversation
    choice, parallel = toolChoice(body.get("tool_choice"))
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    return ChatRequest(
        model=model,
        messages=messages,
        stream=stream is True,
        think=thinkFrom(body),
        sampling=Sampling(
            maxTokens=maxTokens if isinstance(maxTokens, int) else None,
            temperature=numberField(body, "temperature", (int, float)),
            topP=numberField(body, "top_p", (int, float)),
            topK=numberField(body, "top_k", int),
            stop=stop,
        ),
        format=schema if isinstance(schema, dict) else None,
        tools=parseTools(body.get("tools")),
        toolChoice=choice,
        parallelToolCalls=parallel,
    )
