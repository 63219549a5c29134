"""
Tests for L{ollama_proxy.service.listen}.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.service.listen import (
    FALLBACK_BACKLOG,
    loopbackOnly,
    somaxconn,
    withBacklog,
)


class BacklogTests(SynchronousTestCase):
    def test_added(self) -> None:
        """
        Listeners that take a backlog get one.
        """
        for description in ("tcp:11434:interface=127.0.0.1", "tcp6:11434", "unix:/run/p.sock",
                            "ssl:443:privateKey=k.pem"):
            self.assertEqual(withBacklog(description, 4096), description + ":backlog=4096")

    def test_endpointsTakeIt(self) -> None:
        """
        Twisted's endpoint parser reads the added backlog for every kind.
        """
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory
        from twisted.internet.testing import MemoryReactor

        for description in ("tcp:11434:interface=127.0.0.1", r"tcp6:1:interface=\:\:1",
                            "unix:/run/p.sock"):
            reactor = MemoryReactor()
            serverFromString(reactor, withBacklog(description, 1234)).listen(Factory())
            [server] = reactor.tcpServers or reactor.unixServers
            self.assertEqual(server[2], 1234, description)

    def test_explicitWins(self) -> None:
        """
        A C{backlog=} given is kept; C{systemd:} sockets are left alone.
        """
        for description in ("tcp:11434:backlog=10", "systemd:domain=INET:index=0"):
            self.assertEqual(withBacklog(description, 4096), description)

    def test_somaxconn(self) -> None:
        """
        The kernel's ceiling, or 4096 where it cannot be read.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("1024\n")
        self.assertEqual(somaxconn(path), 1024)
        self.assertEqual(somaxconn(path + ".missing"), FALLBACK_BACKLOG)


class LoopbackTests(SynchronousTestCase):
    def test_loopback(self) -> None:
        """
        TCP listeners on loopback interfaces only.
        """
        self.assertTrue(loopbackOnly(["tcp:11434:interface=127.0.0.1"]))
        self.assertTrue(loopbackOnly(["tcp:1:interface=localhost", r"tcp6:1:interface=\:\:1"]))

    def test_notLoopback(self) -> None:
        """
        Any other interface, UNIX and systemd sockets turn the check off.
        """
        for listen in (["tcp:11434"], ["tcp:1:interface=127.0.0.1", "tcp:2:interface=0.0.0.0"],
                       ["unix:/run/p.sock"], ["systemd:domain=INET:index=0"], []):
            self.assertFalse(loopbackOnly(listen), listen)
