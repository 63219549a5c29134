"""
L{ollama_proxy.testing.fake_tap}: C{twistd fake-openai}, the fake backend
as a service of its own (what the integration tests and C{--demo}'s users
start).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.testing.fake_openai import FakeOpenAI
from ollama_proxy.testing.fake_tap import Options, makeService


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class FakeTapTests(SynchronousTestCase):
    """
    The options and the service they build.
    """

    def test_defaults(self) -> None:
        """
        Loopback port 4000 (LiteLLM's), no delays, no key, fresh tool-call
        ids.
        """
        options = parse()
        self.assertEqual(
            (options["listen"], options["delay"], options["api-key"], options["tool-call-id"],
             options["header-delay"]),
            ("tcp:4000:interface=127.0.0.1", 0.0, None, None, 0.0),
        )
        self.assertRaises(usage.UsageError, parse, "--delay", "soon")

    def test_service(self) -> None:
        """
        Started, the service listens where told, serving a L{FakeOpenAI}
        configured by the options.
        """
        reactor = MemoryReactorClock()
        service: Any = makeService(parse(
            "--listen", "tcp:4567:interface=127.0.0.1", "--delay", "0.5", "--api-key", "sk-x",
            "--tool-call-id", "call_1", "--header-delay", "2"), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (4567, "127.0.0.1"))
        site: Any = factory
        fake = site.resource
        self.assertIsInstance(fake, FakeOpenAI)
        self.assertEqual((fake.delay, fake.apiKey, fake.toolCallId, fake.headerDelay, fake.reactor),
                         (0.5, "sk-x", "call_1", 2.0, reactor))

    def test_plugin(self) -> None:
        """
        The dropin offers it to twistd as C{fake-openai}.
        """
        from twisted import plugins

        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, plugins)}
        self.assertIs(makers["fake-openai"].options, Options)
