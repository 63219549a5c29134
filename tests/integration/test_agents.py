"""
The coding agents' APIs over real sockets, driven by the official SDKs:
C{anthropic} on the proxy's base URL (as Claude Code is pointed at it) and
C{openai}'s Responses client on C{<proxy>/v1} (as Codex and Copilot CLI
are), C{google-genai} on the proxy's base URL (as Gemini CLI is), against C{twistd -n ollama-proxy} in front of C{twistd -n
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
from tests.integration.servers import Twistd, freePort, sharedStack

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


class GeminiSDKTests(SynchronousTestCase):
    """
    The official C{google-genai} SDK on C{/v1beta} (as Gemini CLI is
    pointed at the proxy with C{GOOGLE_GEMINI_BASE_URL}).
    """

    def setUp(self) -> None:
        from google import genai
        from google.genai import types

        self.stack = sharedStack()
        self.types = types
        self.client = genai.Client(api_key="ollama", http_options=types.HttpOptions(
            base_url=self.stack.url, api_version="v1beta", timeout=20_000,
            retry_options=types.HttpRetryOptions(attempts=1)))

    def test_generateContent(self) -> None:
        """
        C{models.generate_content}: the text, the finish reason, the usage,
        the client's model name echoed.
        """
        response = self.client.models.generate_content(
            model="fake-model:proxy", contents="hi",
            config=self.types.GenerateContentConfig(max_output_tokens=WORDS, temperature=0.5))
        self.assertEqual(response.text, REPLY)
        [candidate] = response.candidates or []
        self.assertEqual(candidate.finish_reason, self.types.FinishReason.STOP)
        assert response.usage_metadata is not None
        self.assertEqual(response.usage_metadata.candidates_token_count, WORDS)
        self.assertEqual(response.model_version, "fake-model:proxy")
        sent = lastBackendChat(self.stack.backendURL)
        self.assertEqual((sent["model"], sent["max_tokens"], sent["temperature"]),
                         ("fake-model", WORDS, 0.5))

    def test_generateContentStream(self) -> None:
        """
        C{models.generate_content_stream}: text chunks joining to the
        reply, thoughts as C{thought} parts when asked for, the finish on
        the last chunk.
        """
        stream = self.client.models.generate_content_stream(
            model="fake-reasoner", contents="hi",
            config=self.types.GenerateContentConfig(
                max_output_tokens=WORDS,
                thinking_config=self.types.ThinkingConfig(include_thoughts=True)))
        text: list[str] = []
        thoughts: list[str] = []
        finishes: list[Any] = []
        for chunk in stream:
            [candidate] = chunk.candidates or []
            for part in (candidate.content.parts if candidate.content else None) or []:
                (thoughts if part.thought else text).append(part.text or "")
            finishes.append(candidate.finish_reason)
        self.assertEqual("".join(text), REPLY)
        self.assertEqual("".join(thoughts), REASONING)
        self.assertEqual(finishes[-1], self.types.FinishReason.STOP)
        self.assertEqual(finishes[:-1], [None] * (len(finishes) - 1))

    def test_functionCallingRoundTrip(self) -> None:
        """
        A C{functionCall} part with object args and an id (streamed and
        not); sending it back with a C{functionResponse} reaches the backend
        as an OpenAI tool call and a tool message with the same id, and the
        model answers in text.
        """
        types = self.types
        tool = types.Tool(function_declarations=[types.FunctionDeclaration(
            name="get_weather", description="Weather", parameters_json_schema=SCHEMA)])
        config = types.GenerateContentConfig(
            tools=[tool], max_output_tokens=WORDS,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
        question = types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])
        first = self.client.models.generate_content(
            model="fake-tools", contents=[question], config=config)
        [call] = first.function_calls or []
        self.assertEqual((call.name, call.args), ("get_weather", ARGUMENTS))
        self.assertTrue(call.id)
        streamed = [part.function_call for chunk in self.client.models.generate_content_stream(
            model="fake-tools", contents=[question], config=config)
            for part in ((chunk.candidates or [])[0].content.parts or [])  # type: ignore[union-attr]
            if part.function_call]
        self.assertEqual([(c.name, c.args) for c in streamed], [("get_weather", ARGUMENTS)])
        assert first.candidates and first.candidates[0].content
        second = self.client.models.generate_content(
            model="fake-tools", config=config, contents=[
                question, first.candidates[0].content,
                types.Content(role="user", parts=[types.Part(
                    function_response=types.FunctionResponse(
                        id=call.id, name="get_weather", response={"output": "11 degrees"}))])])
        self.assertEqual(second.text, REPLY)
        sent = lastBackendChat(self.stack.backendURL)["messages"]
        self.assertEqual(sent[1]["tool_calls"][0]["id"], call.id)
        self.assertEqual(codec.loads(sent[1]["tool_calls"][0]["function"]["arguments"]),
                         ARGUMENTS)
        self.assertEqual(sent[2], {"role": "tool", "content": '{"output":"11 degrees"}',
                                   "tool_call_id": call.id})

    def test_errors(self) -> None:
        """
        The SDK's exception classes from the proxy's Google-shaped errors.
        """
        from google.genai import errors

        with self.assertRaises(errors.ClientError) as e:
            self.client.models.generate_content(
                model="fake-model", contents="hi",
                config=self.types.GenerateContentConfig(max_output_tokens=-1))
        self.assertEqual((e.exception.code, e.exception.status), (400, "INVALID_ARGUMENT"))
        self.assertIn("maxOutputTokens", str(e.exception))
        with self.assertRaises(errors.ClientError) as e:
            self.client.models.generate_content(model="no-such-model", contents="hi")
        self.assertEqual((e.exception.code, e.exception.status), (404, "NOT_FOUND"))

    def test_modelsAndCountTokens(self) -> None:
        """
        C{models.list} and C{models.get} in Google's shape with the
        catalog's limits; C{models.count_tokens} the Anthropic route's
        estimate.
        """
        names = {m.name: m for m in self.client.models.list()}
        self.assertIn("models/fake-tools", names)
        self.assertNotIn("models/fake-embed", names)
        model = self.client.models.get(model="fake-tools")
        self.assertEqual((model.input_token_limit, model.output_token_limit), (131072, 8192))
        count = self.client.models.count_tokens(model="fake-model", contents="x" * 400)
        self.assertEqual(count.total_tokens, 101)


    def test_defaultVersion(self) -> None:
        """
        Without C{api_version}, the SDK (3.x) calls Google's C{v1} API on
        C{/v1/models}, which the proxy shares with OpenAI's model list.
        """
        from google import genai

        client = genai.Client(api_key="ollama", http_options=self.types.HttpOptions(
            base_url=self.stack.url, timeout=20_000,
            retry_options=self.types.HttpRetryOptions(attempts=1)))
        self.assertIn("models/fake-model", [m.name for m in client.models.list()])
        response = client.models.generate_content(
            model="fake-model", contents="hi",
            config=self.types.GenerateContentConfig(max_output_tokens=WORDS))
        self.assertEqual(response.text, REPLY)
        streamed = "".join(chunk.text or "" for chunk in client.models.generate_content_stream(
            model="fake-model", contents="hi",
            config=self.types.GenerateContentConfig(max_output_tokens=WORDS)))
        self.assertEqual(streamed, REPLY)


class GeminiMidStreamTests(SynchronousTestCase):
    """
    A backend that fails part-way: the SDK's stream raises, never ends as
    if complete.
    """

    def test_raises(self) -> None:
        from google import genai
        from google.genai import errors, types

        backend = FailingBackend()
        self.addCleanup(backend.close)
        port = freePort()
        proxy = Twistd("ollama-proxy", ["--listen", f"tcp:{port}:interface=127.0.0.1",
                                        "--target", backend.url, "--fallback", ""], port)
        self.addCleanup(proxy.stop)
        client = genai.Client(api_key="ollama", http_options=types.HttpOptions(
            base_url=f"http://127.0.0.1:{port}", api_version="v1beta", timeout=20_000,
            retry_options=types.HttpRetryOptions(attempts=1)))
        seen = []
        with self.assertRaises(errors.APIError) as e:
            for chunk in client.models.generate_content_stream(model="m", contents="hi"):
                seen.append(chunk.text)
        self.assertEqual(seen, ["par"])
        self.assertIn("backend exploded", str(e.exception))


class FailingBackend:
    """
    An OpenAI backend on a loopback thread whose every stream sends one
    delta, then an error event.
    """

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send(b"application/json", codec.dumps({"object": "list", "data": [{"id": "m"}]}))

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                self.send(b"text/event-stream",
                          b'data: {"choices":[{"index":0,"delta":{"content":"par"}}]}\n\n'
                          b'data: {"error":{"message":"backend exploded"}}\n\n')

            def send(self, contentType: bytes, data: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", contentType.decode())
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
