# -*- test-case-name: tests.protocol.test_openai_request -*-
"""
The hub's typed requests as OpenAI request bodies: C{/v1/chat/completions}
for L{ChatRequest}s, C{/v1/completions} for L{TextRequest}s, spelled for
the backend's L{Flavor}.

Bodies are built field by field from the typed request, never passed
through, so nothing a client sends reaches the backend unless it has a
meaning there.
"""

from __future__ import annotations

from typing import Literal, Sequence, TypedDict, Union

import attrs

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.flavors import GENERIC, Flavor
from ollama_proxy.protocol.requests import (
    ChatRequest,
    Message,
    Sampling,
    TextRequest,
    Think,
    ToolChoice,
)

class FunctionCall(TypedDict):
    """An assistant message's call: the function and its JSON arguments."""

    name: str
    arguments: str


class ToolCall(TypedDict):
    """One of an assistant message's C{tool_calls}."""

    id: str
    type: Literal["function"]
    function: FunctionCall


class ImageURL(TypedDict):
    """Where an C{image_url} part's image is."""

    url: str


class TextPart(TypedDict):
    """A C{text} content part."""

    type: Literal["text"]
    text: str


class ImagePart(TypedDict):
    """An C{image_url} content part."""

    type: Literal["image_url"]
    image_url: ImageURL


class ChatMessage(TypedDict, total=False):
    """One OpenAI chat message, as the builder writes it."""

    role: str
    content: Union[str, list[Union[TextPart, ImagePart]], None]
    tool_calls: list[ToolCall]
    tool_call_id: str
    reasoning_content: str


class StreamOptions(TypedDict):
    """A stream's options: the usage in its last chunk."""

    include_usage: bool


class Options(TypedDict, total=False):
    """
    The fields sampling and reasoning add to either body, each spelled for
    the backend's flavor.
    """

    max_tokens: int
    max_completion_tokens: int
    temperature: float
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    stop: list[str]
    top_k: int
    min_p: float
    repetition_penalty: float
    reasoning_effort: str
    chat_template_kwargs: dict[str, bool]
    reasoning: dict[str, Union[str, bool]]
    thinking: dict[str, str]


class ChatBody(Options, total=False):
    """
    A C{/v1/chat/completions} body: what L{chatBody} hands the web layer,
    every field named (the model's configured C{extra} fields are added
    there, as an open object).
    """

    model: str
    messages: list[ChatMessage]
    stream: bool
    stream_options: StreamOptions
    response_format: JSON
    tools: list[object]
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    logprobs: bool
    top_logprobs: int


class TextBody(Options, total=False):
    """A C{/v1/completions} body (L{textBody})."""

    model: str
    prompt: str
    suffix: str
    stream: bool
    stream_options: StreamOptions


EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}
"""Reasoning levels as C{reasoning_effort}: C{max} is C{high}, the highest
level every reasoning backend accepts."""


def _toolCallId(messageIndex: int, callIndex: int) -> str:
    """
    A stable synthetic id for a tool call that came without one.

    @param messageIndex: the position of the assistant message.
    @param callIndex: the position of the call in that message.
    """
    return f"call_{messageIndex}_{callIndex}"


