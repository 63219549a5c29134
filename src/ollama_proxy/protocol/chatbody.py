"""
TODO
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.flavors import GENERIC, SAMPLING_EXTRAS, Flavor
from ollama_proxy.protocol.requests import (
    _THINK_EFFORT,
    _number,
    optionalString,
    thinkValue,
)

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


def imagePart(image: Any) -> JSON:
    """
    Turn one Ollama C{images} entry (raw base64) into an OpenAI content part.

    The whole string is decoded strictly, as Ollama's Go JSON decoder does
    for C{[]byte}: standard alphabet, padding required, line breaks
    tolerated (some clients wrap base64 at 76 columns).  A bad image is the
    client's mistake and must be a 400 here, not a confusing error from the
    backend later.

    @param image: the base64 string.
    @return: an C{image_url} part with a C{data:} URL.
    @raise BadRequest: if C{image} is empty or not valid base64.
    """
    if not isinstance(image, str):
        raise BadRequest("images must be base64 strings")
    if image.startswith("data:"):
        # Lenient: some clients send data URLs although Ollama does not.
        return {"type": "image_url", "image_url": {"url": image}}
    if "\n" in image or "\r" in image:
        image = image.replace("\r", "").replace("\n", "")
    try:
        raw = base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("invalid image input: images must be base64 encoded") from None
    if not raw:
        raise BadRequest("invalid image input: image is empty")
    return {
        "type": "image_url",
        "image_url": {"url": f"data:{sniffImageType(raw[:16])};base64,{image}"},
    }


def _toolCallId(messageIndex: int, callIndex: int) -> str:
    """
    A stable synthetic id for a tool call that came without one.

    @param messageIndex: the position of the assistant message.
    @param callIndex: the position of the call in that message.
    """
    return f"call_{messageIndex}_{callIndex}"


def _argumentsString(arguments: Any) -> str:
    """
    OpenAI wants tool-call arguments as a JSON string; Ollama sends objects.

    @param arguments: an object, a string, or nothing.
    @return: a JSON string.
    """
    if isinstance(arguments, str):
        return arguments
    if arguments is None:
        return "{}"
    return codec.dumps(arguments).decode("utf-8")


def messagesToOpenAI(messages: Any, flavor: Flavor = GENERIC) -> list[JSON]:
    """
    Translate an Ollama C{messages} list to OpenAI chat messages.

    Images become C{image_url} parts, assistant tool calls get string
    arguments and ids, and tool results are paired with those ids (the given
    C{tool_call_id}, else by C{tool_name}, else in order).  Assistant
    C{thinking} is dropped (most backends reject or ignore it) unless the
    flavor names a field for it (DeepSeek's C{reasoning_content}).

    @param messages: the decoded C{messages} value.
    @param flavor: the backend's flavor.
    @return: the OpenAI messages.
    @raise BadRequest: for anything that is not a list of message objects.
    """
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    out: list[JSON] = []
    pending: list[tuple[str, str]] = []  # (id, name) of unanswered tool calls
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{index}] must be an object")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise BadRequest(f"messages[{index}].role must be a non-empty string")
        role = role.lower()
        content = message.get("content")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BadRequest(f"messages[{index}].content must be a string")
        translated: JSON = {"role": role}
        images = message.get("images")
        if images:
            if not isinstance(images, list):
                raise BadRequest(f"messages[{index}].images must be a list")
            parts: list[JSON] = [{"type": "text", "text": content}] if content else []
            parts.extend(imagePart(image) for image in images)
            translated["content"] = parts
        else:
            translated["content"] = content
        toolCalls = message.get("tool_calls")
        if role == "assistant" and toolCalls:
            if not isinstance(toolCalls, list):
                raise BadRequest(f"messages[{index}].tool_calls must be a list")
            calls = []
            pending = []
            for callIndex, call in enumerate(toolCalls):
                if not isinstance(call, dict) or not isinstance(
                    call.get("function"), dict
                ):
                    raise BadRequest(
                        f"messages[{index}].tool_calls[{callIndex}] must have a function"
                    )
                function = call["function"]
                name = function.get("name")
                if not isinstance(name, str):
                    raise BadRequest(
                        f"messages[{index}].tool_calls[{callIndex}].function.name must be a string"
                    )
                callId = call.get("id")
                if not isinstance(callId, str) or not callId:
                    callId = _toolCallId(index, callIndex)
                calls.append(
                    {
                        "id": callId,
                        "type": "function",
                        "function": {
                            "name": name,
                            "arguments": _argumentsString(function.get("arguments")),
                        },
                    }
                )
                pending.append((callId, name))
            translated["tool_calls"] = calls
            if not content:
                translated["content"] = None
        elif role == "tool":
            translated["tool_call_id"] = _pairToolResult(message, pending, index)
        if role == "assistant" and flavor.historyThinking:
            thinking = message.get("thinking")
            if isinstance(thinking, str) and thinking:
                translated[flavor.historyThinking] = thinking
        out.append(translated)
    return out


def _pairToolResult(
    message: JSON, pending: list[tuple[str, str]], index: int
) -> str:
    """
    Choose the C{tool_call_id} for an Ollama tool-result message.

    @param message: the C{role: tool} message.
    @param pending: unanswered C{(id, name)} calls; the chosen one is removed.
    @param index: the message position, for a synthetic id of last resort.
    @return: the id.
    """
    given = message.get("tool_call_id")
    if isinstance(given, str) and given:
        for i, (callId, _) in enumerate(pending):
            if callId == given:
                del pending[i]
                break
        return given
    name = message.get("tool_name") or message.get("name")
    for i, (callId, callName) in enumerate(pending):
        if callName == name:
            del pending[i]
            return callId
    if pending:
        return pending.pop(0)[0]
    return f"call_{index}"


def optionsToOpenAI(options: Any, target: JSON, flavor: Flavor = GENERIC) -> None:
    """
    Copy the Ollama C{options} that have an OpenAI equivalent into C{target}.

    C{top_k}, C{min_p} and C{repeat_penalty} (as C{repetition_penalty}) go
    only to flavors that accept them, but are type-checked for every
    backend, as Ollama does.  Runner options (C{num_ctx}, C{num_gpu},
    C{num_thread}, ...) and the other sampling options (C{typical_p},
    C{repeat_last_n}, C{mirostat}, ...) have no equivalent: they are
    accepted and not forwarded.

    @param options: the decoded C{options} value.
    @param target: the OpenAI request being built; updated in place.
    @param flavor: the backend's flavor.
    @raise BadRequest: if C{options} is not an object or a value has the
        wrong type.
    """
    if options is None:
        return
    if not isinstance(options, dict):
        raise BadRequest("options must be an object")
    numPredict = _number(options, "num_predict", int)
    if numPredict is not None and numPredict > 0:
        # -1 (unlimited) and -2 (fill the context) have no OpenAI spelling.
        target[flavor.maxTokensKey] = numPredict
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = _number(options, key, (int, float))
        if value is not None:
            target[key] = value
    seed = _number(options, "seed", int)
    if seed is not None and seed >= 0:
        target["seed"] = seed
    stop = options.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest('option "stop" must be of type array of strings')
        if stop:
            target["stop"] = stop
    for key, field, kind in SAMPLING_EXTRAS:
        value = _number(options, key, kind)
        if value is not None and flavor.samplingExtras:
            target[field] = value


def thinkToOpenAI(think: bool | str | None, target: JSON, flavor: Flavor = GENERIC) -> None:
    """
    Spell Ollama's C{think} the way the backend understands it.

    C{true} and the levels become C{reasoning_effort} (C{true} is Ollama's
    C{"medium"}; C{"max"} becomes C{"high"}, the highest level every
    reasoning backend accepts).  C{false} is sent only where there is a
    switch that non-reasoning models tolerate (vLLM's chat template
    argument, OpenRouter's C{reasoning.enabled}, DeepSeek's C{thinking}
    type); elsewhere it is not forwarded and the reply's reasoning is
    dropped instead.

    @param think: the validated value from L{thinkValue}.
    @param target: the OpenAI request being built; updated in place.
    @param flavor: the backend's flavor.
    """
    if think is None:
        return
    effort = _THINK_EFFORT[think] if isinstance(think, str) else None
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


def logprobsToOpenAI(body: JSON, target: JSON) -> None:
    """
    Forward Ollama's C{logprobs}/C{top_logprobs}.

    OpenAI rejects C{top_logprobs} without C{logprobs}, and Ollama ignores
    it then, so it is only sent together with C{logprobs: true}.

    @param body: the Ollama request object.
    @param target: the OpenAI request being built; updated in place.
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
    if logprobs:
        target["logprobs"] = True
        if top:
            target["top_logprobs"] = top


def formatToOpenAI(fmt: Any) -> JSON | None:
    """
    Map Ollama's C{format} to OpenAI's C{response_format}.

    @param fmt: C{"json"}, a JSON schema object, or empty.
    @return: the C{response_format} value, or C{None} for free text.
    @raise BadRequest: for any other value.
    """
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": fmt},
        }
    raise BadRequest('format must be "json" or a JSON schema object')


