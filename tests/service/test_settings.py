"""
L{Settings.fromOptions}: the options' validation as a pure function, tested
on plain values (no files, no environment; the reading step,
L{ollama_proxy.service.options.readInputs}, is tested in
L{tests.service.test_options}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.protocol.backends import BackendConfig
from ollama_proxy.service.config import parseConfig
from ollama_proxy.service.options import Options
from ollama_proxy.service.settings import (
    API_KEY_ENV,
    DEFAULT_LISTEN,
    REQUIRE_KEY_ENV,
    FileProblem,
    Reads,
    Settings,
    Unreadable,
    checkURL,
)


def values(**changes: Any) -> dict[str, Any]:
    """
    @param changes: option values by long name, C{_} for C{-}.
    @return: every option's default (what L{Options} holds before a
        parse) with C{changes}: a plain dict, no parse, no file.
    """
    out = dict(Options())
    out.update({name.replace("_", "-"): value for name, value in changes.items()})
    return out


TARGET = "http://127.0.0.1:4000"

CONFIG = '''
[server]
listen = "tcp:9999"

[[backend]]
name = "a"
url = "http://a.test:4000"
api_key = "sk-file"

[[backend]]
name = "default"
url = "http://old.test:1"
api_key = "sk-old"
'''


class FromOptionsTests(SynchronousTestCase):
    """
    The rules, one by one, on values given directly.
    """

    def test_defaults(self) -> None:
        """
        C{--target} alone: one backend named C{default}, loopback listener,
        the documented defaults, no key either way.
        """
        settings = Settings.fromOptions(values(target=TARGET + "/"), Reads(), ("--target", TARGET))
        self.assertEqual(settings.listen, (DEFAULT_LISTEN,))
        self.assertEqual(settings.backends, (BackendConfig("default", TARGET, None),))
        self.assertEqual(settings.target, TARGET)
        self.assertEqual(settings.fallback, "http://127.0.0.1:11505")
        self.assertEqual(settings.rawArgs, ("--target", TARGET))
        self.assertEqual((settings.requireKeys, settings.maxConnections), ((), None))
        self.assertEqual((settings.workers, settings.workerOf, settings.metrics), (1, None, True))
        self.assertEqual(settings.modelOverrides, {})

    def test_pure(self) -> None:
        """
        The process environment is not read: a key there counts only when
        the reading step put it in L{Reads}.
        """
        os.environ[API_KEY_ENV] = "sk-process"
        self.addCleanup(os.environ.pop, API_KEY_ENV, None)
        os.environ[REQUIRE_KEY_ENV] = "k-process"
        self.addCleanup(os.environ.pop, REQUIRE_KEY_ENV, None)
        settings = Settings.fromOptions(values(target=TARGET), Reads())
        self.assertEqual((settings.backends[0].apiKey, settings.requireKeys), (None, ()))
        reads = Reads(environ={API_KEY_ENV: "sk-env", REQUIRE_KEY_ENV: "a,b"})
        settings = Settings.fromOptions(values(target=TARGET), reads)
        self.assertEqual((settings.backends[0].apiKey, settings.requireKeys), ("sk-env", ("a", "b")))

    def test_noSecretInRepr(self) -> None:
        """
        Neither what was read nor the settings show a key in their repr (a
        traceback's locals, a log line, a test failure).
        """
        reads = Reads(environ={API_KEY_ENV: "sk-env-secret", REQUIRE_KEY_ENV: "k-env-secret"},
                      apiKeyFile="sk-file-secret", requireKeyFile="k-file-secret")
        given = values(target=TARGET, api_key_file="/k", require_key_file="/r")
        settings = Settings.fromOptions(given, reads)
        self.assertEqual((settings.backends[0].apiKey, settings.requireKeys),
                         ("sk-file-secret", ("k-file-secret",)))
        for text in (repr(reads), repr(settings)):
            self.assertNotIn("secret", text)

    def test_targetRequired(self) -> None:
        """
        Without C{--target}, C{--demo} or a file's backends there is
        nothing to serve.
        """
        with self.assertRaises(usage.UsageError) as e:
            Settings.fromOptions(values(), Reads())
        self.assertIn("--target is required", str(e.exception))

    def test_demo(self) -> None:
        """
        C{--demo} targets the fake backend's port; a port out of range is
        refused.
        """
        settings = Settings.fromOptions(values(demo=True, demo_port=24680), Reads())
        self.assertEqual((settings.target, settings.demo, settings.demoPort),
                         ("http://127.0.0.1:24680", True, 24680))
        self.assertRaises(usage.UsageError, Settings.fromOptions,
                          values(demo=True, demo_port=70000), Reads())

    def test_keyPrecedence(self) -> None:
        """
        The backend key: the key file's text (stripped), else C{--api-key},
        else the environment's.
        """
        env = {API_KEY_ENV: "sk-env"}
        cases = [
            (values(target=TARGET, api_key_file="k"), Reads(environ=env, apiKeyFile=" sk-f\n"), "sk-f"),
            (values(target=TARGET, api_key="sk-opt"), Reads(environ=env), "sk-opt"),
            (values(target=TARGET), Reads(environ=env), "sk-env"),
        ]
        for given, reads, expected in cases:
            self.assertEqual(Settings.fromOptions(given, reads).backends[0].apiKey, expected)

    def test_unreadableFiles(self) -> None:
        """
        A file the reading step could not read is a L{FileProblem} naming
        the option, the file and the reason, raised where the file is used.
        """
        cases = [
            (values(target=TARGET, api_key_file="/k"), Reads(apiKeyFile=Unreadable("Nope")),
             "cannot read --api-key-file /k: Nope"),
            (values(target=TARGET, require_key_file="/r"), Reads(requireKeyFile=Unreadable("Nope")),
             "cannot read --require-key-file /r: Nope"),
            (values(target=TARGET, model_info="/m.json"), Reads(modelInfo=Unreadable("Nope")),
             "--model-info /m.json: cannot read /m.json: Nope"),
        ]
        for given, reads, message in cases:
            with self.assertRaises(FileProblem) as e:
                Settings.fromOptions(given, reads)
            self.assertEqual(e.exception.message, message)

    def test_requireKeyFile(self) -> None:
        """
        The key file's keys win over C{--require-key}; a file without a key
        is refused rather than turning authentication off.
        """
        given = values(target=TARGET, require_key_file="/r", require_key="ignored")
        settings = Settings.fromOptions(given, Reads(requireKeyFile="# keys\nk1\nk2, k3\n"))
        self.assertEqual(settings.requireKeys, ("k1", "k2", "k3"))
        with self.assertRaises(FileProblem) as e:
            Settings.fromOptions(given, Reads(requireKeyFile="\n# none\n"))
        self.assertEqual(e.exception.message, "--require-key-file /r holds no key")

    def test_modelInfo(self) -> None:
        """
        The C{--model-info} bytes are parsed (JSON, or TOML by the name);
        malformed ones are a L{FileProblem} naming the file.
        """
        settings = Settings.fromOptions(
            values(target=TARGET, model_info="m.json"),
            Reads(modelInfo=b'{"m": {"context_length": 1000}}'),
        )
        self.assertEqual(settings.modelOverrides, {"m": {"context_length": 1000}})
        settings = Settings.fromOptions(
            values(target=TARGET, model_info="m.toml"),
            Reads(modelInfo=b'[m]\ncontext_length = 2000\n'),
        )
        self.assertEqual(settings.modelOverrides, {"m": {"context_length": 2000}})
        with self.assertRaises(FileProblem) as e:
            Settings.fromOptions(values(target=TARGET, model_info="m.json"), Reads(modelInfo=b"{"))
        self.assertTrue(e.exception.message.startswith("--model-info m.json: m.json: "))

    def test_config(self) -> None:
        """
        The parsed file's backends and C{[server]} listen are used;
        C{--target} replaces the URL and key of its C{default} backend; a
        C{--config} value without the parsed file is the abbreviation
        getopt let through.
        """
        config = parseConfig(CONFIG, "proxy.toml", environ={})
        settings = Settings.fromOptions(values(config="proxy.toml"), Reads(config=config))
        self.assertEqual(settings.listen, ("tcp:9999",))
        self.assertEqual([(b.name, b.url, b.apiKey) for b in settings.backends],
                         [("a", "http://a.test:4000", "sk-file"),
                          ("default", "http://old.test:1", "sk-old")])
        settings = Settings.fromOptions(
            values(config="proxy.toml", target=TARGET, listen=["tcp:1"]), Reads(config=config))
        self.assertEqual(settings.listen, ("tcp:1",))
        self.assertEqual([(b.name, b.url, b.apiKey) for b in settings.backends],
                         [("a", "http://a.test:4000", "sk-file"),
                          ("default", TARGET, "sk-old")])
        with self.assertRaises(usage.UsageError) as e:
            Settings.fromOptions(values(config="proxy.toml"), Reads())
        self.assertEqual(str(e.exception), "spell the option --config in full")

    def test_keyWithoutTarget(self) -> None:
        """
        C{--api-key} with only a file's backends is refused: the file says
        each backend's key.
        """
        config = parseConfig(CONFIG, "proxy.toml", environ={})
        with self.assertRaises(usage.UsageError) as e:
            Settings.fromOptions(values(config="p", api_key="sk"), Reads(config=config))
        self.assertIn("go with --target", str(e.exception))

    def test_workers(self) -> None:
        """
        C{--workers} needs C{SO_REUSEPORT} and C{tcp:} listeners; an extra
        worker (C{--worker-of}) never starts workers of its own.
        """
        given = values(target=TARGET, workers=3, listen=["tcp:8080"])
        self.assertEqual(Settings.fromOptions(given, Reads()).workers, 3)
        with self.assertRaises(usage.UsageError) as e:
            Settings.fromOptions(given, Reads(reusePort=False))
        self.assertIn("SO_REUSEPORT", str(e.exception))
        self.assertRaises(usage.UsageError, Settings.fromOptions,
                          values(target=TARGET, workers=2, listen=["unix:/s"]), Reads())
        worker = Settings.fromOptions(values(target=TARGET, workers=3, worker_of=42), Reads())
        self.assertEqual((worker.workers, worker.workerOf), (1, 42))

    def test_numbers(self) -> None:
        """
        Sizes must be positive, the retry count not negative, the flavor
        and the HTTP parser known; C{--max-connections 0} means no cap.
        """
        for name in ("max_body", "body_budget", "max_line", "pool_size", "workers"):
            with self.assertRaises(usage.UsageError) as e:
                Settings.fromOptions(values(target=TARGET, **{name: 0}), Reads())
            self.assertEqual(str(e.exception), f"--{name.replace('_', '-')} must be positive")
        self.assertRaises(usage.UsageError, Settings.fromOptions,
                          values(target=TARGET, retry_429=-1), Reads())
        self.assertRaises(usage.UsageError, Settings.fromOptions,
                          values(target=TARGET, backend_flavor="nope"), Reads())
        self.assertRaises(usage.UsageError, Settings.fromOptions,
                          values(target=TARGET, http_parser="h11"), Reads())
        self.assertEqual(
            Settings.fromOptions(values(target=TARGET, http_parser="twisted"), Reads()).httpParser,
            "twisted")
        self.assertEqual(
            Settings.fromOptions(values(target=TARGET, max_connections=5), Reads()).maxConnections,
            5)


class CheckURLTests(SynchronousTestCase):
    """
    L{checkURL}, for C{--target} and C{--fallback}.
    """

    def test_accepted(self) -> None:
        """
        http and https URLs with a host, the trailing slash dropped.
        """
        self.assertEqual(checkURL("https://api.test/v1/", "--target"), "https://api.test/v1")

    def test_refused(self) -> None:
        """
        Other schemes, no host, or user-info (never echoed) are refused.
        """
        for url in ("ftp://a", "http://", "a.test:4000"):
            with self.assertRaises(usage.UsageError) as e:
                checkURL(url, "--target")
            self.assertIn("--target must be an http:// or https:// URL", str(e.exception))
        with self.assertRaises(usage.UsageError) as e:
            checkURL("http://u:secret@a.test", "--fallback")
        self.assertNotIn("secret", str(e.exception))
