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
