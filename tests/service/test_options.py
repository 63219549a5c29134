"""
The reliability and security options of the twistd plugin and how
L{ollama_proxy.service.tap.makeService} wires them.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.service.config import parseConfig
from ollama_proxy.service.options import API_KEY_ENV, REQUIRE_KEY_ENV, FileProblem, readInputs
from ollama_proxy.service.settings import Reads, Unreadable
from ollama_proxy.service.tap import DrainService, Options, makeService
from ollama_proxy.web.auth import KeyGate
from ollama_proxy.web.cors import CORSResource
from ollama_proxy.web.site import ProxySite


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--target", "http://127.0.0.1:4000", *args])
    return options


class OptionTests(SynchronousTestCase):
    """
    Parsing and defaults.
    """

    def setUp(self) -> None:
        saved = os.environ.pop(REQUIRE_KEY_ENV, None)
        if saved is not None:
            self.addCleanup(os.environ.__setitem__, REQUIRE_KEY_ENV, saved)

    def test_defaults(self) -> None:
        """
        The documented defaults: no inbound key, no client-key forwarding,
        no 429 retries, a 300 s body deadline and a 10 s shutdown grace.
        """
        options = parse()
        self.assertEqual(options.settings.requireKeys, ())
        self.assertFalse(options["forward-client-key"])
        self.assertEqual(options["retry-429"], 0)
        self.assertEqual(options["retry-max-wait"], 10.0)
        self.assertEqual(options["body-timeout"], 300.0)
        self.assertEqual(options["shutdown-grace"], 10.0)

    def test_requireKeyList(self) -> None:
        """
        C{--require-key} takes one or several comma-separated keys.
        """
        self.assertEqual(parse("--require-key", "a, b").settings.requireKeys, ("a", "b"))

    def test_requireKeyEnvironment(self) -> None:
        """
        The key may come from C{$OLLAMA_PROXY_REQUIRE_KEY}, keeping it out
        of the process list.
        """
        os.environ[REQUIRE_KEY_ENV] = "from-env"
        self.addCleanup(os.environ.pop, REQUIRE_KEY_ENV, None)
        self.assertEqual(parse().settings.requireKeys, ("from-env",))

    def test_requireKeyFile(self) -> None:
        """
        C{--require-key-file} reads one key per line; an empty file is an
        error rather than silently turning authentication off.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("# keys\nk1\nk2\n")
        self.assertEqual(parse("--require-key-file", path).settings.requireKeys, ("k1", "k2"))
        with open(path, "w") as f:
            f.write("\n")
        self.assertRaises(FileProblem, parse, "--require-key-file", path)
        self.assertRaises(FileProblem, parse, "--require-key-file", path + ".missing")

    def test_invalidNumbers(self) -> None:
        """
        Negative or zero values are refused where they make no sense.
        """
        for args in (
            ("--retry-429", "-1"),
            ("--shutdown-grace", "-1"),
            ("--body-timeout", "0"),
            ("--retry-max-wait", "0"),
        ):
            self.assertRaises(usage.UsageError, parse, *args)

    def test_slowClientOptionsInConfig(self) -> None:
        """
        Both go in the configuration file's C{[server]} table; the command
        line wins.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nclient-header-timeout = 7\nmax-connections = 12\n'
                    '[[backend]]\nname = "a"\nurl = "http://127.0.0.1:9"\n')
        settings = parse("--config", path).settings
        self.assertEqual((settings.clientHeaderTimeout, settings.maxConnections), (7.0, 12))
        settings = parse("--config", path, "--max-connections", "3").settings
        self.assertEqual(settings.maxConnections, 3)
        self.assertEqual(parse("--shutdown-grace", "0")["shutdown-grace"], 0.0)

    def test_userInfoRefused(self) -> None:
        """
        C{--target http://user:pass@host} (which started, then failed every
        request with "invalid hostname") is refused at start-up in one line
        that does not repeat the password; so is C{--fallback}'s.
        """
        for option in ("--target", "--fallback"):
            for url in ("http://user:hunter2@127.0.0.1:4000", "http://hunter2@127.0.0.1:4000/v1"):
                with self.assertRaises(usage.UsageError) as e:
                    parse(option, url)
                message = str(e.exception)
                self.assertIn(f"{option} must not contain a user name or password", message)
                self.assertNotIn("hunter2", message)
                self.assertNotIn("\n", message)

    def test_httpParserValues(self) -> None:
        """
        C{--http-parser} is C{httptools} unless set, and only the two
        parsers are accepted.
        """
        self.assertEqual(parse().settings.httpParser, "httptools")
        self.assertEqual(parse("--http-parser", "twisted").settings.httpParser, "twisted")
        self.assertRaises(usage.UsageError, parse, "--http-parser", "h11")

    def test_slowClientOptions(self) -> None:
        """
        C{--client-header-timeout} defaults to nginx's 60 s and must be
        positive; C{--max-connections} is off by default (0), and a
        negative or fractional count is refused.
        """
        settings = parse().settings
        self.assertEqual((settings.clientHeaderTimeout, settings.maxConnections), (60.0, None))
        settings = parse("--client-header-timeout", "2.5", "--max-connections", "5").settings
        self.assertEqual((settings.clientHeaderTimeout, settings.maxConnections), (2.5, 5))
        for args in (
            ("--client-header-timeout", "0"),
            ("--max-connections", "-1"),
            ("--max-connections", "1.5"),
        ):
            self.assertRaises(usage.UsageError, parse, *args)

    def test_httpParserInConfig(self) -> None:
        """
        C{--http-parser} may also be set in the configuration file's
        C{[server]} table.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nhttp-parser = "twisted"\n'
                    '[[backend]]\nname = "a"\nurl = "http://127.0.0.1:9"\n')
        self.assertEqual(parse("--config", path).settings.httpParser, "twisted")


