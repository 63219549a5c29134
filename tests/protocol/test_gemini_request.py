"""
Tests for L{ollama_proxy.protocol.gemini_request}: C{generateContent} and
C{countTokens} bodies validated into the hub's typed request, what is
dropped (and named), what is refused.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.errors import BadRequest
from ollama_proxy.protocol.gemini_request import (
    jsonSchema,
    parseCountRequest,
    parseGenerateRequest,
)
from ollama_proxy.protocol.requests import Message, ToolCallRequest
from tests.protocol.helpers import PNG, b64


USER = [{"role": "user", "parts": [{"text": "hi"}]}]


class RequestTests(SynchronousTestCase):
    """
    L{parseGenerateRequest}: the mapping into the hub's request, what is
    dropped, what is refused.
    """

    def test_conversation(self) -> None:
        """
        A tool turn as Gemini CLI sends it: the model's thought, text and
        C{functionCall} (its id kept, C{thoughtSignature} dropped), then
        the user's C{functionResponse} as a tool message before the user's
        own text; an inline image as a data URL.
        """
        parsed = parseGenerateRequest({
            "contents": [
                {"role": "user", "parts": [{"text": "look"},
                                           {"inlineData": {"mimeType": "image/png", "data": b64(PNG)}}]},
                {"role": "model", "parts": [
                    {"text": "hm", "thought": True}, {"text": "Checking."},
                    {"functionCall": {"id": "ls_1", "name": "ls", "args": {"path": "."}},
                     "thoughtSignature": "c2ln"}]},
                {"role": "user", "parts": [
                    {"functionResponse": {"id": "ls_1", "name": "ls", "response": {"output": "a.txt"}}},
                    {"text": "and?"}]},
                {"parts": [{"functionCall": {"name": "x"}}]},
            ],
            "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Really."}]},
        }, "m", True)
        self.assertEqual(parsed.chat.messages, (
            Message("system", "Be brief.\nReally."),
            Message("user", "look", (f"data:image/png;base64,{b64(PNG)}",)),
            Message("assistant", "Checking.", (), (ToolCallRequest("ls_1", "ls", '{"path":"."}'),),
                    thinking="hm"),
            Message("tool", '{"output":"a.txt"}', toolCallId="ls_1", toolName="ls"),
            Message("user", "and?"),
            Message("user", ""),
        ))
        self.assertEqual(parsed.dropped, ("contents.parts.thoughtSignature", "contents.parts.functionCall (in a user turn)"))

    def test_dropped(self) -> None:
        """
        What the backend has no place for is named, each once, and the
        request still parses.
        """
        parsed = parseGenerateRequest({
            "contents": [{"role": "user", "parts": [
                {"text": "a"}, {"inlineData": {"mimeType": "audio/wav", "data": "AAAA"}},
                {"executableCode": {"code": "1"}}, {"fileData": {"mimeType": "image/png",
                                                                "fileUri": "gs://b/x.png"}}]}],
            "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH"}],
            "cachedContent": "cachedContents/1",
            "tools": [{"googleSearch": {}}, {"codeExecution": {}}],
            "generationConfig": {"candidateCount": 2, "responseLogprobs": True,
                                 "responseModalities": ["TEXT", "IMAGE"]},
            "toolConfig": {"retrievalConfig": {}},
        }, "m", False)
        self.assertEqual(parsed.chat.messages, (Message("user", "a"),))
        self.assertEqual(parsed.chat.tools, ())
        self.assertEqual(set(parsed.dropped), {
            "safetySettings", "cachedContent", "contents.parts.inlineData (audio/wav media)",
            "contents.parts.executableCode", "contents.parts.fileData (not an http(s) URL)",
            "tools.googleSearch", "tools.codeExecution",
            "generationConfig.candidateCount (one candidate)",
            "generationConfig.responseModalities (text only)",
            "generationConfig.responseLogprobs", "toolConfig.retrievalConfig",
        })

    def test_droppedBounded(self) -> None:
        """
        However many unknown fields a body has, a bounded number of
        bounded names is kept.
        """
        body: Any = {"contents": USER, **{f"k{i}" + "x" * 500: i for i in range(1000)}}
        dropped = parseGenerateRequest(body, "m", False).dropped
        self.assertEqual(len(dropped), 64)
        self.assertEqual(max(len(name) for name in dropped), 200)

    def test_invalid(self) -> None:
        """
        Malformed input is a 400 naming the field.
        """
        cases: list[tuple[Any, str]] = [
            ([], "request body must be a JSON object"),
            ({}, "contents is required: a non-empty list"),
            ({"contents": []}, "contents is required: a non-empty list"),
            ({"contents": [{"role": "bot", "parts": []}]}, "contents[0].role"),
            ({"contents": [{"role": "user"}]}, "contents[0].parts: expected a list"),
            ({"contents": [{"parts": [{"text": 1}]}]}, "contents[0].parts[0].text: expected a string"),
            ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]},
             "contents[0].parts[0].inlineData.data: invalid base64"),
            ({"contents": [{"parts": [{"functionCall": {"args": {}}}]}]},
             "contents[0].parts[0].functionCall.name"),
            ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": [1]}}]}]},
             "contents[0].parts[0].functionCall.args: expected an object"),
            ({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": "x"}}]}]},
             "contents[0].parts[0].functionResponse.response: expected an object"),
            ({"contents": USER, "generationConfig": {"temperature": "hot"}},
             "generationConfig.temperature: expected a number"),
            ({"contents": USER, "generationConfig": {"maxOutputTokens": 0}},
             "generationConfig.maxOutputTokens: must be positive"),
            ({"contents": USER, "generationConfig": {"stopSequences": "x"}},
             "generationConfig.stopSequences"),
            ({"contents": USER, "generationConfig": {"thinkingConfig": {"thinkingLevel": "HUGE"}}},
             "generationConfig.thinkingConfig.thinkingLevel"),
            ({"contents": USER, "tools": [{"functionDeclarations": [{"description": "x"}]}]},
             "tools[0].functionDeclarations[0].name"),
            ({"contents": USER, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
             "toolConfig.functionCallingConfig.mode"),
            ({"contents": USER, "systemInstruction": {"parts": [{"text": 2}]}},
             "systemInstruction.parts[0].text"),
        ]
        deep: Any = {}
        for _ in range(300):
            deep = {"a": deep}
        cases += [
            ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": deep}}]}]},
             "contents[0].parts[0].functionCall.args: nested too deeply"),
            ({"contents": [{"parts": [{"functionResponse": {"name": "f", "response": deep}}]}]},
             "contents[0].parts[0].functionResponse.response: nested too deeply"),
        ]
        for body, message in cases:
            with self.assertRaises(BadRequest, msg=repr(body)[:200]) as e:
                parseGenerateRequest(body, "m", False)
            self.assertIn(message, e.exception.message)

    def test_schemaConversion(self) -> None:
        """
        Google's OpenAPI subset becomes JSON Schema: lower-case types,
        C{nullable} as a C{null} type, C{propertyOrdering} dropped, at
        every level; nesting is bounded.
        """
        self.assertEqual(jsonSchema({
            "type": "OBJECT", "propertyOrdering": ["a"], "required": ["a"],
            "properties": {"a": {"type": "STRING", "nullable": True, "enum": ["x"]},
                           "b": {"type": "ARRAY", "items": {"type": "INTEGER", "format": "int32"}},
                           "c": {"anyOf": [{"type": "NUMBER"}, {"type": "BOOLEAN"}]}},
        }, "parameters"), {
            "type": "object", "required": ["a"],
            "properties": {"a": {"type": ["string", "null"], "enum": ["x"]},
                           "b": {"type": "array", "items": {"type": "integer", "format": "int32"}},
                           "c": {"anyOf": [{"type": "number"}, {"type": "boolean"}]}},
        })
        deep: Any = {"type": "STRING"}
        for _ in range(100):
            deep = {"type": "ARRAY", "items": deep}
        with self.assertRaises(BadRequest):
            jsonSchema(deep, "parameters")

    def test_thinking(self) -> None:
        """
        C{thinkingConfig}: a zero budget is off, -1 on, a budget a level
        by its size, C{thinkingLevel} its level; C{includeThoughts} says
        whether thoughts are shown.
        """
        cases: list[tuple[Any, Any, bool]] = [
            ({"includeThoughts": True}, None, True),
            ({"thinkingBudget": 0}, False, False),
            ({"thinkingBudget": -1, "includeThoughts": True}, True, True),
            ({"thinkingBudget": 512}, "low", False),
            ({"thinkingBudget": 4096}, "medium", False),
            ({"thinkingBudget": 24576}, "high", False),
            ({"thinkingLevel": "MINIMAL"}, "low", False),
            ({"thinkingLevel": "HIGH"}, "high", False),
        ]
        for config, think, thoughts in cases:
            parsed = parseGenerateRequest(
                {"contents": USER, "generationConfig": {"thinkingConfig": config}}, "m", True)
            self.assertEqual((parsed.chat.think, parsed.thoughts), (think, thoughts), config)

    def test_snakeCase(self) -> None:
        """
        Protocol fields by their C{snake_case} names, as Google's servers
        take them and the Python SDK sends some, are read like the
        C{lowerCamelCase} ones; what the fields hold (arguments, schema
        property names) is left as it is.
        """
        parsed = parseGenerateRequest({
            "contents": [{"role": "model", "parts": [{"function_call": {
                "name": "f", "args": {"city_name": "Paris"}}}]}],
            "system_instruction": {"parts": [{"text": "S"}]},
            "generation_config": {"max_output_tokens": 5, "maxOutputTokens": 6,
                                  "thinking_config": {"include_thoughts": True}},
            "tools": [{"function_declarations": [{"name": "f", "parameters": {
                "type": "OBJECT", "properties": {"city_name": {"type": "STRING"}},
                "property_ordering": ["city_name"]}}]}],
        }, "m", False)
        self.assertEqual(parsed.chat.messages, (
            Message("system", "S"),
            Message("assistant", "", (), (ToolCallRequest(None, "f", '{"city_name":"Paris"}'),)),
        ))
        self.assertEqual((parsed.chat.sampling.maxTokens, parsed.thoughts), (6, True))
        tool: Any = parsed.chat.tools[0]
        self.assertEqual(tool["function"]["parameters"], {
            "type": "object", "properties": {"city_name": {"type": "string"}}})
        self.assertEqual(parsed.dropped, ())

    def test_count(self) -> None:
        """
        C{countTokens} takes C{contents} or a whole
        C{generateContentRequest}.
        """
        self.assertEqual(parseCountRequest({"contents": USER}, "m").messages, (Message("user", "hi"),))
        whole = parseCountRequest({"generateContentRequest": {
            "model": "models/m", "contents": USER, "systemInstruction": {"parts": [{"text": "S"}]}}}, "m")
        self.assertEqual(whole.messages, (Message("system", "S"), Message("user", "hi")))
        with self.assertRaises(BadRequest):
            parseCountRequest({}, "m")
