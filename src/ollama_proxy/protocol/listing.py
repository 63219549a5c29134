# -*- test-case-name: tests.protocol.test_listing -*-
"""
The model-discovery answers built from the catalog
(L{ollama_proxy.protocol.catalog}): C{/api/tags}, C{/api/show}, C{/api/ps},
C{/api/experimental/model-recommendations} and C{/api/status}, in the shapes
of Ollama 0.30+ (C{api/types.go}).

Agent IDEs choose models from these before they send a chat, so every route
reports the same numbers for a model: C{capabilities}, C{context_length}
(C{details.context_length} in tags, show and ps; C{model_info} and
C{num_ctx} in show; C{context_length} in ps) and, where a source states
them, C{max_input_tokens}/C{max_output_tokens}.  The VS Code extension reads
the context window from, in order: show's C{parameters} C{num_ctx}, the
modelfile's C{num_ctx}, C{details.context_length} (tag, then show),
C{model_info["<arch>.context_length"]}; Zed and Copilot read only
C{model_info}.  All of them are filled, with one value.

Everything here is pure: values in, dicts out.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Iterable
from urllib.parse import urlsplit

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.catalog import ModelMeta
from ollama_proxy.protocol.clock import createdTimestamp
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.names import DEFAULT_TAG, clientModelName

KEEP_ALIVE_NS = 300 * 1_000_000_000
"""What C{/api/ps} reports as time left before unloading: Ollama's default
C{keep_alive} of five minutes, counted from now (backend models never
unload)."""


RECOMMENDED_CONTEXT = 64 * 1024
"""
The smallest context window of a model the proxy recommends: Codex, Claude
Code and the VS Code extension warn or misbehave below 64K.
"""


STATUS: JSON = {"cloud": {"disabled": True, "source": "config"}}
"""
The C{GET /api/status} answer.  The proxy serves no ollama.com cloud models
and cannot sign in, so cloud is off: C{ollama launch} then skips its
C{/api/me} account check, and the IDEs never offer sign-in.
"""


def remoteHost(url: str) -> str:
    """
    The C{remote_host} of the models a backend serves: its scheme, host and
    port, nothing else (no user, password, path or query, which may hold
    secrets).

    Ollama sets C{remote_host} on models that run elsewhere; the VS Code
    extension then trusts the tag's capabilities and context length
    (no C{/api/show} per model) and skips its local-GPU checks, and
    C{ollama run} skips its load/unload preload.  A backend on ollama.com
    gets none: there the Ollama CLI would ask the user to sign in to
    ollama.com, which the proxy cannot do.

    @param url: the backend's base URL.
    @return: e.g. C{"http://127.0.0.1:4000"}; C{""} for no host.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return ""
    if not host or not parts.scheme:
        return ""
    if host == "ollama.com" or host.endswith(".ollama.com"):
        return ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def template(meta: ModelMeta) -> str:
    """
    A Go-template-looking C{template}.  The backend applies the real chat
    template; clients only inspect this text, e.g. Continue enables
    fill-in-the-middle when it mentions C{.Suffix}, which is therefore only
    included for models with the C{insert} capability.

    @param meta: the model.
    @return: the template text.
    """
    if "insert" in meta.capabilities():
        return "{{ if .Suffix }}{{ .Prompt }}{{ .Suffix }}{{ else }}{{ .Prompt }}{{ end }}"
    return "{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}"


def modelDigest(meta: ModelMeta, name: str) -> str:
    """
    The C{digest} of a listed model: SHA-256 over the name and everything
    clients are shown about it, in a canonical form.

    Like Ollama's manifest digest it is stable (across restarts, and
    whatever the time) and changes when the model's metadata changes, which
    is what clients that cache C{/api/show} by digest need.  Unlike
    Ollama's it differs per name, aliases included: the C{llm} CLI groups
    models by digest and would merge them.

    @param meta: the model.
    @param name: its listed name.
    @return: 64 lowercase hex digits.
    """
    shown = {
        "name": name,
        "id": meta.id,
        "capabilities": meta.capabilities(),
        "context_length": meta.contextLength,
        "embedding_length": meta.facts.get("embedding_length"),
        "max_input_tokens": meta.maxInputTokens,
        "max_output_tokens": meta.maxOutputTokens,
        "family": meta.family,
        "parameter_size": meta.facts.get("parameter_size", ""),
        "license": meta.facts.get("license", ""),
        "remote_host": meta.remoteHost,
        "template": template(meta),
    }
    return hashlib.sha256(codec.canonical(shown)).hexdigest()


