# -*- test-case-name: tests.service.test_demo -*-
"""
C{--demo}: the fake OpenAI backend served beside the proxy, so the proxy
answers with no model server at all.  Kept out of L{ollama_proxy.service.tap}
so the wiring of the real service imports nothing from
L{ollama_proxy.testing}.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService

from ollama_proxy.service.options import demoListen
from ollama_proxy.service.settings import Settings
from ollama_proxy.web.site import makeSite


def demoService(settings: Settings, reactor: Any) -> IService | None:
    """
    @param settings: the proxy's settings.
    @param reactor: the reactor.
    @return: the fake backend listening on C{--demo}'s port (loopback
        only), or C{None} without C{--demo}.
    """
    if not settings.demo:
        return None
    from ollama_proxy.testing.fake_openai import FakeOpenAI

    site = makeSite(FakeOpenAI(reactor), reactor)
    return strports.service(demoListen(settings.demoPort), site, reactor=reactor)
