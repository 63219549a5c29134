"""
The configuration file: a good file parses into backends, models, aliases
and overrides; each kind of bad file is refused with the file, the line and
the key; the command line wins over the file's C{[server]} table.
"""

from __future__ import annotations

import os
import textwrap

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.service.config import (
    ConfigError,
    ModelOverride,
    keyLines,
    loadConfig,
    parseConfig,
)
from ollama_proxy.service.options import FileProblem
from ollama_proxy.service.tap import DrainService, Options
from tests.tempdirs import tempDir

GOOD = textwrap.dedent(
    """\
    # Two backends.
    [server]
    models-ttl = 30
    listen = ["tcp:11434:interface=127.0.0.1", "unix:/run/ollama-proxy.sock"]

    [[backend]]
    name = "litellm"
    url = "http://127.0.0.1:4000/"
    api_key_env = "LITELLM_KEY"
    allow = ["gpt-*", "claude-*"]
    deny = ["*-preview"]

    [backend.aliases]
    fast = "gpt-4o-mini"
    "smart:latest" = "claude-3-7"

    [backend.overrides."gpt-4o"]
    context_length = 128000
    max_output_tokens = 16384
    capabilities = ["completion", "tools", "vision"]
    options = { temperature = 0.2 }
    extra = { user = "ollama-proxy", reasoning_effort = "low" }

    [[backend]]
    name = "vllm"
    url = "http://127.0.0.1:8000/v1"
    api_key = "sk-vllm"
    flavor = "vllm"
    discover = false
    models = ["qwen3-8b", "qwen3-32b"]
    """
)


def errorOf(source: str, **kwargs: object) -> ConfigError:
    """
    @return: the error that parsing C{source} as C{proxy.toml} raises.
    """
    try:
        parseConfig(source, "proxy.toml", environ={"LITELLM_KEY": "sk-env"}, **kwargs)
    except ConfigError as e:
        return e
    raise AssertionError("no ConfigError raised")


class GoodFileTests(SynchronousTestCase):
    """
    A valid file with every feature.
    """

    def setUp(self) -> None:
        self.config = parseConfig(GOOD, "proxy.toml", environ={"LITELLM_KEY": "sk-env"})

    def test_backends(self) -> None:
        """
        Both backends are there in file order with their URLs (trailing
        slash removed), their keys (from the environment or the file), and
        their model selection.
        """
        first, second = self.config.backends
        self.assertEqual((first.name, first.url, first.apiKey),
                         ("litellm", "http://127.0.0.1:4000", "sk-env"))
        self.assertEqual((first.discover, first.allow, first.deny),
                         (True, ("gpt-*", "claude-*"), ("*-preview",)))
        self.assertEqual((second.name, second.url, second.apiKey, second.discover, second.models),
                         ("vllm", "http://127.0.0.1:8000/v1", "sk-vllm", False,
                          ("qwen3-8b", "qwen3-32b")))
        self.assertEqual((first.flavor, second.flavor), (None, "vllm"))

    def test_aliasesAndOverrides(self) -> None:
        """
        Aliases map to backend ids (quoted keys keep their colon), and an
        override carries its context length, capabilities, options and extra
        fields; a model without one gets the empty override.
        """
        first = self.config.backends[0]
        self.assertEqual(dict(first.aliases), {"fast": "gpt-4o-mini", "smart:latest": "claude-3-7"})
        self.assertEqual(
            first.override("gpt-4o"),
            ModelOverride(
                contextLength=128000,
                maxOutputTokens=16384,
                capabilities=("completion", "tools", "vision"),
                options={"temperature": 0.2},
                extra={"user": "ollama-proxy", "reasoning_effort": "low"},
            ),
        )
        self.assertEqual(first.override("other"), ModelOverride())

    def test_globs(self) -> None:
        """
        A discovered id is offered when it matches an allow glob and no deny
        glob.
        """
        first = self.config.backends[0]
        self.assertTrue(first.offers("gpt-4o"))
        self.assertFalse(first.offers("gpt-5-preview"))
        self.assertFalse(first.offers("llama3"))
        self.assertTrue(self.config.backends[1].offers("anything"))

    def test_keyNeverInRepr(self) -> None:
        """
        A backend's repr (what a debug log would show) has no API key.
        """
        self.assertNotIn("sk-vllm", repr(self.config.backends[1]))
        self.assertNotIn("sk-env", repr(self.config))

    def test_keyFileRelativeToConfig(self) -> None:
        """
        C{api_key_file} is read relative to the configuration file, and its
        whitespace is stripped.
        """
        directory = tempDir(self)
        with open(os.path.join(directory, "key.txt"), "w") as f:
            f.write("sk-from-file\n")
        path = os.path.join(directory, "proxy.toml")
        with open(path, "w") as f:
            f.write('[[backend]]\nurl = "http://127.0.0.1:1"\napi_key_file = "key.txt"\n')
        config = loadConfig(path)
        self.assertEqual(config.backends[0].apiKey, "sk-from-file")
        self.assertEqual(config.backends[0].name, "backend0")


