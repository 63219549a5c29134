"""
Tests for L{ollama_proxy.protocol.conversation}: the one walker, through
each dialect's shape, reads every conversation into the same typed turns
as the four walks it replaced (frozen in L{tests.protocol.frozen_walkers}),
and fails with the same message; and its own rules, directly.
"""

from __future__ import annotations

import base64
from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import gemini_request
from ollama_proxy.protocol.anthropic_request import parseConversation
from ollama_proxy.protocol.codec import Obj
from ollama_proxy.protocol.conversation import Shape, Turn, Walker, walk
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.ollama_request import parseMessages
from ollama_proxy.protocol.requests import Message, ToolCallRequest
from ollama_proxy.protocol.responses_request import parseInput
from tests.protocol import frozen_walkers as frozen

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.just([]), st.just({}),
                 st.just(["x"]), st.just(1.5))
"""Values of the wrong type for any field."""

def dialects(bad: bool) -> dict[str, st.SearchStrategy[Any]]:
    """
    Conversations in each dialect: with C{bad}, any field may be junk
    (mostly errors, each at a different place); without, every field is of
    its right type (mostly valid, some values still refused, such as an
    empty id or undecodable base64).
    """

    def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        """Sometimes a field of the right kind, sometimes junk."""
        return st.one_of(*[value] * 8, junk) if bad else value

    def listOf(item: st.SearchStrategy[Any], size: int = 4, least: int = 0) -> st.SearchStrategy[Any]:
        """A list of C{item}, sometimes with junk."""
        return maybe(st.lists(maybe(item), min_size=0 if bad else least, max_size=size))

    text = st.text(alphabet="ab \nE", max_size=4)
    def pick(good: list[Any], wrong: list[Any]) -> st.SearchStrategy[Any]:
        """One of C{good}, or with C{bad} one of C{wrong} too."""
        return st.sampled_from(good + wrong if bad else good)

    ident = maybe(pick(["c1", "c2", "fn", "a.b", "Error"], [""]))
    b64 = st.binary(max_size=6).map(lambda raw: base64.b64encode(raw).decode())
    data = maybe(st.one_of(b64, b64, b64, pick(["data:image/png;base64,AA==", "iVBORw0KGgo=\n"],
                                                  ["@@", "YQ", ""])))


    def obj(required: dict[str, st.SearchStrategy[Any]] | None = None,
            **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
        """An object with C{required} (with C{bad}, maybe not) and any subset of C{fields}."""
        if bad:
            return st.fixed_dictionaries({}, optional={**(required or {}), **fields})
        return st.fixed_dictionaries(required or {}, optional=fields)


    # Anthropic ---------------------------------------------------------------

    anthropicImage = obj({"type": st.just("image"), "source": maybe(obj(
        {"type": pick(["base64", "url"], ["file"]), "data": data,
         "media_type": pick(["image/png"], [""]), "url": maybe(st.just("https://x/y.png"))},
    ))})
    anthropicText = obj({"type": st.just("text"), "text": maybe(text)})
    anthropicBlock = st.one_of(
        anthropicText, anthropicImage,
        obj({"type": st.just("tool_use"), "id": ident, "name": ident},
            input=st.one_of(st.just({"a": 1}), st.just('{"b":2}'), st.none())),
        obj({"type": st.just("tool_result"), "tool_use_id": ident}, is_error=st.booleans(),
            content=st.one_of(text, st.lists(maybe(st.one_of(anthropicText, anthropicImage)), max_size=3),
                              )),
        obj(type=st.just("thinking"), thinking=maybe(text)),
        st.just({"type": "redacted_thinking", "data": "x"}),
    )
    anthropicConversation = listOf(obj(
        {"role": pick(["user", "assistant", "system"], ["tool"]),
         "content": maybe(st.one_of(text, listOf(anthropicBlock)))},
    ), size=5, least=1)


    # Responses ---------------------------------------------------------------

    responsesPart = st.one_of(
        obj(type=st.sampled_from(["input_text", "output_text", "text", "summary_text", "reasoning_text"]),
            text=maybe(text)),
        obj(type=st.just("refusal"), refusal=maybe(text)),
        obj(type=st.just("input_image"), image_url=st.one_of(
            st.just("https://x/i.png"), st.just(""), st.just({"url": "data:image/png;base64,AA=="}), maybe(st.none()))),
        pick([{"type": "input_text", "text": "c"}], [{"type": "input_file"}, {"type": "audio"}]),
    )
    responsesContent = st.one_of(text, listOf(responsesPart, 3))
    responsesItem = st.one_of(
        obj({"type": st.just("message"), "role": pick(["user", "system", "developer", "assistant"], ["x"]),
             "content": responsesContent}),
        obj({"role": st.sampled_from(["user", "assistant"]), "content": responsesContent}),
        obj({"type": st.just("function_call"), "call_id": maybe(text), "name": maybe(text)},
            namespace=maybe(st.just("mcp__node")), arguments=maybe(pick(["", '{"a":1}'], []))),
        obj({"type": st.just("custom_tool_call"), "call_id": maybe(text), "name": maybe(text),
             "input": maybe(text)}),
        obj({"type": st.sampled_from(["function_call_output", "custom_tool_call_output"]),
             "call_id": maybe(text), "output": responsesContent}),
        obj({"type": st.just("reasoning")}, content=listOf(responsesPart, 2),
            summary=listOf(responsesPart, 2)),
        pick([{"type": "web_search_call"}, {"type": "compaction"}],
             [{"type": "item_reference", "id": "x"}, {"type": "weird"}, {"content": "no type"}]),
    )
    responsesInput = st.one_of(text, listOf(responsesItem, 6))


    # Gemini ------------------------------------------------------------------

    geminiPart = st.one_of(
        obj(text=maybe(text), thought=st.booleans(), thoughtSignature=st.just("sig")),
        obj(inlineData=maybe(obj(mimeType=st.sampled_from(["image/png", "audio/wav"]), data=data))),
        obj(inline_data=maybe(obj(mime_type=st.just("image/jpeg"), data=data))),
        obj(fileData=maybe(obj(mimeType=st.sampled_from(["image/png", "video/mp4"]),
                               fileUri=st.sampled_from(["https://x/i.png", "gs://b/i.png"])))),
        obj(functionCall=maybe(obj({"name": ident}, id=ident,
                                   args=pick([{"q": [1]}, None], ["s"])))),
        obj(function_call=maybe(obj(name=ident))),
        obj(functionResponse=maybe(obj({"name": ident}, id=ident, parts=st.just([]),
                                       response=maybe(st.just({"r": "ok"}))))),
        obj(executableCode=st.just({"code": "x"}), videoMetadata=st.just({})),
    )
    geminiContents = listOf(obj(
        {"parts": listOf(geminiPart)}, role=pick(["user", "model", "function", ""], ["system"]),
    ), size=5, least=1)


    # Ollama ------------------------------------------------------------------

    ollamaMessages = st.one_of(st.none(), listOf(obj(
        {"role": maybe(pick(["user", "Assistant", "assistant", "system", "tool"], [""]))},
        content=maybe(text),
        images=listOf(data, 2),
        tool_calls=listOf(obj({"function": maybe(obj(
            {"name": maybe(text)}, arguments=st.one_of(st.just({"a": 1}), st.just("{}"), st.none())))},
            id=ident)),
        tool_call_id=ident, tool_name=ident, name=ident, thinking=maybe(text),
    ), size=5))


    return {"anthropic": anthropicConversation, "responses": responsesInput,
            "gemini": geminiContents, "ollama": ollamaMessages}


GOOD, BAD = dialects(False), dialects(True)


def either(name: str) -> st.SearchStrategy[Any]:
    """A dialect's conversations, good or bad."""
    return st.one_of(GOOD[name], BAD[name])


def outcome(parse: Callable[[], object]) -> tuple[str, object]:
    """
    What a parse gives: its value, or the error's type, message and
    C{param} (a Responses L{Unsupported}).
    """
    try:
        return "ok", parse()
    except BadRequest as e:
        return "error", (type(e).__name__, str(e), getattr(e, "param", None))


class SameAsBeforeTests(SynchronousTestCase):
    """
    Random conversations, valid and not, in every dialect: the walker
    gives what the dialect's own walk gave.
    """

    @SETTINGS
    @given(either("anthropic"))
    def test_anthropic(self, messages: object) -> None:
        self.assertEqual(outcome(lambda: parseConversation(messages)),
                         outcome(lambda: frozen.parseConversation(messages)))

    @SETTINGS
    @given(either("responses"))
    def test_responses(self, value: object) -> None:
        self.assertEqual(outcome(lambda: parseInput(value)), outcome(lambda: frozen.parseInput(value)))

    @SETTINGS
    @given(either("gemini"))
    def test_gemini(self, contents: object) -> None:
        """
        The same turns, and the same dropped fields in the same order.
        """
        def new() -> object:
            dropped = gemini_request._Dropped()
            return walk(contents, gemini_request._Contents(dropped)), tuple(dropped.paths)

        def old() -> object:
            dropped = frozen._Dropped()
            return frozen._contents(contents, dropped), tuple(dropped.paths)

        self.assertEqual(outcome(new), outcome(old))

    @SETTINGS
    @given(either("ollama"))
    def test_ollama(self, messages: object) -> None:
        self.assertEqual(outcome(lambda: parseMessages(messages)),
                         outcome(lambda: frozen.parseMessages(messages)))

    def test_strategiesReachEveryBranch(self) -> None:
        """
        The strategies are not vacuous: hand-picked draws of each reach
        both outcomes (a walk that always failed would compare equal).
        """
        self.assertEqual(outcome(lambda: parseConversation([{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": [
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]},
            {"type": "text", "text": "and"}]}])), ("ok", (
                Message("tool", "", toolCallId="c1"),
                Message("user", "", ("https://x/y.png",)),
                Message("user", "and"))))
        self.assertEqual(outcome(lambda: parseInput([{"type": "message", "role": "x"}]))[0], "error")


