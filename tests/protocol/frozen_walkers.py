"""
A frozen copy of the four conversation walks as they were before
L{ollama_proxy.protocol.conversation} replaced them (commit bf6b14f), kept
only here: C{tests.protocol.test_conversation} checks that random
conversations in every dialect still read into the same typed turns, and
fail with the same message.  Not to be edited or used by the code.
"""
# mypy: ignore-errors

from __future__ import annotations

import attrs

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import base64Data
from ollama_proxy.protocol.ollama_request import OLLAMA_IMAGES, sniffImageType
from ollama_proxy.protocol.requests import Message, ToolCallRequest
from ollama_proxy.protocol.responses_request import SKIPPED_ITEMS, Unsupported, flatName

MAX_DROPPED = 64

_PART_METADATA = ("thoughtSignature", "partMetadata", "videoMetadata", "mediaResolution")


# Anthropic (protocol/anthropic_request.py)


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
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
    return "\n\n".join(texts)


def imageSource(block: JSON, where: str) -> str:
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
    if kind == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    if kind != "base64":
        raise BadRequest(
            f"{where}: invalid image source type: {kind}. Only base64 and url images are supported."
        )
    data, mediaType = source.get("data"), source.get("media_type")
    if not isinstance(data, str) or not isinstance(mediaType, str) or not mediaType:
        raise BadRequest(f"{where}: image source needs media_type and data strings")
    base64Data(data, where)
    return f"data:{mediaType};base64,{data}"


def _toolResult(block: JSON, where: str) -> tuple[Message, tuple[str, ...]]:
    """
    A C{tool_result} block as a C{role: tool} message, and its images (an
    OpenAI tool message carries text only; the caller adds them as a user
    turn after the results).  C{is_error} is kept as an C{Error:} prefix so
    the model still learns that the tool failed.
    """
    callId = block.get("tool_use_id")
    if not isinstance(callId, str) or not callId:
        raise BadRequest(f"{where}: tool_result block missing required 'tool_use_id' field")
    content = block.get("content")
    images: list[str] = []
    if isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image":
                images.append(imageSource(part, f"{where}.content[{j}]"))
    text = _text(content, f"{where}.content")
    if block.get("is_error") is True and not text.startswith("Error"):
        text = "Error: " + text if text else "Error"
    return Message("tool", text, toolCallId=callId), tuple(images)


def parseConversation(messages: object) -> tuple[Message, ...]:
    """
    Validate C{messages} into typed turns.

    A user turn's C{tool_result} blocks become C{role: tool} messages placed
    before the turn's own text (OpenAI wants results right after the
    assistant's calls); an assistant turn's C{tool_use} blocks become its
    tool calls and its C{thinking} block its reasoning.  C{role: system}
    turns (Claude Code sends one mid-conversation) are kept as system
    messages.  Unknown blocks (C{redacted_thinking}, C{server_tool_use},
    documents) are skipped.

    @raise BadRequest: with the position of what is wrong.
    """
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages is required")
    out: list[Message] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}: expected an object")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):
            raise BadRequest(f"{where}.role: expected \"user\" or \"assistant\", got {role!r}")
        content = message.get("content")
        if isinstance(content, str):
            out.append(Message(role, content))
            continue
        if not isinstance(content, list):
            raise BadRequest(f"{where}.content: expected a string or a list of blocks")
        texts: list[str] = []
        images: list[str] = []
        calls: list[ToolCallRequest] = []
        thinking: list[str] = []
        results: list[Message] = []
        resultImages: list[str] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            if not isinstance(block, dict):
                raise BadRequest(f"{at}: expected an object")
            kind = block.get("type")
            if kind == "text":
                if not isinstance(block.get("text"), str):
                    raise BadRequest(f"{at}.text: expected a string")
                texts.append(block["text"])
            elif kind == "image":
                images.append(imageSource(block, at))
            elif kind == "tool_use":
                callId, name = block.get("id"), block.get("name")
                if not isinstance(callId, str) or not callId:
                    raise BadRequest(f"{at}: tool_use block missing required 'id' field")
                if not isinstance(name, str) or not name:
                    raise BadRequest(f"{at}: tool_use block missing required 'name' field")
                arguments = block.get("input")
                calls.append(ToolCallRequest(
                    callId, name,
                    arguments if isinstance(arguments, str)
                    else codec.dumps(arguments if arguments is not None else {}).decode(),
                ))
            elif kind == "tool_result":
                result, extra = _toolResult(block, at)
                results.append(result)
                resultImages.extend(extra)
            elif kind == "thinking" and isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
        out.extend(results)
        if resultImages:
            out.append(Message("user", "", tuple(resultImages)))
        text = "".join(texts)
        if text or images or calls or not results:
            out.append(Message(
                role, text, tuple(images), tuple(calls),
                thinking="".join(thinking) if thinking and role == "assistant" else None,
            ))
    return tuple(out)


