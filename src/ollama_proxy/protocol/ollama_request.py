# -*- test-case-name: tests.protocol.test_ollama_request -*-
"""
The Ollama dialect's request side: C{/api/chat} and C{/api/generate}
bodies validated, once, into the hub's typed requests
(L{ollama_proxy.protocol.requests}), with Ollama's own error messages.

C{keep_alive}, C{truncate}, C{shift}, C{template}, C{context} and the
runner options (C{num_ctx}, C{num_gpu}, ...) have no OpenAI equivalent; they
are accepted and not carried.
"""

from __future__ import annotations

from typing import Mapping

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON, Obj
from ollama_proxy.protocol.conversation import Shape, Walker, walk
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import Base64Wording, base64Data, numberField
from ollama_proxy.protocol.requests import (
    THINK_LEVELS,
    ChatRequest,
    Message,
    Sampling,
    TextRequest,
    Think,
    ToolCallRequest,
)


def requireModel(body: Mapping[str, object]) -> str:
    """
    @param body: a request object.
    @return: its non-empty C{model} (or legacy C{name}) string.
    @raise BadRequest: C{model is required} when missing or not a string.
    """
    model = body.get("model") or body.get("name")
    if model is None or model == "":
        raise BadRequest("model is required")
    if not isinstance(model, str):
        raise BadRequest("model must be a string")
    return model


def optionalString(body: Mapping[str, object], key: str) -> str | None:
    """
    @param body: a request object.
    @param key: a field that may be absent or null.
    @return: its string value, or C{None}.
    @raise BadRequest: C{<key> must be a string} for any other type.
    """
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def streamFlag(body: Mapping[str, object]) -> bool:
    """
    Ollama's C{stream} defaults to true when absent.

    @param body: a request object.
    @return: whether to stream.
    @raise BadRequest: if C{stream} is not a boolean or null.
    """
    value = body.get("stream", True)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadRequest("stream must be a boolean")
    return value




def thinkValue(body: Mapping[str, object]) -> Think:
    """
    Validate Ollama's C{think} field.

    @param body: the request object.
    @return: C{None} when absent, else the bool or level string.
    @raise BadRequest: for any other value (Ollama's own message).
    """
    think = body.get("think")
    if think is None or isinstance(think, bool):
        return think
    if isinstance(think, str):
        for level in THINK_LEVELS:
            if think == level:
                return level
    raise BadRequest(
        f"invalid think value: {codec.dumps(think).decode()} "
        '(must be "high", "medium", "low", "max", true, or false)'
    )


OPTION_NUMBER = 'option "{key}" must be of type {kind}'
"""Ollama's wording of an option of the wrong type."""

OLLAMA_IMAGES = Base64Wording(
    notString="images must be base64 strings",
    invalid="invalid image input: images must be base64 encoded",
    empty="invalid image input: image is empty",
)
"""Ollama's wording of a bad C{images} entry."""


_IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniffImageType(raw: bytes) -> str:
    """
    Guess an image's MIME type from its magic bytes.

    @param raw: the decoded image bytes (only the first few are read).
    @return: the MIME type; C{image/jpeg} when unknown, the most common
        camera/web format and what most backends assume.
    """
    if raw[:4] == b"RIFF" and raw[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _IMAGE_MAGIC:
        if raw.startswith(magic):
            return mime
    return "image/jpeg"


def imageURL(image: object) -> str:
    """
    Turn one Ollama C{images} entry (raw base64) into a C{data:} URL.

    The whole string is decoded strictly, as Ollama's Go JSON decoder does
    for C{[]byte}: standard alphabet, padding required, line breaks
    tolerated (some clients wrap base64 at 76 columns).  A bad image is the
    client's mistake and must be a 400 here, not a confusing error from the
    backend later.

    @param image: the base64 string.
    @return: the C{data:} URL, with the type sniffed from the bytes.
    @raise BadRequest: if C{image} is empty or not valid base64.
    """
    if isinstance(image, str):
        if image.startswith("data:"):
            # Lenient: some clients send data URLs although Ollama does not.
            return image
        if "\n" in image or "\r" in image:
            image = image.replace("\r", "").replace("\n", "")
    raw = base64Data(image, wording=OLLAMA_IMAGES)
    return f"data:{sniffImageType(raw[:16])};base64,{image}"


def _argumentsString(arguments: object) -> str:
    """
    Tool-call arguments as JSON text; Ollama sends objects.

    @param arguments: an object, a string, or nothing.
    @return: a JSON string.
    """
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return "{}"
    return codec.dumps(arguments).decode("utf-8")


class _Messages(Shape):
    """
    Ollama's C{messages}: each entry one message, its text a string, its
    images a list of raw base64, an assistant's tool calls in OpenAI's
    shape with object arguments; Ollama's own words for what is wrong.
    """

    notEntry = "{where} must be an object"

    def entries(self, value: object) -> list[object]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadRequest("messages must be a list")
        return value

    def entry(self, entry: Obj, where: str, walker: Walker) -> None:
        role = entry.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"{where}.role must be a non-empty string")
        role = role.lower()
        content = entry.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"{where}.content must be a string")
        images: tuple[str, ...] = ()
        raw = entry.get("images")
        if raw:
            if not isinstance(raw, list):
                raise BadRequest(f"{where}.images must be a list")
            images = tuple(imageURL(image) for image in raw)
        toolCalls = entry.get("tool_calls")
        calls = _toolCalls(toolCalls, where) if role == "assistant" and toolCalls else ()
        toolCallId = entry.get("tool_call_id")
        toolName = entry.get("tool_name") or entry.get("name")
        thinking = entry.get("thinking")
        walker.messages.append(Message(
            role,
            content,
            images,
            calls,
            toolCallId if role == "tool" and isinstance(toolCallId, str) and toolCallId else None,
            toolName if role == "tool" and isinstance(toolName, str) else None,
            thinking if role == "assistant" and isinstance(thinking, str) and thinking else None,
        ))


