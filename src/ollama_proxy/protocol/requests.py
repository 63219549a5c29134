# -*- test-case-name: tests.protocol.test_requests -*-
"""
The typed requests of the hub: what every client dialect's parser produces
(validated once, frozen), and what the OpenAI request builder
(L{ollama_proxy.protocol.openai_request}) reads.

Nothing here knows a wire format.  Tools travel in OpenAI's function shape
(C{{"type": "function", "function": {...}}}), which Ollama clients already
send and other dialects convert to; they are forwarded as given.
"""

from __future__ import annotations

from typing import Literal, TypedDict, Union

import attrs

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON

Think = Union[bool, Literal["low", "medium", "high", "max"], None]
"""Reasoning: off, on, a level, or unspecified."""

THINK_LEVELS: tuple[Literal["low", "medium", "high", "max"], ...] = ("low", "medium", "high", "max")
"""The reasoning levels a client may ask for."""


class Function(TypedDict, total=False):
    """A function tool's declaration, in OpenAI's shape."""

    name: str
    parameters: object
    description: str
    strict: bool


class FunctionTool(TypedDict):
    """A tool the agent dialects declare, in OpenAI's shape."""

    type: Literal["function"]
    function: Function


class ChoiceName(TypedDict):
    """The function a named C{tool_choice} names."""

    name: str


class NamedChoice(TypedDict):
    """OpenAI's C{tool_choice} naming one function."""

    type: Literal["function"]
    function: ChoiceName


ToolChoice = Union[str, NamedChoice]
"""OpenAI's C{tool_choice}: C{auto}, C{none}, C{required}, or one function."""


def functionTool(name: str, parameters: object, description: object = None,
                 strict: object = None) -> FunctionTool:
    """
    A function tool in OpenAI's shape, as every agent dialect declares its
    tools to the backend.

    @param description: kept when a string.
    @param strict: kept when a boolean.
    """
    function: Function = {"name": name, "parameters": parameters}
    if isinstance(description, str):
        function["description"] = description
    if isinstance(strict, bool):
        function["strict"] = strict
    return {"type": "function", "function": function}


def namedChoice(name: str) -> NamedChoice:
    """
    @return: the C{tool_choice} that names function C{name}.
    """
    return {"type": "function", "function": {"name": name}}


@attrs.frozen
class ToolCallRequest:
    """
    A tool call the assistant made earlier in the conversation.

    @ivar id: the call's id, if the client kept it.
    @ivar name: the function name.
    @ivar arguments: the arguments as JSON text.
    """

    id: str | None
    name: str
    arguments: str


@attrs.frozen
class Message:
    """
    One turn of the conversation.

    @ivar role: C{system}, C{user}, C{assistant}, C{tool} (lower case).
    @ivar content: its text.
    @ivar images: images as URLs (C{data:} URLs for inline images).
    @ivar toolCalls: an assistant turn's tool calls.
    @ivar toolCallId: a tool result's call id, if the client gave one.
    @ivar toolName: a tool result's function name, if the client gave one.
    @ivar thinking: an assistant turn's reasoning, if the client kept it.
    """

    role: str
    content: str
    images: tuple[str, ...] = ()
    toolCalls: tuple[ToolCallRequest, ...] = ()
    toolCallId: str | None = None
    toolName: str | None = None
    thinking: str | None = None


@attrs.frozen
class Sampling:
    """
    Generation options (C{None}: not set).

    C{topK}, C{minP} and C{repeatPenalty} are not OpenAI's; the builder
    sends them only to backends that take them (see
    L{ollama_proxy.protocol.flavors.Flavor}).
    """

    maxTokens: int | None = None
    temperature: float | None = None
    topP: float | None = None
    presencePenalty: float | None = None
    frequencyPenalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    topK: int | None = None
    minP: float | None = None
    repeatPenalty: float | None = None


@attrs.frozen
class ChatRequest:
    """
    A chat to generate, in any dialect.

    @ivar model: the model name as the client sent it.
    @ivar messages: the conversation.
    @ivar stream: whether to stream the reply.
    @ivar think: reasoning on, off, a level, or unspecified.
    @ivar sampling: generation options.
    @ivar format: C{"json"}, a JSON schema, or C{None} for free text.
    @ivar tools: OpenAI-shaped tool definitions, forwarded as given.
    @ivar toolChoice: OpenAI's C{tool_choice} value, if the client set one.
    @ivar parallelToolCalls: OpenAI's C{parallel_tool_calls}, if the client
        set it (Anthropic's C{disable_parallel_tool_use}, Responses'
        C{parallel_tool_calls}).
    @ivar logprobs: whether token log-probabilities are wanted.
    @ivar topLogprobs: how many alternatives per token (0..20), if any.
    """

    model: str
    messages: tuple[Message, ...]
    stream: bool = True
    think: Think = None
    sampling: Sampling = Sampling()
    format: str | JSON | None = None
    tools: tuple[object, ...] = ()
    toolChoice: ToolChoice | None = None
    parallelToolCalls: bool | None = None
    logprobs: bool = False
    topLogprobs: int | None = None


@attrs.frozen
class TextRequest:
    """
    A raw or fill-in-the-middle text completion (C{/v1/completions}).

    @ivar model: the model name as the client sent it.
    @ivar prompt: the text to continue.
    @ivar suffix: the text after the gap, for fill-in-the-middle.
    @ivar stream: whether to stream.
    @ivar sampling: generation options.
    """

    model: str
    prompt: str
    suffix: str | None
    stream: bool = True
    sampling: Sampling = Sampling()


def estimateTokens(request: ChatRequest) -> int:
    """
    A rough input token count: characters / 4 over the text, reasoning,
    tool calls and tool definitions, as Ollama's own estimate does.  Used
    for Anthropic's C{count_tokens} and C{message_start} event and for
    Gemini's C{countTokens}, where the backend's real count is not known
    yet: one estimate, so every dialect counts alike.

    @return: at least 1.
    """
    chars = 0
    for message in request.messages:
        chars += len(message.role) + len(message.content) + len(message.thinking or "")
        for call in message.toolCalls:
            chars += len(call.name) + len(call.arguments)
    if request.tools:
        chars += len(codec.dumps(list(request.tools)))
    return max(1, chars // 4)