class ReadInputsTests(SynchronousTestCase):
    """
    L{readInputs}, the one step that reads what the options name.
    """

    def test_nothingNamed(self) -> None:
        """
        Without file options nothing is read, and of the environment only
        the two variables the options fall back to are kept.
        """
        options = parse()
        environ = {API_KEY_ENV: "sk", REQUIRE_KEY_ENV: "k", "HOME": "/root", "AWS_SECRET": "x"}
        reads = readInputs(options, None, environ)
        self.assertEqual(reads, Reads(environ={API_KEY_ENV: "sk", REQUIRE_KEY_ENV: "k"},
                                      reusePort=reads.reusePort))

    def test_files(self) -> None:
        """
        The key files are read as text, C{--model-info} as bytes, and the
        parsed C{--config} is passed on.
        """
        paths = {}
        for name, content in (("api", "sk-file\n"), ("require", "k1\n"), ("info", '{"m": {}}')):
            paths[name] = self.mktemp()
            with open(paths[name], "w", encoding="utf-8") as f:
                f.write(content)
        values = {"api-key-file": paths["api"], "require-key-file": paths["require"],
                  "model-info": paths["info"]}
        config = parseConfig("", "p.toml", environ={})
        reads = readInputs(values, config, {})
        self.assertEqual((reads.apiKeyFile, reads.requireKeyFile, reads.modelInfo),
                         ("sk-file\n", "k1\n", b'{"m": {}}'))
        self.assertIs(reads.config, config)

    def test_unreadable(self) -> None:
        """
        A file that cannot be read is recorded with the reason, not raised:
        L{Settings.fromOptions} reports it where the file is used.
        """
        missing = self.mktemp()
        values = {"api-key-file": missing, "require-key-file": missing, "model-info": missing}
        reads = readInputs(values, None, {})
        gone = Unreadable("No such file or directory")
        self.assertEqual((reads.apiKeyFile, reads.requireKeyFile, reads.modelInfo),
                         (gone, gone, gone))

    def test_postOptionsReads(self) -> None:
        """
        Through the options, an unreadable key file is the same one-line
        L{FileProblem} as before the split.
        """
        missing = self.mktemp()
        with self.assertRaises(FileProblem) as e:
            parse("--api-key-file", missing)
        self.assertEqual(e.exception.message,
                         f"cannot read --api-key-file {missing}: No such file or directory")


