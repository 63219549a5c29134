"""
Tests for L{ollama_proxy.protocol.requests}: the typed requests every
dialect parses into, the OpenAI tool shapes the agent dialects build, and
the one input-token estimate.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol import codec
from ollama_proxy.protocol.requests import (
    ChatRequest,
    Message,
    Sampling,
    ToolCallRequest,
    estimateTokens,
    functionTool,
    namedChoice,
)


class TypedRequestTests(SynchronousTestCase):
    """
    The requests are values: frozen, equal when their fields are.
    """

    def test_frozen(self) -> None:
        """
        A parsed request cannot be changed on its way to the builder.
        """
        request = ChatRequest("m", (Message("user", "hi"),))
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, request, "model", "x")
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, request.messages[0],
                          "content", "x")

    def test_defaults(self) -> None:
        """
        Unset means unset: no sampling option, no tools, streaming on.
        """
        request = ChatRequest("m", ())
        self.assertEqual((request.stream, request.think, request.sampling, request.tools,
                          request.toolChoice, request.parallelToolCalls, request.logprobs),
                         (True, None, Sampling(), (), None, None, False))
        self.assertEqual(Sampling().stop, ())


class ToolShapeTests(SynchronousTestCase):
    """
    L{functionTool} and L{namedChoice}: OpenAI's shapes, written once.
    """

    def test_functionTool(self) -> None:
        """
        The description is kept when it is a string, C{strict} when it is a
        boolean; anything else a client sent there is left out.
        """
        schema = {"type": "object", "properties": {}}
        self.assertEqual(functionTool("f", schema),
                         {"type": "function", "function": {"name": "f", "parameters": schema}})
        self.assertEqual(functionTool("f", schema, "does f", True), {"type": "function", "function": {
            "name": "f", "parameters": schema, "description": "does f", "strict": True}})
        self.assertEqual(functionTool("f", schema, 3, "yes"),
                         {"type": "function", "function": {"name": "f", "parameters": schema}})

    def test_namedChoice(self) -> None:
        """
        A choice naming one function.
        """
        self.assertEqual(namedChoice("f"), {"type": "function", "function": {"name": "f"}})


class EstimateTests(SynchronousTestCase):
    """
    L{estimateTokens}: characters / 4 over everything the model reads.
    """

    def test_counts(self) -> None:
        """
        Roles, text, reasoning, tool calls and the tools' JSON all count.
        """
        tool = functionTool("f", {"type": "object"})
        request = ChatRequest("m", (
            Message("user", "a" * 40),
            Message("assistant", "", toolCalls=(ToolCallRequest("c", "name", "{}"),),
                    thinking="t" * 20),
        ), tools=(tool,))
        chars = 4 + 40 + 9 + 20 + 4 + 2 + len(codec.dumps([tool]))
        self.assertEqual(estimateTokens(request), chars // 4)

    def test_atLeastOne(self) -> None:
        """
        An empty conversation still costs a token.
        """
        self.assertEqual(estimateTokens(ChatRequest("m", ())), 1)