# Responses (protocol/responses_request.py)


def _parts(content: object, where: str) -> tuple[str, tuple[str, ...]]:
    """
    A message's content: its text and image URLs.

    @raise BadRequest: for file inputs and unknown part types (Ollama's
        messages).
    """
    if isinstance(content, str):
        return content, ()
    if not isinstance(content, list):
        raise BadRequest(f"{where}: content must be a string or a list of parts")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadRequest(f"{where}: content[{j}]: expected an object")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
        elif kind == "refusal":
            if isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
        elif kind == "input_image":
            url = part.get("image_url")
            if isinstance(url, dict):
                url = url.get("url")
            if isinstance(url, str) and url:
                images.append(url)
        elif kind == "input_file":
            raise BadRequest("file inputs are not currently supported")
        else:
            raise BadRequest(f"{where}: content[{j}]: unknown content type: {kind}")
    return "".join(texts), tuple(images)


def _string(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{where}: expected a string")
    return value


def parseInput(value: object) -> tuple[Message, ...]:
    """
    C{input} as typed turns: messages (C{developer} is C{system}),
    function and custom tool calls merged into the assistant turn before
    them, their outputs as C{role: tool} messages, reasoning items as the
    next assistant turn's thinking.

    @raise BadRequest: with the item's position.
    """
    if isinstance(value, str):
        return (Message("user", value),)
    if not isinstance(value, list):
        raise BadRequest("input: expected a string or a list of items")
    out: list[Message] = []
    thinking: list[str] = []

    def assistantWith(call: ToolCallRequest) -> None:
        if out and out[-1].role == "assistant":
            last = out[-1]
            out[-1] = attrs.evolve(last, toolCalls=(*last.toolCalls, call))
        else:
            out.append(Message("assistant", "", toolCalls=(call,),
                               thinking="".join(thinking) or None))
            thinking.clear()

    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: expected an object")
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise BadRequest(f"{where}: unknown role {role!r}")
            text, images = _parts(item.get("content"), where)
            if role == "assistant":
                out.append(Message("assistant", text, images, thinking="".join(thinking) or None))
                thinking.clear()
            else:
                out.append(Message("system" if role == "developer" else role, text, images))
        elif kind == "function_call":
            namespace = item.get("namespace")
            name = flatName(namespace if isinstance(namespace, str) else None,
                            _string(item.get("name"), f"{where}.name"))
            arguments = item.get("arguments")
            assistantWith(ToolCallRequest(
                _string(item.get("call_id"), f"{where}.call_id"), name,
                arguments if isinstance(arguments, str) and arguments else "{}",
            ))
        elif kind == "custom_tool_call":
            assistantWith(ToolCallRequest(
                _string(item.get("call_id"), f"{where}.call_id"),
                flatName(None, _string(item.get("name"), f"{where}.name")),
                codec.dumps({"input": _string(item.get("input"), f"{where}.input")}).decode(),
            ))
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            text = output if isinstance(output, str) else _parts(output, where)[0]
            out.append(Message("tool", text,
                               toolCallId=_string(item.get("call_id"), f"{where}.call_id")))
        elif kind == "reasoning":
            for key in ("content", "summary"):
                parts = item.get(key)
                if isinstance(parts, list) and parts:
                    thinking.append(_parts(parts, where)[0])
                    break
        elif kind == "item_reference":
            raise Unsupported("input", f"{where}: item_reference is not supported: this server "
                              "keeps no responses; send the items themselves")
        elif kind in SKIPPED_ITEMS:
            continue
        elif kind is None:
            raise BadRequest(f"{where}: input item missing required 'type' field")
        else:
            raise BadRequest(f"{where}: unknown input item type: {codec.dumps(kind).decode()}")
    return tuple(out)


# Gemini (protocol/gemini_request.py)


class _Dropped:
    """
    The fields a request carried that go nowhere, each named once.
    """

    def __init__(self) -> None:
        self.paths: dict[str, None] = {}

    def add(self, path: str) -> None:
        if len(self.paths) < MAX_DROPPED:
            self.paths[path[:200]] = None


def camelKeys(obj: JSON) -> JSON:
    """
    One protocol object's keys in lowerCamelCase.

    Google's servers read protocol-buffer JSON, which takes a field by its
    C{lowerCamelCase} name or by its original C{snake_case} one, and the
    Python SDK sends some fields that way (C{thinkingConfig:
    {"include_thoughts": true}}).  Only the object's own keys change, never
    what they hold (function arguments, schemas' property names).

    @return: C{obj}, or a copy with C{snake_case} keys renamed (a
        C{lowerCamelCase} key of the same field wins).
    """
    if not any("_" in key for key in obj):
        return obj
    out = {key: value for key, value in obj.items() if "_" not in key.lstrip("_")}
    for key, value in obj.items():
        if "_" in key.lstrip("_"):
            head, *rest = key.split("_")
            out.setdefault(head + "".join(word[:1].upper() + word[1:] for word in rest), value)
    return out


def _object(value: object, where: str) -> JSON:
    """
    @return: C{value}, a protocol object, with L{camelKeys}.
    @raise BadRequest: for anything but an object.
    """
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object")
    return camelKeys(value)


def _jsonText(value: object, where: str) -> str:
    """
    @return: C{value} as JSON text (function arguments, a function's
        response).
    @raise BadRequest: for a value nested too deeply to encode.
    """
    try:
        return codec.dumps(value).decode()
    except TypeError:
        raise BadRequest(f"{where}: nested too deeply") from None


def _image(part: JSON, key: str, where: str, dropped: _Dropped) -> str | None:
    """
    An C{inlineData} (base64) or C{fileData} (URL) part as an image URL;
    other media (audio, video, PDF) have no place in a chat message and
    are dropped.
    """
    blob = _object(part[key], f"{where}.{key}")
    mimeType = blob.get("mimeType")
    if not isinstance(mimeType, str) or not mimeType.startswith("image/"):
        dropped.add(f"contents.parts.{key} ({mimeType if isinstance(mimeType, str) else 'no'} media)")
        return None
    if key == "inlineData":
        base64Data(blob.get("data"), f"{where}.inlineData.data")
        return f"data:{mimeType};base64,{blob['data']}"
    uri = blob.get("fileUri")
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        dropped.add("contents.parts.fileData (not an http(s) URL)")
        return None
    return uri


def _content(content: JSON, where: str, dropped: _Dropped) -> list[Message]:
    """
    One C{Content} as the hub's messages: a C{model} turn is an assistant
    message (thought parts its reasoning, C{functionCall} parts its tool
    calls); a C{user} (or C{function}) turn's C{functionResponse} parts are
    C{tool} messages, placed before its own text, as OpenAI wants results
    right after the calls.
    """
    role = content.get("role") or "user"
    if role not in ("user", "model", "function"):
        raise BadRequest(f"{where}.role: expected \"user\" or \"model\", got {role!r}")
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise BadRequest(f"{where}.parts: expected a list")
    texts: list[str] = []
    thinking: list[str] = []
    images: list[str] = []
    calls: list[ToolCallRequest] = []
    results: list[Message] = []
    for j, part in enumerate(parts):
        at = f"{where}.parts[{j}]"
        part = _object(part, at)
        for key in _PART_METADATA:
            if key in part:
                dropped.add(f"contents.parts.{key}")
        if "text" in part:
            text = part["text"]
            if not isinstance(text, str):
                raise BadRequest(f"{at}.text: expected a string")
            (thinking if part.get("thought") is True and role == "model" else texts).append(text)
        elif "inlineData" in part or "fileData" in part:
            image = _image(part, "inlineData" if "inlineData" in part else "fileData", at, dropped)
            if image is not None:
                images.append(image)
        elif "functionCall" in part:
            call = _object(part["functionCall"], f"{at}.functionCall")
            name, callId, args = call.get("name"), call.get("id"), call.get("args", {})
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}.functionCall.name: expected a non-empty string")
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise BadRequest(f"{at}.functionCall.args: expected an object")
            calls.append(ToolCallRequest(
                callId if isinstance(callId, str) and callId else None, name,
                _jsonText(args, f"{at}.functionCall.args"),
            ))
        elif "functionResponse" in part:
            response = _object(part["functionResponse"], f"{at}.functionResponse")
            name, callId = response.get("name"), response.get("id")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}.functionResponse.name: expected a non-empty string")
            value = response.get("response", {})
            if not isinstance(value, dict):
                raise BadRequest(f"{at}.functionResponse.response: expected an object")
            if "parts" in response:
                dropped.add("contents.parts.functionResponse.parts")
            results.append(Message(
                "tool", _jsonText(value, f"{at}.functionResponse.response"),
                toolCallId=callId if isinstance(callId, str) and callId else None,
                toolName=name,
            ))
        else:
            for key in part:
                if key not in _PART_METADATA and key != "thought":
                    dropped.add(f"contents.parts.{key}")
    out = list(results)
    text = "".join(texts)
    if calls and role != "model":
        dropped.add("contents.parts.functionCall (in a user turn)")
    if role == "model":
        if text or calls or thinking or images:
            out.append(Message(
                "assistant", text, tuple(images), tuple(calls),
                thinking="".join(thinking) if thinking else None,
            ))
    elif text or images or not results:
        out.append(Message("user", text, tuple(images)))
    return out


