# -*- test-case-name: tests.protocol.test_conversation -*-
"""
The one conversation walker: a client's list of turns (Anthropic's
C{messages}, Gemini's C{contents}, Responses' C{input}, Ollama's
C{messages}) read into the hub's typed L{Message}s.

Every dialect's conversation is the same walk: a list whose entries must
be objects, each a turn of parts (or, in Responses, an item standing for
one part of a turn); the parts are text, reasoning, images, tool calls and
tool results; a turn's tool results go before its own text (OpenAI wants
them right after the assistant's calls), images that came with a result
follow as a user turn, and what is left is the turn's own message.  The
walk, the positions in the messages (C{messages[2].content[1]}) and the
assembly live here once; a dialect supplies only its L{Shape}: how its
list, its entries and its parts read, and in its own words.
"""

from __future__ import annotations

from typing import Callable, Mapping

import attrs

from ollama_proxy.protocol.codec import Obj
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.requests import Message, ToolCallRequest


class Turn:
    """
    One turn's parts as they are read, before they become messages.

    A dialect's L{Shape.part} appends to these lists; the walker joins
    them.  (Filled by the walker, without an C{__init__}: a turn is made
    per entry of every request, and the walk is kept to the calls the
    dialects' own walks made, or near: C{bench/RESULTS.md}.)

    @ivar role: the hub's role (C{user}, C{assistant}, C{system}, C{tool}).
    @ivar texts: the text parts.
    @ivar thinking: the reasoning parts.
    @ivar images: image URLs.
    @ivar calls: the tool calls.
    @ivar results: tool results, as C{role: tool} messages.
    @ivar resultImages: images that came with the results (an OpenAI tool
        message carries text only; they follow the results as a user turn).
    """

    __slots__ = ("role", "texts", "thinking", "images", "calls", "results", "resultImages")

    role: str
    texts: list[str]
    thinking: list[str]
    images: list[str]
    calls: list[ToolCallRequest]
    results: list[Message]
    resultImages: list[str]


class Shape:
    """
    A dialect's conversation, as the walker reads it: the list's name and
    wording, how one entry reads (L{entry}), and how one part reads
    (L{part}).  The defaults are the agents' dialects' wording (the path of
    what is wrong, then what was expected).

    An entry that is one turn (a role and its content) is data: the
    dialect names its roles (L{roles}), its content's field and whether
    plain text is one, and its words for what is wrong, and the default
    L{entry} reads it, so the walk calls the dialect back only for its
    parts.  A dialect whose entries are more than a turn (Responses' items,
    Ollama's whole messages) reads them itself.

    @cvar name: the list's field (C{messages}); an entry's path is
        C{name[i]}.
    @cvar missing: the message when the list is absent, empty or not a list.
    @cvar notEntry: the message when an entry is not an object, a template
        of C{{where}}.
    @cvar partKey: what a part's path adds to its entry's before the index
        (C{.content}: C{messages[2].content[1]}).
    @cvar notPart: the message when a part is not an object (C{{at}}).
    @cvar keeps: C{keeps(turn, text)}, whether what is left of a turn after
        its results is a message, when the dialect has its own rule; C{None}
        for the common one: when it says something, or when there were no
        results (an empty turn is the client's to send).
    """

    name = "messages"
    missing = "messages is required"
    notEntry = "{where}: expected an object"
    partKey = ".content"
    notPart = "{at}: expected an object"
    keeps: Callable[[Turn, str], bool] | None = None
    roles: Mapping[str, str] = {"user": "user", "assistant": "assistant", "system": "system"}
    """The dialect's role names, each to the hub's (L{entry})."""
    defaultRole: str | None = None
    """The role of an entry that names none (C{None}: it must)."""
    badRole = '{where}.role: expected "user" or "assistant", got {role!r}'
    """The message for a role not in L{roles} (C{{where}}, C{{role}})."""
    contentKey = "content"
    """The field of an entry's content (its parts, or its text)."""
    textContent = True
    """Whether the content may be plain text instead of a list of parts."""
    badContent = "{where}.content: expected a string or a list of blocks"
    """The message for content of another type (C{{where}})."""

    def entries(self, value: object) -> list[object]:
        """
        @return: the list of entries.
        @raise BadRequest: when there is no non-empty list.
        """
        if not isinstance(value, list) or not value:
            raise BadRequest(self.missing)
        return value

    def entry(self, entry: Obj, where: str, walker: Walker) -> None:
        """
        Read one entry, telling C{walker} what it is (L{Walker.turn},
        L{Walker.call}, L{Walker.append}, L{Walker.thought}).  By default
        the entry is one turn, read by the shape's data: its role (one of
        L{roles}, or L{defaultRole} when it names none) and its content (at
        L{contentKey}: a list of parts, or text when L{textContent}).
        """
        role = entry.get("role")
        if not role and self.defaultRole is not None:
            role = self.defaultRole
        hub = self.roles.get(role) if isinstance(role, str) else None
        if hub is None:
            raise BadRequest(self.badRole.format(where=where, role=role))
        content = entry.get(self.contentKey)
        if not (isinstance(content, list) or self.textContent and isinstance(content, str)):
            raise BadRequest(self.badContent.format(where=where))
        walker.turn(hub, content, where)

    def part(self, part: Obj, at: str, turn: Turn) -> None:
        """
        Read one part into C{turn} (or skip it).
        """
        raise NotImplementedError


