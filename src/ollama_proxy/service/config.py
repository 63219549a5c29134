# -*- test-case-name: tests.service.test_config -*-
"""
The TOML configuration file: several backends, which of their models to
offer, aliases and per-model overrides, plus any command-line option.

A file looks like this (every key but C{url} is optional)::

    [server]                      # any long option of `twistd ollama-proxy`
    listen = ["tcp:11434:interface=127.0.0.1"]
    models-ttl = 60

    [[backend]]
    name = "litellm"
    url = "http://127.0.0.1:4000"
    api_key_env = "LITELLM_MASTER_KEY"
    deny = ["*-preview"]

    [backend.aliases]
    fast = "gpt-4o-mini"

    [backend.overrides."gpt-4o"]
    context_length = 128000
    capabilities = ["completion", "tools", "vision"]
    options = { temperature = 0.2 }
    extra = { user = "ollama-proxy" }

    [[backend]]
    name = "vllm"
    url = "http://127.0.0.1:8000/v1"
    discover = false
    models = ["qwen3-8b"]

Parsing is pure: L{parseConfig} takes the text and returns a L{Config} or
raises L{ConfigError}, whose message names the file, the line and the key
(C{proxy.toml:12: backend[1].url: ...}), so that a broken file stops the
service at start-up with a message an operator can act on.  L{loadConfig}
adds the file read and the environment for C{api_key_env}.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterable, Mapping

import attrs

from ollama_proxy.protocol.balance import DEFAULT_ROUTING, RoutingPolicy
from ollama_proxy.protocol.flavors import FLAVOR_NAMES
from ollama_proxy.protocol.backends import (
    CAPABILITIES,
    NO_OVERRIDE,
    BackendConfig,
    ModelOverride,
)
from ollama_proxy.service.fleetconfig import MEMBER_KEYS, KeyPath, parseMember, parseRouting

__all__ = ["CAPABILITIES", "NO_OVERRIDE", "BackendConfig", "ModelOverride"]
"""The configuration's value types, defined in L{ollama_proxy.protocol.backends}
(low, where every layer may import them), named here too."""

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib




class ConfigError(Exception):
    """
    The configuration file cannot be used.

    @ivar path: the file name.
    @ivar line: the 1-based line the problem is on, when known.
    @ivar key: the dotted key, when the problem is about one.
    @ivar reason: what is wrong.
    """

    def __init__(self, path: str, line: int | None, key: str | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


def formatKey(path: KeyPath) -> str:
    """
    @param path: a key path.
    @return: its readable form, e.g. C{backend[1].overrides."openai/gpt-4o".options}.
    """
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if re.fullmatch(r"[A-Za-z0-9_-]+", part) else f'"{part}"'
            out += ("." if out else "") + text
    return out


# ---------------------------------------------------------------------------
# Lines of keys


_BARE = r"[A-Za-z0-9_-]+"
_KEY_PART = rf'(?:{_BARE}|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN = re.compile(rf"^\s*({_DOTTED})\s*=")


def _splitKey(dotted: str) -> list[str]:
    """
    @param dotted: a TOML dotted key, e.g. C{backend.overrides."gpt-4o"}.
    @return: its parts without quotes.
    """
    parts = re.findall(_KEY_PART, dotted)
    out = []
    for part in parts:
        if part[:1] == '"':
            out.append(part[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape"))
        elif part[:1] == "'":
            out.append(part[1:-1])
        else:
            out.append(part)
    return out


def keyLines(source: str) -> dict[KeyPath, int]:
    """
    Find the line of every table header and every C{key = value} line.

    A small scanner, not a parser: it runs only on text that C{tomllib}
    has accepted, and it only needs to be right for ordinary layouts.  Keys
    inside inline tables map to the line of the table's own key; lookups
    that miss fall back to the enclosing table (see L{lineOf}).

    @param source: the TOML text.
    @return: key paths (with array-of-tables indexes) to 1-based lines.
    """
    lines: dict[KeyPath, int] = {}
    counts: dict[tuple[str, ...], int] = {}
    table: KeyPath = ()
    inString: str | None = None
    for number, text in enumerate(source.splitlines(), 1):
        if inString is not None:
            if text.count(inString) % 2 == 1:
                inString = None
            continue
        header = _HEADER.match(text)
        if header is not None:
            names = _splitKey(header.group(2))
            if header.group(1) == "[[":
                key = tuple(names)
                counts[key] = counts.get(key, -1) + 1
                table = _withIndexes(names, counts)
            else:
                table = _withIndexes(names, counts)
            lines.setdefault(table, number)
            continue
        assign = _ASSIGN.match(text)
        if assign is not None:
            lines.setdefault(table + tuple(_splitKey(assign.group(1))), number)
            rest = text[assign.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    inString = quote
    return lines


def _withIndexes(names: list[str], counts: Mapping[tuple[str, ...], int]) -> KeyPath:
    """
    Insert the current array-of-tables index after every prefix that names
    an array of tables (C{backend.aliases} -> C{("backend", 2, "aliases")}).

    @param names: the header's key parts.
    @param counts: the last index seen for each array of tables.
    @return: the key path.
    """
    path: list[str | int] = []
    for i, name in enumerate(names):
        path.append(name)
        prefix = tuple(names[: i + 1])
        if prefix in counts:
            path.append(counts[prefix])
    return tuple(path)


def lineOf(lines: Mapping[KeyPath, int], path: KeyPath) -> int | None:
    """
    @param lines: from L{keyLines}.
    @param path: a key path.
    @return: the line of C{path}, or of the nearest enclosing key or table
        that has one; C{None} for a key of the top-level table that is absent.
    """
    for end in range(len(path), 0, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return None


# ---------------------------------------------------------------------------
# The model


@attrs.frozen
class Config:
    """
    A parsed configuration file.

    @ivar path: the file name, for messages.
    @ivar backends: in file order; those that offer one name are its pool.
    @ivar server: C{[server]} keys (long option names) to their values.
    @ivar routing: the C{[routing]} table.
    @ivar lines: key paths to lines, for later messages (L{error}).
    """

    path: str
    backends: tuple[BackendConfig, ...] = ()
    server: Mapping[str, Any] = attrs.field(factory=dict)
    lines: Mapping[KeyPath, int] = attrs.field(factory=dict, repr=False)
    routing: RoutingPolicy = DEFAULT_ROUTING

    def error(self, key: KeyPath, reason: str) -> ConfigError:
        """
        An error about a key of this file, with its line.

        @param key: the key path.
        @param reason: what is wrong.
        @return: the exception to raise.
        """
        return ConfigError(self.path, lineOf(self.lines, key), formatKey(key), reason)


# ---------------------------------------------------------------------------
# Parsing


class _Checker:
    """
    Type checks that raise L{ConfigError} with the line of the key.
    """

    def __init__(self, path: str, lines: Mapping[KeyPath, int]) -> None:
        self.path = path
        self.lines = lines

    def fail(self, key: KeyPath, reason: str) -> ConfigError:
        return ConfigError(self.path, lineOf(self.lines, key), formatKey(key), reason)

    def table(self, value: Any, key: KeyPath) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_typeName(value)}")
        return value

    def known(self, table: Mapping[str, Any], key: KeyPath, allowed: Iterable[str]) -> None:
        allowed = set(allowed)
        for name in table:
            if name not in allowed:
                raise self.fail(
                    key + (name,), f"unknown key (expected one of: {', '.join(sorted(allowed))})"
                )

    def string(self, value: Any, key: KeyPath) -> str:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, not {_typeName(value)}")
        if not value.strip():
            raise self.fail(key, "must not be empty")
        return value

    def boolean(self, value: Any, key: KeyPath) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, not {_typeName(value)}")
        return value

    def strings(self, value: Any, key: KeyPath) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of strings, not {_typeName(value)}")
        return tuple(self.string(item, key + (i,)) for i, item in enumerate(value))

    def positiveInt(self, value: Any, key: KeyPath) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self.fail(key, f"must be a positive integer, not {value!r}")
        return value


def _typeName(value: Any) -> str:
    """
    @return: the TOML name of C{value}'s type, for messages.
    """
    names = {
        str: "a string", bool: "a boolean", int: "an integer", float: "a float",
        list: "an array", dict: "a table",
    }
    return names.get(type(value), type(value).__name__)


_BACKEND_KEYS = (
    "name", "url", "api_key", "api_key_file", "api_key_env",
    "discover", "allow", "deny", "models", "aliases", "overrides", "flavor", "native",
    *MEMBER_KEYS,
)
NATIVE_APIS = ("messages", "responses")
"""The agent APIs a backend may serve itself (C{native})."""
_OVERRIDE_KEYS = ("context_length", "max_output_tokens", "capabilities", "extra", "options")


def parseConfig(
    source: str,
    path: str = "<config>",
    environ: Mapping[str, str] | None = None,
    readFile: Any = None,
) -> Config:
    """
    Parse and check a configuration file's text.

    @param source: the TOML text.
    @param path: the file name, for messages and for relative
        C{api_key_file} paths.
    @param environ: where C{api_key_env} names are looked up (the process
        environment by default).
    @param readFile: C{(path) -> str}, to read C{api_key_file}s.
    @return: the configuration.
    @raise ConfigError: with file, line and key, for a syntax error, an
        unknown key, a wrong type, a missing C{url}, an unusable key source,
        or a model name that two backends claim.
    """
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        line = int(match.group(1)) if match else getattr(e, "lineno", None)
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", message)
        if match:
            reason += f" (column {match.group(2)})"
        raise ConfigError(path, line, None, f"invalid TOML: {reason}") from None
    lines = keyLines(source)
    check = _Checker(path, lines)
    check.known(data, (), ("server", "backend", "routing"))
    server = check.table(data.get("server", {}), ("server",))
    rawBackends = data.get("backend", [])
    if not isinstance(rawBackends, list):
        raise check.fail(("backend",), "must be an array of tables: write [[backend]]")
    env = os.environ if environ is None else environ
    backends = [
        _parseBackend(check, raw, ("backend", i), path, env, readFile)
        for i, raw in enumerate(rawBackends)
    ]
    _checkUnique(check, backends)
    return Config(path=path, backends=tuple(backends), server=dict(server), lines=lines,
                  routing=parseRouting(check, data.get("routing", {})))


def _parseBackend(
    check: _Checker,
    raw: Any,
    key: KeyPath,
    path: str,
    environ: Mapping[str, str],
    readFile: Any,
) -> BackendConfig:
    """
    Check one C{[[backend]]} table.

    @return: the backend.
    @raise ConfigError: for any problem in it.
    """
    table = check.table(raw, key)
    check.known(table, key, _BACKEND_KEYS)
    if "url" not in table:
        raise check.fail(key, "missing required key 'url'")
    url = check.string(table["url"], key + ("url",))
    if not re.match(r"^https?://[^/:]+", url) or "@" in url.partition("://")[2].split("/")[0]:
        shown = "one (give the key with api_key_file or api_key_env)" if "@" in url else repr(url)
        raise check.fail(key + ("url",), f"must be an http(s):// URL without user:pass@, not {shown}")
    name = check.string(table.get("name", f"backend{key[1]}"), key + ("name",))
    sources = [k for k in ("api_key", "api_key_file", "api_key_env") if k in table]
    if len(sources) > 1:
        raise check.fail(key + (sources[1],), f"give only one of {', '.join(sources)}")
    apiKey: str | None = None
    if "api_key" in table:
        apiKey = check.string(table["api_key"], key + ("api_key",))
    elif "api_key_file" in table:
        keyFile = check.string(table["api_key_file"], key + ("api_key_file",))
        keyFile = os.path.join(os.path.dirname(os.path.abspath(path)), os.path.expanduser(keyFile))
        try:
            if readFile is not None:
                text = readFile(keyFile)
            else:
                with open(keyFile, encoding="utf-8") as f:
                    text = f.read()
        except OSError as e:
            raise check.fail(key + ("api_key_file",), f"cannot read {keyFile}: {e.strerror}")
        apiKey = text.strip() or None
    elif "api_key_env" in table:
        variable = check.string(table["api_key_env"], key + ("api_key_env",))
        if not environ.get(variable):
            raise check.fail(key + ("api_key_env",), f"environment variable {variable} is not set")
        apiKey = environ[variable]
    flavor = None
    if "flavor" in table:
        flavor = check.string(table["flavor"], key + ("flavor",))
        if flavor not in FLAVOR_NAMES:
            raise check.fail(
                key + ("flavor",), f"unknown flavor (expected one of: {', '.join(FLAVOR_NAMES)})"
            )
    native = check.strings(table.get("native", []), key + ("native",))
    if set(native) - set(NATIVE_APIS):
        raise check.fail(key + ("native",), f"expected some of: {', '.join(NATIVE_APIS)}")
    discover = check.boolean(table.get("discover", True), key + ("discover",))
    allow = check.strings(table.get("allow", []), key + ("allow",))
    deny = check.strings(table.get("deny", []), key + ("deny",))
    models = check.strings(table.get("models", []), key + ("models",))
    if not discover and not models:
        raise check.fail(key + ("discover",), "discover = false needs a 'models' list")
    aliasTable = check.table(table.get("aliases", {}), key + ("aliases",))
    aliases = {
        alias: check.string(target, key + ("aliases", alias))
        for alias, target in aliasTable.items()
    }
    overrideTable = check.table(table.get("overrides", {}), key + ("overrides",))
    overrides = {
        modelId: _parseOverride(check, value, key + ("overrides", modelId))
        for modelId, value in overrideTable.items()
    }
    priority, weight = parseMember(check, table, key)
    return BackendConfig(
        priority=priority,
        weight=weight,
        name=name,
        url=url.rstrip("/"),
        apiKey=apiKey,
        discover=discover,
        allow=allow,
        deny=deny,
        models=models,
        aliases=aliases,
        overrides=overrides,
        flavor=flavor,
        native=native,
    )


def _parseOverride(check: _Checker, raw: Any, key: KeyPath) -> ModelOverride:
    """
    Check one C{[backend.overrides."id"]} table.

    @return: the override.
    @raise ConfigError: for any problem in it.
    """
    table = check.table(raw, key)
    check.known(table, key, _OVERRIDE_KEYS)
    contextLength, maxOutput = (
        check.positiveInt(table[name], key + (name,)) if name in table else None
        for name in ("context_length", "max_output_tokens")
    )
    capabilities = None
    if "capabilities" in table:
        capabilities = check.strings(table["capabilities"], key + ("capabilities",))
        for i, name in enumerate(capabilities):
            if name not in CAPABILITIES:
                raise check.fail(
                    key + ("capabilities", i),
                    f"unknown capability {name!r} (expected one of: "
                    f"{', '.join(sorted(CAPABILITIES))})",
                )
    extra = check.table(table.get("extra", {}), key + ("extra",))
    for field in ("model", "messages", "stream"):
        if field in extra:
            raise check.fail(key + ("extra", field), "the proxy sets this field itself")
    options = check.table(table.get("options", {}), key + ("options",))
    return ModelOverride(contextLength=contextLength, maxOutputTokens=maxOutput,
                         capabilities=capabilities, extra=extra, options=options)


def _checkUnique(check: _Checker, backends: list[BackendConfig]) -> None:
    """
    Refuse two backends with one name.  (Two backends that offer one model
    are that model's pool: L{ollama_proxy.upstream.routing.Router}.)

    @raise ConfigError: naming both places.
    """
    names: dict[str, int] = {}
    for i, backend in enumerate(backends):
        if backend.name in names:
            raise check.fail(
                ("backend", i, "name"),
                f"backend name {backend.name!r} is already used by backend[{names[backend.name]}]",
            )
        names[backend.name] = i


def loadConfig(path: str, environ: Mapping[str, str] | None = None) -> Config:
    """
    Read and parse a configuration file.

    @param path: the file.
    @param environ: for C{api_key_env}; the process environment by default.
    @return: the configuration.
    @raise ConfigError: if the file cannot be read or is invalid.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(path, None, None, f"cannot read the configuration file: {e.strerror}")
    try:
        source = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, None, None, f"the file is not UTF-8: {e}") from None
    return parseConfig(source, path, environ)
