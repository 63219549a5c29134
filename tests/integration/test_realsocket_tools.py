"""
Tools, thinking and logprobs end to end over real loopback sockets: the
official C{ollama} Python client talks to C{twistd -n ollama-proxy}, which
talks to C{twistd -n fake-openai}; what the backend received is read back
from the fake's C{GET /_fake/requests}.

The round trip is the one that breaks most proxies (peers.md 4.3): the
client gets tool-call arguments as an object, sends the assistant turn back
in its history with a tool result, and the backend must see them as a JSON
string with a C{tool_call_id} matching the call's id.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import ollama
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import REASONING, REPLY
from tests.integration.servers import sharedStack

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
ARGUMENTS = {"city": "Paris", "unit": "celsius"}


class ToolsAndThinkingTests(SynchronousTestCase):
    """
    The official client against the running proxy and fake backend.
    """

    def setUp(self) -> None:
        self.stack = sharedStack()

    def client(self) -> ollama.Client:
        return ollama.Client(host=self.stack.url, timeout=20)

    def lastBackendChat(self) -> Any:
        """
        @return: the body of the last chat request the fake backend received.
        """
        with urllib.request.urlopen(self.stack.backendURL + "/_fake/requests", timeout=10) as r:
            requests = codec.loads(r.read())["requests"]
        chats = [q for q in requests if q["path"] == "/chat/completions"]
        self.assertTrue(chats, "the backend received no chat request")
        return chats[-1]["body"]

    def test_toolCallRoundTrip(self) -> None:
        """
        The client gets C{tool_calls[0].function.arguments} as a dict; when
        it sends that assistant turn and a tool result back, the backend
        receives the arguments as a JSON string and a C{tool_call_id} equal
        to the call's id (ollama-python drops ids, so the proxy pairs by
        C{tool_name}).
        """
        client = self.client()
        first = client.chat(model="fake-tools:proxy", messages=[QUESTION], tools=[WEATHER])
        [call] = first.message.tool_calls or []
        self.assertEqual(call.function.name, "get_weather")
        self.assertIsInstance(call.function.arguments, dict)
        self.assertEqual(dict(call.function.arguments), ARGUMENTS)
        self.assertEqual(first.done_reason, "stop")

        history: list[Any] = [
            QUESTION,
            first.message,
            {"role": "tool", "content": "11 degrees celsius", "tool_name": "get_weather"},
        ]
        client.chat(model="fake-tools:proxy", messages=history, tools=[WEATHER])
        received = self.lastBackendChat()
        self.assertEqual(received["tools"], [WEATHER])
        question, assistant, result = received["messages"]
        self.assertEqual(question, QUESTION)
        self.assertEqual(assistant["role"], "assistant")
        [sent] = assistant["tool_calls"]
        self.assertEqual(sent["type"], "function")
        self.assertEqual(sent["function"]["name"], "get_weather")
        self.assertIsInstance(sent["function"]["arguments"], str)
        self.assertEqual(codec.loads(sent["function"]["arguments"]), ARGUMENTS)
        self.assertTrue(sent["id"])
        self.assertEqual(
            result, {"role": "tool", "content": "11 degrees celsius", "tool_call_id": sent["id"]}
        )

    def test_streamedToolCallOneChunk(self) -> None:
        """
        Streamed, the fragments the backend sends arrive as one chunk with a
        complete arguments dict and the backend's id, before C{done}.
        """
        parts = list(
            self.client().chat(
                model="fake-tools:proxy", messages=[QUESTION], tools=[WEATHER], stream=True
            )
        )
        withCalls = [p for p in parts if p.message.tool_calls]
        self.assertEqual(len(withCalls), 1)
        [call] = withCalls[0].message.tool_calls or []
        self.assertEqual(dict(call.function.arguments), ARGUMENTS)
        self.assertTrue(parts[-1].done)
        self.assertEqual(parts[-1].eval_count, 3)
        self.assertFalse(withCalls[0].done)

    def test_toolHistoryWithIds(self) -> None:
        """
        A client that keeps ids (raw JSON, as ollama-js and Open WebUI send)
        has them forwarded as they are.
        """
        body = {
            "model": "fake-tools:proxy",
            "stream": False,
            "tools": [WEATHER],
            "messages": [
                QUESTION,
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_k3j9x2ab", "function": {"index": 0, "name": "get_weather",
                                                         "arguments": ARGUMENTS}}]},
                {"role": "tool", "content": "11", "tool_name": "get_weather"},
            ],
        }
        request = urllib.request.Request(
            self.stack.url + "/api/chat", data=codec.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:
            self.assertEqual(r.status, 200)
        messages = self.lastBackendChat()["messages"]
        self.assertEqual(messages[1]["tool_calls"][0]["id"], "call_k3j9x2ab")
        self.assertEqual(messages[2]["tool_call_id"], "call_k3j9x2ab")

    def test_thinking(self) -> None:
        """
        With C{think=True}, C{reasoning_content} from the backend is
        C{message.thinking} text, the answer is C{content}, and the backend
        was asked for reasoning.  Sending that turn back does not send the
        thinking to a generic backend.
        """
        client = self.client()
        response = client.chat(
            model="fake-reasoner:proxy", messages=[{"role": "user", "content": "hi"}], think=True
        )
        self.assertEqual(response.message.thinking, REASONING)
        self.assertEqual(response.message.content, REPLY)
        self.assertEqual(self.lastBackendChat()["reasoning_effort"], "medium")

        client.chat(
            model="fake-reasoner:proxy",
            messages=[{"role": "user", "content": "hi"}, response.message,
                      {"role": "user", "content": "and?"}],
        )
        assistant = self.lastBackendChat()["messages"][1]
        self.assertEqual(assistant, {"role": "assistant", "content": REPLY})

    def test_thinkingStreamed(self) -> None:
        """
        Streamed, thinking arrives in its own chunks before any content.
        """
        parts = list(
            self.client().chat(
                model="fake-reasoner:proxy", messages=[{"role": "user", "content": "hi"}],
                think=True, stream=True,
            )
        )
        thinking = "".join(p.message.thinking or "" for p in parts)
        content = "".join(p.message.content or "" for p in parts)
        self.assertEqual((thinking, content), (REASONING, REPLY))
        firstContent = next(i for i, p in enumerate(parts) if p.message.content)
        lastThinking = max(i for i, p in enumerate(parts) if p.message.thinking)
        self.assertLess(lastThinking, firstContent)

    def test_inlineThinkTags(self) -> None:
        """
        A backend that reasons inside C{<think>} tags at the start of the
        content (tags split across deltas) gives the client clean thinking
        and content, streamed or not; with C{think=False} the thinking is
        dropped.
        """
        client = self.client()
        hi = [{"role": "user", "content": "hi"}]
        whole = client.chat(model="fake-thinktags:proxy", messages=hi, think=True)
        self.assertEqual((whole.message.thinking, whole.message.content), (REASONING, REPLY))
        parts = list(client.chat(model="fake-thinktags:proxy", messages=hi, think=True, stream=True))
        self.assertEqual("".join(p.message.thinking or "" for p in parts), REASONING)
        self.assertEqual("".join(p.message.content or "" for p in parts), REPLY)
        quiet = client.chat(model="fake-thinktags:proxy", messages=hi, think=False)
        self.assertIsNone(quiet.message.thinking)
        self.assertEqual(quiet.message.content, REPLY)
        generated = client.generate(model="fake-thinktags:proxy", prompt="hi", think=True)
        self.assertEqual((generated.thinking, generated.response), (REASONING, REPLY))

    def test_logprobs(self) -> None:
        """
        C{logprobs=True, top_logprobs=2} reaches the backend, and the client
        gets one Ollama logprob per token with its alternatives, streamed or
        not.
        """
        client = self.client()
        hi = [{"role": "user", "content": "hi"}]
        response = client.chat(model="fake-model:proxy", messages=hi, logprobs=True, top_logprobs=2)
        received = self.lastBackendChat()
        self.assertEqual((received["logprobs"], received["top_logprobs"]), (True, 2))
        logprobs = response.logprobs or []
        self.assertEqual("".join(lp.token for lp in logprobs), REPLY)
        self.assertEqual(logprobs[0].logprob, -0.25)
        self.assertEqual([t.token for t in logprobs[0].top_logprobs or []], [logprobs[0].token, "?"])
        parts = list(client.chat(model="fake-model:proxy", messages=hi, logprobs=True, stream=True))
        streamed = [lp.token for p in parts for lp in (p.logprobs or [])]
        self.assertEqual("".join(streamed), REPLY)

    def test_topLogprobsOutOfRange(self) -> None:
        """
        C{top_logprobs=21} is refused with Ollama's 400 before reaching the
        backend.
        """
        with self.assertRaises(ollama.ResponseError) as e:
            self.client().chat(
                model="fake-model:proxy", messages=[{"role": "user", "content": "x"}],
                logprobs=True, top_logprobs=21,
            )
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.error, "top_logprobs must be between 0 and 20")

    def test_invalidImage(self) -> None:
        """
        An image that is not base64 is a 400 JSON error.
        """
        body = {"model": "fake-model:proxy", "messages": [
            {"role": "user", "content": "look", "images": ["not base64!!"]}]}
        request = urllib.request.Request(
            self.stack.url + "/api/chat", data=codec.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(request, timeout=10)
        self.assertEqual(e.exception.code, 400)
        self.assertEqual(
            codec.loads(e.exception.read()),
            {"error": "invalid image input: images must be base64 encoded"},
        )
        e.exception.close()
