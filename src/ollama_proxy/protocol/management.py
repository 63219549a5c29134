# -*- test-case-name: tests.protocol.test_management -*-
"""
Ollama's model-management bodies (C{/api/pull}, C{/api/push},
C{/api/delete}, C{/api/copy}, C{/api/create}) checked with Ollama's own
rules before anything is answered or forwarded to the fallback Ollama: the
field types of its request structs (C{api/types.go}; C{null} is always
accepted, as Go's decoder leaves the field empty) and its model-name
grammar (C{types/model/name.go}).  A malformed body gets a 400 naming the
field, and the fallback never sees it.
"""

from __future__ import annotations

from typing import Callable, Literal

from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest

Route = Literal["pull", "push", "delete", "copy", "create"]


def _string(value: object) -> bool:
    return isinstance(value, str)


def _boolean(value: object) -> bool:
    return isinstance(value, bool)


def _object(value: object) -> bool:
    return isinstance(value, dict)


def _stringMap(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _list(value: object) -> bool:
    return isinstance(value, list)


def _license(value: object) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(v, str) for v in value)
    )


_KINDS: dict[Callable[[object], bool], str] = {
    _string: "a string",
    _boolean: "a boolean",
    _object: "an object",
    _stringMap: "an object of strings",
    _list: "a list",
    _license: "a string or a list of strings",
}

_TRANSFER: dict[str, Callable[[object], bool]] = {"model": _string, "name": _string, "insecure": _boolean, "username": _string,
             "password": _string, "stream": _boolean}

FIELDS: dict[Route, dict[str, Callable[[object], bool]]] = {
    "pull": _TRANSFER,
    "push": _TRANSFER,
    "delete": {"model": _string, "name": _string},
    "copy": {"source": _string, "destination": _string},
    "create": {
        "model": _string, "name": _string, "stream": _boolean, "quantize": _string,
        "quantization": _string, "from": _string, "files": _stringMap,
        "adapters": _stringMap, "template": _string, "license": _license, "system": _string,
        "parameters": _object, "messages": _list, "renderer": _string, "parser": _string,
        "requires": _string, "info": _object, "modelfile": _string, "path": _string,
    },
}
"""The typed fields of each route's request struct (others are ignored, as
Go's decoder ignores them)."""


def checkFields(route: Route, body: JSON) -> None:
    """
    @param route: the management route.
    @param body: the decoded request object.
    @raise BadRequest: C{<field> must be <kind>} for the first field of the
        wrong type.
    """
    for field, check in FIELDS[route].items():
        value = body.get(field)
        if value is not None and not check(value):
            raise BadRequest(f"{field} must be {_KINDS[check]}")


def modelName(body: JSON) -> str:
    """
    @param body: a pull, push, delete or create body (types checked).
    @return: C{model}, else the deprecated C{name}, as Ollama reads them.
    @raise BadRequest: C{model is required} when both are empty.
    """
    name = body.get("model") or body.get("name")
    if not name:
        raise BadRequest("model is required")
    assert isinstance(name, str)
    return name


_LIMITS = {"host": 350, "namespace": 80, "model": 80, "tag": 80}


def _validPart(kind: str, part: str) -> bool:
    """
    Ollama's C{isValidPart}: a length limit, an alphanumeric or C{_} first
    character, then alphanumerics, C{_}, C{-}, C{.} (not in a namespace)
    and C{:} (only in a host).
    """
    if not 1 <= len(part) <= _LIMITS[kind]:
        return False
    for index, char in enumerate(part):
        if char.isascii() and (char.isalnum() or char == "_"):
            continue
        if index == 0:
            return False
        if char == "-" or (char == "." and kind != "namespace") or (char == ":" and kind == "host"):
            continue
        return False
    return True


def validName(name: str) -> bool:
    """
    Whether Ollama would accept C{name} as a model name
    (C{[host/][namespace/]model[:tag][@digest]}, defaults filled in).

    @param name: the client's name.
    @return: whether every part is valid.
    """
    rest, at, digest = name.rpartition("@")
    if not at:
        rest, digest = name, ""
    elif not digest:
        return False
    host, namespace, tag = "registry.ollama.ai", "library", "latest"
    rest, colon, given = rest.rpartition(":")
    if colon and "/" not in given:
        tag = given
    else:
        rest = rest + colon + given if colon else given
    parts = rest.split("/")
    if len(parts) > 3:
        return False
    model = parts[-1]
    if len(parts) >= 2:
        namespace = parts[-2]
    if len(parts) == 3:
        host = parts[0].partition("://")[2] or parts[0]
    return all(
        _validPart(kind, part)
        for kind, part in (("host", host), ("namespace", namespace), ("model", model),
                           ("tag", tag))
    )


def checkName(name: str, message: str) -> None:
    """
    @param name: a model name about to go to the fallback Ollama.
    @param message: Ollama's error text for this route.
    @raise BadRequest: with C{message} for a name Ollama would refuse.
    """
    if not validName(name):
        raise BadRequest(message)