class _Lines(Shape):
    """
    A toy dialect: entries C{{"line": "role: text|text"}}, C{"call: name"}
    and C{"think: text"}, parts C{{"p": ...}}, to check the walker's rules
    without any real dialect.
    """

    name = "lines"
    missing = "lines is required"
    notEntry = "{where}: expected a line"
    partKey = "/"
    notPart = "{at}: expected a part"

    def entry(self, entry: Obj, where: str, walker: Walker) -> None:
        role, _, rest = str(entry["line"]).partition(": ")
        if role == "call":
            walker.call(ToolCallRequest(None, rest, "{}"))
        elif role == "think":
            walker.thought(rest)
        elif "|" in rest:
            parts: list[object] = [{"p": p} if p != "junk" else p for p in rest.split("|")]
            walker.turn(role, parts, where)
        else:
            walker.turn(role, rest, where)

    def part(self, part: Obj, at: str, turn: Turn) -> None:
        value = str(part["p"])
        if value.startswith("result "):
            turn.results.append(Message("tool", value[7:]))
        elif value.startswith("img "):
            turn.resultImages.append(value[4:])
        elif value == "bad":
            raise BadRequest(f"{at}: bad part")
        elif value:
            turn.texts.append(value)


class _Turns(Shape):
    """
    A toy dialect whose entries are turns, read by the shape's data alone
    (no C{entry} of its own): roles C{q} and C{a}, a missing role is C{q},
    content at C{c} and only as parts C{{"p": ...}}.
    """

    name = "turns"
    roles = {"q": "user", "a": "assistant"}
    defaultRole = "q"
    badRole = "{where}: no role {role!r}"
    contentKey = "c"
    textContent = False
    badContent = "{where}.c: parts, please"

    def part(self, part: Obj, at: str, turn: Turn) -> None:
        turn.texts.append(str(part["p"]))


