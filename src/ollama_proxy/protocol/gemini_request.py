# -*- test-case-name: tests.protocol.test_gemini_request -*-
"""
The Gemini API dialect's request side (Gemini CLI, the C{google-genai}
SDKs): C{generateContent} / C{countTokens} bodies validated, once, into the
hub's L{ChatRequest} (the path, which names the model and the method, is
L{ollama_proxy.protocol.gemini_path}'s).

Google's request has many fields an OpenAI-compatible backend has no
place for (safety settings, cached content, Google's server tools, a
thought signature on every part, more than one candidate, ...).  They are
accepted and dropped, and their paths returned as L{GeminiRequest.dropped}
so that C{--debug} names them: a client written for Google's servers must
keep working against a local model, and an operator must be able to see
what did not arrive.  Only what is malformed (a wrong type, a tool
without a name, bad base64) is a 400.
"""

from __future__ import annotations

import attrs

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON, Obj
from ollama_proxy.protocol.conversation import Shape, Turn, Walker, walk
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.fields import (
    booleanAt,
    inlineImage,
    listAt,
    numberField,
    objectAt,
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

@attrs.frozen
class GeminiRequest:
    """
    A parsed C{generateContent} request.

    @ivar chat: the hub's request.
    @ivar thoughts: whether the reply may carry thought parts
        (C{thinkingConfig.includeThoughts}, off unless asked, as Google's).
    @ivar dropped: the paths of the fields the backend gets nothing for,
        in the order met, each once.
    """

    chat: ChatRequest
    thoughts: bool = False
    dropped: tuple[str, ...] = ()


MAX_DROPPED = 64
"""How many dropped fields are named (a body of many unknown keys must not
make a debug line of any length)."""


class _Dropped:
    """
    The fields a request carried that go nowhere, each named once.
    """

    def __init__(self) -> None:
        self.paths: dict[str, None] = {}

    def add(self, path: str) -> None:
        if len(self.paths) < MAX_DROPPED:
            self.paths[path[:200]] = None


def camelKeys(obj: Obj) -> Obj:
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


def _object(value: object, where: str) -> Obj:
    """
    @return: C{value}, a protocol object, with L{camelKeys}.
    @raise BadRequest: for anything but an object.
    """
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected an object")
    return camelKeys(value)


MAX_SCHEMA_DEPTH = 64
"""How deep a schema in Google's OpenAPI subset is converted (deeper is a
400: no real tool needs it, and recursion must stay bounded)."""

_SCHEMA_DROPPED = frozenset({"propertyOrdering", "example"})


def jsonSchema(schema: object, where: str, depth: int = 0) -> JSON:
    """
    A schema in Google's OpenAPI subset (C{parameters}, C{responseSchema}:
    upper-case C{type}s, C{nullable}) as JSON Schema.

    @param schema: the schema object.
    @param where: its path, for messages.
    @return: the JSON Schema.
    @raise BadRequest: for a non-object or a schema nested too deeply.
    """
    if depth > MAX_SCHEMA_DEPTH:
        raise BadRequest(f"{where}: schema nested more than {MAX_SCHEMA_DEPTH} levels")
    schema = _object(schema, where)
    out: JSON = {}
    for key, value in schema.items():
        if key in _SCHEMA_DROPPED:
            continue
        if key == "type" and isinstance(value, str):
            if value.upper() != "TYPE_UNSPECIFIED":
                out["type"] = value.lower()
        elif key == "properties" and isinstance(value, dict):
            out[key] = {
                name: jsonSchema(sub, f"{where}.properties.{name}", depth + 1)
                for name, sub in value.items()
            }
        elif key == "items" and isinstance(value, dict):
            out[key] = jsonSchema(value, f"{where}.items", depth + 1)
        elif key == "anyOf" and isinstance(value, list):
            out[key] = [jsonSchema(sub, f"{where}.anyOf", depth + 1) for sub in value]
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


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


def _text(value: object, where: str) -> str:
    """
    The text of a C{systemInstruction}: a C{Content}'s text parts joined
    with newlines (a plain string is taken too, as the SDKs accept it).
    """
    if isinstance(value, str):
        return value
    content = _object(value, where)
    parts = content.get("parts")
    if not isinstance(parts, list):
        raise BadRequest(f"{where}.parts: expected a list")
    texts = []
    for j, part in enumerate(parts):
        text = _object(part, f"{where}.parts[{j}]").get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}.parts[{j}].text: expected a string")
        texts.append(text)
    return "\n".join(texts)


