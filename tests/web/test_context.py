"""
L{ollama_proxy.web.context.ProxyContext}: the container the resources share,
and the few things it derives (the redactor, the clock, the cooperator).
"""

from __future__ import annotations

from typing import Any, Iterator

from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from ollama_proxy.protocol.redact import REDACTED
from ollama_proxy.testing.harness import TARGET, contextFor
from ollama_proxy.upstream.backend import Backend
from ollama_proxy.web.context import ProxyContext
from ollama_proxy.web.metrics import Metrics

BACKEND_KEY = "sk-backend-key-0123456789"
INBOUND_KEY = "inbound-key-abcdefghij"


def context(clock: MemoryReactorClock, **kwargs: Any) -> ProxyContext:
    backend = Backend(StubTreq(Resource()), TARGET, clock, apiKey=BACKEND_KEY)
    return contextFor(backend, clock, **kwargs)


class RedactorTests(SynchronousTestCase):
    """
    The redactor knows every secret the proxy holds, as they are now.
    """

    def test_backendKeysAndSecrets(self) -> None:
        """
        The backends' keys and the context's own secrets (the inbound keys)
        are replaced in upstream text.
        """
        ctx = context(MemoryReactorClock(), secrets=(INBOUND_KEY,))
        text = ctx.redactor.text(f"echo {BACKEND_KEY} and {INBOUND_KEY}")
        self.assertNotIn(BACKEND_KEY, text)
        self.assertNotIn(INBOUND_KEY, text)
        self.assertEqual(text.count(REDACTED), 2)

    def test_reusedUntilReload(self) -> None:
        """
        The redactor is built once; a reload that changes the secrets (or
        the models, with their keys) gets a new one that knows them.
        """
        ctx = context(MemoryReactorClock())
        first = ctx.redactor
        self.assertIs(ctx.redactor, first)
        self.assertIn(INBOUND_KEY, first.text(INBOUND_KEY))
        ctx.secrets = (INBOUND_KEY,)
        second = ctx.redactor
        self.assertIsNot(second, first)
        self.assertNotIn(INBOUND_KEY, second.text(INBOUND_KEY))
        ctx.models = context(MemoryReactorClock()).models
        self.assertIsNot(ctx.redactor, second)


class ClockTests(SynchronousTestCase):
    """
    The reactor a request's stepped work yields to.
    """

    def test_firstBackendsReactor(self) -> None:
        """
        Without a reactor of its own, the context uses the first backend's.
        """
        clock = MemoryReactorClock()
        self.assertIs(context(clock).clock, clock)

    def test_ownReactor(self) -> None:
        """
        A reactor given to the context wins.
        """
        own = MemoryReactorClock()
        self.assertIs(context(MemoryReactorClock(), reactor=own).clock, own)

    def test_oneCooperator(self) -> None:
        """
        One cooperator serves every request of the context, and it steps on
        the context's clock.
        """
        clock = MemoryReactorClock()
        ctx = context(clock)
        cooperator = ctx.cooperator
        self.assertIs(ctx.cooperator, cooperator)
        ran: list[int] = []

        def steps() -> Iterator[None]:
            ran.append(1)
            yield None
            ran.append(2)

        done = cooperator.coiterate(steps())
        self.assertEqual(ran, [])  # nothing runs until the clock turns
        for _ in range(3):
            clock.advance(0)
        self.assertEqual(ran, [1, 2])
        self.successResultOf(done)


class MetricsTests(SynchronousTestCase):
    """
    With metrics, every backend reports to them.
    """

    def test_backendsWatched(self) -> None:
        """
        A context with metrics hooks each backend's response callback (the
        header latency), and one without leaves it alone.
        """
        ctx = context(MemoryReactorClock(), metrics=Metrics())
        self.assertIsNotNone(ctx.models.router.backends[0].backend.onResponse)
        bare = context(MemoryReactorClock())
        self.assertIsNone(bare.models.router.backends[0].backend.onResponse)

    def test_tag(self) -> None:
        """
        The tag untagged ids get in the listing is the directory's.
        """
        ctx = context(MemoryReactorClock())
        self.assertEqual(ctx.tag, ctx.models.tag)
