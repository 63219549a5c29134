# -*- test-case-name: tests.testing.test_fake_tap -*-
"""
C{twistd -n fake-openai}: the built-in fake backend as a service of its own.
"""

from __future__ import annotations

from typing import Any

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.python import usage

from ollama_proxy.testing.fake_openai import FakeOpenAI
from ollama_proxy.web.site import makeSite


class Options(usage.Options):
    """
    Command-line options for C{twistd fake-openai}.
    """

    optParameters = [
        ["listen", None, "tcp:4000:interface=127.0.0.1", "strports description to listen on."],
        ["delay", None, 0.0, "Seconds between streamed chunks.", float],
        ["api-key", None, None, "Require this bearer token."],
        ["tool-call-id", None, None,
         "Give every tool call this id, as backends that number calls per request do "
         "(default: a fresh id per call)."],
        ["header-delay", None, 0.0, "Seconds before the answer to a POST starts (a slow "
         "backend).", float],
    ]


def makeService(config: Options, reactor: Any = None) -> IService:
    """
    @param config: parsed L{Options}.
    @param reactor: the reactor; the global one when C{None}.
    @return: the listening service.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    service = MultiService()
    site = makeSite(FakeOpenAI(reactor, config["delay"], config["api-key"],
                                  toolCallId=config["tool-call-id"],
                                  headerDelay=config["header-delay"]), reactor)
    strports.service(config["listen"], site, reactor=reactor).setServiceParent(service)
    return service
