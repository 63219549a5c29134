"""
Tests for L{ollama_proxy.protocol.anthropic_request}: Anthropic Messages bodies
validated into the hub's typed request, with Ollama's messages.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.anthropic_request import parseMessagesRequest
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.requests import estimateTokens
from ollama_proxy.protocol.openai_request import chatBody
from ollama_proxy.protocol.requests import Message, ToolCallRequest
from tests.protocol.helpers import b64, PNG


BASE = {"model": "claude-sonnet-4-5", "max_tokens": 100}


def parse(**fields: Any) -> Any:
    return parseMessagesRequest({**BASE, **fields})


class RequestTests(SynchronousTestCase):
    """
    The parser: validation messages and the typed request.
    """

    def test_invalid(self) -> None:
        """
        Bad bodies get a precise 400 message (Ollama's wording where it has
        one).
        """
        user = [{"role": "user", "content": "hi"}]
        for body, message in [
            ([], "request body must be a JSON object"),
            ({"max_tokens": 1, "messages": user}, "model is required"),
            ({"model": "m", "messages": user}, "max_tokens is required and must be positive"),
            ({"model": "m", "max_tokens": 0, "messages": user},
             "max_tokens is required and must be positive"),
            ({**BASE, "messages": []}, "messages is required"),
            ({**BASE, "messages": [{"role": "tool", "content": "x"}]},
             "messages[0].role: expected \"user\" or \"assistant\", got 'tool'"),
            ({**BASE, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
             "messages[0].content[0]: invalid image source"),
            ({**BASE, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": "!!"}}]}]},
             "messages[0].content[0]: invalid base64 image data: Only base64 data is allowed"),
            ({**BASE, "messages": [{"role": "assistant", "content": [
                {"type": "tool_use", "name": "x", "input": {}}]}]},
             "messages[0].content[0]: tool_use block missing required 'id' field"),
            ({**BASE, "messages": user, "tools": [{"name": "t", "input_schema": 3}]},
             'invalid input_schema for tool "t": expected an object'),
            ({**BASE, "messages": user, "tool_choice": {"type": "sometimes"}},
             "tool_choice.type: expected auto, any, tool or none, got 'sometimes'"),
            ({**BASE, "messages": user, "thinking": {"type": "maybe"}},
             'thinking.type: expected "enabled", "disabled" or "adaptive"'),
            ({**BASE, "messages": user, "temperature": "hot"}, "temperature: expected a number"),
            ({**BASE, "messages": user, "stream": "yes"}, "stream: expected a boolean"),
        ]:
            with self.assertRaises(BadRequest, msg=repr(body)) as e:
                parseMessagesRequest(body)
            self.assertEqual(e.exception.message, message)

    def test_conversation(self) -> None:
        """
        System blocks are joined; tool results come before the user's text
        as tool messages (errors marked), their images in a user turn after
        them; assistant tool_use blocks are tool calls with JSON arguments,
        thinking is the turn's reasoning; images are data URLs.
        """
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": b64(PNG)}}
        request = parse(
            system=[{"type": "text", "text": "A", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "B"}],
            messages=[
                {"role": "user", "content": [{"type": "text", "text": "look"}, image]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "sig"},
                    {"type": "text", "text": "ok"},
                    {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"p": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                     "content": [{"type": "text", "text": "no such file"}, image]},
                    {"type": "text", "text": "go on"}]},
                {"role": "system", "content": "mid"},
            ],
        )
        url = "data:image/png;base64," + b64(PNG)
        self.assertEqual(request.messages, (
            Message("system", "A\n\nB"),
            Message("user", "look", (url,)),
            Message("assistant", "ok", toolCalls=(ToolCallRequest("toolu_1", "read", '{"p":1}'),),
                    thinking="hm"),
            Message("tool", "Error: no such file", toolCallId="toolu_1"),
            Message("user", "", (url,)),
            Message("user", "go on"),
            Message("system", "mid"),
        ))

    def test_openAIBody(self) -> None:
        """
        What reaches an OpenAI backend: sampling, stops, function tools
        (server tools and Anthropic-only fields dropped), the tool choice,
        reasoning, the JSON schema.
        """
        request = parse(
            messages=[{"role": "user", "content": "hi"}],
            temperature=0.5, top_p=0.9, top_k=40, stop_sequences=["END"], stream=True,
            tools=[{"name": "get_weather", "description": "Weather",
                    "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}},
                   {"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            thinking={"type": "enabled", "budget_tokens": 2048},
            output_config={"effort": "xhigh", "format": {"type": "json_schema",
                                                         "schema": {"type": "object"}}},
            metadata={"user_id": "u"}, context_management={"edits": []},
        )
        self.assertEqual(chatBody(request, "qwen3"), {
            "model": "qwen3",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["END"],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "response", "schema": {"type": "object"}}},
            "tools": [{"type": "function", "function": {
                "name": "get_weather", "parameters": {"type": "object"}, "description": "Weather"}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": False,
            "reasoning_effort": "high",
        })

    def test_thinking(self) -> None:
        """
        C{thinking} and C{output_config.effort} as the reasoning switch.
        """
        user = [{"role": "user", "content": "hi"}]
        cases: list[tuple[dict[str, Any], Any]] = [
            ({}, None),
            ({"thinking": {"type": "adaptive"}}, None),
            ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, True),
            ({"thinking": {"type": "disabled"}, "output_config": {"effort": "high"}}, False),
            ({"output_config": {"effort": "low"}}, "low"),
            ({"thinking": {"type": "adaptive"}, "output_config": {"effort": "max"}}, "max"),
        ]
        for fields, think in cases:
            self.assertEqual(parse(messages=user, **fields).think, think, fields)

    def test_toolChoices(self) -> None:
        """
        C{auto}, C{any} and C{none} as OpenAI's strings.
        """
        user = [{"role": "user", "content": "hi"}]
        for kind, choice in (("auto", "auto"), ("any", "required"), ("none", "none")):
            self.assertEqual(parse(messages=user, tool_choice={"type": kind}).toolChoice, choice)

    def test_countTokens(self) -> None:
        """
        A count_tokens body needs no C{max_tokens}; the estimate is about
        a quarter of the characters, never 0.
        """
        request = parseMessagesRequest(
            {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}, counting=True
        )
        self.assertEqual(estimateTokens(request), 101)
        tiny = parseMessagesRequest(
            {"model": "m", "messages": [{"role": "user", "content": ""}]}, counting=True
        )
        self.assertEqual(estimateTokens(tiny), 1)
