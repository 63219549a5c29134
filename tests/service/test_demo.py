"""
L{ollama_proxy.service.demo}: C{--demo}'s fake backend, served beside the
proxy on loopback, and nothing without the option.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Site

from ollama_proxy.service.demo import demoService
from ollama_proxy.testing.fake_openai import FakeOpenAI
from tests.service.test_tap import parse


class DemoServiceTests(SynchronousTestCase):
    """
    The demo backend's service.
    """

    def test_withoutDemo(self) -> None:
        """
        Without C{--demo} there is no demo service.
        """
        settings = parse("--target", "http://backend.test:4000").settings
        self.assertIsNone(demoService(settings, MemoryReactorClock()))

    def test_demoListensOnLoopback(self) -> None:
        """
        With C{--demo}, the fake backend listens on C{--demo-port}, on the
        loopback interface only, and answers as an OpenAI backend.
        """
        reactor = MemoryReactorClock()
        service = demoService(parse("--demo", "--demo-port", "24680").settings, reactor)
        assert service is not None
        service.startService()
        self.addCleanup(service.stopService)
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (24680, "127.0.0.1"))
        self.assertIsInstance(factory, Site)
        assert isinstance(factory, Site)
        self.assertIsInstance(factory.resource, FakeOpenAI)
