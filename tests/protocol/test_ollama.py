"""
The Ollama encoder: golden NDJSON for recorded streams at every byte
split, the aggregated C{stream: false} object, and byte-identical template
lines.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.clock import formatTimestamp
from ollama_proxy.protocol.errors import UpstreamError
from ollama_proxy.protocol.events import Delta
from ollama_proxy.protocol.backends import NO_OVERRIDE, ModelOverride
from ollama_proxy.protocol.dialect import Answer, Generation
from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.ollama import Kind, NDJSONEncoder, OllamaRoute, doneReason
from ollama_proxy.protocol.requests import ChatRequest, TextRequest
from ollama_proxy.protocol.backend_reader import logprobsFromOpenAI
from ollama_proxy.protocol.requests import JSON
from tests.protocol.helpers import (
    LP_A,
    LP_B,
    T0,
    constant,
    event,
    final,
    lines,
    ollamaStream,
    ollamaToolCalls,
    piece,
    responseFromOpenAI,
    run,
    sse,
)

TOOL_STREAM = sse(
    event({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    event({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Pa'}}]}),
    event({"tool_calls": [{"index": 1, "id": "call_t", "type": "function",
                           "function": {"name": "get_time", "arguments": '{"tz"'}}]}),
    event({"tool_calls": [{"index": 0, "function": {"arguments": 'ris", "unit": "\\u00b0C"}'}}]}),
    event({"tool_calls": [{"index": 1, "function": {"arguments": ': "CET"}'}}]}),
    event(finish="tool_calls"),
    {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}},
    b"data: [DONE]\n\n",
)


TOOL_LINES = [
    piece(tool_calls=[
        {"id": "call_w", "function": {"index": 0, "name": "get_weather",
                                      "arguments": {"city": "Paris", "unit": "\u00b0C"}}},
        {"id": "call_t", "function": {"index": 1, "name": "get_time", "arguments": {"tz": "CET"}}},
    ]),
    final(prompt_eval_count=12, eval_count=9),
]


REASONING_STREAM = sse(
    event({"role": "assistant", "reasoning_content": "Let me"}),
    event({"reasoning_content": " think."}),
    event({"reasoning": " (OpenRouter spelling)"}),
    event({"content": "Hi", "reasoning_content": None}),
    event({"content": "!"}),
    event(finish="stop"),
    # LiteLLM's usage chunk: a choice with an empty delta, after finish_reason.
    {"choices": [{"index": 0, "delta": {}}], "usage": {"prompt_tokens": 4, "completion_tokens": 7}},
    b"data: [DONE]\n\n",
)


REASONING_LINES = [
    piece(thinking="Let me"),
    piece(thinking=" think."),
    piece(thinking=" (OpenRouter spelling)"),
    piece("Hi"),
    piece("!"),
    final(prompt_eval_count=4, eval_count=7),
]


THINKTAG_STREAM = sse(
    event({"role": "assistant", "content": "<thi"}),
    event({"content": "nk>\n"}),
    event({"content": "Plan: greet"}),
    event({"content": ".\n</th"}),
    event({"content": "ink>\n\nHel"}),
    event({"content": "lo <think>literal</think>"}),
    event(finish="length"),
    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    b"data: [DONE]\n\n",
)


THINKTAG_LINES = [
    piece(thinking="Plan: greet"),
    piece(thinking="."),
    piece("Hel"),
    piece("lo <think>literal</think>"),
    final(done_reason="length", prompt_eval_count=3, eval_count=2),
]




LOGPROB_STREAM = sse(
    event({"role": "assistant", "content": "Hel"}, logprobs={"content": [LP_A]}),
    event({"content": "lo"}, logprobs={"content": [LP_B], "refusal": None}),
    event(finish="stop", logprobs=None),
    b"data: [DONE]\n\n",
)


LOGPROB_LINES = [
    piece("Hel", logprobs=[{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108],
                            "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                                             {"token": "Hi", "logprob": -1.5}]}]),
    piece("lo", logprobs=[{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}]),
    final(),
]


GOLDEN = {
    "tool fragments": (TOOL_STREAM, TOOL_LINES),
    "reasoning deltas": (REASONING_STREAM, REASONING_LINES),
    "inline think tags": (THINKTAG_STREAM, THINKTAG_LINES),
    "logprobs": (LOGPROB_STREAM, LOGPROB_LINES),
}


class GoldenStreamTests(SynchronousTestCase):
    """
    Recorded OpenAI streams and the exact NDJSON they must become.
    """

    def test_golden(self) -> None:
        """
        Tool-call fragments (split mid-string, two calls interleaved) become
        one chunk with object arguments; C{reasoning_content} and
        C{reasoning} become C{thinking}; a leading C{<think>} block split
        mid-tag becomes C{thinking} and later tags stay content; logprobs
        ride on their token's chunk in Ollama's shape; usage that arrives
        after C{finish_reason} (OpenAI's C{choices: []} and LiteLLM's empty
        delta) fills the counts of the final object.
        """
        for name, (stream, expected) in GOLDEN.items():
            self.assertEqual(lines(run([stream])), expected, name)

    def test_everySplit(self) -> None:
        """
        Splitting each recorded stream at every byte boundary, and feeding it
        one byte per read, gives byte-identical NDJSON.
        """
        for name, (stream, _) in GOLDEN.items():
            whole = run([stream])
            for i in range(len(stream) + 1):
                self.assertEqual(run([stream[:i], stream[i:]]), whole, f"{name}: split at {i}")
            self.assertEqual(run([stream[i : i + 1] for i in range(len(stream))]), whole, name)

    def test_thinkFalseDropsThinking(self) -> None:
        """
        With C{think: false}, reasoning fields and a leading C{<think>}
        block are dropped; content is unchanged.
        """
        for stream in (REASONING_STREAM, THINKTAG_STREAM):
            out = lines(run([stream], dropThinking=True))
            self.assertFalse(any("thinking" in l["message"] for l in out))
        self.assertEqual(
            "".join(l["message"]["content"] for l in lines(run([THINKTAG_STREAM], dropThinking=True))),
            "Hello <think>literal</think>",
        )

    def test_generateShape(self) -> None:
        """
        For C{/api/generate}, thinking is top-level C{thinking}, text is
        C{response}, tool calls are top-level, logprobs are chunk-level.
        """
        out = lines(run([REASONING_STREAM], kind="generate"))
        self.assertEqual(out[0]["thinking"], "Let me")
        self.assertEqual(out[3]["response"], "Hi")
        self.assertTrue(all("message" not in l for l in out))
        tools = lines(run([TOOL_STREAM], kind="generate"))
        self.assertEqual(tools[0]["tool_calls"], TOOL_LINES[0]["message"]["tool_calls"])
        logprobs = lines(run([LOGPROB_STREAM], kind="generate"))
        self.assertEqual(logprobs[0]["logprobs"], LOGPROB_LINES[0]["logprobs"])
        self.assertEqual(lines(run([THINKTAG_STREAM], kind="generate"))[0]["thinking"], "Plan: greet")

    def test_heldTextFlushedAtEnd(self) -> None:
        """
        Text held back because it might be a tag is released at the end: a
        reply that is just C{"<thin"} is content, an unclosed think block
        (the token limit hit while thinking) is thinking.
        """
        out = lines(run([sse(event({"content": "<thin"}), event(finish="stop"))]))
        self.assertEqual(out[:-1], [piece("<thin")])
        out = lines(run([sse(event({"content": "<think>still going </thi"}), event(finish="length"))]))
        self.assertEqual(out[:-1], [piece(thinking="still going"), piece(thinking=" </thi")])
        self.assertEqual(out[-1]["done_reason"], "length")

    def test_toolFragmentVariants(self) -> None:
        """
        Backends that repeat the whole name in every fragment, number every
        call 0 with distinct ids (continuing without ids), send no ids, or
        send an arguments object instead of text, still give one chunk of
        well-formed calls in order (missing ids are synthesised so the client
        can echo them back).
        """
        repeated = sse(
            event({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x":'}}]}),
            event({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "1}"}}]}),
            event({"tool_calls": [{"index": 0, "id": "b", "function": {"name": "g", "arguments": '{"z"'}}]}),
            event({"tool_calls": [{"index": 0, "function": {"arguments": ": 3}"}}]}),
            event({"tool_calls": [{"index": 1, "function": {"name": "h", "arguments": {"y": 2}}}]}),
            event(finish="tool_calls"),
        )
        calls = lines(run([repeated]))[0]["message"]["tool_calls"]
        self.assertEqual(
            [(c["id"], c["function"]) for c in calls[:2]],
            [("a", {"index": 0, "name": "f", "arguments": {"x": 1}}),
             ("b", {"index": 1, "name": "g", "arguments": {"z": 3}})],
        )
        self.assertEqual(calls[2]["function"], {"index": 2, "name": "h", "arguments": {"y": 2}})
        self.assertRegex(calls[2]["id"], r"^call_[0-9a-f]{8}$")

    def test_unparsableToolArguments(self) -> None:
        """
        Arguments that are not a JSON object are reported, naming the tool
        and quoting the text, instead of calling the tool with C{{}}; in a
        stream this happens at the end, so the client gets an error line
        instead of C{done: true}.  Empty arguments mean C{{}}.
        """
        for raw in ('{"city": "Pa', "[1, 2]", "null", "42", "not json"):
            stream = sse(
                event({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "get_weather", "arguments": raw}}]}),
                event(finish="tool_calls"),
            )
            pipeline = ollamaStream("m", "chat", T0, constant)
            self.assertEqual(pipeline.feed(stream), b"")
            e = self.assertRaises(UpstreamError, pipeline.end)
            self.assertIn("'get_weather'", e.message)
            self.assertIn(repr(raw), e.message)
        empty = sse(event({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "now", "arguments": ""}}]}),
                    event(finish="tool_calls"))
        self.assertEqual(lines(run([empty]))[0]["message"]["tool_calls"][0]["function"]["arguments"], {})

    def test_doneReason(self) -> None:
        """
        Only Ollama's values come out: C{length} stays, everything else
        (tool calls, content filter, unknown, none) is C{stop}.
        """
        for finish, expected in [("stop", "stop"), ("length", "length"), ("tool_calls", "stop"),
                                 ("function_call", "stop"), ("content_filter", "stop"),
                                 ("eos", "stop"), (None, "stop")]:
            self.assertEqual(doneReason(finish), expected, finish)

    def test_logprobsFromOpenAI(self) -> None:
        """
        OpenAI's C{logprobs} object becomes Ollama's list; null, empty or
        odd values give an empty list.
        """
        self.assertEqual(logprobsFromOpenAI({"content": [LP_B]}), [{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}])
        for nothing in (None, {}, {"content": None}, {"content": "x"}, [1], {"content": [3]}):
            self.assertEqual(logprobsFromOpenAI(nothing), [], nothing)


class AggregatedResponseTests(SynchronousTestCase):
    """
    L{responseFromOpenAI}: non-streamed replies carry the same fields,
    aggregated.
    """

    def completion(self, message: JSON, **choice: Any) -> JSON:
        """
        An OpenAI completion with one choice.
        """
        return {
            "choices": [{"index": 0, "message": message, "finish_reason": "stop", **choice}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4},
        }

    def test_table(self) -> None:
        """
        Thinking from any of the three sources, tool calls with object
        arguments and ids, and logprobs land where a stream would have put
        them, for chat (in C{message}) and generate (top level).
        """
        calls = [{"id": "call_1", "type": "function",
                  "function": {"name": "f", "arguments": '{"a": [1, {"b": null}]}'}}]
        ollamaCalls = [{"id": "call_1", "function": {"index": 0, "name": "f", "arguments": {"a": [1, {"b": None}]}}}]
        cases: list[tuple[JSON, dict[str, Any], JSON]] = [
            ({"content": "Hi", "reasoning_content": "hmm"}, {}, {"content": "Hi", "thinking": "hmm"}),
            ({"content": "Hi", "reasoning": "hmm"}, {}, {"content": "Hi", "thinking": "hmm"}),
            ({"content": "<think>\nhmm\n</think>\n\nHi"}, {}, {"content": "Hi", "thinking": "hmm"}),
            ({"content": None, "tool_calls": calls}, {}, {"content": "", "tool_calls": ollamaCalls}),
            ({"content": "Hi"}, {"logprobs": {"content": [LP_B]}},
             {"content": "Hi", "logprobs": [{"token": "lo", "logprob": -0.01, "bytes": [108, 111]}]}),
        ]
        for message, choice, expected in cases:
            completion = self.completion(message, **choice)
            result = responseFromOpenAI(completion, "m:proxy", "chat", T0 - 10, T0)
            got = dict(result["message"])
            self.assertEqual(got.pop("role"), "assistant")
            if "logprobs" in result:
                got["logprobs"] = result["logprobs"]
            self.assertEqual(got, expected, message)
            self.assertEqual(
                (result["done"], result["done_reason"], result["prompt_eval_count"], result["eval_count"]),
                (True, "stop", 10, 4),
            )
            generated = responseFromOpenAI(completion, "m", "generate", T0 - 10, T0)
            self.assertNotIn("message", generated)
            self.assertEqual(generated["response"], expected["content"])
            for key in ("thinking", "tool_calls", "logprobs"):
                self.assertEqual(generated.get(key), expected.get(key), key)
            self.assertEqual(generated["context"], [])

    def test_wholeDurationsMeasured(self) -> None:
        """
        A whole answer reports the measured time from arrival to its last
        byte for prompt evaluation and evaluation alike (the proxy cannot
        split it), never a made-up 1 ns that makes clients show billions
        of tokens per second.
        """
        completion = self.completion({"content": "Hi"})
        result = responseFromOpenAI(completion, "m:proxy", "chat", T0 - 2_000_000_000, T0)
        for key in ("total_duration", "prompt_eval_duration", "eval_duration"):
            self.assertEqual(result[key], 2_000_000_000, key)
        self.assertEqual(result["eval_count"] / (result["eval_duration"] / 1e9), 2.0)

    def test_thinkFalse(self) -> None:
        """
        With C{think: false}, no thinking is returned from any source.
        """
        for message in ({"content": "Hi", "reasoning_content": "x"}, {"content": "<think>x</think>Hi"}):
            result = responseFromOpenAI(self.completion(message), "m", "chat", T0, T0, dropThinking=True)
            self.assertEqual(result["message"], {"role": "assistant", "content": "Hi"})

    def test_badToolArguments(self) -> None:
        """
        Unparsable tool-call arguments are an upstream error naming the tool.
        """
        completion = self.completion({"content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]})
        e = self.assertRaises(UpstreamError, responseFromOpenAI, completion, "m", "chat", T0, T0)
        self.assertIn("'f'", e.message)
        self.assertIn("{oops", e.message)

    def test_toolCallsWithoutIds(self) -> None:
        """
        Calls without ids get distinct, repeatable synthetic ones.
        """
        calls = [{"function": {"name": "f", "arguments": "{}"}}, {"function": {"name": "f", "arguments": '{"x":1}'}}]
        first = ollamaToolCalls(calls)
        self.assertEqual(first, ollamaToolCalls(calls))
        self.assertNotEqual(first[0]["id"], first[1]["id"])
        self.assertEqual([c["function"]["index"] for c in first], [0, 1])


jsonScalars = st.none() | st.booleans() | st.integers() | st.text()

logprobLists = st.none() | st.lists(
    st.fixed_dictionaries({"token": st.text(), "logprob": st.floats(-100, 0)}), max_size=2
)

deltas = st.builds(Delta, st.text(), st.text(), logprobLists)


class TemplateEncodingTests(SynchronousTestCase):
    """
    L{NDJSONEncoder} writes the common line (plain content) from a
    template; every line must be byte-identical to L{codec.dumpLine} of the
    object it stands for.
    """

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(), st.integers(0, 253_402_300_799 * 10**9), st.text(),
           st.sampled_from(["chat", "generate"]))
    def test_plainLineIdentical(self, model: str, now: int, content: str, kind: Kind) -> None:
        """
        With any model name, timestamp and content (quotes, control
        characters, non-BMP text), the template line is the object's line,
        also when the cached template is reused for the next delta.
        """
        encoder = NDJSONEncoder(model, kind, 0, lambda: now)
        stamp = formatTimestamp(now)

        def expected(text: str) -> bytes:
            if kind == "chat":
                line: dict[str, Any] = {"model": model, "created_at": stamp,
                                        "message": {"role": "assistant", "content": text},
                                        "done": False}
            else:
                line = {"model": model, "created_at": stamp, "response": text, "done": False}
            return codec.dumpLine(line)

        self.assertEqual(encoder.encode([Delta(content)]), expected(content))
        self.assertEqual(
            encoder.encode([Delta(content), Delta(content + "x")]),
            expected(content) + expected(content + "x"),
        )

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(deltas, max_size=4), st.sampled_from(["chat", "generate"]))
    def test_anyDeltasIdentical(self, events: list[Delta], kind: Kind) -> None:
        """
        Deltas with thinking or log-probabilities take the general path;
        every line, template or not, is canonical JSON (re-encoding the
        decoded line gives the same bytes) and carries the delta's text.
        """
        out = NDJSONEncoder("m", kind, 0, lambda: 0).encode(events)
        lines = out.splitlines(keepends=True)
        self.assertEqual(len(lines), len(events))
        for line, event in zip(lines, events):
            decoded = codec.loads(line)
            self.assertEqual(codec.dumpLine(decoded), line)
            text = decoded["message"]["content"] if kind == "chat" else decoded["response"]
            self.assertEqual(text, event.content)

    def test_wholeStreamIdentical(self) -> None:
        """
        A translated stream (content, thinking, final object) encodes each
        line as L{codec.dumpLine} would.
        """
        stream = ollamaStream("m:proxy", "chat", 0, lambda: 1_000_000_000)
        payloads = [
            codec.dumps({"choices": [{"delta": {"reasoning_content": "hmm"}}]}),
            codec.dumps({"choices": [{"delta": {"content": "Hi \"there\"\n"}}]}),
            codec.dumps({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
        ]
        body = b"".join(b"data: " + p + b"\n\n" for p in payloads) + b"data: [DONE]\n\n"
        out = stream.feed(body) + stream.end()
        lines = out.splitlines(keepends=True)
        self.assertEqual(b"".join(codec.dumpLine(codec.loads(line)) for line in lines), out)
        self.assertEqual(
            [codec.loads(line)["message"] for line in lines[:2]],
            [{"role": "assistant", "content": "", "thinking": "hmm"},
             {"role": "assistant", "content": "Hi \"there\"\n"}],
        )


class OllamaRouteTests(SynchronousTestCase):
    """
    L{OllamaRoute}: C{/api/chat} and C{/api/generate} as the generic
    generation resource runs them.
    """

    def test_modelCheckedWithStreamAndThink(self) -> None:
        """
        Before routing: the model is named, and a bad C{stream} or C{think}
        is refused (a 400 even for a model no backend offers).
        """
        route = OllamaRoute("chat")
        self.assertEqual(route.model({"model": "m", "stream": False, "think": True}, {}), "m")
        self.assertRaises(BadRequest, route.model, {}, {})
        self.assertRaises(BadRequest, route.model, {"model": "m", "stream": "yes"}, {})
        self.assertRaises(BadRequest, route.model, {"model": "m", "think": "loud"}, {})

    def test_loadAnswers(self) -> None:
        """
        A chat without messages, or a generate without prompt or images, is
        Ollama's load answer (unload with C{keep_alive: 0}), no backend.
        """
        route = OllamaRoute("chat", constant)
        load = route.parse({"model": "m"}, {}, NO_OVERRIDE)
        assert isinstance(load, Answer)
        self.assertEqual((load.body["model"], load.body["done_reason"]), ("m", "load"))
        self.assertEqual(load.body["created_at"], formatTimestamp(T0))
        generate = OllamaRoute("generate", constant)
        unload = generate.parse({"model": "m", "keep_alive": 0}, {}, NO_OVERRIDE)
        assert isinstance(unload, Answer)
        self.assertEqual(unload.body["done_reason"], "unload")

    def test_chatWithTheModelsDefaults(self) -> None:
        """
        A chat is parsed with the routed model's default options (the
        client's own win); the reply side writes Ollama's NDJSON, a fresh
        encoder per stream.
        """
        route = OllamaRoute("chat")
        override = ModelOverride(options={"temperature": 0.1, "top_p": 0.5})
        parsed = route.parse({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                              "options": {"temperature": 0.9}}, {}, override)
        assert isinstance(parsed, Generation)
        assert isinstance(parsed.request, ChatRequest)
        self.assertEqual((parsed.request.sampling.temperature, parsed.request.sampling.topP),
                         (0.9, 0.5))
        self.assertIsNone(parsed.asChat)
        first = parsed.reply.streamEncoder("m", T0)
        self.assertIsNot(parsed.reply.streamEncoder("m", T0), first)
        self.assertEqual(first.contentType, b"application/x-ndjson")

    def test_rawIsATextCompletion(self) -> None:
        """
        A raw generate is a text completion whose chat equivalent (for a
        backend without C{/v1/completions}) is made only when asked; with
        a C{suffix} it has none.
        """
        route = OllamaRoute("generate")
        raw = route.parse({"model": "m", "prompt": "1, 2,", "raw": True}, {}, NO_OVERRIDE)
        assert isinstance(raw, Generation)
        self.assertIsInstance(raw.request, TextRequest)
        assert raw.asChat is not None
        chat = raw.asChat()
        self.assertEqual([(m.role, m.content) for m in chat.messages], [("user", "1, 2,")])
        fim = route.parse({"model": "m", "prompt": "def f(", "suffix": "):"}, {}, NO_OVERRIDE)
        assert isinstance(fim, Generation)
        self.assertIsInstance(fim.request, TextRequest)
        self.assertIsNone(fim.asChat)
        self.assertRaises(BadRequest, route.parse,
                          {"model": "m", "prompt": "x", "raw": True, "system": "s"}, {},
                          NO_OVERRIDE)
