"""
Tests for L{ollama_proxy.protocol.openai_request}: typed requests built into
OpenAI bodies per flavor: tools, tool-call ids and result pairing, reasoning
switches, thinking in history, sampling options, the text-completion body.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.codec import JSON
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.flavors import FLAVORS
from ollama_proxy.protocol.openai_request import chatBody, textBody
from ollama_proxy.protocol.requests import (
    ChatRequest,
    Message,
    Sampling,
    TextRequest,
    functionTool,
    namedChoice,
)
from tests.protocol.helpers import (
    USER,
    WEATHER_TOOL,
    chat,
    chatRequestToOpenAI,
    generateRequestToOpenAI,
    messagesToOpenAI,
)


class ToolRequestTests(SynchronousTestCase):
    """
    C{tools}, assistant C{tool_calls} and C{role: tool} results on the way
    to the backend.
    """

    def test_toolsPassthrough(self) -> None:
        """
        C{tools} are forwarded byte-for-byte (Ollama's own decoder would
        drop C{strict}, C{minLength}, C{additionalProperties}); an empty or
        absent list is not sent at all (ollama-python always sends C{[]}).
        """
        cases: list[tuple[Any, Any]] = [
            ([WEATHER_TOOL], [WEATHER_TOOL]),
            ([], None),
            (None, None),
        ]
        for tools, expected in cases:
            body = chat() if tools is None else chat(tools=tools)
            request = chatRequestToOpenAI(body, "m", False)
            self.assertEqual(request.get("tools"), expected, tools)
            self.assertEqual("tools" in request, expected is not None, tools)
        self.assertRaises(BadRequest, chatRequestToOpenAI, chat(tools={"a": 1}), "m", False)

    def test_assistantToolCalls(self) -> None:
        """
        Each history tool call gets C{type: function}, its id (given or a
        stable synthetic one) and its arguments as a JSON string, whatever
        form they came in; an assistant turn with only calls has C{null}
        content.
        """
        cases: list[tuple[JSON, JSON]] = [
            (
                {"id": "call_abc", "function": {"name": "f", "arguments": {"city": "Paris", "n": 1}}},
                {"id": "call_abc", "type": "function",
                 "function": {"name": "f", "arguments": '{"city":"Paris","n":1}'}},
            ),
            (
                {"function": {"name": "f", "arguments": {}}},
                {"id": "call_1_0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ),
            (
                {"function": {"name": "f"}},
                {"id": "call_1_0", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ),
            (
                {"function": {"name": "f", "arguments": '{"already":"a string"}'}},
                {"id": "call_1_0", "type": "function",
                 "function": {"name": "f", "arguments": '{"already":"a string"}'}},
            ),
            (
                {"function": {"index": 0, "name": "f", "arguments": {"nested": {"a": [1, "\u00e9"]}}}},
                {"id": "call_1_0", "type": "function",
                 "function": {"name": "f", "arguments": '{"nested":{"a":[1,"\u00e9"]}}'}},
            ),
        ]
        for call, expected in cases:
            [_, assistant] = messagesToOpenAI(
                [USER, {"role": "assistant", "content": "", "tool_calls": [call]}]
            )
            self.assertEqual(
                assistant, {"role": "assistant", "content": None, "tool_calls": [expected]}, call
            )
            self.assertIsInstance(codec.loads(expected["function"]["arguments"]), dict)

    def test_badToolCalls(self) -> None:
        """
        Malformed history tool calls are a 400, not a 500 or a silent drop.
        """
        badCalls: list[Any] = ["x", [{"name": "f"}], [{"function": {"arguments": {}}}], [3]]
        for calls in badCalls:
            self.assertRaises(
                BadRequest,
                messagesToOpenAI,
                [{"role": "assistant", "content": "", "tool_calls": calls}],
            )

    def test_toolResultPairing(self) -> None:
        """
        A tool result gets the given C{tool_call_id}; else the id of the
        unanswered call with the same C{tool_name}; else the next unanswered
        call in order; else a synthetic id.
        """
        calls = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "a", "function": {"name": "weather", "arguments": {}}},
                {"id": "b", "function": {"name": "time", "arguments": {}}},
                {"id": "c", "function": {"name": "weather", "arguments": {}}},
            ],
        }
        cases: list[tuple[list[JSON], list[str]]] = [
            # Given ids win.
            ([{"tool_call_id": "c"}, {"tool_call_id": "a"}], ["c", "a"]),
            # By name, out of order, same name twice in call order.
            ([{"tool_name": "time"}, {"tool_name": "weather"}, {"tool_name": "weather"}],
             ["b", "a", "c"]),
            # The older OpenAI-ish "name" key works like tool_name.
            ([{"name": "time"}], ["b"]),
            # No hint: in order, skipping the ones already answered.
            ([{"tool_call_id": "b"}, {}, {}], ["b", "a", "c"]),
            # Unknown name: next in order.
            ([{"tool_name": "nope"}], ["a"]),
            # More results than calls: a synthetic id.
            ([{}, {}, {}, {}], ["a", "b", "c", "call_5"]),
        ]
        for results, expected in cases:
            messages = [USER, calls] + [{"role": "tool", "content": "r", **r} for r in results]
            out = messagesToOpenAI(messages)
            self.assertEqual([m["tool_call_id"] for m in out[2:]], expected, results)
            self.assertTrue(all(m["role"] == "tool" and m["content"] == "r" for m in out[2:]))

    def test_pairingIsPerTurn(self) -> None:
        """
        Results pair with the calls of the latest assistant turn, and
        synthetic ids differ between turns, so a second round of the same tool
        is not answered with the first round's id.
        """
        turn = {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"x": 1}}}]}
        out = messagesToOpenAI([
            USER, turn, {"role": "tool", "content": "1", "tool_name": "f"},
            turn, {"role": "tool", "content": "2", "tool_name": "f"},
        ])
        self.assertEqual(out[1]["tool_calls"][0]["id"], out[2]["tool_call_id"])
        self.assertEqual(out[3]["tool_calls"][0]["id"], out[4]["tool_call_id"])
        self.assertNotEqual(out[2]["tool_call_id"], out[4]["tool_call_id"])


class ThinkRequestTests(SynchronousTestCase):
    """
    C{think} per backend flavor, and assistant C{thinking} in history.
    """

    def test_table(self) -> None:
        """
        Each flavor gets its own spelling of each C{think} value, and nothing
        else: generic backends get no switch for C{false} (non-reasoning
        models reject C{reasoning_effort: none}), vLLM the chat-template
        argument, OpenRouter its C{reasoning} object, DeepSeek its
        C{thinking} type.  C{"max"} is C{"high"}.
        """
        fields = ("reasoning_effort", "chat_template_kwargs", "reasoning", "thinking")
        cases: list[tuple[str, Any, JSON]] = [
            ("generic", None, {}),
            ("generic", True, {"reasoning_effort": "medium"}),
            ("generic", False, {}),
            ("generic", "low", {"reasoning_effort": "low"}),
            ("generic", "high", {"reasoning_effort": "high"}),
            ("generic", "max", {"reasoning_effort": "high"}),
            ("openai", True, {"reasoning_effort": "medium"}),
            ("openai", False, {}),
            ("litellm", "medium", {"reasoning_effort": "medium"}),
            ("deepseek", None, {}),
            ("deepseek", False, {"thinking": {"type": "disabled"}}),
            ("deepseek", True, {"thinking": {"type": "enabled"}}),
            ("deepseek", "max", {"thinking": {"type": "enabled"}, "reasoning_effort": "high"}),
            ("vllm", None, {}),
            ("vllm", True, {"chat_template_kwargs": {"enable_thinking": True}}),
            ("vllm", False, {"chat_template_kwargs": {"enable_thinking": False}}),
            ("vllm", "high", {"chat_template_kwargs": {"enable_thinking": True},
                              "reasoning_effort": "high"}),
            ("openrouter", None, {}),
            ("openrouter", True, {"reasoning": {"enabled": True}}),
            ("openrouter", False, {"reasoning": {"enabled": False}}),
            ("openrouter", "low", {"reasoning": {"effort": "low"}}),
            ("openrouter", "max", {"reasoning": {"effort": "high"}}),
        ]
        for flavor, think, expected in cases:
            body = chat() if think is None else chat(think=think)
            for build in (chatRequestToOpenAI, generateRequestToOpenAI):
                if build is generateRequestToOpenAI:
                    body = {**body, "prompt": "hi"}
                request = build(body, "m", True, FLAVORS[flavor])
                self.assertEqual(
                    {k: request[k] for k in fields if k in request}, expected, (flavor, think, build)
                )

    def test_invalid(self) -> None:
        """
        Any other value is a 400 with Ollama's message.
        """
        for think in ("extreme", 1, "", ["high"]):
            e = self.assertRaises(BadRequest, chatRequestToOpenAI, chat(think=think), "m", True)
            self.assertIn("invalid think value", e.message)

    def test_historyThinking(self) -> None:
        """
        Assistant C{thinking} in history is dropped, except for DeepSeek,
        whose thinking mode requires it back as C{reasoning_content}.
        """
        history = [USER, {"role": "assistant", "content": "Hello", "thinking": "greet back"}, USER]
        for flavor, expected in [
            ("generic", {"role": "assistant", "content": "Hello"}),
            ("openai", {"role": "assistant", "content": "Hello"}),
            ("vllm", {"role": "assistant", "content": "Hello"}),
            ("openrouter", {"role": "assistant", "content": "Hello"}),
            ("deepseek", {"role": "assistant", "content": "Hello", "reasoning_content": "greet back"}),
        ]:
            self.assertEqual(messagesToOpenAI(history, FLAVORS[flavor])[1], expected, flavor)
        toolTurn = {"role": "assistant", "content": "", "thinking": "call it",
                    "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": {}}}]}
        out = messagesToOpenAI([USER, toolTurn], FLAVORS["deepseek"])[1]
        self.assertEqual(out["reasoning_content"], "call it")
        self.assertEqual(out["tool_calls"][0]["id"], "x")


SAMPLING = Sampling(maxTokens=9, temperature=0.5, topP=0.9, presencePenalty=0.1,
                    frequencyPenalty=0.2, seed=7, stop=("x",), topK=40, minP=0.05,
                    repeatPenalty=1.1)


class BodyTests(SynchronousTestCase):
    """
    L{chatBody} and L{textBody} from typed requests built by hand (no
    dialect's parser): every field of the body, per flavor.
    """

    def test_chatWhole(self) -> None:
        """
        A streamed chat with every option: usage asked for, sampling named
        for the flavor, format, tools, choice, parallel calls, logprobs.
        """
        tool = functionTool("f", {"type": "object"})
        request = ChatRequest(
            "client-name", (Message("system", "s"), Message("user", "u")), stream=True,
            sampling=SAMPLING, format="json", tools=(tool,), toolChoice=namedChoice("f"),
            parallelToolCalls=False, logprobs=True, topLogprobs=3,
        )
        self.assertEqual(chatBody(request, "backend-id"), {
            "model": "backend-id",
            "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 9, "temperature": 0.5, "top_p": 0.9, "presence_penalty": 0.1,
            "frequency_penalty": 0.2, "seed": 7, "stop": ["x"], "top_k": 40, "min_p": 0.05,
            "repetition_penalty": 1.1,
            "response_format": {"type": "json_object"},
            "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False, "logprobs": True, "top_logprobs": 3,
        })

    def test_chatPerFlavor(self) -> None:
        """
        OpenAI gets C{max_completion_tokens} and no sampling extras;
        C{parallel_tool_calls} goes only with tools; a schema format is
        OpenAI's C{json_schema}.
        """
        schema = {"type": "object"}
        body = chatBody(ChatRequest("m", (), stream=False, sampling=SAMPLING, format=schema,
                                    parallelToolCalls=True), "b", FLAVORS["openai"])
        self.assertEqual(body["max_completion_tokens"], 9)
        for key in ("max_tokens", "top_k", "min_p", "repetition_penalty", "stream_options",
                    "parallel_tool_calls", "tools", "tool_choice", "logprobs"):
            self.assertNotIn(key, body)
        self.assertEqual(body["response_format"], {
            "type": "json_schema", "json_schema": {"name": "response", "schema": schema}})

    def test_text(self) -> None:
        """
        The completion body: prompt, suffix, usage when streaming, and
        C{max_tokens} even for OpenAI (the legacy route knows no other).
        """
        request = TextRequest("m", "def f(", "):", stream=True, sampling=Sampling(maxTokens=5))
        self.assertEqual(textBody(request, "b", FLAVORS["openai"]), {
            "model": "b", "prompt": "def f(", "stream": True, "suffix": "):",
            "stream_options": {"include_usage": True}, "max_tokens": 5,
        })
        self.assertEqual(textBody(TextRequest("m", "p", None, stream=False), "b"),
                         {"model": "b", "prompt": "p", "stream": False})