def chatRequestToOpenAI(
    body: JSON, backendId: str, stream: bool, flavor: Flavor = GENERIC
) -> JSON:
    """
    Translate an Ollama C{/api/chat} body to an OpenAI chat request.

    @param body: the validated request object.
    @param backendId: the upstream model id (see L{backendModel}).
    @param stream: whether to stream (Ollama default true).
    @param flavor: the backend's flavor.
    @return: the C{/v1/chat/completions} body.
    @raise BadRequest: for malformed fields.
    """
    request: JSON = {
        "model": backendId,
        "messages": messagesToOpenAI(body.get("messages"), flavor),
        "stream": stream,
    }
    return _commonRequestFields(body, request, stream, flavor)


def generateRequestToOpenAI(
    body: JSON, backendId: str, stream: bool, flavor: Flavor = GENERIC
) -> JSON:
    """
    Translate an Ollama C{/api/generate} body to an OpenAI chat request:
    C{system} and C{prompt} (with C{images}) become a one-turn chat.

    @param body: the validated request object.
    @param backendId: the upstream model id.
    @param stream: whether to stream.
    @param flavor: the backend's flavor.
    @return: the C{/v1/chat/completions} body.
    @raise BadRequest: for malformed fields.
    """
    prompt = optionalString(body, "prompt")
    system = optionalString(body, "system")
    user: JSON = {"role": "user", "content": prompt or ""}
    if body.get("images"):
        if not isinstance(body["images"], list):
            # Checked here so the message names the generate field, not the
            # chat message it becomes.
            raise BadRequest("images must be a list of base64 strings")
        user["images"] = body["images"]
    messages = ([{"role": "system", "content": system}] if system else []) + [user]
    request: JSON = {
        "model": backendId,
        "messages": messagesToOpenAI(messages, flavor),
        "stream": stream,
    }
    return _commonRequestFields(body, request, stream, flavor)


def _commonRequestFields(
    body: JSON, request: JSON, stream: bool, flavor: Flavor = GENERIC
) -> JSON:
    """
    Add the fields chat and generate share: options, format, tools, think,
    logprobs, usage reporting.

    C{keep_alive}, C{truncate}, C{shift}, C{template}, C{context} and the
    runner options have no OpenAI equivalent and are never copied (the
    request is built field by field, not passed through).

    @param body: the Ollama request object.
    @param request: the OpenAI request being built.
    @param stream: whether streaming was requested.
    @param flavor: the backend's flavor.
    @return: C{request}, completed.
    """
    if stream:
        request["stream_options"] = {"include_usage": True}
    optionsToOpenAI(body.get("options"), request, flavor)
    responseFormat = formatToOpenAI(body.get("format"))
    if responseFormat is not None:
        request["response_format"] = responseFormat
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise BadRequest("tools must be a list")
        request["tools"] = tools
    thinkToOpenAI(thinkValue(body), request, flavor)
    logprobsToOpenAI(body, request)
    return request
