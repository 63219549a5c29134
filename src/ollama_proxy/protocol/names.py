# -*- test-case-name: tests.protocol.test_names -*-
"""
Model names: the one resolver from what a client sends to a backend id.

Clients see C{x:proxy} (the proxy's tag on an untagged id) in C{/api/tags},
or add C{:latest} themselves (Open WebUI, LangChain); backends know only
C{x}.  Every route that takes a model name (chat, generate, embed, show,
pull, delete, copy, the OpenAI passthrough) resolves it through
L{NameIndex}, so a name is found everywhere or nowhere.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterable, Mapping, Sequence, TypeVar

from ollama_proxy.protocol.errors import UpstreamError

T = TypeVar("T")

DEFAULT_TAG = "proxy"
"""The tag the proxy appends to untagged backend ids in C{/api/tags}."""


def stripTag(name: str, tag: str = DEFAULT_TAG) -> str:
    """
    The name without the suffix a client may have added to a backend id.

    @param name: the client's C{model} string.
    @param tag: the suffix the proxy adds in C{/api/tags}.
    @return: C{name} without a trailing C{:<tag>} or C{:latest}; C{name}
        itself when it has neither (ids such as C{qwen3:8b} or
        C{openrouter/foo:free} pass through).
    """
    for suffix in (":" + tag, ":latest"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def backendModel(
    name: str, known: Iterable[str] | None = None, tag: str = DEFAULT_TAG
) -> str:
    """
    The backend id to try for a name no listing resolves (see
    L{NameIndex.find}).

    @param name: the client's C{model} string.
    @param known: the backend's ids, when the proxy has a recent list; a name
        found there verbatim is never rewritten.
    @param tag: the suffix the proxy adds in C{/api/tags}.
    @return: the id to send upstream.
    """
    if known is not None and name in known:
        return name
    return stripTag(name, tag)


class NameIndex(Generic[T]):
    """
    Client names to whatever owns them (a route, a catalog entry), built
    from the backends' listings in configuration order.

    A name is looked up, in this order, among: the names C{/api/tags} lists
    (C{id}, or C{id:tag} for ids without a colon), the bare ids and aliases,
    the ids and aliases with C{:latest}; failing all of those, the name
    without a trailing C{:<tag>} or C{:latest} is looked up the same way
    (so C{qwen3:8b:latest} finds C{qwen3:8b}).  The first backend to offer a
    listed name gets it; every other claim is reported once through
    C{onClash}.  A name found no way exactly is looked up once more
    ignoring case, as Ollama does, when that is unambiguous: C{PLAIN}
    finds C{plain}, but not when C{Plain} is listed too.
    """

    def __init__(self, tag: str = DEFAULT_TAG) -> None:
        """
        @param tag: the suffix added to untagged ids in C{/api/tags}.
        """
        self.tag = tag
        self._index: dict[str, T] = {}
        self._folded: dict[str, T | None] | None = None

    @classmethod
    def build(
        cls,
        offers: Sequence[tuple[str, Iterable[str], Mapping[str, str]]],
        make: Callable[[int, str, str], T],
        tag: str = DEFAULT_TAG,
        onClash: Callable[[str, str, str], None] | None = None,
        combine: Callable[[T, T], T] | None = None,
    ) -> NameIndex[T]:
        """
        @param offers: per backend, in configuration order: its name, its
            model ids, and its aliases (alias to model id).
        @param make: builds the value for C{(backend position, listed id,
            model id)}; the listed id is the alias for an alias.
        @param tag: the C{/api/tags} suffix.
        @param onClash: called with C{(name, first owner, other owner)} for a
            listed name two backends offer.
        @param combine: joins the values of two owners of one name (a pool
            of backends, first owner first); without it the first owner
            keeps the name.
        @return: the index.
        """
        index: NameIndex[T] = cls(tag)
        table = index._index
        # Per key: its owners and its rank (0: a listed name, 1: a bare id
        # or alias, 2: a ":latest" form).  A better rank replaces the entry;
        # an equal one from another owner is combined (or reported).
        owners: dict[str, tuple[list[str], int]] = {}

        def claim(key: str, rank: int, owner: str, value: T) -> None:
            found = owners.get(key)
            if found is None or rank < found[1]:
                owners[key] = ([owner], rank)
                table[key] = value
                return
            have, haveRank = found
            if rank > haveRank or owner in have:
                return
            have.append(owner)
            if combine is not None:
                table[key] = combine(table[key], value)
            if onClash is not None and rank == 0:
                onClash(key, have[0], owner)

        # Listed names, bare ids and aliases first, over every backend, then
        # the ":latest" forms, so that one backend's "x:latest" cannot shadow
        # another's listed "x:latest".
        for position, (owner, ids, aliases) in enumerate(offers):
            for modelId in ids:
                claim(clientModelName(modelId, tag), 0, owner, make(position, modelId, modelId))
                claim(modelId, 1, owner, make(position, modelId, modelId))
            for alias, target in aliases.items():
                claim(clientModelName(alias, tag), 0, owner, make(position, alias, target))
                claim(alias, 1, owner, make(position, alias, target))
        for position, (owner, ids, aliases) in enumerate(offers):
            for modelId in ids:
                if ":" not in modelId:
                    claim(f"{modelId}:latest", 2, owner, make(position, modelId, modelId))
            for alias, target in aliases.items():
                if ":" not in alias:
                    claim(f"{alias}:latest", 2, owner, make(position, alias, target))
        return index

    def resolve(self, name: str) -> T | None:
        """
        @param name: the client's C{model} string.
        @return: what the name belongs to, or C{None}.
        """
        found = self._exact(self._index, name)
        if found is None:
            found = self._exact(self._foldedIndex(), name.lower())
        return found

    def _exact(self, table: Mapping[str, T | None], name: str) -> T | None:
        found = table.get(name)
        if found is None:
            stripped = stripTag(name, self.tag)
            if stripped != name:
                found = table.get(stripped)
        return found

    def _foldedIndex(self) -> dict[str, T | None]:
        """
        @return: the names in lower case, C{None} for those that two
            different owners share (ambiguous, so resolved only exactly);
            built on first use.
        """
        if self._folded is None:
            folded: dict[str, T | None] = {}
            for key, value in self._index.items():
                lower = key.lower()
                if lower in folded and folded[lower] != value:
                    folded[lower] = None
                else:
                    folded.setdefault(lower, value)
            self._folded = folded
        return self._folded

    def find(self, name: str) -> tuple[T | None, str]:
        """
        One question for a caller that sends an unknown name on a guess
        (the single backend): who owns the name, and what to try if no one
        does.

        @param name: the client's C{model} string.
        @return: what L{resolve} returns, and the backend id to try when
            that is C{None} (the name without the proxy's tag or
            C{:latest}).
        """
        return self.resolve(name), stripTag(name, self.tag)

    def __len__(self) -> int:
        return len(self._index)


def clientModelName(modelId: str, tag: str = DEFAULT_TAG) -> str:
    """
    The name under which a backend id is listed to Ollama clients.

    @param modelId: a backend model id.
    @param tag: the suffix for ids without a colon.
    @return: C{modelId} if it already has a tag, else C{modelId:tag}.
    """
    return modelId if ":" in modelId else f"{modelId}:{tag}"


def modelIds(models: object) -> list[str]:
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