def details(meta: ModelMeta) -> JSON:
    """
    The C{details} object of C{/api/tags}, C{/api/show} and C{/api/ps}.

    Every string is non-null: Swift clients (OllamaKit) and Zed decode them
    as non-optional and fail on C{null}.  C{context_length} and (when known)
    C{embedding_length} are there as in Ollama 0.30's tags.

    @param meta: the model.
    @return: a fresh dict.
    """
    family = meta.family
    result: JSON = {
        "parent_model": "",
        "format": "openai",
        "family": family,
        "families": [family],
        "parameter_size": meta.facts.get("parameter_size", ""),
        "quantization_level": "",
        "context_length": meta.contextLength,
    }
    if "embedding_length" in meta.facts:
        result["embedding_length"] = meta.facts["embedding_length"]
    return result


def _limits(meta: ModelMeta, into: JSON) -> None:
    """
    Add C{max_input_tokens} and C{max_output_tokens} where known (see
    L{ModelMeta.maxOutputTokens}); the VS Code extension reads them from
    the tag and from show.
    """
    if meta.maxInputTokens is not None:
        into["max_input_tokens"] = meta.maxInputTokens
    if meta.maxOutputTokens is not None:
        into["max_output_tokens"] = meta.maxOutputTokens


def _modifiedAt(meta: ModelMeta, nowNs: int) -> str:
    """
    The backend's C{created}, else when the proxy first saw the model with
    its current metadata (like Ollama's manifest time, it moves only when
    the digest does), else now.
    """
    return createdTimestamp(
        meta.facts.get("created"), meta.seenNs if meta.seenNs is not None else nowNs
    )


def tagsEntry(meta: ModelMeta, name: str, nowNs: int) -> JSON:
    """
    One C{/api/tags} entry, in Ollama's field order (C{ListModelResponse}).

    @param meta: the model.
    @param name: its listed name.
    @param nowNs: the time, for C{modified_at} when the backend gave none.
    @return: the entry.
    """
    entry: JSON = {"name": name, "model": name}
    if meta.remoteHost:
        entry["remote_host"] = meta.remoteHost
    entry["modified_at"] = _modifiedAt(meta, nowNs)
    entry["size"] = 0
    entry["digest"] = modelDigest(meta, name)
    entry["details"] = details(meta)
    entry["capabilities"] = meta.capabilities()
    _limits(meta, entry)
    return entry


def tagsResponse(catalog: Iterable[ModelMeta], nowNs: int, tag: str = DEFAULT_TAG) -> JSON:
    """
    The C{GET /api/tags} body.

    @param catalog: the served models, in listing order.
    @param nowNs: the time, for C{modified_at} when a backend gave none.
    @param tag: the suffix for untagged ids.
    @return: C{{"models": [...]}}, each name once (backend ids C{x} and
        C{x:proxy} would both be listed as C{x:proxy}).
    """
    seen: set[str] = set()
    models = []
    for meta in catalog:
        name = clientModelName(meta.id, tag)
        if name not in seen:
            seen.add(name)
            models.append(tagsEntry(meta, name, nowNs))
    return {"models": models}


def parametersText(meta: ModelMeta) -> str:
    """
    Ollama's C{parameters} string: one C{"%-30s %v"} line per parameter, as
    Continue and Raycast parse it (C{/^(\\S+)\\s+((?:".*")|\\S+)$/}).  Its
    C{num_ctx} is the first place the VS Code extension looks for the
    context window, so it is the model's real window.

    @param meta: the model.
    @return: the lines joined with C{\\n}.
    """
    return f"{'num_ctx':<30} {meta.contextLength}"