def _toolCalls(toolCalls: object, where: str) -> tuple[ToolCallRequest, ...]:
    """
    An assistant message's C{tool_calls}.

    @raise BadRequest: for anything but a list of calls with a function
        and its name.
    """
    if not isinstance(toolCalls, list):
        raise BadRequest(f"{where}.tool_calls must be a list")
    calls = []
    for callIndex, call in enumerate(toolCalls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(function, dict):
            raise BadRequest(f"{where}.tool_calls[{callIndex}] must have a function")
        name = function.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"{where}.tool_calls[{callIndex}].function.name must be a string")
        callId = call.get("id")
        calls.append(ToolCallRequest(
            callId if isinstance(callId, str) and callId else None,
            name,
            _argumentsString(function.get("arguments")),
        ))
    return tuple(calls)


_MESSAGES = _Messages()


def parseMessages(messages: object) -> tuple[Message, ...]:
    """
    Validate an Ollama C{messages} list (L{_Messages}: the dialect's shape
    for the one walker).

    @param messages: the decoded C{messages} value.
    @return: the typed messages.
    @raise BadRequest: for anything that is not a list of message objects,
        naming the offending field.
    """
    return walk(messages, _MESSAGES)


def parseOptions(options: object) -> Sampling:
    """
    Validate Ollama's C{options}, as Ollama does: every known option is
    type-checked, even those the backend will not receive.

    @param options: the decoded C{options} value.
    @return: the sampling options with an OpenAI-style meaning.
    @raise BadRequest: if C{options} is not an object or a value has the
        wrong type.
    """
    if options is None:
        return Sampling()
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    numPredict = numberField(options, "num_predict", int, wording=OPTION_NUMBER)
    numbers = {
        key: numberField(options, key, (int, float), wording=OPTION_NUMBER)
        for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty")
    }
    seed = numberField(options, "seed", int, wording=OPTION_NUMBER)
    stop = options.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest('option "stop" must be of type array of strings')
    return Sampling(
        # -1 (unlimited) and -2 (fill the context) have no OpenAI spelling.
        maxTokens=numPredict if numPredict is not None and numPredict > 0 else None,
        temperature=numbers["temperature"],
        topP=numbers["top_p"],
        presencePenalty=numbers["presence_penalty"],
        frequencyPenalty=numbers["frequency_penalty"],
        seed=seed if seed is not None and seed >= 0 else None,
        stop=tuple(stop or ()),
        topK=numberField(options, "top_k", int, wording=OPTION_NUMBER),
        minP=numberField(options, "min_p", (int, float), wording=OPTION_NUMBER),
        repeatPenalty=numberField(options, "repeat_penalty", (int, float), wording=OPTION_NUMBER),
    )


def formatValue(fmt: object) -> str | JSON | None:
    """
    Validate Ollama's C{format}.

    @param fmt: C{"json"}, a JSON schema object, or empty.
    @return: C{"json"}, the schema, or C{None} for free text.
    @raise BadRequest: for any other value.
    """
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return "json"
    if isinstance(fmt, dict):
        return fmt
    raise BadRequest('format must be "json" or a JSON schema object')


