"""
Tool-call ids unique within the conversation: the ids each dialect's parser
finds in a request's history, the rewriter over events and whole replies,
and the same rewriter in front of each real dialect's encoder (every stream
event that names a call names the same, fresh id).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.anthropic import AnthropicDialect
from ollama_proxy.protocol.anthropic_request import parseMessagesRequest
from ollama_proxy.protocol.events import Delta, Finish, Reply, ToolCall, ToolCalls, Usage
from ollama_proxy.protocol.ollama import OllamaDialect
from ollama_proxy.protocol.ollama_request import parseChat
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.requests import ChatRequest, Message, ToolCallRequest
from ollama_proxy.protocol.responses import ResponsesDialect
from ollama_proxy.protocol.responses_request import parseResponsesRequest
from ollama_proxy.protocol.stream import TranslatedStream
from ollama_proxy.protocol.toolids import ToolIds, freshId, historyIds, uniqueToolIds
from tests.protocol.helpers import T0, constant, lines, sse
from tests.protocol.test_anthropic import counterIds, events


def numbered() -> Callable[[], str]:
    """
    @return: an id maker giving C{new_1}, C{new_2}, ...
    """
    count = [0]

    def make() -> str:
        count[0] += 1
        return f"new_{count[0]}"

    return make


def call(callId: str, position: int = 0, name: str = "ls") -> ToolCall:
    return ToolCall(callId, name, {"path": "."}, position)


def backendCalls(*ids: str) -> bytes:
    """
    A backend's stream calling C{ls} once per id, then finishing.
    """
    return sse(
        *({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i, "id": callId, "type": "function",
             "function": {"name": "ls", "arguments": '{"path": "."}'}}]},
            "finish_reason": None}]} for i, callId in enumerate(ids)),
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )


class HistoryTests(SynchronousTestCase):
    """
    L{historyIds} over what each dialect's parser makes of a conversation.
    """

    def test_anthropic(self) -> None:
        """
        C{tool_use} ids and C{tool_result} references are taken.
        """
        request = parseMessagesRequest({"model": "m", "max_tokens": 5, "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_1", "name": "ls", "input": {}},
                {"type": "tool_use", "id": "call_0", "name": "ls", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a"},
                {"type": "tool_result", "tool_use_id": "orphan", "content": "b"}]}]})
        self.assertEqual(historyIds(request.messages), {"toolu_1", "call_0", "orphan"})

    def test_responses(self) -> None:
        """
        C{function_call} and C{function_call_output} C{call_id}s are taken.
        """
        request, _ = parseResponsesRequest({"model": "m", "input": [
            {"role": "user", "content": "hi"},
            {"type": "function_call", "call_id": "call_0", "name": "ls", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_0", "output": "a"}]})
        self.assertEqual(historyIds(request.messages), {"call_0"})

    def test_ollama(self) -> None:
        """
        Ollama history calls with an id are taken; calls without one (and
        tool results naming only a function) take nothing.
        """
        request = parseChat({"model": "m", "messages": [
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_7", "function": {"name": "ls", "arguments": {}}},
                {"function": {"name": "ls", "arguments": {}}}]},
            {"role": "tool", "content": "a", "tool_name": "ls"}]})
        self.assertEqual(historyIds(request.messages), {"call_7"})


class ToolIdsTests(SynchronousTestCase):
    """
    L{ToolIds}: taken ids replaced, others kept.
    """

    def test_keepsUnique(self) -> None:
        """
        An id the conversation does not hold is returned as the backend
        sent it (the same object).
        """
        ids = ToolIds({"call_1"}, numbered())
        original = call("call_2")
        self.assertIs(ids.call(original), original)

    def test_replacesHistoryAndRepeats(self) -> None:
        """
        An id in the history, or given earlier in the same reply, gets a
        fresh one; the call is otherwise unchanged.
        """
        ids = ToolIds({"call_0"}, numbered())
        self.assertEqual(ids.calls((call("call_0", 0), call("x", 1), call("x", 2))),
                         (call("new_1", 0), call("x", 1), call("new_2", 2)))

    def test_freshNeverTaken(self) -> None:
        """
        A fresh id that happens to be taken too is drawn again.
        """
        ids = ToolIds({"call_0", "new_1", "new_2"}, numbered())
        self.assertEqual(ids.call(call("call_0")).id, "new_3")

    def test_acrossEvents(self) -> None:
        """
        Ids stay unique across the events of one reply; a read without
        tool calls comes back as the same list, untouched.
        """
        ids = ToolIds(set(), numbered())
        plain = [Delta("a"), Delta("b")]
        self.assertIs(ids.events(plain), plain)
        first = ids.events([Delta("a"), ToolCalls((call("c"),))])
        second = ids.events([ToolCalls((call("c"),)), Finish("tool_calls", Usage(), None, 1)])
        self.assertEqual(first, [Delta("a"), ToolCalls((call("c"),))])
        self.assertEqual(second[0], ToolCalls((call("new_1"),)))

    def test_reply(self) -> None:
        """
        A whole reply's calls are rewritten the same way; a reply without
        calls is returned as it is.
        """
        ids = ToolIds({"call_0"}, numbered())
        reply = Reply("", "", (call("call_0"),), "tool_calls", Usage(), [])
        self.assertEqual(ids.reply(reply).toolCalls, (call("new_1"),))
        text = Reply("hi", "", (), "stop", Usage(), [])
        self.assertIs(ids.reply(text), text)

    def test_freshIds(self) -> None:
        """
        The default fresh ids are OpenAI-shaped and differ.
        """
        made = {freshId() for _ in range(50)}
        self.assertEqual(len(made), 50)
        self.assertTrue(all(i.startswith("call_") and len(i) == 29 for i in made))


def taking(*ids: str) -> ChatRequest:
    """
    @return: a request whose history holds a call with each id.
    """
    return ChatRequest("m", (
        Message("user", "hi"),
        Message("assistant", "", toolCalls=tuple(ToolCallRequest(i, "ls", "{}") for i in ids)),
        *(Message("tool", "a", toolCallId=i) for i in ids),
    ))


class DialectTests(SynchronousTestCase):
    """
    L{uniqueToolIds} in front of each real dialect: the backend reuses the
    history's id, the client gets a fresh one wherever the call appears.
    """

    def stream(self, dialect: Any, *ids: str) -> bytes:
        wrapped = uniqueToolIds(dialect, taking("call_0"), numbered())
        stream = TranslatedStream(ChatStreamReader(constant), wrapped.streamEncoder("m", T0))
        return stream.feed(backendCalls(*ids)) + stream.end()

    def test_anthropic(self) -> None:
        """
        Anthropic: the C{tool_use} blocks' ids, streamed and whole.
        """
        out = events(self.stream(AnthropicDialect(1, counterIds()), "call_0", "call_1"))
        blocks = [data["content_block"]["id"] for name, data in out
                  if name == "content_block_start"]
        self.assertEqual(blocks, ["new_1", "call_1"])
        reply = Reply("", "", (call("call_0"),), "tool_calls", Usage(), [])
        whole = uniqueToolIds(AnthropicDialect(1), taking("call_0"), numbered())
        message: Any = whole.reply(reply, "m", T0, T0)
        self.assertEqual(message["content"][0]["id"], "new_1")
        streamed = events(whole.streamEncoder("m", T0).whole(reply, T0))
        self.assertIn("new_2", [data["content_block"]["id"] for name, data in streamed
                                if name == "content_block_start"])

    def test_responses(self) -> None:
        """
        Responses: the C{call_id} of the item when added, when done, and in
        the completed response's output.
        """
        _, context = parseResponsesRequest({"model": "m", "input": "hi"})
        out = events(self.stream(ResponsesDialect(context, counterIds()), "call_0", "call_0"))
        added = [d["item"]["call_id"] for n, d in out if n == "response.output_item.added"]
        done = [d["item"]["call_id"] for n, d in out if n == "response.output_item.done"]
        [completed] = [d["response"] for n, d in out if n == "response.completed"]
        self.assertEqual(added, ["new_1", "new_2"])
        self.assertEqual(done, added)
        self.assertEqual([item["call_id"] for item in completed["output"]], added)
        whole = uniqueToolIds(ResponsesDialect(context), taking("call_0"), numbered())
        response: Any = whole.reply(Reply("", "", (call("call_0"),), "tool_calls", Usage(), []),
                                    "m", T0, T0)
        self.assertEqual(response["output"][0]["call_id"], "new_1")

    def test_ollama(self) -> None:
        """
        Ollama: the C{tool_calls} ids of the streamed line and of the whole
        answer.
        """
        out = lines(self.stream(OllamaDialect("chat", constant), "call_0"))
        self.assertEqual([c["id"] for line in out for c in line["message"].get("tool_calls", [])],
                         ["new_1"])
        whole = uniqueToolIds(OllamaDialect("chat", constant), taking("call_0"), numbered())
        answer: Any = whole.reply(Reply("", "", (call("call_0"),), "tool_calls", Usage(), []),
                                  "m", T0, T0)
        self.assertEqual(answer["message"]["tool_calls"][0]["id"], "new_1")

    def test_encoderMadeBefore(self) -> None:
        """
        An encoder made before the hook (the keep-alives' own) and handed
        to it rewrites the reply's ids as a fresh one from the wrapper
        does: it is the same stream.
        """
        dialect = AnthropicDialect(1, counterIds())
        early = dialect.streamEncoder("m", T0)
        unique = uniqueToolIds(dialect, taking("call_0"), numbered(), encoder=early)
        self.assertIs(early.filter, unique.ids)
        out = events(early.encode([ToolCalls((call("call_0"),))]))
        starts = [data for kind, data in out if kind == "content_block_start"]
        self.assertEqual(starts[0]["content_block"]["id"], "new_1")

    def test_errorPassesThrough(self) -> None:
        """
        The wrapped encoder's content type and mid-stream error are the
        dialect's own.
        """
        dialect = AnthropicDialect(1, counterIds())
        wrapped = uniqueToolIds(dialect, taking(), numbered()).streamEncoder("m", T0)
        inner = dialect.streamEncoder("m", T0)
        self.assertEqual(wrapped.contentType, inner.contentType)
        self.assertEqual(events(wrapped.error("boom"))[-1][1]["error"]["message"], "boom")