def messagesToOpenAI(messages: Sequence[Message], flavor: Flavor = GENERIC) -> list[ChatMessage]:
    """
    The conversation as OpenAI chat messages.

    Images become C{image_url} parts, assistant tool calls get ids (a
    stable synthetic one when the client kept none), and tool results are
    paired with those ids (the given C{tool_call_id}, else by tool name,
    else in order).  Assistant C{thinking} is dropped (most backends reject
    or ignore it) unless the flavor names a field for it (DeepSeek's
    C{reasoning_content}).

    @param messages: the typed messages.
    @param flavor: the backend's flavor.
    @return: the OpenAI messages.
    """
    out: list[ChatMessage] = []
    pending: list[tuple[str, str]] = []  # (id, name) of unanswered tool calls
    for index, message in enumerate(messages):
        translated: ChatMessage = {"role": message.role}
        if message.images:
            parts: list[TextPart | ImagePart] = (
                [{"type": "text", "text": message.content}] if message.content else []
            )
            parts.extend({"type": "image_url", "image_url": {"url": url}} for url in message.images)
            translated["content"] = parts
        else:
            translated["content"] = message.content
        if message.toolCalls:
            calls: list[ToolCall] = []
            pending = []
            for callIndex, call in enumerate(message.toolCalls):
                callId = call.id or _toolCallId(index, callIndex)
                calls.append(
                    {
                        "id": callId,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                )
                pending.append((callId, call.name))
            translated["tool_calls"] = calls
            if not message.content:
                translated["content"] = None
        elif message.role == "tool":
            translated["tool_call_id"] = _pairToolResult(message, pending, index)
        if message.role == "assistant" and flavor.historyThinking and message.thinking:
            translated[flavor.historyThinking] = message.thinking
        out.append(translated)
    return out


def _pairToolResult(message: Message, pending: list[tuple[str, str]], index: int) -> str:
    """
    Choose the C{tool_call_id} for a tool-result message.

    @param message: the C{role: tool} message.
    @param pending: unanswered C{(id, name)} calls; the chosen one is removed.
    @param index: the message position, for a synthetic id of last resort.
    @return: the id.
    """
    given = message.toolCallId
    if given:
        for i, (callId, _) in enumerate(pending):
            if callId == given:
                del pending[i]
                break
        return given
    name = message.toolName
    for i, (callId, callName) in enumerate(pending):
        if callName == name:
            del pending[i]
            return callId
    if pending:
        return pending.pop(0)[0]
    return f"call_{index}"


def samplingToOpenAI(sampling: Sampling, target: Options, flavor: Flavor = GENERIC) -> None:
    """
    Copy the generation options into C{target}.

    C{top_k}, C{min_p} and C{repeat_penalty} (as C{repetition_penalty}) go
    only to flavors that accept them.

    @param sampling: the options.
    @param target: the OpenAI request being built; updated in place.
    @param flavor: the backend's flavor.
    """
    if sampling.maxTokens is not None:
        target[flavor.maxTokensKey] = sampling.maxTokens
    if sampling.temperature is not None:
        target["temperature"] = sampling.temperature
    if sampling.topP is not None:
        target["top_p"] = sampling.topP
    if sampling.presencePenalty is not None:
        target["presence_penalty"] = sampling.presencePenalty
    if sampling.frequencyPenalty is not None:
        target["frequency_penalty"] = sampling.frequencyPenalty
    if sampling.seed is not None:
        target["seed"] = sampling.seed
    if sampling.stop:
        target["stop"] = list(sampling.stop)
    if flavor.samplingExtras:
        if sampling.topK is not None:
            target["top_k"] = sampling.topK
        if sampling.minP is not None:
            target["min_p"] = sampling.minP
        if sampling.repeatPenalty is not None:
            target["repetition_penalty"] = sampling.repeatPenalty


def thinkToOpenAI(think: Think, target: Options, flavor: Flavor = GENERIC) -> None:
    """
    Spell Ollama's C{think} the way the backend understands it.

    C{true} and the levels become C{reasoning_effort} (C{true} is Ollama's
    C{"medium"}; C{"max"} becomes C{"high"}, the highest level every
    reasoning backend accepts).  C{false} is sent only where there is a
    switch that non-reasoning models tolerate (vLLM's chat template
    argument, OpenRouter's C{reasoning.enabled}, DeepSeek's C{thinking}
    type); elsewhere it is not forwarded and the reply's reasoning is
    dropped instead.

    @param think: the validated value.
    @param target: the OpenAI request being built; updated in place.
    @param flavor: the backend's flavor.
    """
    if think is None:
        return
    effort = EFFORT[think] if isinstance(think, str) else None
    if flavor.thinkStyle == "vllm":
        target["chat_template_kwargs"] = {"enable_thinking": think is not False}
        if effort is not None:
            target["reasoning_effort"] = effort
    elif flavor.thinkStyle == "openrouter":
        target["reasoning"] = (
            {"effort": effort} if effort is not None else {"enabled": think is True}
        )
    elif flavor.thinkStyle == "deepseek":
        target["thinking"] = {"type": "disabled" if think is False else "enabled"}
        if effort is not None:
            target["reasoning_effort"] = effort
    elif think is True:
        target["reasoning_effort"] = "medium"
    elif effort is not None:
        target["reasoning_effort"] = effort


def formatToOpenAI(fmt: str | JSON | None) -> JSON | None:
    """
    @param fmt: C{"json"}, a JSON schema, or C{None}.
    @return: the C{response_format} value, or C{None} for free text.
    """
    if fmt is None:
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}


def chatBody(request: ChatRequest, backendId: str, flavor: Flavor = GENERIC) -> ChatBody:
    """
    The C{/v1/chat/completions} body for a chat.

    @param request: the typed request.
    @param backendId: the upstream model id.
    @param flavor: the backend's flavor.
    @return: the body; a stream asks for usage in its last chunk.
    """
    body: ChatBody = {
        "model": backendId,
        "messages": messagesToOpenAI(request.messages, flavor),
        "stream": request.stream,
    }
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    samplingToOpenAI(request.sampling, body, flavor)
    responseFormat = formatToOpenAI(request.format)
    if responseFormat is not None:
        body["response_format"] = responseFormat
    if request.tools:
        body["tools"] = list(request.tools)
    if request.toolChoice is not None:
        body["tool_choice"] = request.toolChoice
    if request.parallelToolCalls is not None and request.tools:
        body["parallel_tool_calls"] = request.parallelToolCalls
    thinkToOpenAI(request.think, body, flavor)
    if request.logprobs:
        # OpenAI rejects top_logprobs without logprobs, and Ollama ignores it
        # then, so it only goes with logprobs: true.
        body["logprobs"] = True
        if request.topLogprobs:
            body["top_logprobs"] = request.topLogprobs
    return body


def textBody(request: TextRequest, backendId: str, flavor: Flavor = GENERIC) -> TextBody:
    """
    The C{/v1/completions} body for a raw or fill-in-the-middle prompt.

    @param request: the typed request.
    @param backendId: the upstream model id.
    @param flavor: the backend's flavor (sampling extras); the legacy route
        only knows C{max_tokens}, whatever the flavor uses for chat.
    @return: the body.
    """
    body: TextBody = {"model": backendId, "prompt": request.prompt, "stream": request.stream}
    if request.suffix:
        body["suffix"] = request.suffix
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    samplingToOpenAI(request.sampling, body, attrs.evolve(flavor, maxTokensKey="max_tokens"))
    return body