def logprobsValue(body: Mapping[str, object]) -> tuple[bool, int | None]:
    """
    Validate Ollama's C{logprobs}/C{top_logprobs}.

    @param body: the request object.
    @return: whether log-probabilities are wanted, and how many
        alternatives.
    @raise BadRequest: for wrong types, or C{top_logprobs} outside 0..20
        (Ollama's own check and message).
    """
    logprobs = body.get("logprobs")
    top = body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise BadRequest("logprobs must be a boolean")
    if top is not None:
        if not isinstance(top, int) or isinstance(top, bool):
            raise BadRequest("top_logprobs must be an integer")
        if not 0 <= top <= 20:
            raise BadRequest("top_logprobs must be between 0 and 20")
    return bool(logprobs), top


def _chat(body: Mapping[str, object], messages: tuple[Message, ...], stream: bool) -> ChatRequest:
    """
    The fields chat and generate share: options, format, tools, think,
    logprobs.
    """
    sampling = parseOptions(body.get("options"))
    fmt = formatValue(body.get("format"))
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list")
    think = thinkValue(body)
    logprobs, top = logprobsValue(body)
    return ChatRequest(
        model=requireModel(body),
        messages=messages,
        stream=stream,
        think=think,
        sampling=sampling,
        format=fmt,
        tools=tuple(tools),
        logprobs=logprobs,
        topLogprobs=top,
    )


def withDefaults(body: Mapping[str, object], defaults: Mapping[str, object]) -> Mapping[str, object]:
    """
    Merge a model's configured default options into a request (the
    client's own options win).

    @param body: the decoded Ollama request.
    @param defaults: the model's default options.
    @return: C{body}, or a copy with the merged C{options}.
    """
    if not defaults:
        return body
    options = body.get("options")
    merged = dict(defaults)
    if isinstance(options, dict):
        merged.update(options)
    return {**body, "options": merged}


def parseChat(body: Mapping[str, object], defaults: Mapping[str, object] = {}) -> ChatRequest:
    """
    Validate an Ollama C{/api/chat} body.

    @param body: the request object.
    @param defaults: the model's configured default options.
    @return: the typed request.
    @raise BadRequest: for malformed fields.
    """
    body = withDefaults(body, defaults)
    return _chat(body, parseMessages(body.get("messages")), streamFlag(body))


def parseGenerate(body: Mapping[str, object], defaults: Mapping[str, object] = {}) -> ChatRequest:
    """
    Validate an Ollama C{/api/generate} body as a one-turn chat: C{system}
    and C{prompt} (with C{images}).

    @param body: the request object.
    @param defaults: the model's configured default options.
    @return: the typed request.
    @raise BadRequest: for malformed fields.
    """
    body = withDefaults(body, defaults)
    prompt = optionalString(body, "prompt")
    system = optionalString(body, "system")
    user: Obj = {"role": "user", "content": prompt or ""}
    if body.get("images"):
        if not isinstance(body["images"], list):
            # Checked here so the message names the generate field, not the
            # chat message it becomes.
            raise BadRequest("images must be a list of base64 strings")
        user["images"] = body["images"]
    messages = ([{"role": "system", "content": system}] if system else []) + [user]
    return _chat(body, parseMessages(messages), streamFlag(body))


def wantsCompletion(body: Mapping[str, object]) -> bool:
    """
    @param body: a C{/api/generate} request object.
    @return: whether it needs C{/v1/completions} (C{raw: true} or a
        non-empty C{suffix}).
    """
    return body.get("raw") is True or bool(body.get("suffix"))


def parseTextCompletion(body: Mapping[str, object], defaults: Mapping[str, object] = {}) -> TextRequest:
    """
    Validate a raw or fill-in-the-middle C{/api/generate} body.

    @param body: the request object.
    @param defaults: the model's configured default options.
    @return: the typed request.
    @raise BadRequest: for malformed fields, and Ollama's C{raw mode does not
        support template, system, or context}.
    """
    body = withDefaults(body, defaults)
    prompt = optionalString(body, "prompt")
    suffix = optionalString(body, "suffix")
    if body.get("raw") is True and (
        body.get("template") or body.get("system") or body.get("context")
    ):
        raise BadRequest("raw mode does not support template, system, or context")
    return TextRequest(
        requireModel(body), prompt or "", suffix or None, streamFlag(body),
        parseOptions(body.get("options")),
    )