def showResponse(meta: ModelMeta, nowNs: int) -> JSON:
    """
    The C{POST /api/show} body, in Ollama's field order (C{ShowResponse}).

    @param meta: the model.
    @param nowNs: the time, for C{modified_at} when the backend gave none.
    @return: the object; C{model_info} is always present because several
        integrations crash without it, and its C{<arch>.context_length}
        key matches C{general.architecture} (Zed and Copilot build the key
        from it).
    """
    arch = meta.family
    modelInfo: JSON = {
        "general.architecture": arch,
        "general.basename": meta.id,
        "general.parameter_count": 0,
        f"{arch}.context_length": meta.contextLength,
    }
    if "embedding_length" in meta.facts:
        modelInfo[f"{arch}.embedding_length"] = meta.facts["embedding_length"]
    text = template(meta)
    parameters = parametersText(meta)
    modelfile = (
        '# Modelfile generated by "ollama show"\n'
        f"# {meta.id} is served by ollama-proxy from an OpenAI-compatible backend.\n"
        f"FROM {meta.id}\n"
        f'TEMPLATE """{text}"""\n'
        + "".join(f"PARAMETER {' '.join(line.split())}\n" for line in parameters.splitlines())
    )
    show: JSON = {
        "license": meta.facts.get("license", ""),
        "modelfile": modelfile,
        "parameters": parameters,
        "template": text,
        "details": details(meta),
    }
    if meta.remoteHost:
        show["remote_host"] = meta.remoteHost
    show["model_info"] = modelInfo
    show["capabilities"] = meta.capabilities()
    _limits(meta, show)
    show["modified_at"] = _modifiedAt(meta, nowNs)
    return show


def isoTimestamp(ns: int) -> str:
    """
    An RFC 3339 time with microseconds and an explicit offset, which every
    Python C{datetime.fromisoformat} (3.7+) parses -- Open WebUI reads
    C{/api/ps} C{expires_at} with it -- and Go and pydantic parse too.

    @param ns: nanoseconds since the epoch.
    @return: e.g. C{"2026-11-25T20:05:00.123456+00:00"}.
    """
    moment = datetime.datetime.fromtimestamp(ns // 1000 / 1e6, datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds")


def psResponse(catalog: Iterable[ModelMeta], nowNs: int, tag: str = DEFAULT_TAG) -> JSON:
    """
    The C{GET /api/ps} body: every served model counts as loaded, with the
    digest and context length C{/api/tags} gives it.

    @param catalog: the served models.
    @param nowNs: the time.
    @param tag: the proxy's tag, for names.
    @return: C{{"models": [...]}}.
    """
    expires = isoTimestamp(nowNs + KEEP_ALIVE_NS)
    models = []
    seen: set[str] = set()
    for meta in catalog:
        name = clientModelName(meta.id, tag)
        if name in seen:
            continue
        seen.add(name)
        models.append(
            {
                "name": name,
                "model": name,
                "size": 0,
                "digest": modelDigest(meta, name),
                "details": details(meta),
                "expires_at": expires,
                "size_vram": 0,
                "context_length": meta.contextLength,
            }
        )
    return {"models": models}


def recommendations(catalog: Iterable[ModelMeta], tag: str = DEFAULT_TAG) -> JSON:
    """
    The C{GET /api/experimental/model-recommendations} body: the served
    chat models with tools and at least L{RECOMMENDED_CONTEXT} of context,
    in listing order.

    Only served models: the VS Code extension suggests the first
    recommendation as the replacement for an outdated model, and Ollama's
    own list would name models the backend does not have.

    @param catalog: the served models.
    @param tag: the proxy's tag, for names.
    @return: C{{"recommendations": [...]}}, possibly empty.
    """
    out = []
    seen: set[str] = set()
    for meta in catalog:
        name = clientModelName(meta.id, tag)
        capabilities = meta.capabilities()
        if name in seen or "tools" not in capabilities or meta.contextLength < RECOMMENDED_CONTEXT:
            continue
        seen.add(name)
        entry: JSON = {
            "model": name,
            "description": f"{', '.join(capabilities)}; {meta.contextLength // 1024}K context",
            "context_length": meta.contextLength,
        }
        if meta.maxOutputTokens is not None:
            entry["max_output_tokens"] = meta.maxOutputTokens
        out.append(entry)
    return {"recommendations": out}