class WiringTests(SynchronousTestCase):
    """
    L{makeService} applies the options.
    """

    def build(self, *args: str) -> tuple[Any, ProxySite]:
        reactor = MemoryReactorClock()
        service: Any = makeService(parse("--listen", "tcp:0:interface=127.0.0.1", *args), reactor)
        [drain] = [s for s in service if isinstance(s, DrainService)]
        return service, drain.site

    def test_keyGate(self) -> None:
        """
        A L{KeyGate} guards the tree, inside the CORS wrapper, with the
        C{--require-key} keys; without any it admits everything (it is
        there so that a reload can add keys).
        """
        _, site = self.build("--require-key", "k")
        self.assertIsInstance(site.resource, CORSResource)
        gate = site.resource.wrapped
        self.assertIsInstance(gate, KeyGate)
        self.assertEqual(gate.keys, [b"k"])
        _, site = self.build()
        self.assertEqual(site.resource.wrapped.keys, [])

    def test_backendOptions(self) -> None:
        """
        Retry, forwarding and idle-timeout options reach the backend.
        """
        _, site = self.build("--retry-429", "2", "--retry-max-wait", "5", "--forward-client-key")
        resource: Any = site.resource
        while not hasattr(resource, "ctx"):
            resource = resource.wrapped  # a CORS or key wrapper
        backend = resource.ctx.models.router.backends[0].backend
        self.assertEqual((backend.retries, backend.maxRetryWait, backend.forwardClientKey), (2, 5.0, True))
        self.assertEqual(backend.idleTimeout, 300.0)

    def test_httpParserServerChannel(self) -> None:
        """
        C{--http-parser} also picks the server channel: llhttp's
        L{FastChannel} by default, twisted.web's (L{ProxyChannel}) with
        C{twisted}.
        """
        from ollama_proxy.web.channel import ProxyChannel
        from ollama_proxy.web.fastchannel import FastChannel

        _, site = self.build()
        self.assertTrue(issubclass(site.protocol, FastChannel))
        _, site = self.build("--http-parser", "twisted")
        self.assertTrue(issubclass(site.protocol, ProxyChannel))

    def test_httpParser(self) -> None:
        """
        C{--http-parser} picks the upstream client under treq: the llhttp
        agent by default, Twisted's own C{Agent} (and the fenced pool) with
        C{twisted}.
        """
        from twisted.web.client import Agent

        from ollama_proxy.upstream.agent import FastAgent

        def agent(*args: str) -> Any:
            _, site = self.build(*args)
            resource: Any = site.resource
            while not hasattr(resource, "ctx"):
                resource = resource.wrapped
            return resource.ctx.models.router.backends[0].backend.http._agent

        self.assertIsInstance(agent(), FastAgent)
        self.assertIsInstance(agent("--http-parser", "httptools"), FastAgent)
        self.assertIsInstance(agent("--http-parser", "twisted"), Agent)

    def test_slowClientWiring(self) -> None:
        """
        The header deadline and the connection cap reach the site's
        channels.
        """
        _, site = self.build("--client-header-timeout", "7", "--max-connections", "3")
        self.assertEqual(site.protocol.headerTimeout, 7.0)
        self.assertEqual(site.maxConnections, 3)
        _, site = self.build()
        self.assertIsNone(site.maxConnections)

    def test_drainOnStop(self) -> None:
        """
        Stopping the service drains the site with the configured grace.
        """
        service, site = self.build("--shutdown-grace", "3", "--body-timeout", "7",
                                   "--drain-delay", "2")
        bodyTimeout = site.requestFactory.bodyTimeout  # type: ignore[attr-defined]
        self.assertEqual(bodyTimeout, 7.0)
        [drain] = [s for s in service if isinstance(s, DrainService)]
        self.assertEqual((drain.grace, drain.delay), (3.0, 2.0))
        service.startService()
        d = service.stopService()
        # Announced at once; the listeners and the site follow the delay.
        self.assertTrue(drain.lifecycle.draining)
        self.assertFalse(site.draining)
        drain.reactor.advance(2)  # type: ignore[attr-defined]
        self.assertTrue(site.draining)
        self.successResultOf(d)