class Walker:
    """
    The walk's state: the messages so far, and reasoning waiting for the
    assistant turn it belongs to (Responses sends it as an item of its
    own, before the turn).
    """

    __slots__ = ("shape", "messages", "pending")

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.messages: list[Message] = []
        self.pending: list[str] = []

    def turn(self, role: str, content: str | list[object], where: str, add: bool = True) -> Turn:
        """
        Read a turn and add its messages: its tool results, their images,
        then its own message if the shape keeps it (an assistant turn
        takes the reasoning that was waiting).

        @param content: plain text, or the list of parts (the shape's
            L{Shape.entry} checked which).
        @param add: C{False} to only read it (Responses' tool output and
            reasoning items take its text).
        @return: the turn as read.
        """
        shape = self.shape
        turn = Turn()
        turn.role = role
        turn.texts, turn.thinking, turn.images = [], [], []
        turn.calls, turn.results, turn.resultImages = [], [], []
        if isinstance(content, str):
            turn.texts.append(content)
        else:
            part, key = shape.part, shape.partKey
            for index, value in enumerate(content):
                at = f"{where}{key}[{index}]"
                if not isinstance(value, dict):
                    raise BadRequest(shape.notPart.format(at=at))
                part(value, at, turn)
        if not add:
            return turn
        messages = self.messages
        if turn.results:
            messages.extend(turn.results)
        if turn.resultImages:
            messages.append(Message("user", "", tuple(turn.resultImages)))
        text = "".join(turn.texts)
        keeps = shape.keeps
        if not (keeps(turn, text) if keeps is not None
                else text or turn.images or turn.calls or not turn.results):
            return turn
        thinking = None
        if role == "assistant":
            pending = self.pending
            if turn.thinking:
                thinking = "".join(pending + turn.thinking)
            elif pending:
                thinking = "".join(pending) or None
            if pending:
                self.pending = []
        messages.append(Message(role, text, tuple(turn.images), tuple(turn.calls), thinking=thinking))
        return turn

    def call(self, call: ToolCallRequest) -> None:
        """
        A tool call sent as an entry of its own: it joins the assistant
        turn just before it, or opens one (with the waiting reasoning).
        """
        messages = self.messages
        if messages and messages[-1].role == "assistant":
            last = messages[-1]
            messages[-1] = attrs.evolve(last, toolCalls=(*last.toolCalls, call))
        else:
            messages.append(Message("assistant", "", toolCalls=(call,),
                                    thinking="".join(self.pending) or None))
            self.pending = []

    def thought(self, text: str) -> None:
        """
        Reasoning sent as an entry of its own: the next assistant turn's.
        """
        self.pending.append(text)

    def append(self, message: Message) -> None:
        """
        A message the shape read whole (a Responses tool output; Ollama's
        shape, one message per entry, appends to L{messages} itself).
        """
        self.messages.append(message)


def walk(value: object, shape: Shape) -> tuple[Message, ...]:
    """
    Read a conversation.

    @param value: the decoded list (C{messages}, C{contents}, C{input}).
    @param shape: the dialect's shape.
    @return: the typed turns.
    @raise BadRequest: with the position of what is wrong, in the
        dialect's words.
    """
    walker = Walker(shape)
    name, read = shape.name, shape.entry
    for index, entry in enumerate(shape.entries(value)):
        where = f"{name}[{index}]"
        if not isinstance(entry, dict):
            raise BadRequest(shape.notEntry.format(where=where))
        read(entry, where, walker)
    return tuple(walker.messages)