class BadFileTests(SynchronousTestCase):
    """
    Each kind of mistake is reported with the file, the line and the key.
    """

    def test_syntaxError(self) -> None:
        """
        A TOML syntax error names the file and the line tomllib reports.
        """
        e = errorOf('[[backend]]\nurl = "http://127.0.0.1:1"\nname = "unterminated\n')
        self.assertEqual((e.path, e.line, e.key), ("proxy.toml", 3, None))
        self.assertTrue(str(e).startswith("proxy.toml:3: invalid TOML: "), str(e))

    def test_userInfoRefused(self) -> None:
        """
        A backend C{url} with C{user:pass@} is refused on its line, without
        the password in the message.
        """
        e = errorOf('[[backend]]\nurl = "http://u:hunter2@127.0.0.1:1/v1"\n')
        self.assertEqual((e.line, e.key), (2, "backend[0].url"))
        self.assertIn("without user:pass@", e.reason)
        self.assertNotIn("hunter2", str(e))

    def test_unknownKey(self) -> None:
        """
        A misspelt key is refused on its own line, with the keys that exist.
        """
        e = errorOf('[[backend]]\nurl = "http://127.0.0.1:1"\n\napi-key = "x"\n')
        self.assertEqual((e.line, e.key), (4, "backend[0].api-key"))
        self.assertIn("unknown key", e.reason)
        self.assertIn("api_key", e.reason)

    def test_unknownTopLevelTable(self) -> None:
        """
        A table the file format does not have is refused at its header.
        """
        e = errorOf('[[backend]]\nurl = "http://127.0.0.1:1"\n[backends]\nx = 1\n')
        self.assertEqual((e.line, e.key), (3, "backends"))

    def test_wrongType(self) -> None:
        """
        A value of the wrong type names the expected type and the key, also
        inside an override table of the second backend.
        """
        source = GOOD.replace("context_length = 128000", 'context_length = "128k"')
        e = errorOf(source)
        self.assertEqual(e.key, 'backend[0].overrides.gpt-4o.context_length')
        self.assertEqual(e.line, GOOD.splitlines().index("context_length = 128000") + 1)
        self.assertIn("positive integer", e.reason)
        e = errorOf(GOOD.replace("discover = false", 'discover = "no"'))
        self.assertEqual(e.key, "backend[1].discover")
        self.assertEqual(e.line, GOOD.splitlines().index("discover = false") + 1)

    def test_missingURL(self) -> None:
        """
        A backend without C{url} is reported at its C{[[backend]]} header.
        """
        e = errorOf('[[backend]]\nurl = "http://127.0.0.1:1"\n\n[[backend]]\nname = "b"\n')
        self.assertEqual((e.line, e.key), (4, "backend[1]"))
        self.assertIn("missing required key 'url'", e.reason)

    def test_badURL(self) -> None:
        """
        A URL that is not http(s) is refused.
        """
        e = errorOf('[[backend]]\nurl = "127.0.0.1:4000"\n')
        self.assertEqual((e.line, e.key), (2, "backend[0].url"))

    def test_sharedModelsArePools(self) -> None:
        """
        A static model or alias two backends offer is accepted: the
        backends are that name's pool (issue 21), not a conflict.
        """
        source = GOOD.replace('"qwen3-32b"]', '"qwen3-32b", "fast"]')
        config = parseConfig(source, "proxy.toml", {"LITELLM_KEY": "sk-lite"})
        self.assertIn("fast", config.backends[0].aliases)
        self.assertIn("fast", config.backends[1].models)

    def test_duplicateBackendNames(self) -> None:
        """
        Two backends with one name are refused.
        """
        e = errorOf('[[backend]]\nurl = "http://a:1"\nname = "x"\n[[backend]]\nurl = "http://b:1"\n'
                    'name = "x"\n')
        self.assertEqual((e.line, e.key), (6, "backend[1].name"))

    def test_unsetKeyVariable(self) -> None:
        """
        An C{api_key_env} naming an unset variable stops the start-up rather
        than sending requests without a key.
        """
        e = errorOf('[[backend]]\nurl = "http://a:1"\napi_key_env = "NOPE_KEY"\n')
        self.assertEqual((e.line, e.key), (3, "backend[0].api_key_env"))
        self.assertIn("NOPE_KEY is not set", e.reason)

    def test_twoKeySources(self) -> None:
        """
        Two ways of giving one key are refused.
        """
        e = errorOf('[[backend]]\nurl = "http://a:1"\napi_key = "a"\napi_key_env = "LITELLM_KEY"\n')
        self.assertEqual((e.line, e.key), (4, "backend[0].api_key_env"))

    def test_unknownFlavor(self) -> None:
        """
        A flavor the translation does not know is refused, listing the
        known ones.
        """
        e = errorOf(GOOD.replace('flavor = "vllm"', 'flavor = "vllmm"'))
        self.assertEqual((e.key, e.line), ("backend[1].flavor",
                                           GOOD.splitlines().index('flavor = "vllm"') + 1))
        self.assertIn("openrouter", e.reason)

    def test_native(self) -> None:
        """
        C{native} lists the agent APIs a backend serves itself; anything
        else is refused, naming the choices.
        """
        config = parseConfig('[[backend]]\nurl = "http://a:1"\nnative = ["messages", "responses"]\n')
        self.assertEqual(config.backends[0].native, ("messages", "responses"))
        self.assertEqual(parseConfig('[[backend]]\nurl = "http://a:1"\n').backends[0].native, ())
        e = errorOf('[[backend]]\nurl = "http://a:1"\nnative = ["chat"]\n')
        self.assertEqual((e.key, e.line, e.reason),
                         ("backend[0].native", 3, "expected some of: messages, responses"))

    def test_unknownCapability(self) -> None:
        """
        A capability Ollama does not know is refused with its index.
        """
        e = errorOf(GOOD.replace('"vision"]', '"vison"]'))
        self.assertEqual(e.key, 'backend[0].overrides.gpt-4o.capabilities[2]')

    def test_noDiscoveryNoModels(self) -> None:
        """
        A backend that neither lists nor names models would offer nothing.
        """
        e = errorOf('[[backend]]\nurl = "http://a:1"\ndiscover = false\n')
        self.assertEqual((e.line, e.key), (3, "backend[0].discover"))

    def test_unreadableFile(self) -> None:
        """
        A missing file is an error naming it.
        """
        with self.assertRaises(ConfigError) as e:
            loadConfig("/nonexistent/proxy.toml")
        self.assertTrue(str(e.exception).startswith("/nonexistent/proxy.toml: cannot read"))


