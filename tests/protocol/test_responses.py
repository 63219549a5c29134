"""
The OpenAI Responses dialect: the exact event stream (text, reasoning,
tool calls split across chunks, namespace and custom tools, usage after the
finish, a failure part-way) at every byte split, and the response object
(the request parser's tests are in L{tests.protocol.test_responses_request}).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.events import Reply, StreamFailed, ToolCall, Usage, replyEvents
from ollama_proxy.protocol.backend_reader import ChatStreamReader
from ollama_proxy.protocol.responses import ResponsesDialect, errorObject
from ollama_proxy.protocol.responses_request import ResponsesContext, ToolName
from ollama_proxy.protocol.stream import TranslatedStream
from tests.protocol.helpers import T0, constant, sse
from tests.protocol.test_anthropic import USAGE, chunk, counterIds, events

ECHO: dict[str, Any] = {"instructions": None, "max_output_tokens": None, "parallel_tool_calls": True,
        "reasoning": None, "temperature": 1, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1, "metadata": {}}
NAMES = {"mcp__node__js": ToolName("js", "mcp__node"), "apply_patch": ToolName("apply_patch", custom=True)}


def context(**echo: Any) -> ResponsesContext:
    return ResponsesContext({**ECHO, **echo}, dict(NAMES))


def run(pieces: list[bytes], ctx: ResponsesContext | None = None) -> bytes:
    encoder = ResponsesDialect(ctx or context(), counterIds()).streamEncoder("gpt-5-codex", T0)
    stream = TranslatedStream(ChatStreamReader(constant), encoder)
    return b"".join(stream.feed(p) for p in pieces) + stream.end()


def flat(out: bytes) -> list[tuple[str, Any]]:
    """
    The events with the sequence numbers checked (0, 1, 2, ...) and
    removed, and the response objects cut down to status and output.
    """
    decoded = events(out)
    result = []
    for i, (name, data) in enumerate(decoded):
        assert data.pop("sequence_number") == i, (i, name)
        data.pop("type")
        if "response" in data:
            response = data["response"]
            data = {"status": response["status"], "output": response["output"],
                    "usage": response["usage"], "error": response["error"]}
        result.append((name, data))
    return result


RESP = "resp_000000000000000000000001"
OPENING: list[tuple[str, Any]] = [
    ("response.created", {"status": "in_progress", "output": [], "usage": None, "error": None}),
    ("response.in_progress", {"status": "in_progress", "output": [], "usage": None,
                              "error": None}),
]
FULL_USAGE = {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0},
              "output_tokens": 14, "output_tokens_details": {"reasoning_tokens": 0},
              "total_tokens": 23}


def text(value: str) -> dict[str, Any]:
    return {"type": "output_text", "text": value, "annotations": [], "logprobs": []}


class StreamTests(SynchronousTestCase):
    """
    The event stream, exactly, at every split of the backend's bytes.
    """

    def assertEverySplit(self, stream: bytes) -> bytes:
        whole = run([stream])
        for i in range(len(stream) + 1):
            self.assertEqual(run([stream[:i], stream[i:]]), whole, f"split at {i}")
        return whole

    def test_reasoningThenText(self) -> None:
        """
        Reasoning is a reasoning item with summary deltas, closed before
        the message item opens; the text is closed with its done events;
        usage arriving after the finish is in C{response.completed}.
        """
        stream = sse(chunk(reasoning_content="Need "), chunk(reasoning_content="nothing."),
                     chunk(content="Hel"), chunk(content="lo \u00e9\U0001f600"), chunk("stop"),
                     USAGE) + b"data: [DONE]\n\n"
        out = self.assertEverySplit(stream)
        rs, msg = "rs_000000000000000000000002", "msg_000000000000000000000003"
        summary = {"type": "summary_text", "text": "Need nothing."}
        message = {"id": msg, "type": "message", "status": "completed", "role": "assistant",
                   "content": [text("Hello \u00e9\U0001f600")]}
        reasoning = {"id": rs, "type": "reasoning", "summary": [summary]}
        at = {"output_index": 0}
        self.assertEqual(flat(out), [
            *OPENING,
            ("response.output_item.added", {**at, "item": {"id": rs, "type": "reasoning",
                                                           "summary": []}}),
            ("response.reasoning_summary_part.added", {"item_id": rs, **at, "summary_index": 0,
                                                       "part": {"type": "summary_text", "text": ""}}),
            ("response.reasoning_summary_text.delta", {"item_id": rs, **at, "summary_index": 0,
                                                       "delta": "Need "}),
            ("response.reasoning_summary_text.delta", {"item_id": rs, **at, "summary_index": 0,
                                                       "delta": "nothing."}),
            ("response.reasoning_summary_text.done", {"item_id": rs, **at, "summary_index": 0,
                                                      "text": "Need nothing."}),
            ("response.reasoning_summary_part.done", {"item_id": rs, **at, "summary_index": 0,
                                                      "part": summary}),
            ("response.output_item.done", {**at, "item": reasoning}),
            ("response.output_item.added", {"output_index": 1, "item": {
                "id": msg, "type": "message", "status": "in_progress", "role": "assistant",
                "content": []}}),
            ("response.content_part.added", {"item_id": msg, "output_index": 1,
                                             "content_index": 0, "part": text("")}),
            ("response.output_text.delta", {"item_id": msg, "output_index": 1, "content_index": 0,
                                            "delta": "Hel", "logprobs": []}),
            ("response.output_text.delta", {"item_id": msg, "output_index": 1, "content_index": 0,
                                            "delta": "lo \u00e9\U0001f600", "logprobs": []}),
            ("response.output_text.done", {"item_id": msg, "output_index": 1, "content_index": 0,
                                           "text": "Hello \u00e9\U0001f600", "logprobs": []}),
            ("response.content_part.done", {"item_id": msg, "output_index": 1,
                                            "content_index": 0, "part": text("Hello \u00e9\U0001f600")}),
            ("response.output_item.done", {"output_index": 1, "item": message}),
            ("response.completed", {"status": "completed", "output": [reasoning, message],
                                    "usage": FULL_USAGE, "error": None}),
        ])

    def test_toolCalls(self) -> None:
        """
        A namespaced call comes back split into C{namespace} and C{name};
        a custom tool's call is a C{custom_tool_call} with the raw input;
        arguments split across chunks arrive whole.
        """
        stream = sse(
            chunk(tool_calls=[{"index": 0, "id": "call_1", "function": {"name": "mcp__node__js",
                                                                        "arguments": '{"co'}}]),
            chunk(tool_calls=[{"index": 0, "function": {"arguments": 'de": "1+1"}'}}]),
            chunk(tool_calls=[{"index": 1, "id": "call_2", "function": {
                "name": "apply_patch", "arguments": '{"input": "*** Begin Patch"}'}}]),
            chunk("tool_calls"), USAGE,
        ) + b"data: [DONE]\n\n"
        out = self.assertEverySplit(stream)
        fc, ctc = "fc_000000000000000000000002", "ctc_000000000000000000000003"
        call = {"id": fc, "type": "function_call", "status": "completed", "call_id": "call_1",
                "name": "js", "arguments": '{"code":"1+1"}', "namespace": "mcp__node"}
        custom = {"id": ctc, "type": "custom_tool_call", "status": "completed",
                  "call_id": "call_2", "name": "apply_patch", "input": "*** Begin Patch"}
        self.assertEqual(flat(out), [
            *OPENING,
            ("response.output_item.added", {"output_index": 0, "item": {
                **call, "status": "in_progress", "arguments": ""}}),
            ("response.function_call_arguments.delta", {"item_id": fc, "output_index": 0,
                                                        "delta": '{"code":"1+1"}'}),
            ("response.function_call_arguments.done", {"item_id": fc, "output_index": 0,
                                                       "name": "js", "arguments": '{"code":"1+1"}'}),
            ("response.output_item.done", {"output_index": 0, "item": call}),
            ("response.output_item.added", {"output_index": 1, "item": {
                **custom, "status": "in_progress", "input": ""}}),
            ("response.custom_tool_call_input.delta", {"item_id": ctc, "output_index": 1,
                                                       "delta": "*** Begin Patch"}),
            ("response.custom_tool_call_input.done", {"item_id": ctc, "output_index": 1,
                                                      "input": "*** Begin Patch"}),
            ("response.output_item.done", {"output_index": 1, "item": custom}),
            ("response.completed", {"status": "completed", "output": [call, custom],
                                    "usage": FULL_USAGE, "error": None}),
        ])

    def test_incomplete(self) -> None:
        """
        Cut by C{max_output_tokens}: C{response.incomplete} with the reason;
        a length finish without that limit is C{completed} (Codex retries
        incomplete responses).
        """
        stream = sse(chunk("length", content="x")) + b"data: [DONE]\n\n"
        [*_, (name, data)] = events(run([stream], context(max_output_tokens=1)))
        self.assertEqual((name, data["response"]["status"],
                          data["response"]["incomplete_details"]),
                         ("response.incomplete", "incomplete", {"reason": "max_output_tokens"}))
        [*_, (name, _)] = events(run([stream]))
        self.assertEqual(name, "response.completed")

    def test_failurePartWay(self) -> None:
        """
        A backend error after some text: the text so far, then
        C{response.failed} with the error and no completed items (the open
        message was never finished).
        """
        encoder = ResponsesDialect(context(), counterIds()).streamEncoder("m", T0)
        stream = TranslatedStream(ChatStreamReader(constant), encoder)
        with self.assertRaises(StreamFailed) as e:
            stream.feed(sse(chunk(content="par"), {"error": {"message": "overloaded"}}))
        out = e.exception.output + encoder.error(e.exception.message)
        names = [name for name, _ in flat(out)]
        self.assertEqual(names[-2:], ["response.output_text.delta", "response.failed"])
        self.assertEqual(flat(out)[-1][1], {
            "status": "failed", "output": [], "usage": None,
            "error": {"code": "server_error", "message": "overloaded"}})

    def test_ping(self) -> None:
        """
        The first ping opens the response; later ones are SSE comments.
        """
        encoder = ResponsesDialect(context()).streamEncoder("m", T0)
        self.assertEqual([n for n, _ in events(encoder.ping())],
                         ["response.created", "response.in_progress"])
        self.assertEqual(encoder.ping(), b": keep-alive\n\n")


class ReplyTests(SynchronousTestCase):
    """
    The non-streamed response object.
    """

    def test_response(self) -> None:
        """
        Reasoning, message and function call items (text kept beside the
        calls), the echoed request fields, usage.
        """
        reply = Reply("Checking.", "Need the tool.",
                      (ToolCall("call_a1", "get_weather", {"city": "Paris"}, 0),),
                      "tool_calls", Usage(412, 31), [])
        ctx = context(instructions="terse", reasoning={"effort": "high"})
        obj = ResponsesDialect(ctx, counterIds()).reply(reply, "plain", T0, T0 + 3_000_000_000)
        self.assertEqual(obj["output"], [
            {"id": "rs_000000000000000000000002", "type": "reasoning",
             "summary": [{"type": "summary_text", "text": "Need the tool."}]},
            {"id": "msg_000000000000000000000003", "type": "message", "status": "completed",
             "role": "assistant", "content": [text("Checking.")]},
            {"id": "fc_000000000000000000000004", "type": "function_call", "status": "completed",
             "call_id": "call_a1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        ])
        self.assertEqual(
            {k: obj[k] for k in ("id", "object", "status", "model", "instructions", "reasoning",
                                 "created_at", "completed_at", "tool_choice")},
            {"id": RESP, "object": "response", "status": "completed", "model": "plain",
             "instructions": "terse", "reasoning": {"effort": "high"},
             "created_at": T0 // 10**9, "completed_at": T0 // 10**9 + 3, "tool_choice": "auto"})
        self.assertEqual(obj["usage"]["total_tokens"], 443)

    def test_errors(self) -> None:
        """
        OpenAI's error object; a refused field is named as C{param}.
        """
        self.assertEqual(errorObject(404, "no"), {"error": {
            "message": "no", "type": "invalid_request_error", "param": None,
            "code": "model_not_found"}})
        self.assertEqual(errorObject(400, "x", "conversation")["error"]["code"],
                         "unsupported_parameter")
        self.assertEqual(errorObject(502, "x")["error"]["type"], "server_error")


class SplicedTextTests(SynchronousTestCase):
    """
    The closing events are built around each item's text encoded once: what
    a client decodes is the same as if every event had been encoded whole.
    """

    def test_sameAsWhole(self) -> None:
        """
        A reasoning item and a message with quotes, escapes, non-ASCII,
        NULs and a forged hole (a NUL-wrapped index, as the encoder's
        holes look without their random nonce), then a failure and the
        completed object: every text the closing events and the response
        objects carry is the streamed text, and the streamed response
        object equals the C{stream: false} one.
        """
        thinking = 'a "quoted" \\ think\x00:0\x00 ' * 3
        content = "h\u00e9llo \u2603 \"\x00:1\x00\" \U0001f600\n" * 3
        reply = Reply(content, thinking, (ToolCall("c1", "get_weather", {"q": '"x"'}, 0),),
                      "tool_calls", Usage(1, 2), [])
        dialect = ResponsesDialect(context(), counterIds())
        streamed = events(dialect.streamEncoder("m", T0).whole(reply, T0))
        whole = ResponsesDialect(context(), counterIds()).reply(reply, "m", T0, T0)
        byName = {name: data for name, data in streamed}
        self.assertEqual(byName["response.reasoning_summary_text.done"]["text"], thinking)
        self.assertEqual(byName["response.reasoning_summary_part.done"]["part"]["text"],
                         thinking)
        self.assertEqual(byName["response.output_text.done"]["text"], content)
        self.assertEqual(byName["response.content_part.done"]["part"]["text"], content)
        items = [data["item"] for name, data in streamed if name == "response.output_item.done"]
        self.assertEqual(items, whole["output"])
        completed = byName["response.completed"]["response"]
        self.assertEqual(completed["output"], whole["output"])
        self.assertEqual(completed, {**whole, "id": completed["id"]})
        # A client's text that looks like a hole of another stream (its
        # nonce is not this stream's) is echoed as it was.
        forged = "\x000123456789abcdef:0\x00"
        echoing = ResponsesDialect(context(instructions=forged), counterIds())
        done = events(echoing.streamEncoder("m", T0).whole(reply, T0))
        self.assertEqual(done[-1][1]["response"]["instructions"], forged)
        self.assertEqual(done[-1][1]["response"]["output"], whole["output"])
        # A stream that fails after every item closed (the Finish never
        # came): response.failed carries the same items.
        failing = ResponsesDialect(context(), counterIds()).streamEncoder("m", T0)
        failing.encode(replyEvents(reply, T0)[:-1])
        failed = events(failing.error("boom"))[-1][1]["response"]
        self.assertEqual(failed["output"], whole["output"])
