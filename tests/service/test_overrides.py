"""
The C{--model-info} file: loaded and validated at start-up.
"""

from __future__ import annotations

import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.catalog import (
    parseOverrides,
)
from ollama_proxy.service.overrides import loadOverrides
from ollama_proxy.service.options import FileProblem
from ollama_proxy.service.tap import Options
from tests.tempdirs import tempDir


class OverrideFileTests(SynchronousTestCase):
    """
    The C{--model-info} file.
    """

    def write(self, name: str, text: str) -> str:
        directory = tempDir(self)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_json(self) -> None:
        """
        A JSON file maps model ids to facts; a capability list sets every
        flag.
        """
        path = self.write(
            "m.json", '{"qwen/qwen3:8b": {"context_length": 40960, "capabilities": ["completion", "thinking"]}}'
        )
        self.assertEqual(
            loadOverrides(path),
            {"qwen/qwen3:8b": {"context_length": 40960, "tools": False, "vision": False,
                               "thinking": True, "embedding": False, "insert": False}},
        )

    def test_toml(self) -> None:
        """
        A C{.toml} file works the same way.
        """
        path = self.write("m.toml", '["*"]\ncontext_length = 8192\n\n["gpt-4o"]\nfamily = "gpt"\n')
        self.assertEqual(
            loadOverrides(path), {"*": {"context_length": 8192}, "gpt-4o": {"family": "gpt"}}
        )

    def test_invalid(self) -> None:
        """
        Unknown keys, wrong types and unknown capabilities are refused with a
        message naming the model.
        """
        for document, message in (
            ({"m": {"contxt_length": 5}}, "unknown key 'contxt_length'"),
            ({"m": {"context_length": "big"}}, "positive integer"),
            ({"m": {"capabilities": ["flying"]}}, "capabilities must be"),
            ({"m": 5}, "'m' must be"),
            ([1], "must contain"),
        ):
            with self.assertRaises(ValueError) as e:
                parseOverrides(document)
            self.assertIn(message, str(e.exception))
        self.assertRaises(ValueError, loadOverrides, self.write("bad.json", "{nope"))
        self.assertRaises(ValueError, loadOverrides, "/nonexistent/model-info.json")

    def test_options(self) -> None:
        """
        C{--model-info} is loaded and validated at start-up; C{--cors-origin}
        is repeatable.
        """
        path = self.write("m.json", '{"m": {"context_length": 1000}}')
        config = Options()
        config.parseOptions(
            ["--target", "http://127.0.0.1:1", "--model-info", path,
             "--cors-origin", "chrome-extension://*", "--cors-origin", "https://x.example"]
        )
        self.assertEqual(config.settings.modelOverrides, {"m": {"context_length": 1000}})
        self.assertEqual(config["cors-origin"], ["chrome-extension://*", "https://x.example"])
        bad = self.write("bad.json", '{"m": {"size": 1}}')
        with self.assertRaises(FileProblem) as e:
            Options().parseOptions(["--target", "http://127.0.0.1:1", "--model-info", bad])
        self.assertIn("unknown key 'size'", str(e.exception))