def _contents(contents: object, dropped: _Dropped) -> tuple[Message, ...]:
    if not isinstance(contents, list) or not contents:
        raise BadRequest("contents is required: a non-empty list")
    out: list[Message] = []
    for i, content in enumerate(contents):
        out.extend(_content(_object(content, f"contents[{i}]"), f"contents[{i}]", dropped))
    return tuple(out)


# Ollama (protocol/ollama_request.py)


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


def parseMessages(messages: object) -> tuple[Message, ...]:
    """
    Validate an Ollama C{messages} list.

    @param messages: the decoded C{messages} value.
    @return: the typed messages.
    @raise BadRequest: for anything that is not a list of message objects,
        naming the offending field.
    """
    if messages is None:
        return ()
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    out: list[Message] = []
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
        images: tuple[str, ...] = ()
        raw = message.get("images")
        if raw:
            if not isinstance(raw, list):
                raise BadRequest(f"messages[{index}].images must be a list")
            images = tuple(imageURL(image) for image in raw)
        calls: list[ToolCallRequest] = []
        toolCalls = message.get("tool_calls")
        if role == "assistant" and toolCalls:
            if not isinstance(toolCalls, list):
                raise BadRequest(f"messages[{index}].tool_calls must be a list")
            for callIndex, call in enumerate(toolCalls):
                if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
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
                calls.append(
                    ToolCallRequest(
                        callId if isinstance(callId, str) and callId else None,
                        name,
                        _argumentsString(function.get("arguments")),
                    )
                )
        toolCallId = message.get("tool_call_id")
        toolName = message.get("tool_name") or message.get("name")
        thinking = message.get("thinking")
        out.append(
            Message(
                role,
                content,
                images,
                tuple(calls),
                toolCallId if role == "tool" and isinstance(toolCallId, str) and toolCallId
                else None,
                toolName if role == "tool" and isinstance(toolName, str) else None,
                thinking if role == "assistant" and isinstance(thinking, str) and thinking
                else None,
            )
        )
    return tuple(out)