def lines(*values: object) -> list[object]:
    """Toy entries: strings as lines, anything else as it is."""
    return [{"line": v} if isinstance(v, str) else v for v in values]


class WalkerTests(SynchronousTestCase):
    """
    The walker's own rules, through a toy shape.
    """

    def test_missing(self) -> None:
        """
        No list, or an empty one, is the shape's C{missing} message.
        """
        values: list[object] = [None, [], "x"]
        for value in values:
            with self.assertRaises(BadRequest) as e:
                walk(value, _Lines())
            self.assertEqual(str(e.exception), "lines is required")

    def test_turnsAsData(self) -> None:
        """
        A shape that names its roles, its content's field and its words
        reads its turns without an C{entry} of its own: each role becomes
        the hub's, a missing (or empty) role is the default, and a role or
        content it does not take is refused in its words.
        """
        self.assertEqual(
            walk([{"role": "q", "c": [{"p": "x"}, {"p": "y"}]}, {"role": "a", "c": [{"p": "z"}]},
                  {"c": [{"p": "w"}]}, {"role": "", "c": []}], _Turns()),
            (Message("user", "xy"), Message("assistant", "z"), Message("user", "w"),
             Message("user", "")))
        for entries, message in [
            ([{"role": "user", "c": []}], "turns[0]: no role 'user'"),
            ([{"c": []}, {"role": ["q"], "c": []}], "turns[1]: no role ['q']"),
            ([{"role": "a", "c": "text"}], "turns[0].c: parts, please"),
            ([{"role": "a"}], "turns[0].c: parts, please"),
        ]:
            with self.assertRaises(BadRequest) as e:
                walk(entries, _Turns())
            self.assertEqual(str(e.exception), message)
        # The default shape takes plain text as a turn's content.
        default = Shape()
        self.assertEqual(walk([{"role": "system", "content": "s"}], default),
                         (Message("system", "s"),))

    def test_positions(self) -> None:
        """
        An entry's path is C{name[i]}, a part's the shape's C{partPath}.
        """
        with self.assertRaises(BadRequest) as e:
            walk(lines("user: a", 3), _Lines())
        self.assertEqual(str(e.exception), "lines[1]: expected a line")
        with self.assertRaises(BadRequest) as e:
            walk(lines("user: a", "user: x|bad"), _Lines())
        self.assertEqual(str(e.exception), "lines[1]/[1]: bad part")
        with self.assertRaises(BadRequest) as e:
            walk(lines("user: x|junk"), _Lines())
        self.assertEqual(str(e.exception), "lines[0]/[1]: expected a part")

    def test_resultsFirst(self) -> None:
        """
        A turn's results go before its own message, the results' images
        after them as a user turn; a turn of results only has no message.
        """
        self.assertEqual(walk(lines("user: result r1|img u|hi", "user: result r2|"), _Lines()), (
            Message("tool", "r1"), Message("user", "", ("u",)), Message("user", "hi"),
            Message("tool", "r2"),
        ))

    def test_callsJoinTheAssistantTurn(self) -> None:
        """
        A call entry joins the assistant turn before it, or opens one with
        the reasoning that was waiting; a later assistant turn takes the
        rest.
        """
        self.assertEqual(walk(lines("assistant: a", "call: f", "call: g", "user: u", "think: t",
                                    "call: h", "think: s", "assistant: b"), _Lines()), (
            Message("assistant", "a", toolCalls=(ToolCallRequest(None, "f", "{}"),
                                                 ToolCallRequest(None, "g", "{}"))),
            Message("user", "u"),
            Message("assistant", "", toolCalls=(ToolCallRequest(None, "h", "{}"),), thinking="t"),
            Message("assistant", "b", thinking="s"),
        ))

    def test_thinkingOnlyForTheAssistant(self) -> None:
        """
        Waiting reasoning is not a user turn's; it waits for the assistant.
        """
        self.assertEqual(walk(lines("think: t", "user: u", "assistant: a"), _Lines()), (
            Message("user", "u"), Message("assistant", "a", thinking="t"),
        ))
