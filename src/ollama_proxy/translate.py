# -*- test-case-name: tests.test_translate -*-
"""
Pure translation between the Ollama and OpenAI wire formats.

Everything here takes dicts (or bytes) and returns dicts (or bytes): no
reactor, no request, no I/O.  The clock is passed in as a function so the
durations Ollama clients expect can be asserted exactly.  The Twisted code in
L{ollama_proxy.resources} and L{ollama_proxy.relay} only moves bytes and calls
into this module.

The mapping follows C{ollama-api.md} section 14: requests go from Ollama's
C{/api/chat} and C{/api/generate} to OpenAI's C{/v1/chat/completions};
streamed OpenAI chunks come back as Ollama NDJSON lines that always end with
a C{done: true} object (or an error line, never a fake C{done}).

Backends differ in what they accept beyond plain OpenAI (sampling extras,
how thinking is switched on and off, whether earlier reasoning must be sent
back); a L{Flavor} captures that, chosen per backend with
C{--backend-flavor}.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from typing import Any, Callable, Iterable, Literal, Mapping
from urllib.parse import urlsplit

import attrs

from ollama_proxy import codec
from ollama_proxy.errors import BadRequest, UpstreamError
from ollama_proxy.sse import DEFAULT_MAX_LINE_LENGTH, SSEDecoder, SSELineTooLong

JSON = dict[str, Any]
Kind = Literal["chat", "generate"]
Clock = Callable[[], int]
"""A function returning the current wall-clock time in nanoseconds."""

DEFAULT_TAG = "proxy"
"""The tag the seed appends to untagged backend ids in C{/api/tags}."""

# ---------------------------------------------------------------------------
# Time


class TimestampFormatter:
    """
    Format nanosecond timestamps as RFC 3339 UTC with nine fractional digits.

    Ollama clients parse C{created_at}/C{modified_at} strictly (OllamaKit
    uses a fixed nine-digit format), so the fraction is always present.
    The C{strftime} part is cached per second because a stream formats one
    timestamp per socket read.
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, ns: int) -> str:
        """
        @param ns: nanoseconds since the epoch.
        @return: e.g. C{"2025-07-07T20:22:19.184789000Z"}.
        """
        second, frac = divmod(ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{frac:09d}Z"


formatTimestamp = TimestampFormatter()


_LAST_SECOND = 253_402_300_799
"""9999-12-31T23:59:59Z: the last second with a four-digit year, which
RFC 3339 requires and Go's and pydantic's parsers insist on."""


def createdTimestamp(created: Any, nowNs: int) -> str:
    """
    C{modified_at} from a backend's C{created} (Unix seconds).

    Backends that report milliseconds, or nonsense, would give a year past
    9999 that no client parses, or overflow C{time_t}; then, as when there
    is no C{created}, the current time is used.

    @param created: the C{created} value, if any.
    @param nowNs: the current time (ns).
    @return: the formatted timestamp.
    """
    if (
        isinstance(created, int)
        and not isinstance(created, bool)
        and 0 < created <= _LAST_SECOND
    ):
        return formatTimestamp(created * 1_000_000_000)
    return formatTimestamp(nowNs)


def wallClock() -> int:
    """
    The default L{Clock}: C{time.time_ns()}.

    @return: nanoseconds since the epoch.
    """
    return time.time_ns()


# ---------------------------------------------------------------------------
# Model names


def backendModel(
    name: str, known: Iterable[str] | None = None, tag: str = DEFAULT_TAG
) -> str:
    """
    Map the model name a client sent to the backend's model id.

    Clients see C{x:proxy} (the seed's suffix) or add C{:latest} themselves
    (Open WebUI, LangChain); backends know only C{x}.  Ids that really
    contain a colon (C{qwen3:8b}, C{openrouter/foo:free}) pass through.

    @param name: the client's C{model} string.
    @param known: the backend's ids, when the proxy has a recent list; a name
        found there verbatim is never rewritten.
    @param tag: the suffix the proxy adds in C{/api/tags}.
    @return: the id to send upstream.
    """
    if known is not None and name in known:
        return name
    for suffix in (":" + tag, ":latest"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def clientModelName(modelId: str, tag: str = DEFAULT_TAG) -> str:
    """
    The name under which a backend id is listed to Ollama clients.

    @param modelId: a backend model id.
    @param tag: the suffix for ids without a colon.
    @return: C{modelId} if it already has a tag, else C{modelId:tag}.
    """
    return modelId if ":" in modelId else f"{modelId}:{tag}"


def modelDigest(name: str) -> str:
    """
    A stable, distinct 64-hex digest for a model name.

    Clients such as the C{llm} CLI group models by digest, so every model
    needs its own.

    @param name: the listed model name.
    @return: the SHA-256 of the name, in hex.
    """
    return hashlib.sha256(name.encode("utf-8")).hexdigest()


def modelDetails(family: str = "openai") -> JSON:
    """
    The C{details} object of C{/api/tags} and C{/api/show}.

    Every string is non-null: Swift clients (OllamaKit) decode them as
    non-optional and fail on C{null}.

    @param family: the model family to report.
    @return: a fresh dict.
    """
    return {
        "parent_model": "",
        "format": "openai",
        "family": family,
        "families": [family],
        "parameter_size": "",
        "quantization_level": "",
    }


def modelIds(models: Any) -> list[str]:
    """
    Extract the ids from an OpenAI C{GET /v1/models} body, in order, without
    duplicates.

    @param models: the decoded JSON body.
    @return: the model ids.
    @raise UpstreamError: if the body does not look like a model list.
    """
    data = models.get("data") if isinstance(models, dict) else None
    if data is None and isinstance(models, dict) and "data" in models:
        data = []  # Ollama's own /v1/models says "data": null when empty.
    if not isinstance(data, list):
        raise UpstreamError("backend /v1/models did not return a model list")
    seen: dict[str, None] = {}
    for entry in data:
        if isinstance(entry, dict) and isinstance(entry.get("id"), str):
            seen.setdefault(entry["id"], None)
    return list(seen)


def tagsFromModels(models: Any, nowNs: int, tag: str = DEFAULT_TAG) -> JSON:
    """
    Build the C{/api/tags} body from an OpenAI model list.

    @param models: the decoded C{GET /v1/models} body.
    @param nowNs: the time to use when the backend gives no C{created}.
    @param tag: the suffix for untagged ids.
    @return: C{{"models": [...]}} in Ollama's list shape.
    """
    created: dict[str, int] = {}
    for entry in models.get("data") or [] if isinstance(models, dict) else []:
        if isinstance(entry, dict) and isinstance(entry.get("created"), int):
            if entry["created"] > 0:
                created.setdefault(entry.get("id"), entry["created"])  # type: ignore[arg-type]
    result = []
    for modelId in modelIds(models):
        name = clientModelName(modelId, tag)
        result.append(
            {
                "name": name,
                "model": name,
                "modified_at": createdTimestamp(created.get(modelId), nowNs),
                "size": 0,
                "digest": modelDigest(name),
                "details": modelDetails(),
            }
        )
    return {"models": result}


# ---------------------------------------------------------------------------
# Request validation helpers


def requireObject(body: Any) -> JSON:
    """
    @param body: a decoded request body.
    @return: C{body} if it is a JSON object.
    @raise BadRequest: otherwise.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def requireModel(body: JSON) -> str:
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


def optionalString(body: JSON, key: str) -> str | None:
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


def streamFlag(body: JSON) -> bool:
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


# ---------------------------------------------------------------------------
# Backend flavors

ThinkStyle = Literal["effort", "vllm", "openrouter", "deepseek"]


@attrs.frozen
class Flavor:
    """
    What one kind of OpenAI-compatible backend accepts beyond the plain
    OpenAI chat API, so that requests use every knob the backend has without
    sending a field it rejects.

    OpenAI proper answers 400 to unknown fields (C{top_k}); vLLM, LiteLLM
    and OpenRouter take the sampling extras.  Turning thinking off has no
    portable spelling: vLLM reads C{chat_template_kwargs.enable_thinking},
    OpenRouter C{reasoning.enabled}, and C{reasoning_effort: "none"} is
    rejected by most non-reasoning models, so the generic flavor sends
    nothing for C{think: false} and drops any reasoning from the reply.

    @ivar name: the name used on the command line.
    @ivar samplingExtras: whether C{top_k}, C{min_p} and
        C{repetition_penalty} are sent.
    @ivar thinkStyle: how C{think} is spelled: C{"effort"} (only
        C{reasoning_effort}), C{"vllm"} (C{chat_template_kwargs}),
        C{"openrouter"} (the C{reasoning} object) or C{"deepseek"} (the
        C{thinking: {type}} switch, on by default there).
    @ivar historyThinking: the assistant-message field that carries earlier
        C{thinking} back to the backend (DeepSeek's C{reasoning_content},
        which its thinking mode requires), or C{None} to drop it.
    @ivar maxTokensKey: C{max_tokens}, or C{max_completion_tokens} for
        OpenAI, whose reasoning models reject C{max_tokens}.
    """

    name: str
    samplingExtras: bool = True
    thinkStyle: ThinkStyle = "effort"
    historyThinking: str | None = None
    maxTokensKey: str = "max_tokens"


FLAVORS: dict[str, Flavor] = {
    flavor.name: flavor
    for flavor in (
        Flavor("generic"),
        Flavor("openai", samplingExtras=False, maxTokensKey="max_completion_tokens"),
        Flavor("vllm", thinkStyle="vllm"),
        Flavor("litellm"),
        Flavor("openrouter", thinkStyle="openrouter"),
        Flavor(
            "deepseek",
            samplingExtras=False,
            thinkStyle="deepseek",
            historyThinking="reasoning_content",
        ),
    )
}
"""The known flavors by name."""

GENERIC = FLAVORS["generic"]
"""For unknown backends: sampling extras on (withdrawn by
L{withoutRejectedExtras} if the backend refuses them), thinking as
C{reasoning_effort}."""

FLAVOR_NAMES = ("auto", *FLAVORS)
"""What C{--backend-flavor} accepts."""

_AUTO_HOSTS = (
    ("api.openai.com", "openai"),
    ("openrouter.ai", "openrouter"),
    ("api.deepseek.com", "deepseek"),
)

SAMPLING_EXTRAS: tuple[tuple[str, str, type | tuple[type, ...]], ...] = (
    ("top_k", "top_k", int),
    ("min_p", "min_p", (int, float)),
    ("repeat_penalty", "repetition_penalty", (int, float)),
)
"""C{(Ollama option, backend field, type)} for the non-OpenAI sampling
parameters."""

_EXTRA_FIELDS = frozenset(field for _, field, _ in SAMPLING_EXTRAS)


def flavorFor(name: str, target: str) -> Flavor:
    """
    Resolve a C{--backend-flavor} value.

    @param name: a key of L{FLAVORS}, or C{"auto"} to guess from the host of
        C{target} (OpenAI, OpenRouter and DeepSeek have well-known hosts;
        anything else, including local vLLM and LiteLLM, is generic).
    @param target: the backend base URL.
    @return: the flavor.
    @raise ValueError: for an unknown name.
    """
    if name == "auto":
        host = (urlsplit(target).hostname or "").lower()
        for domain, flavorName in _AUTO_HOSTS:
            if host == domain or host.endswith("." + domain):
                return FLAVORS[flavorName]
        return GENERIC
    try:
        return FLAVORS[name]
    except KeyError:
        raise ValueError(
            f"unknown backend flavor {name!r}; choose one of {', '.join(FLAVOR_NAMES)}"
        ) from None


def withoutRejectedExtras(request: JSON, status: int, message: str) -> JSON | None:
    """
    Decide whether a failed request is worth one retry without the sampling
    extras.

    Backends that do not know C{top_k} and friends say so by name in a 400
    (OpenAI: C{Unrecognized request argument supplied: top_k}; pydantic
    servers: C{extra_forbidden ... min_p}).  Then the request is repeated
    without them rather than failing a client that only set C{top_k}.

    @param request: the OpenAI request that failed.
    @param status: the backend's status.
    @param message: the backend's error text.
    @return: a copy of C{request} without the extras, or C{None} when the
        error is about something else.
    """
    if status not in (400, 422):
        return None
    sent = _EXTRA_FIELDS.intersection(request)
    lowered = message.lower()
    if not any(field in lowered for field in sent):
        return None
    return {key: value for key, value in request.items() if key not in _EXTRA_FIELDS}


# ---------------------------------------------------------------------------
# Requests: Ollama -> OpenAI

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


_THINK_EFFORT = {"low": "low", "medium": "medium", "high": "high", "max": "high"}


def thinkValue(body: JSON) -> bool | str | None:
    """
    Validate Ollama's C{think} field.

    @param body: the request object.
    @return: C{None} when absent, else the bool or level string.
    @raise BadRequest: for any other value (Ollama's own message).
    """
    think = body.get("think")
    if think is None or isinstance(think, bool):
        return think
    if isinstance(think, str) and think in _THINK_EFFORT:
        return think
    raise BadRequest(
        f"invalid think value: {codec.dumps(think).decode()} "
        '(must be "high", "medium", "low", "max", true, or false)'
    )


def _number(options: JSON, key: str, kind: type | tuple[type, ...]) -> Any:
    """
    Read one typed option.

    @param options: the C{options} object.
    @param key: the option name.
    @param kind: C{int}, or C{(int, float)} for numbers.
    @return: the value, or C{None} when absent.
    @raise BadRequest: for a value of the wrong type, with Ollama's wording.
    """
    value = options.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        typeName = "integer" if kind is int else "number"
        raise BadRequest(f'option "{key}" must be of type {typeName}')
    return value


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


# ---------------------------------------------------------------------------
# Responses: OpenAI -> Ollama


def doneReason(finishReason: Any) -> str:
    """
    Map an OpenAI C{finish_reason} onto Ollama's vocabulary.

    Ollama only knows C{stop} and C{length} for generation; tool calls and
    content filters end with C{stop}.

    @param finishReason: the OpenAI value (or C{None}).
    @return: C{"length"} or C{"stop"}.
    """
    return "length" if finishReason == "length" else "stop"


def contentText(content: Any) -> str:
    """
    The text of an OpenAI C{content} that is not a plain string.

    Some servers (Mistral's reasoning models) send a list of parts,
    C{[{"type": "text", "text": ...}, ...]}, as chat requests may; the text
    parts, joined, are the reply.

    @param content: C{message.content} or C{delta.content}.
    @return: the joined text parts; C{""} for C{null} or anything else.
    """
    if not isinstance(content, list):
        return ""
    return "".join(
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    )


def toolCallsFromOpenAI(calls: Any) -> list[JSON]:
    """
    Convert complete OpenAI tool calls into Ollama's shape, with the
    arguments as a JSON object.

    @param calls: OpenAI C{tool_calls} with string arguments, as the backend
        sent them.
    @return: Ollama C{tool_calls}.
    @raise UpstreamError: if arguments are not a JSON object; reporting it is
        better than calling a tool with C{{}}.  The message names the tool
        and quotes the arguments, so the user can see what the model wrote.
        Also if C{calls} is not a list of objects with object C{function}s
        (a non-streamed reply's C{tool_calls} come straight from the
        backend).
    """
    if not isinstance(calls, list):
        raise UpstreamError("backend returned tool_calls that are not a list")
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if function is None and isinstance(call, dict):
            function = {}
        if not isinstance(function, dict):
            raise UpstreamError("backend returned a malformed tool call")
        raw = function.get("arguments")
        if isinstance(raw, dict):
            arguments = raw
        elif raw is None or raw == "":
            arguments = {}
        else:
            try:
                arguments = codec.loads(raw)
            except codec.JSONDecodeError:
                arguments = None
            if not isinstance(arguments, dict):
                raise UpstreamError(
                    f"backend returned tool call {function.get('name')!r} "
                    f"with arguments that are not a JSON object: {raw!r}"
                )
        name = function.get("name")
        if name is None:
            name = ""
        elif not isinstance(name, str):
            raise UpstreamError("backend returned a tool call whose name is not a string")
        callId = call.get("id")
        if not isinstance(callId, str) or not callId:
            callId = _responseCallId(index, name, raw)
        out.append(
            {
                "id": callId,
                "function": {"index": index, "name": name, "arguments": arguments},
            }
        )
    return out


def _responseCallId(index: int, name: str, arguments: Any) -> str:
    """
    An id for a tool call the backend sent without one.

    Ollama gives every call an id and clients echo it back with the result;
    deriving it from the call keeps this module pure and repeatable while
    still differing between calls.

    @param index: the call's position.
    @param name: the function name.
    @param arguments: the raw arguments.
    @return: C{call_} and eight hex digits.
    """
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode("utf-8"))
    return "call_" + digest.hexdigest()[:8]


def _errorMessage(payload: JSON) -> str:
    """
    Extract a message from an OpenAI-style error object.

    @param payload: a decoded body with an C{error} key.
    @return: the most specific text available.
    """
    error = payload.get("error")
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg") or error
        return message if isinstance(message, str) else codec.dumps(message).decode()
    if isinstance(error, str):
        return error
    return codec.dumps(payload).decode()


def errorFromBody(body: bytes, status: int) -> str:
    """
    The message to show for an upstream non-2xx response.

    @param body: the raw upstream body.
    @param status: the upstream status code.
    @return: the upstream's own message when it sent JSON, else its text.
    """
    try:
        decoded = codec.loads(body)
    except codec.JSONDecodeError:
        decoded = None
    if isinstance(decoded, dict) and ("error" in decoded or "detail" in decoded):
        if "error" in decoded:
            return _errorMessage(decoded)
        detail = decoded["detail"]
        return detail if isinstance(detail, str) else codec.dumps(detail).decode()
    text = body.decode("utf-8", "replace").strip()
    return text[:2000] or f"backend returned HTTP {status}"


_OPEN_TAG = "<think>"
_CLOSE_TAG = "</think>"
_SEEKING, _OPENED, _THINKING, _CLOSED, _PASSING = range(5)


class ThinkTagSplitter:
    """
    Split inline C{<think>...</think>} at the start of a reply's content into
    thinking and content, as Ollama's own parser does for models whose
    template has no separate reasoning channel (some vLLM and Fireworks
    set-ups stream DeepSeek-R1 and Qwen3 that way).

    Stateful, because the tags arrive in arbitrary pieces (C{"<thi"},
    C{"nk>"}): text that might still turn into a tag is held back until it
    is decided.  Whitespace around the tags is trimmed like Ollama does, so
    the result does not depend on how the text was split.  Only a tag at the
    very start (after whitespace) counts; once real content has been seen
    the splitter only passes text through, at the cost of one comparison per
    delta.
    """

    def __init__(self) -> None:
        self._state = _SEEKING
        self._held = ""

    @property
    def passing(self) -> bool:
        """
        Whether the decision is made and all further text is content.
        """
        return self._state == _PASSING

    def feed(self, text: str) -> tuple[str, str]:
        """
        @param text: the next piece of content.
        @return: C{(thinking, content)} that can be released now.
        """
        state = self._state
        if state == _PASSING:
            return "", text
        held = self._held + text
        if state == _SEEKING:
            stripped = held.lstrip()
            if stripped.startswith(_OPEN_TAG):
                held = stripped[len(_OPEN_TAG) :]
                state = _OPENED
            elif _OPEN_TAG.startswith(stripped):
                # Only whitespace, or a prefix of the tag: undecided.
                self._held = held
                return "", ""
            else:
                self._state = _PASSING
                self._held = ""
                return "", held
        if state == _OPENED:
            held = held.lstrip()
            if not held:
                self._state = _OPENED
                self._held = ""
                return "", ""
            state = _THINKING
        if state == _THINKING:
            end = held.find(_CLOSE_TAG)
            if end < 0:
                cut = _undecidedTail(held)
                self._state = _THINKING
                self._held = held[cut:]
                return held[:cut], ""
            thinking = held[:end].rstrip()
            held = held[end + len(_CLOSE_TAG) :]
            state = _CLOSED
        else:
            thinking = ""
        content = held.lstrip()
        self._held = ""
        self._state = _PASSING if content else _CLOSED
        return thinking, content

    def flush(self) -> tuple[str, str]:
        """
        The reply ended: release what was held back.  An unclosed think
        block (the model hit its token limit while thinking) is thinking.

        @return: C{(thinking, content)}.
        """
        held, state = self._held, self._state
        self._held = ""
        self._state = _PASSING
        if state == _SEEKING:
            return "", held
        if state == _THINKING:
            return held.rstrip(), ""
        return "", ""


def _undecidedTail(text: str) -> int:
    """
    Where the part of thinking text that might belong to C{</think>} begins:
    a trailing prefix of the tag and the whitespace before it.

    @param text: thinking text without a complete closing tag.
    @return: the index from which to hold C{text} back.
    """
    cut = len(text)
    for size in range(min(len(_CLOSE_TAG) - 1, len(text)), 0, -1):
        if text.endswith(_CLOSE_TAG[:size]):
            cut -= size
            break
    while cut and text[cut - 1].isspace():
        cut -= 1
    return cut


def splitThinkTags(text: str) -> tuple[str, str]:
    """
    Split a whole reply's leading C{<think>} block (see L{ThinkTagSplitter}).

    @param text: the complete content.
    @return: C{(thinking, content)}.
    """
    splitter = ThinkTagSplitter()
    thinking, content = splitter.feed(text)
    moreThinking, moreContent = splitter.flush()
    return thinking + moreThinking, content + moreContent


def _tokenLogprob(entry: Mapping[str, Any]) -> JSON:
    """
    One OpenAI token log-probability in Ollama's shape.

    @param entry: C{{"token", "logprob", "bytes"}}.
    @return: C{{"token", "logprob"}} plus C{bytes} when present (Ollama
        omits it when empty).
    """
    out: JSON = {"token": entry.get("token") or "", "logprob": entry.get("logprob", 0.0)}
    raw = entry.get("bytes")
    if raw:
        out["bytes"] = raw
    return out


def logprobsFromOpenAI(logprobs: Any) -> list[JSON]:
    """
    Translate an OpenAI choice's C{logprobs} into Ollama's chunk-level
    C{logprobs} list.

    @param logprobs: C{choices[0].logprobs}: C{{"content": [{"token",
        "logprob", "bytes", "top_logprobs": [...]}]}} or C{None}.
    @return: C{[{"token", "logprob", "bytes"?, "top_logprobs"?}]}, empty when
        there is nothing.
    """
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return []
    out = []
    for entry in content:
        if not isinstance(entry, dict):
            continue
        item = _tokenLogprob(entry)
        top = entry.get("top_logprobs")
        if isinstance(top, list) and top:
            item["top_logprobs"] = [_tokenLogprob(t) for t in top if isinstance(t, dict)]
        out.append(item)
    return out


class StreamFailed(UpstreamError):
    """
    The upstream stream failed part-way through one read.

    The relay joins the reads of one reactor turn, so a read can hold good
    events before the failing one; their lines still belong to the client,
    before the error line.

    @ivar chunks: the Ollama chunks translated before the failing event.
    @ivar output: the same as NDJSON, filled in by L{NDJSONStream}.
    """

    def __init__(self, message: str, chunks: list[JSON]) -> None:
        super().__init__(message)
        self.chunks = chunks
        self.output = b""


class StreamTranslator:
    """
    Turn decoded OpenAI stream chunks into Ollama chunk objects.

    Content and reasoning deltas become one Ollama chunk each (reasoning from
    C{reasoning_content}, C{reasoning} or a leading C{<think>} block, all as
    C{thinking}, or dropped for C{think: false}); token log-probabilities ride
    on the chunk of their text.  Tool-call fragments are accumulated per
    C{index} and released as one chunk with object arguments at the end;
    C{finish_reason} and C{usage} (which may arrive in a later chunk) go into
    the final C{done: true} object.

    @ivar model: the model name exactly as the client sent it.
    @ivar kind: C{"chat"} (C{message.content}) or C{"generate"} (C{response}).
    @ivar sawDone: whether C{[DONE]} has been seen.
    @ivar sawFinish: whether a C{finish_reason} has been seen; with
        C{sawDone}, whether the stream may end normally.
    """

    def __init__(
        self,
        model: str,
        kind: Kind = "chat",
        startNs: int | None = None,
        clock: Clock = wallClock,
        dropThinking: bool = False,
        thinkTags: bool = True,
    ) -> None:
        """
        @param model: the client's model name.
        @param kind: C{"chat"} or C{"generate"}.
        @param startNs: when the request arrived; now when omitted.
        @param clock: the wall clock (ns).
        @param dropThinking: whether the client sent C{think: false}.
        @param thinkTags: whether a leading C{<think>} block in the content is
            thinking (off for raw and fill-in-the-middle text completions).
        """
        self.model = model
        self.kind = kind
        self._clock = clock
        self._start = clock() if startNs is None else startNs
        self._firstToken: int | None = None
        self._dropThinking = dropThinking
        self._finishReason: Any = None
        self._usage: JSON | None = None
        self._tools: list[JSON] = []
        self._toolSlots: dict[int, int] = {}
        self._tags = ThinkTagSplitter()
        self._seekingTags = thinkTags
        self._logprobs: list[JSON] = []
        self.sawDone = False
        self.sawFinish = False

    def _chunk(self, createdAt: str, content: str, thinking: str | None) -> JSON:
        """
        Build one C{done: false} chunk.

        @param createdAt: the formatted timestamp.
        @param content: the text delta.
        @param thinking: the reasoning delta, if any.
        """
        if self.kind == "chat":
            message: JSON = {"role": "assistant", "content": content}
            if thinking:
                message["thinking"] = thinking
            return {
                "model": self.model,
                "created_at": createdAt,
                "message": message,
                "done": False,
            }
        chunk: JSON = {
            "model": self.model,
            "created_at": createdAt,
            "response": content,
            "done": False,
        }
        if thinking:
            chunk["thinking"] = thinking
        return chunk

    def feed(self, payloads: list[bytes], createdAt: str | None = None) -> list[JSON]:
        """
        Translate the SSE payloads of one socket read.

        @param payloads: C{data:} payloads from L{SSEDecoder.feed}.
        @param createdAt: the timestamp for every chunk of this read; computed
            from the clock when omitted.
        @return: the Ollama chunks to send now, in order.
        @raise StreamFailed: (an L{UpstreamError}) on an upstream error event
            or non-JSON data, with the chunks translated before it.
        """
        out: list[JSON] = []
        try:
            self._feedInto(payloads, createdAt, out)
        except StreamFailed:
            raise
        except UpstreamError as e:
            raise StreamFailed(e.message, out) from None
        return out

    def _feedInto(self, payloads: list[bytes], createdAt: str | None, out: list[JSON]) -> None:
        """
        L{feed}'s work: append the chunks to C{out} as they are made.
        """
        for payload in payloads:
            if payload == b"[DONE]":
                self.sawDone = True
                continue
            try:
                event = codec.loads(payload)
            except codec.JSONDecodeError:
                raise UpstreamError(
                    "backend sent a stream event that is not JSON: "
                    + payload[:200].decode("utf-8", "replace")
                )
            if not isinstance(event, dict):
                raise UpstreamError("backend sent a stream event that is not an object")
            if event.get("error") is not None:
                raise UpstreamError(_errorMessage(event))
            usage = event.get("usage")
            if isinstance(usage, dict):
                self._usage = usage
            choices = event.get("choices")
            if not choices or not isinstance(choices, list):
                continue
            choice = choices[0]
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self._finishReason = choice["finish_reason"]
                self.sawFinish = True
            logprobs = choice.get("logprobs")
            if logprobs:
                self._logprobs.extend(logprobsFromOpenAI(logprobs))
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            content = delta.get("content")
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if self._dropThinking or not isinstance(thinking, str):
                thinking = ""
            fragments = delta.get("tool_calls")
            if fragments:
                self._accumulateTools(fragments)
            if not isinstance(content, str):
                content = contentText(content)
            if self._seekingTags and content:
                if self._firstToken is None:
                    self._firstToken = self._clock()
                tagged, content = self._tags.feed(content)
                self._seekingTags = not self._tags.passing
                if not self._dropThinking:
                    thinking += tagged
            if content or thinking:
                if self._firstToken is None:
                    self._firstToken = self._clock()
                if createdAt is None:
                    createdAt = formatTimestamp(self._clock())
                chunk = self._chunk(createdAt, content, thinking)
                if self._logprobs:
                    chunk["logprobs"] = self._logprobs
                    self._logprobs = []
                out.append(chunk)

    def _accumulateTools(self, fragments: Any) -> None:
        """
        Merge streamed tool-call fragments by C{index}.

        Arguments are concatenated (they are split anywhere, even inside a
        string).  A name is appended only when it is not a repeat: some
        backends send the whole name in every fragment.  A fragment with a
        different C{id} at an occupied index (backends that number every
        call 0) starts a new call, which later fragments without an id at
        that index continue.  Calls keep the order in which they began.

        @param fragments: the C{delta.tool_calls} list.
        """
        if not isinstance(fragments, list):
            return
        for offset, fragment in enumerate(fragments):
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", offset)
            if not isinstance(index, int):
                index = offset
            fragmentId = fragment.get("id")
            position = self._toolSlots.get(index)
            if position is not None:
                slot = self._tools[position]
                if fragmentId and slot["id"] and fragmentId != slot["id"]:
                    position = None
            if position is None:
                self._toolSlots[index] = len(self._tools)
                slot = {"id": None, "function": {"name": "", "arguments": ""}}
                self._tools.append(slot)
            if fragmentId:
                slot["id"] = fragmentId
            function = fragment.get("function")
            if isinstance(function, dict):
                name = function.get("name")
                if name and isinstance(name, str):
                    known = slot["function"]["name"]
                    slot["function"]["name"] = name if name.startswith(known) else known + name
                arguments = function.get("arguments")
                if isinstance(arguments, str):
                    if isinstance(slot["function"]["arguments"], str):
                        slot["function"]["arguments"] += arguments
                elif isinstance(arguments, dict):
                    slot["function"]["arguments"] = arguments
        if self._firstToken is None:
            self._firstToken = self._clock()

    def finish(self) -> list[JSON]:
        """
        The stream ended normally: release held-back text, accumulated tool
        calls and the final C{done: true} object.

        @return: the last chunks to send.
        @raise UpstreamError: if the backend ended the stream before saying it
            was done, or sent tool-call arguments that are not a JSON object
            (the client then gets an error line instead of C{done: true}: a
            tool call with made-up arguments would be worse).
        """
        if not (self.sawDone or self.sawFinish):
            raise UpstreamError("backend closed the stream before it was complete")
        now = self._clock()
        createdAt = formatTimestamp(now)
        out: list[JSON] = []
        thinking, content = self._tags.flush()
        if self._dropThinking:
            thinking = ""
        if content or thinking:
            out.append(self._chunk(createdAt, content, thinking))
            if self._logprobs:
                out[0]["logprobs"] = self._logprobs
                self._logprobs = []
        if self._tools:
            calls = toolCallsFromOpenAI(self._tools)
            chunk = self._chunk(createdAt, "", None)
            if self.kind == "chat":
                chunk["message"]["tool_calls"] = calls
            else:
                chunk["tool_calls"] = calls
            out.append(chunk)
        final = self._chunk(createdAt, "", None)
        final["done"] = True
        final["done_reason"] = doneReason(self._finishReason)
        if self._logprobs:
            final["logprobs"] = self._logprobs
            self._logprobs = []
        final.update(metrics(self._start, self._firstToken, now, self._usage))
        if self.kind == "generate":
            final["context"] = []
        out.append(final)
        return out


def metrics(start: int, firstToken: int | None, end: int, usage: Any) -> JSON:
    """
    Ollama's timing and token fields for a final object.

    The OpenAI backend reports no timings, so they are measured by the proxy:
    prompt evaluation is the time to the first token, evaluation the rest.
    C{eval_duration} is never zero because UIs divide by it.

    @param start: when the request arrived (ns).
    @param firstToken: when the first token arrived (ns), if any.
    @param end: now (ns).
    @param usage: the OpenAI C{usage} object, if one was sent.
    @return: the metric fields.
    """
    first = firstToken if firstToken is not None else end
    result: JSON = {
        "total_duration": max(1, end - start),
        "load_duration": 0,
        "prompt_eval_count": 0,
        "prompt_eval_duration": max(1, first - start),
        "eval_count": 0,
        "eval_duration": max(1, end - first),
    }
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int):
            result["prompt_eval_count"] = prompt
        if isinstance(completion, int):
            result["eval_count"] = completion
    return result


def responseFromOpenAI(
    completion: Any,
    model: str,
    kind: Kind,
    start: int,
    end: int,
    dropThinking: bool = False,
    thinkTags: bool = True,
) -> JSON:
    """
    Translate a non-streamed OpenAI chat completion into one Ollama object
    with the same fields a stream would have carried, aggregated:
    C{thinking} (from the reasoning fields or a leading C{<think>} block),
    C{tool_calls} with object arguments, C{logprobs}, counts and durations.

    @param completion: the decoded upstream body.
    @param model: the client's model name, echoed back.
    @param kind: C{"chat"} or C{"generate"} (text in C{response}, thinking
        and tool calls at the top level).
    @param start: request start (ns).
    @param end: now (ns).
    @param dropThinking: whether the client asked for C{think: false}.
    @param thinkTags: whether a leading C{<think>} block in the content is
        thinking.
    @return: the aggregated Ollama response.
    @raise UpstreamError: if the body has no choices, or tool-call arguments
        are not a JSON object.
    """
    if not isinstance(completion, dict):
        raise UpstreamError("backend returned a completion that is not an object")
    if completion.get("error") is not None:
        raise UpstreamError(_errorMessage(completion))
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("backend returned a completion without choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}
    content = message.get("content")
    if not isinstance(content, str):
        content = contentText(content)
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if not isinstance(thinking, str):
        thinking = ""
    if thinkTags:
        tagged, content = splitThinkTags(content)
        thinking += tagged
    if dropThinking:
        thinking = ""
    toolCalls = (
        toolCallsFromOpenAI(message["tool_calls"]) if message.get("tool_calls") else None
    )
    createdAt = formatTimestamp(end)
    result: JSON
    if kind == "chat":
        ollamaMessage: JSON = {"role": "assistant", "content": content}
        if thinking:
            ollamaMessage["thinking"] = thinking
        if toolCalls:
            ollamaMessage["tool_calls"] = toolCalls
        result = {"model": model, "created_at": createdAt, "message": ollamaMessage}
    else:
        result = {"model": model, "created_at": createdAt, "response": content}
        if thinking:
            result["thinking"] = thinking
        if toolCalls:
            result["tool_calls"] = toolCalls
    result["done"] = True
    result["done_reason"] = doneReason(choice.get("finish_reason"))
    logprobs = logprobsFromOpenAI(choice.get("logprobs"))
    if logprobs:
        result["logprobs"] = logprobs
    result.update(metrics(start, None, end, completion.get("usage")))
    if kind == "generate":
        result["context"] = []
    return result


def _failedAfter(message: str, output: bytes) -> StreamFailed:
    """
    A L{StreamFailed} whose earlier lines are already encoded.
    """
    failure = StreamFailed(message, [])
    failure.output = output
    return failure


_CHAT_KEYS = ("model", "created_at", "message", "done")
_GENERATE_KEYS = ("model", "created_at", "response", "done")
_MESSAGE_KEYS = ("role", "content")


class NDJSONStream:
    """
    The whole streaming pipeline as one pure object: SSE bytes in, Ollama
    NDJSON bytes out, one call per socket read.

    The Twisted side calls L{feed} from each C{treq.collect} callback and
    writes the result with a single C{request.write}, so a read that carried
    ten tokens costs one HTTP chunk, while each token is still its own line.
    """

    def __init__(
        self,
        translator: StreamTranslator,
        maxLineLength: int = DEFAULT_MAX_LINE_LENGTH,
        clock: Clock = wallClock,
    ) -> None:
        self.translator = translator
        self.decoder = SSEDecoder(maxLineLength)
        self._clock = clock
        self._templateKey: tuple[Any, Any, bytes] | None = None
        self._templateBytes = b""

    def feed(self, data: bytes) -> bytes:
        """
        @param data: one upstream read.
        @return: zero or more complete NDJSON lines.
        @raise StreamFailed: on upstream error events or garbage, carrying
            the lines of this read before the failure in C{output}.
        @raise ollama_proxy.sse.SSELineTooLong: on an oversized line.
        """
        cut = data.rfind(b"\n") + 1
        if 0 < cut < len(data):
            # An unfinished line follows complete events (the relay joins the
            # reads of a turn): translate the events before the decoder can
            # refuse the tail as too long, so their lines are not lost.
            tail = data[cut:]
            head = self.feed(data[:cut])
            try:
                return head + self.feed(tail)
            except SSELineTooLong as e:
                raise _failedAfter(str(e), head) from None
            except StreamFailed as e:
                e.output = head + e.output
                raise
        payloads = self.decoder.feed(data)
        if not payloads:
            return b""
        try:
            chunks = self.translator.feed(payloads)
        except StreamFailed as e:
            e.output = self.encode(e.chunks)
            raise
        return self.encode(chunks)

    def encode(self, chunks: list[JSON]) -> bytes:
        """
        Encode chunks as NDJSON, byte for byte as L{codec.dumpLine} would.

        The common chunk, C{{"model", "created_at", "message": {"role":
        "assistant", "content"}, "done": false}} (or C{response} for
        generate), is written from a template made once per model and
        timestamp, so only its content string is encoded per token; any
        other chunk goes through L{codec.dumpLine}.

        @param chunks: Ollama chunk objects.
        @return: one line per chunk.
        """
        lines = []
        for chunk in chunks:
            lines.append(self._line(chunk))
        return b"".join(lines)

    def _line(self, chunk: JSON) -> bytes:
        """
        One chunk as one line; see L{encode}.
        """
        keys = tuple(chunk)
        if keys == _CHAT_KEYS:
            message = chunk["message"]
            if (
                chunk["done"] is False
                and type(message) is dict
                and tuple(message) == _MESSAGE_KEYS
                and message["role"] == "assistant"
                and type(message["content"]) is str
            ):
                return self._template(chunk, b',"message":{"role":"assistant","content":') + (
                    codec.dumps(message["content"]) + b'},"done":false}\n'
                )
        elif keys == _GENERATE_KEYS:
            if chunk["done"] is False and type(chunk["response"]) is str:
                return self._template(chunk, b',"response":') + (
                    codec.dumps(chunk["response"]) + b',"done":false}\n'
                )
        return codec.dumpLine(chunk)

    def _template(self, chunk: JSON, middle: bytes) -> bytes:
        """
        The line's start up to the content, cached for the last model and
        timestamp (one per socket read).
        """
        key = (chunk["model"], chunk["created_at"], middle)
        if key != self._templateKey:
            model, createdAt = chunk["model"], chunk["created_at"]
            if type(model) is not str or type(createdAt) is not str:
                raise TypeError("model and created_at must be strings")
            self._templateKey = key
            self._templateBytes = (
                b'{"model":' + codec.dumps(model) + b',"created_at":'
                + codec.dumps(createdAt) + middle
            )
        return self._templateBytes

    def end(self) -> bytes:
        """
        The upstream body ended cleanly.

        @return: the remaining lines, ending with the C{done: true} object.
        @raise UpstreamError: if the stream was truncated.
        """
        try:
            chunks = self.translator.feed(self.decoder.close())
        except StreamFailed as e:
            e.output = self.encode(e.chunks)
            raise
        chunks.extend(self.translator.finish())
        return self.encode(chunks)
