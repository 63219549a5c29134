"""
Tests for L{ollama_proxy.protocol.responses_request}: Responses bodies
validated into the hub's typed request (stateless; namespace and custom
tools flattened), and the context its reply needs.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.openai_request import chatBody
from ollama_proxy.protocol.requests import Message, ToolCallRequest
from ollama_proxy.protocol.responses_request import (
    ToolName,
    Unsupported,
    flatName,
    parseResponsesRequest,
)


def parse(**fields: Any) -> Any:
    return parseResponsesRequest({"model": "gpt-5-codex", **fields})


class RequestTests(SynchronousTestCase):
    """
    The parser.
    """

    def test_stateful(self) -> None:
        """
        Server-side state the proxy does not keep is refused, naming the
        field; null or empty values are absent.
        """
        for field, value in (("previous_response_id", "resp_1"), ("conversation", "conv_1"),
                             ("conversation", {"id": "c"}), ("background", True)):
            with self.assertRaises(Unsupported) as e:
                parse(input="hi", **{field: value})
            self.assertEqual(e.exception.param, field)
            self.assertTrue(e.exception.message.startswith(f"{field} is not supported"))
        parse(input="hi", previous_response_id=None, conversation=None, background=False)
        with self.assertRaises(Unsupported) as e:
            parse(input=[{"type": "item_reference", "id": "msg_1"}])
        self.assertEqual(e.exception.param, "input")

    def test_invalid(self) -> None:
        """
        Precise 400 messages.
        """
        cases: list[tuple[dict[str, Any], str]] = [
            ({"model": None, "input": "x"}, "model is required"),
            ({"input": [{"type": "zap"}]}, 'input[0]: unknown input item type: "zap"'),
            ({"input": [{"content": "x"}]}, "input[0]: input item missing required 'type' field"),
            ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
             "file inputs are not currently supported"),
            ({"input": [{"role": "user", "content": [{"type": "audio"}]}]},
             "input[0]: content[0]: unknown content type: audio"),
            ({"input": "x", "reasoning": {"effort": "huge"}},
             'invalid reasoning value: "huge" (must be "minimal", "low", "medium", "high", '
             '"xhigh", "ultra", "max", or "none")'),
            ({"input": "x", "max_output_tokens": 0}, "max_output_tokens must be positive"),
            ({"input": []}, "input is required"),
            ({"input": "x", "tools": [{"type": "function"}]},
             "tools[0]: missing required 'name' field"),
        ]
        for fields, message in cases:
            with self.assertRaises(BadRequest, msg=repr(fields)) as e:
                parse(**fields)
            self.assertEqual(e.exception.message, message)

    def test_input(self) -> None:
        """
        Items as turns: developer is system, calls merge into the assistant
        turn (with the reasoning before them), outputs are tool messages,
        namespaced and custom calls re-flattened, hosted-tool history
        skipped.
        """
        request, _ = parse(instructions="Be terse.", input=[
            {"role": "developer", "content": "rules"},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "see "},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "hm"}]},
            {"type": "function_call", "call_id": "c1", "name": "js", "namespace": "mcp__node",
             "arguments": '{"code":"1"}'},
            {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "P"},
            {"type": "web_search_call", "id": "ws_1"},
            {"type": "function_call_output", "call_id": "c1", "output": "2"},
            {"type": "custom_tool_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "done"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        ])
        self.assertEqual(request.messages, (
            Message("system", "Be terse."),
            Message("system", "rules"),
            Message("user", "see ", ("data:image/png;base64,AAAA",)),
            Message("assistant", "", toolCalls=(
                ToolCallRequest("c1", "mcp__node__js", '{"code":"1"}'),
                ToolCallRequest("c2", "apply_patch", '{"input":"P"}'),
            ), thinking="hm"),
            Message("tool", "2", toolCallId="c1"),
            Message("tool", "done", toolCallId="c2"),
            Message("assistant", "ok"),
        ))

    def test_openAIBody(self) -> None:
        """
        What reaches the backend: function tools (flat, namespace members
        flattened, custom tools as one-string functions, hosted tools
        dropped), the tool choice, limits, reasoning, the JSON schema; no
        Responses-only field.
        """
        request, ctx = parse(
            input="hi", stream=True, max_output_tokens=50, temperature=0.2, top_p=0.5,
            tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"},
                    "strict": True},
                   {"type": "namespace", "name": "mcp__node", "tools": [
                       {"type": "function", "name": "js", "description": "run"}]},
                   {"type": "custom", "name": "apply_patch", "description": "patch"},
                   {"type": "web_search"}],
            tool_choice={"type": "function", "name": "get_weather"}, parallel_tool_calls=False,
            reasoning={"effort": "minimal", "summary": "auto"},
            text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"}}},
            store=False, include=["reasoning.encrypted_content"], prompt_cache_key="k",
            client_metadata={"a": "b"},
        )
        self.assertEqual(chatBody(request, "qwen3"), {
            "model": "qwen3", "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 50, "temperature": 0.2, "top_p": 0.5,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "response", "schema": {"type": "object"}}},
            "tools": [
                {"type": "function", "function": {"name": "get_weather",
                                                  "parameters": {"type": "object"}, "strict": True}},
                {"type": "function", "function": {"name": "mcp__node__js", "description": "run",
                                                  "parameters": {"type": "object", "properties": {}}}},
                {"type": "function", "function": {
                    "name": "apply_patch", "description": "patch",
                    "parameters": {"type": "object", "properties": {"input": {
                        "type": "string", "description": "the raw tool input"}},
                        "required": ["input"]}}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "reasoning_effort": "low",
        })
        self.assertEqual(ctx.names, {"mcp__node__js": ToolName("js", "mcp__node"),
                                     "apply_patch": ToolName("apply_patch", custom=True)})
        self.assertEqual(parse(input="x", reasoning={"effort": "none"})[0].think, False)

    def test_flatName(self) -> None:
        """
        Namespaced names join with C{__} (once), are cleaned to OpenAI's
        alphabet and shortened past 64 characters, distinctly.
        """
        self.assertEqual(flatName("mcp__node", "js"), "mcp__node__js")
        self.assertEqual(flatName("mcp__node__", "js"), "mcp__node__js")
        self.assertEqual(flatName(None, "node_repl.js"), "node_repl_js")
        long1, long2 = flatName("n" * 40, "a" * 40), flatName("n" * 40, "b" * 40)
        self.assertEqual((len(long1), len(long2)), (64, 64))
        self.assertNotEqual(long1, long2)
