"""
The coding agents' APIs over real sockets, driven by the official SDKs:
C{anthropic} on the proxy's base URL (as Claude Code is pointed at it) and
C{openai}'s Responses client on C{<proxy>/v1} (as Codex and Copilot CLI
are), against C{twistd -n ollama-proxy} in front of C{twistd -n
fake-openai}.  Every call asserts values computed from what the fake
backend is known to answer; tool round trips are checked on what the
backend received.
"""

from __future__ import annotations

import urllib.request
from typing import Any

import anthropic
import openai
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import REASONING, REPLY
from tests.integration.servers import sharedStack

ARGUMENTS = {"city": "Paris", "unit": "celsius"}
WORDS = len(REPLY.split(" "))
"""The fake backend's reply, in words (and output tokens)."""
MAX_TOKENS = 1024
"""What the SDK calls ask for: more than the reply, which the fake answers
once, never padded, ending with C{stop}."""
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def lastBackendChat(backendURL: str) -> Any:
    """
    @return: the body of the last chat request the fake backend received.
    """
    with urllib.request.urlopen(backendURL + "/_fake/requests", timeout=10) as r:
        requests = codec.loads(r.read())["requests"]
    return [q for q in requests if q["path"] == "/chat/completions"][-1]["body"]


class AnthropicSDKTests(SynchronousTestCase):
    """
    The C{anthropic} SDK on C{/v1/messages}.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()
        self.client = anthropic.Anthropic(base_url=self.stack.url, api_key="ollama",
                                          timeout=20, max_retries=0)

    def test_create(self) -> None:
        """
        C{messages.create}: the text, the stop reason, the usage, the
        client's model name echoed.
        """
        message = self.client.messages.create(
            model="fake-model:proxy", max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(message.content[0].type, "text")
        self.assertEqual(message.content[0].text, REPLY)  # type: ignore[union-attr]
        self.assertEqual((message.stop_reason, message.model), ("end_turn", "fake-model:proxy"))
        self.assertEqual(message.usage.output_tokens, WORDS)

    def test_stream(self) -> None:
        """
        C{messages.stream}: text deltas joining to the reply, thinking as a
        thinking block, the final message accumulated by the SDK.
        """
        with self.client.messages.stream(
            model="fake-reasoner", max_tokens=MAX_TOKENS,
            messages=[{"role": "user", "content": "hi"}],
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream:
            text = "".join(stream.text_stream)
            final = stream.get_final_message()
        self.assertEqual(text, REPLY)
        self.assertEqual([block.type for block in final.content], ["thinking", "text"])
        self.assertEqual(final.content[0].thinking, REASONING)  # type: ignore[union-attr]
        self.assertEqual(final.stop_reason, "end_turn")
        self.assertEqual(lastBackendChat(self.stack.backendURL)["reasoning_effort"], "medium")

    def test_toolRoundTrip(self) -> None:
        """
        A tool_use block with object input (streamed and not); sending it
        back with a tool_result reaches the backend as an OpenAI tool call
        and a tool message with the same id, and the model answers.
        """
        tools: Any = [{"name": "get_weather", "description": "Weather",
                       "input_schema": SCHEMA}]
        question: Any = {"role": "user", "content": "Weather in Paris?"}
        first = self.client.messages.create(model="fake-tools", max_tokens=MAX_TOKENS,
                                            messages=[question], tools=tools)
        self.assertEqual(first.stop_reason, "tool_use")
        [call] = first.content
        assert call.type == "tool_use"
        self.assertEqual((call.name, call.input), ("get_weather", ARGUMENTS))
        with self.client.messages.stream(model="fake-tools", max_tokens=MAX_TOKENS,
                                         messages=[question], tools=tools) as stream:
            streamed = stream.get_final_message()
        self.assertEqual(streamed.content[0].input, ARGUMENTS)  # type: ignore[union-attr]
        second = self.client.messages.create(
            model="fake-tools", max_tokens=MAX_TOKENS, tools=tools,
            messages=[question, {"role": "assistant", "content": first.content},
                      {"role": "user", "content": [{"type": "tool_result",
                                                    "tool_use_id": call.id,
                                                    "content": "11 degrees"}]}])
        self.assertEqual((second.stop_reason, second.content[0].type), ("end_turn", "text"))
        sent = lastBackendChat(self.stack.backendURL)["messages"]
        self.assertEqual(sent[1]["tool_calls"][0]["id"], call.id)
        self.assertEqual(codec.loads(sent[1]["tool_calls"][0]["function"]["arguments"]),
                         ARGUMENTS)
        self.assertEqual(sent[2], {"role": "tool", "content": "11 degrees",
                                   "tool_call_id": call.id})

    def test_errors(self) -> None:
        """
        The SDK's exception classes from the proxy's Anthropic-shaped errors.
        """
        with self.assertRaises(anthropic.BadRequestError) as e:
            self.client.messages.create(model="fake-model", max_tokens=0,
                                        messages=[{"role": "user", "content": "hi"}])
        self.assertIn("max_tokens", str(e.exception))
        with self.assertRaises(anthropic.NotFoundError):
            self.client.messages.create(model="no-such-model", max_tokens=10,
                                        messages=[{"role": "user", "content": "hi"}])

    def test_countTokens(self) -> None:
        """
        C{messages.count_tokens}: an estimate.
        """
        count = self.client.messages.count_tokens(
            model="fake-model", messages=[{"role": "user", "content": "x" * 400}])
        self.assertEqual(count.input_tokens, 101)


class ResponsesSDKTests(SynchronousTestCase):
    """
    The C{openai} SDK's Responses API on C{/v1/responses}.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()
        self.client = openai.OpenAI(base_url=self.stack.url + "/v1", api_key="ollama",
                                    timeout=20, max_retries=0)

    def test_create(self) -> None:
        """
        C{responses.create}: C{output_text}, status, usage.
        """
        response = self.client.responses.create(model="fake-model:proxy", input="hi",
                                                instructions="Be brief.")
        self.assertEqual((response.output_text, response.status), (REPLY, "completed"))
        assert response.usage is not None
        self.assertEqual(response.usage.output_tokens, WORDS)

    def test_stream(self) -> None:
        """
        Streamed: text deltas joining to the reply, reasoning summary
        deltas, the completed response assembled by the SDK's helper.
        """
        with self.client.responses.stream(model="fake-reasoner", input="hi",
                                          reasoning={"effort": "low"}) as stream:
            kinds = []
            text = []
            for event in stream:
                kinds.append(event.type)
                if event.type == "response.output_text.delta":
                    text.append(event.delta)
            final = stream.get_final_response()
        self.assertEqual("".join(text), REPLY)
        self.assertEqual((kinds[0], kinds[-1]), ("response.created", "response.completed"))
        self.assertIn("response.reasoning_summary_text.delta", kinds)
        self.assertEqual([item.type for item in final.output], ["reasoning", "message"])
        self.assertEqual(final.output_text, REPLY)

    def test_rawStream(self) -> None:
        """
        C{responses.create(stream=True)}: increasing sequence numbers.
        """
        numbers = [event.sequence_number for event in self.client.responses.create(
            model="fake-model", input="hi", stream=True)]
        self.assertEqual(numbers, list(range(len(numbers))))

    def test_functionRoundTrip(self) -> None:
        """
        A C{function_call} with string arguments; sending it back with a
        C{function_call_output} reaches the backend as a tool call and a tool
        message with the same id, and the model answers.
        """
        tools: Any = [{"type": "function", "name": "get_weather", "parameters": SCHEMA}]
        first = self.client.responses.create(model="fake-tools", input="Weather?", tools=tools)
        [call] = first.output
        assert call.type == "function_call"
        self.assertEqual((call.name, codec.loads(call.arguments)), ("get_weather", ARGUMENTS))
        second = self.client.responses.create(model="fake-tools", tools=tools, input=[
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": call.call_id, "name": call.name,
             "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "11 degrees"},
        ])
        self.assertEqual(second.output_text, REPLY)
        sent = lastBackendChat(self.stack.backendURL)["messages"]
        self.assertEqual(sent[1]["tool_calls"][0]["id"], call.call_id)
        self.assertEqual(sent[2], {"role": "tool", "content": "11 degrees",
                                   "tool_call_id": call.call_id})

    def test_stateful(self) -> None:
        """
        C{previous_response_id}: the SDK's C{BadRequestError} naming it.
        """
        with self.assertRaises(openai.BadRequestError) as e:
            self.client.responses.create(model="fake-model", input="hi",
                                         previous_response_id="resp_1")
        self.assertEqual(e.exception.param, "previous_response_id")
