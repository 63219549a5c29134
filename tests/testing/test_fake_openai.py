"""
The one fake backend, in both of its modes: answering by itself like a
backend (malformed requests included), and scripted for the harness.
"""

from __future__ import annotations

from typing import Any

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.testing.fake_openai import MODELS, REPLY, FakeOpenAI


class FakeOpenAITests(SynchronousTestCase):
    """
    L{FakeOpenAI} over L{StubTreq}.
    """

    def post(self, fake: FakeOpenAI, path: str, body: Any) -> tuple[int, Any]:
        client: Any = StubTreq(fake)
        d = client.post("http://fake.test" + path, data=codec.dumps(body))
        client.flush()
        response = self.successResultOf(d)
        return response.code, codec.loads(self.successResultOf(client.content(response)))

    def test_answers(self) -> None:
        """
        A chat for a known model gets the canned reply and usage.
        """
        status, body = self.post(FakeOpenAI(), "/v1/chat/completions",
                                 {"model": "fake-model", "messages": [{"role": "user", "content": "a b"}]})
        self.assertEqual(status, 200)
        self.assertEqual(body["choices"][0]["message"]["content"], REPLY)
        self.assertEqual(body["usage"]["prompt_tokens"], 2)

    def test_malformedIsABadRequest(self) -> None:
        """
        Messages or tools of the wrong shape are a 400 with a message, as a
        real server answers them, not a crash of the fake.
        """
        for body in ({"model": "fake-model", "messages": [None]},
                     {"model": "fake-model", "messages": "hi"},
                     {"model": "fake-tools", "messages": [], "tools": [1]},
                     {"model": "fake-tools", "messages": [], "tools": {"a": 1}}):
            status, answer = self.post(FakeOpenAI(), "/v1/chat/completions", body)
            self.assertEqual(status, 400, body)
            self.assertIsInstance(answer["error"]["message"], str)

    def test_unknownModel(self) -> None:
        """
        An unknown model is OpenAI's 404.
        """
        status, answer = self.post(FakeOpenAI(), "/v1/chat/completions", {"model": "x", "messages": []})
        self.assertEqual((status, answer["error"]["type"]), (404, "not_found_error"))
        self.assertNotIn("x", MODELS)

    def test_scriptedHoldsRequests(self) -> None:
        """
        Scripted, the fake answers nothing by itself; the test answers
        through the recorded request.
        """
        fake = FakeOpenAI(scripted=True)
        client: Any = StubTreq(fake)
        d = client.post("http://fake.test/v1/chat/completions", data=b'{"model": "m"}',
                        headers={b"Authorization": [b"Bearer k"]})
        client.flush()
        self.assertNoResult(d)
        [received] = fake.received
        self.assertEqual((received.method, received.path, received.json()),
                         ("POST", "/v1/chat/completions", {"model": "m"}))
        self.assertEqual(received.headers["authorization"], "Bearer k")
        received.respond(200, {"ok": True})
        client.flush()
        response = self.successResultOf(d)
        self.assertEqual(codec.loads(self.successResultOf(client.content(response))), {"ok": True})

    def test_delayNeedsAReactor(self) -> None:
        """
        Streaming with pauses needs a clock.
        """
        self.assertRaises(ValueError, FakeOpenAI, None, 0.5)

    def stream(self, body: Any) -> list[Any]:
        """
        @return: the chunks of a streamed chat.
        """
        client: Any = StubTreq(FakeOpenAI())
        d = client.post("http://fake.test/v1/chat/completions",
                        data=codec.dumps({**body, "stream": True}))
        client.flush()
        data = self.successResultOf(client.content(self.successResultOf(d)))
        return [codec.loads(line[len(b"data: "):]) for line in data.split(b"\n\n")
                if line.startswith(b"data: {")]

    def test_neverPads(self) -> None:
        """
        A large C{max_tokens} (Claude Code asks for 32,000) gets the
        sentence once and C{stop}; a small one cuts it and says C{length}.
        """
        for maxTokens, text, finish in ((32000, REPLY, "stop"), (3, "Hello! I am", "length"),
                                        (None, REPLY, "stop")):
            _, answer = self.post(FakeOpenAI(), "/v1/chat/completions", {
                "model": "fake-model", "max_tokens": maxTokens,
                "messages": [{"role": "user", "content": "hi"}]})
            self.assertEqual((answer["choices"][0]["message"]["content"],
                              answer["choices"][0]["finish_reason"]), (text, finish))
        chunks = self.stream({"model": "fake-model", "max_tokens": 32000, "messages": []})
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "") for c in chunks),
                         REPLY)
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "stop")

    def test_freshToolCallIds(self) -> None:
        """
        Every tool call gets an id of its own, streamed or not; with
        C{toolCallId} (C{twistd fake-openai --tool-call-id}) every call
        gets that one, as backends that number calls per request do.
        """
        body = {"model": "fake-tools", "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "weather"}}]}
        ids = [self.post(FakeOpenAI(), "/v1/chat/completions", body)[1]
               ["choices"][0]["message"]["tool_calls"][0]["id"] for _ in range(3)]
        ids += [self.stream(body)[0]["choices"][0]["delta"]["tool_calls"][0]["id"]
                for _ in range(3)]
        self.assertEqual(len(set(ids)), 6, ids)
        self.assertTrue(all(i.startswith("call_") for i in ids))
        fixed = FakeOpenAI(toolCallId="call_dup")
        for _ in range(2):
            _, answer = self.post(fixed, "/v1/chat/completions", body)
            self.assertEqual(answer["choices"][0]["message"]["tool_calls"][0]["id"], "call_dup")

    def test_fakeAgent(self) -> None:
        """
        C{fake-agent} streams one call of the offered shell tool, in its
        schema, then answers with the result it is sent.
        """
        bash = {"type": "function", "function": {"name": "Bash", "parameters": {
            "type": "object", "properties": {"command": {"type": "string"}},
            "required": ["command"]}}}
        user = {"role": "user", "content": "where am I?"}
        chunks = self.stream({"model": "fake-agent", "messages": [user], "tools": [bash]})
        fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
                     if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
        self.assertEqual(fragments[0]["function"]["name"], "Bash")
        arguments = "".join(f["function"]["arguments"] for f in fragments)
        self.assertEqual(codec.loads(arguments), {"command": "pwd"})
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "tool_calls")
        call = {"id": fragments[0]["id"], "type": "function",
                "function": {"name": "Bash", "arguments": arguments}}
        _, answer = self.post(FakeOpenAI(), "/v1/chat/completions", {
            "model": "fake-agent", "tools": [bash], "messages": [
                user, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": call["id"], "content": "/srv/project"}]})
        message = answer["choices"][0]["message"]
        self.assertTrue(message["content"].endswith("returned:\n\n/srv/project"), message)
        self.assertEqual(answer["choices"][0]["finish_reason"], "stop")
        self.assertIn("fake-agent", MODELS)