class KeyLinesTests(SynchronousTestCase):
    """
    The line scanner behind the messages.
    """

    def test_arrayOfTables(self) -> None:
        """
        Keys of the second C{[[backend]]} and its sub-tables get the index 1;
        dotted and quoted keys are split.
        """
        lines = keyLines(GOOD)
        text = GOOD.splitlines()
        self.assertEqual(lines[("backend", 1, "url")], text.index('url = "http://127.0.0.1:8000/v1"') + 1)
        self.assertEqual(lines[("backend", 0, "aliases", "smart:latest")],
                         text.index('"smart:latest" = "claude-3-7"') + 1)
        self.assertEqual(lines[("backend", 0, "overrides", "gpt-4o")],
                         text.index('[backend.overrides."gpt-4o"]') + 1)

    def test_multilineStringSkipped(self) -> None:
        """
        Lines inside a multi-line string are not mistaken for keys.
        """
        lines = keyLines('a = """\nb = 1\n"""\nc = 2\n')
        self.assertEqual(lines, {("a",): 1, ("c",): 4})


class OptionsTests(SynchronousTestCase):
    """
    C{--config} with the command line.
    """

    def writeConfig(self, text: str) -> str:
        """
        @return: the path of a new file holding C{text}.
        """
        path = os.path.join(tempDir(self), "proxy.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_fileValuesAreDefaults(self) -> None:
        """
        C{[server]} values apply (coerced like the options), and the backends
        come from the file.
        """
        path = self.writeConfig(
            '[server]\nmodels-ttl = 5\nlisten = "tcp:9999"\ndebug = true\n'
            '[[backend]]\nname = "a"\nurl = "http://127.0.0.1:1"\n'
        )
        options = Options()
        options.parseOptions(["--config", path])
        self.assertEqual(options["models-ttl"], 5.0)
        self.assertEqual(options.settings.listen, ("tcp:9999",))
        self.assertTrue(options["debug"])
        self.assertEqual([b.name for b in options.settings.backends], ["a"])

    def test_commandLineWins(self) -> None:
        """
        An option given on the command line beats the file's value, and
        C{--listen} replaces the file's list.
        """
        path = self.writeConfig(
            '[server]\nmodels-ttl = 5\nlisten = ["tcp:9999"]\n'
            '[[backend]]\nurl = "http://127.0.0.1:1"\n'
        )
        options = Options()
        options.parseOptions([f"--config={path}", "--models-ttl", "7", "--listen", "tcp:1234"])
        self.assertEqual(options["models-ttl"], 7.0)
        self.assertEqual(options.settings.listen, ("tcp:1234",))

    def test_targetAddsDefaultBackend(self) -> None:
        """
        C{--target} with C{--api-key} defines a backend named C{default}
        placed first, so that it wins names it shares with the file's.
        """
        path = self.writeConfig('[[backend]]\nname = "b"\nurl = "http://127.0.0.1:2"\n')
        options = Options()
        options.parseOptions(["--config", path, "--target", "http://127.0.0.1:1/",
                              "--api-key", "sk-cli"])
        names = [(b.name, b.url, b.apiKey) for b in options.settings.backends]
        self.assertEqual(names, [("default", "http://127.0.0.1:1", "sk-cli"),
                                 ("b", "http://127.0.0.1:2", None)])

    def test_targetOverridesDefaultBackend(self) -> None:
        """
        A file backend named C{default} gets the command line's URL and key
        and keeps its other settings.
        """
        path = self.writeConfig(
            '[[backend]]\nname = "default"\nurl = "http://127.0.0.1:2"\nmodels = ["m"]\n'
        )
        options = Options()
        options.parseOptions(["--config", path, "--target", "http://127.0.0.1:1"])
        (backend,) = options.settings.backends
        self.assertEqual((backend.url, backend.models), ("http://127.0.0.1:1", ("m",)))

    def test_apiKeyWithoutTarget(self) -> None:
        """
        C{--api-key} with a file and no C{--target} is refused rather than
        sent to a backend it may not be meant for.
        """
        path = self.writeConfig('[[backend]]\nurl = "http://127.0.0.1:2"\n')
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--config", path, "--api-key", "sk-x"])
        self.assertIn("[[backend]]", str(e.exception))

    def test_badFileStopsStartup(self) -> None:
        """
        An invalid file stops the start-up with one line (no usage text)
        carrying the file, line and key, and exit status 1.
        """
        path = self.writeConfig('[[backend]]\nurl = "http://127.0.0.1:2"\ncolour = 1\n')
        with self.assertRaises(FileProblem) as e:
            Options().parseOptions(["--config", path])
        self.assertEqual(e.exception.message.split(": ")[0], f"{path}:3")
        self.assertIn("backend[0].colour", e.exception.message)
        self.assertEqual(e.exception.code, f"ollama-proxy: {e.exception.message}")

    def test_unknownServerOption(self) -> None:
        """
        A C{[server]} key that is not an option is refused with its line; so
        is a value the option's coercion rejects.
        """
        path = self.writeConfig('[server]\nlisten = "tcp:1"\nlisen = "tcp:2"\n'
                                '[[backend]]\nurl = "http://127.0.0.1:2"\n')
        with self.assertRaises(FileProblem) as e:
            Options().parseOptions(["--config", path])
        self.assertIn(f"{path}:3: server.lisen: unknown option", str(e.exception))
        path = self.writeConfig('[server]\nidle-timeout = -1\n'
                                '[[backend]]\nurl = "http://127.0.0.1:2"\n')
        with self.assertRaises(FileProblem) as e:
            Options().parseOptions(["--config", path])
        self.assertIn(f"{path}:2: server.idle-timeout: must be positive", str(e.exception))

    def test_serviceUsesEveryBackend(self) -> None:
        """
        L{makeService} builds one upstream client per backend, each with its
        name, URL, key and flavor (the table's, else C{--backend-flavor},
        else guessed from the host), a model-list cache with
        C{--models-ttl}, and (with several backends) the start-up listing.
        """
        from twisted.internet.testing import MemoryReactorClock

        from ollama_proxy.service.tap import makeService
        from ollama_proxy.web.context import ProxyContext

        path = self.writeConfig(
            '[server]\nmodels-ttl = 12\nmax-body = 12345\n'
            '[[backend]]\nname = "a"\nurl = "http://127.0.0.1:1"\napi_key = "ka"\n'
            'flavor = "litellm"\nnative = ["messages"]\n'
            '[[backend]]\nname = "b"\nurl = "https://api.openai.com/v1"\n'
        )
        options = Options()
        options.parseOptions(["--config", path])
        service = makeService(options, reactor=MemoryReactorClock())
        [drain] = [s for s in service if isinstance(s, DrainService)]  # type: ignore[attr-defined]
        [site] = [s for s in drain if hasattr(s, "endpoint")]
        root = site.factory.resource
        while not hasattr(root, "ctx"):
            root = root.wrapped  # the CORS and key wrappers
        ctx = root.ctx
        self.assertIsInstance(ctx, ProxyContext)
        clients = [(b.name, b.backend.target, b.backend.apiKey, b.backend.flavor.name,
                    b.cache.ttl) for b in ctx.models.router.backends]
        self.assertEqual(clients, [("a", "http://127.0.0.1:1", "ka", "litellm", 12.0),
                                   ("b", "https://api.openai.com/v1", None, "openai", 12.0)])
        self.assertEqual([b.backend.native for b in ctx.models.router.backends],
                         [frozenset({"messages"}), frozenset()])
        self.assertEqual(ctx.maxBody, 12345)
        self.assertIsNotNone(ctx.metrics)
        from ollama_proxy.service.tap import ModelListing

        self.assertEqual([type(s) for s in service if isinstance(s, ModelListing)],  # type: ignore[attr-defined]
                         [ModelListing])

    def test_workerIgnoresFileWorkers(self) -> None:
        """
        An extra worker (C{--worker-of}) reads the same file; its
        C{workers} value must not make the worker start workers itself.
        """
        path = self.writeConfig('[server]\nworkers = 4\nlisten = "tcp:11434"\n'
                                '[[backend]]\nurl = "http://127.0.0.1:2"\n')
        parent = Options()
        parent.parseOptions(["--config", path])
        self.assertEqual(parent["workers"], 4)
        worker = Options()
        worker.parseOptions(["--config", path, "--worker-of", "123"])
        self.assertEqual(worker.settings.workers, 1)

    def test_abbreviationRefused(self) -> None:
        """
        getopt would take C{--conf} for C{--config}, but the file is read
        before getopt runs: the abbreviation is refused rather than the file
        silently ignored.
        """
        path = self.writeConfig('[[backend]]\nurl = "http://127.0.0.1:2"\n')
        with self.assertRaises(usage.UsageError) as e:
            Options().parseOptions(["--conf", path])
        self.assertIn("--config in full", str(e.exception))

    def test_noBackendAtAll(self) -> None:
        """
        Without C{--target}, C{--demo} or a C{[[backend]]}, nothing can be
        served.
        """
        path = self.writeConfig('[server]\nmodels-ttl = 1\n')
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--config", path])