def _image(part: Obj, key: str, where: str, dropped: _Dropped) -> str | None:
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
        return inlineImage(mimeType, blob.get("data"), f"{where}.inlineData.data")
    uri = blob.get("fileUri")
    if not isinstance(uri, str) or not uri.startswith(("http://", "https://")):
        dropped.add("contents.parts.fileData (not an http(s) URL)")
        return None
    return uri


_PART_METADATA = ("thoughtSignature", "partMetadata", "videoMetadata", "mediaResolution")

_ROLES = {"user": "user", "function": "user", "model": "assistant"}


class _Contents(Shape):
    """
    Gemini's C{contents}: a C{model} turn is an assistant message (thought
    parts its reasoning, C{functionCall} parts its tool calls); a C{user}
    (or C{function}) turn's C{functionResponse} parts are C{tool}
    messages, placed before its own text.  What has no place in a chat
    message is dropped and named.
    """

    name = "contents"
    missing = "contents is required: a non-empty list"

    def __init__(self, dropped: _Dropped) -> None:
        self.dropped = dropped

    partKey = ".parts"

    roles = _ROLES
    defaultRole = "user"
    badRole = '{where}.role: expected "user" or "model", got {role!r}'
    contentKey = "parts"
    textContent = False
    badContent = "{where}.parts: expected a list"

    def entry(self, entry: Obj, where: str, walker: Walker) -> None:
        # A turn, read by the shape's data above, once its keys are camelCase.
        super().entry(camelKeys(entry), where, walker)

    def part(self, part: Obj, at: str, turn: Turn) -> None:
        part = camelKeys(part)
        dropped = self.dropped
        for key in _PART_METADATA:
            if key in part:
                dropped.add(f"contents.parts.{key}")
        if "text" in part:
            text = part["text"]
            if not isinstance(text, str):
                raise BadRequest(f"{at}.text: expected a string")
            if part.get("thought") is True and turn.role == "assistant":
                turn.thinking.append(text)
            else:
                turn.texts.append(text)
        elif "inlineData" in part or "fileData" in part:
            image = _image(part, "inlineData" if "inlineData" in part else "fileData", at, dropped)
            if image is not None:
                turn.images.append(image)
        elif "functionCall" in part:
            call = _object(part["functionCall"], f"{at}.functionCall")
            name, callId, args = call.get("name"), call.get("id"), call.get("args", {})
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}.functionCall.name: expected a non-empty string")
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise BadRequest(f"{at}.functionCall.args: expected an object")
            turn.calls.append(ToolCallRequest(
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
            turn.results.append(Message(
                "tool", _jsonText(value, f"{at}.functionResponse.response"),
                toolCallId=callId if isinstance(callId, str) and callId else None,
                toolName=name,
            ))
        else:
            for key in part:
                if key not in _PART_METADATA and key != "thought":
                    dropped.add(f"contents.parts.{key}")

    def keeps(self, turn: Turn, text: str) -> bool:
        """
        A model turn is kept when it says anything; a user turn's tool
        calls are dropped (and named), and it is kept as the other
        dialects' turns are.
        """
        if turn.role == "assistant":
            return bool(text or turn.calls or turn.thinking or turn.images)
        if turn.calls:
            self.dropped.add("contents.parts.functionCall (in a user turn)")
            turn.calls = []
        return bool(text or turn.images or not turn.results)


def parseContents(contents: object) -> tuple[Message, ...]:
    """
    Validate C{contents} into typed turns (for C{countTokens}, where
    nothing is dropped that is counted).

    @raise BadRequest: with the position of what is wrong.
    """
    return walk(contents, _Contents(_Dropped()))


def parseTools(tools: object, dropped: _Dropped) -> tuple[FunctionTool, ...]:
    """
    C{tools[].functionDeclarations} as OpenAI function tools: the plain
    JSON Schema of C{parametersJsonSchema}, else C{parameters} converted
    from Google's OpenAPI subset.  Google's server tools (search, code
    execution, URL context, ...) run on Google's servers: dropped.

    @raise BadRequest: for a declaration without a name, a bad schema.
    """
    out: list[FunctionTool] = []
    for i, tool in enumerate(listAt(tools, "tools")):
        tool = _object(tool, f"tools[{i}]")
        for key in tool:
            if key != "functionDeclarations":
                dropped.add(f"tools.{key}")
        declarations = tool.get("functionDeclarations") or []
        if not isinstance(declarations, list):
            raise BadRequest(f"tools[{i}].functionDeclarations: expected a list")
        for j, declaration in enumerate(declarations):
            at = f"tools[{i}].functionDeclarations[{j}]"
            declaration = _object(declaration, at)
            name = declaration.get("name")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{at}.name: expected a non-empty string")
            if declaration.get("parametersJsonSchema") is not None:
                schema = objectAt(declaration["parametersJsonSchema"], f"{at}.parametersJsonSchema")
            elif declaration.get("parameters") is not None:
                schema = jsonSchema(declaration["parameters"], f"{at}.parameters")
            else:
                schema = {"type": "object", "properties": {}}
            for key in ("response", "responseJsonSchema", "behavior"):
                if key in declaration:
                    dropped.add(f"tools.functionDeclarations.{key}")
            out.append(functionTool(name, schema, declaration.get("description")))
    return tuple(out)


MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
"""C{functionCallingConfig.mode} as OpenAI's C{tool_choice} (C{VALIDATED},
calls checked against the schema, is the backend's ordinary C{auto})."""


def toolChoice(
    config: object, tools: tuple[FunctionTool, ...], dropped: _Dropped
) -> tuple[ToolChoice | None, tuple[FunctionTool, ...]]:
    """
    C{toolConfig.functionCallingConfig} as OpenAI's C{tool_choice}: C{ANY}
    with one allowed name is that function, with several it is
    C{required} among only those tools.

    @return: C{(tool_choice, tools)}.
    @raise BadRequest: for an unknown mode or a bad name list.
    """
    if config is None:
        return None, tools
    config = _object(config, "toolConfig")
    for key in config:
        if key != "functionCallingConfig":
            dropped.add(f"toolConfig.{key}")
    calling = config.get("functionCallingConfig")
    if calling is None:
        return None, tools
    calling = _object(calling, "toolConfig.functionCallingConfig")
    mode = calling.get("mode")
    if mode in (None, "MODE_UNSPECIFIED"):
        choice = None
    elif mode in MODES:
        choice = MODES[mode]
    else:
        raise BadRequest(
            f"toolConfig.functionCallingConfig.mode: expected AUTO, ANY, NONE or VALIDATED, got {mode!r}"
        )
    names = calling.get("allowedFunctionNames")
    if names is None:
        return choice, tools
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest("toolConfig.functionCallingConfig.allowedFunctionNames: expected a list of strings")
    if choice != "required" or not names:
        dropped.add("toolConfig.functionCallingConfig.allowedFunctionNames (only with mode ANY)")
        return choice, tools
    if len(names) == 1:
        return namedChoice(names[0]), tools
    return choice, tuple(tool for tool in tools if tool["function"]["name"] in names)


LEVELS: dict[str, Think] = {"MINIMAL": "low", "LOW": "low", "MEDIUM": "medium", "HIGH": "high"}
"""C{thinkingConfig.thinkingLevel} as the hub's reasoning levels."""


def thinking(config: object) -> tuple[Think, bool]:
    """
    C{thinkingConfig} as the hub's reasoning switch and whether thoughts
    are shown: a budget of 0 is off, -1 (dynamic) is on, a positive budget
    a level by its size; C{thinkingLevel} its level.  Without either the
    backend's default is left.

    @return: C{(think, includeThoughts)}.
    @raise BadRequest: for a wrong type or an unknown level.
    """
    if config is None:
        return None, False
    config = _object(config, "generationConfig.thinkingConfig")
    include = booleanAt(config.get("includeThoughts"), "generationConfig.thinkingConfig.includeThoughts")
    think: Think = None
    budget = numberField(config, "thinkingBudget", int, "generationConfig.thinkingConfig.")
    if budget is not None:
        if budget == 0:
            think = False
        elif budget < 0:
            think = True
        else:
            think = "low" if budget <= 1024 else "medium" if budget <= 8192 else "high"
    level = config.get("thinkingLevel")
    if level is not None and level != "THINKING_LEVEL_UNSPECIFIED":
        if level not in LEVELS:
            raise BadRequest(
                f"generationConfig.thinkingConfig.thinkingLevel: expected LOW, MEDIUM or HIGH, got {level!r}"
            )
        think = LEVELS[level]
    return think, include is True


_GENERATION_KNOWN = frozenset({
    "temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "candidateCount",
    "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
    "responseJsonSchema", "_responseJsonSchema", "thinkingConfig", "responseModalities",
})


def _format(config: JSON, dropped: _Dropped) -> str | JSON | None:
    """
    C{responseMimeType: application/json} with C{responseJsonSchema} (or
    C{responseSchema}, converted) as the hub's C{format}.
    """
    mimeType = config.get("responseMimeType")
    jsonSchemaValue = config.get("responseJsonSchema", config.get("_responseJsonSchema"))
    schema = config.get("responseSchema")
    if mimeType in (None, "text/plain"):
        if jsonSchemaValue is not None or schema is not None:
            dropped.add("generationConfig.responseSchema (without responseMimeType application/json)")
        return None
    if mimeType != "application/json":
        dropped.add(f"generationConfig.responseMimeType ({mimeType})")
        return None
    if jsonSchemaValue is not None:
        return objectAt(jsonSchemaValue, "generationConfig.responseJsonSchema")
    if schema is not None:
        return jsonSchema(schema, "generationConfig.responseSchema")
    return "json"


def _sampling(config: JSON, dropped: _Dropped) -> Sampling:
    where = "generationConfig."
    stop = stringList(config.get("stopSequences"), "generationConfig.stopSequences")
    maxTokens = numberField(config, "maxOutputTokens", int, where)
    if maxTokens is not None and maxTokens <= 0:
        raise BadRequest("generationConfig.maxOutputTokens: must be positive")
    topK = numberField(config, "topK", (int, float), where)
    candidates = numberField(config, "candidateCount", int, where)
    if candidates is not None and candidates != 1:
        dropped.add("generationConfig.candidateCount (one candidate)")
    modalities = config.get("responseModalities")
    if isinstance(modalities, list) and any(m != "TEXT" for m in modalities):
        dropped.add("generationConfig.responseModalities (text only)")
    for key in config:
        if key not in _GENERATION_KNOWN:
            dropped.add(where + key)
    return Sampling(
        maxTokens=maxTokens,
        temperature=numberField(config, "temperature", (int, float), where),
        topP=numberField(config, "topP", (int, float), where),
        topK=int(topK) if topK is not None else None,
        presencePenalty=numberField(config, "presencePenalty", (int, float), where),
        frequencyPenalty=numberField(config, "frequencyPenalty", (int, float), where),
        seed=numberField(config, "seed", int, where),
        stop=stop,
    )


_TOP_LEVEL = frozenset({
    "contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "model",
})


def parseGenerateRequest(body: object, model: str, stream: bool) -> GeminiRequest:
    """
    Validate a C{generateContent} body.

    @param body: the decoded body.
    @param model: the model named in the path.
    @param stream: whether the path was C{:streamGenerateContent}.
    @return: the typed request and what was dropped.
    @raise BadRequest: for what is malformed.
    """
    body = camelKeys(requireObject(body))
    dropped = _Dropped()
    for key in body:
        if key not in _TOP_LEVEL:
            dropped.add(key)
    conversation = walk(body.get("contents"), _Contents(dropped))
    system = body.get("systemInstruction")
    systemText = _text(system, "systemInstruction") if system is not None else ""
    config = body.get("generationConfig")
    config = _object(config, "generationConfig") if config is not None else {}
    tools = parseTools(body.get("tools"), dropped)
    choice, tools = toolChoice(body.get("toolConfig"), tools, dropped)
    think, thoughts = thinking(config.get("thinkingConfig"))
    chat = ChatRequest(
        model=model,
        messages=((Message("system", systemText),) if systemText else ()) + conversation,
        stream=stream,
        think=think,
        sampling=_sampling(config, dropped),
        format=_format(config, dropped),
        tools=tools,
        toolChoice=choice if tools else None,
    )
    return GeminiRequest(chat, thoughts, tuple(dropped.paths))


def parseCountRequest(body: object, model: str) -> ChatRequest:
    """
    Validate a C{countTokens} body: C{contents}, or a whole
    C{generateContentRequest} (whose system instruction and tools count
    too).

    @raise BadRequest: when it has neither, or what it has is malformed.
    """
    body = camelKeys(requireObject(body))
    inner = body.get("generateContentRequest")
    if inner is not None:
        return parseGenerateRequest(inner, model, False).chat
    return ChatRequest(model=model, messages=parseContents(body.get("contents")), stream=False)
