"""
The twistd plugin: discovery, option parsing (compared as whole dicts, so
every changed default shows up), validation and the service shape.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.service.options import API_KEY_ENV, FileProblem
from ollama_proxy.service.tap import (
    ModelListing,
    StartupError,
    listenFailure,
    DrainService,
    Options,
    PoolService,
    makeService,
)
from ollama_proxy.web.context import DEFAULT_VERSION

DEFAULTS: dict[str, Any] = {
    "listen": ["tcp:11434:interface=127.0.0.1"],
    "target": "http://127.0.0.1:4000",
    "api-key": None,
    "api-key-file": None,
    "fallback": "http://127.0.0.1:11505",
    "tag": "proxy",
    "debug": 0,
    "demo": 0,
}


def parse(*argv: str) -> Options:
    """
    Parse C{argv} as twistd would after the subcommand.
    """
    options = Options()
    options.parseOptions(list(argv))
    return options


def subset(options: Options) -> dict[str, Any]:
    """
    The settings named in L{DEFAULTS}, as a plain dict with the options'
    names.
    """
    settings = options.settings
    return {
        "listen": list(settings.listen),
        "target": settings.target,
        "api-key": settings.backends[0].apiKey,
        "api-key-file": options["api-key-file"],
        "fallback": settings.fallback,
        "tag": settings.tag,
        "debug": int(settings.debug),
        "demo": int(settings.demo),
    }


class PluginTests(SynchronousTestCase):
    """
    twistd finds the plugins.
    """

    def test_discovered(self) -> None:
        """
        C{ollama-proxy} and C{fake-openai} are among the installed twistd
        plugins and point at their tap modules.
        """
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("ollama-proxy", makers)
        self.assertIn("fake-openai", makers)
        self.assertIs(makers["ollama-proxy"].options, Options)

    def test_noPluginsPackageInit(self) -> None:
        """
        The dropin directory has no C{__init__.py}: shipping one would
        overwrite Twisted's own C{twisted/plugins/__init__.py}.
        """
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        plugins = os.path.join(root, "twisted", "plugins")
        self.assertTrue(os.path.exists(os.path.join(plugins, "ollama_proxy_plugin.py")))
        self.assertFalse(os.path.exists(os.path.join(plugins, "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(root, "twisted", "__init__.py")))


class OptionsTests(SynchronousTestCase):
    """
    Parsing and validating the command line.
    """

    def setUp(self) -> None:
        self.savedKey = os.environ.pop(API_KEY_ENV, None)

    def tearDown(self) -> None:
        os.environ.pop(API_KEY_ENV, None)
        if self.savedKey is not None:
            os.environ[API_KEY_ENV] = self.savedKey

    def test_defaults(self) -> None:
        """
        Only C{--target} given: everything else is the documented default.
        """
        self.assertEqual(subset(parse("--target", "http://127.0.0.1:4000/")), DEFAULTS)

    def test_everything(self) -> None:
        """
        Repeated C{--listen}, a key, no fallback, debug.
        """
        options = parse(
            "--listen", "tcp:1:interface=127.0.0.1", "--listen", "unix:/tmp/x.sock",
            "--target", "https://api.example.com/v1", "--api-key", "sk-1",
            "--fallback", "", "--tag", "latest", "--debug",
        )
        self.assertEqual(
            subset(options),
            {
                **DEFAULTS,
                "listen": ["tcp:1:interface=127.0.0.1", "unix:/tmp/x.sock"],
                "target": "https://api.example.com/v1",
                "api-key": "sk-1",
                "fallback": None,
                "tag": "latest",
                "debug": 1,
            },
        )

    def test_targetRequired(self) -> None:
        """
        Without C{--target} (and without C{--demo}) the error says what to do.
        """
        e = self.assertRaises(UsageError, parse)
        self.assertIn("--target is required", str(e))

    def test_targetValidated(self) -> None:
        """
        Only http/https URLs with a host are accepted.
        """
        for bad in ("localhost:4000", "ftp://x", "http://", "http:///v1"):
            e = self.assertRaises(UsageError, parse, "--target", bad)
            self.assertIn("--target must be an http:// or https:// URL", str(e))

    def test_fallbackValidated(self) -> None:
        """
        A malformed fallback URL is refused too.
        """
        e = self.assertRaises(UsageError, parse, "--target", "http://a", "--fallback", "nope")
        self.assertIn("--fallback", str(e))

    def test_demo(self) -> None:
        """
        C{--demo} targets the built-in fake backend.
        """
        self.assertEqual(parse("--demo").settings.target, "http://127.0.0.1:11435")

    def test_demoPort(self) -> None:
        """
        C{--demo-port} moves the demo's fake backend (and the target with
        it); it must be a TCP port.
        """
        self.assertEqual(parse("--demo", "--demo-port", "24680").settings.target,
                         "http://127.0.0.1:24680")
        for bad in ("0", "65536", "-1"):
            e = self.assertRaises(UsageError, parse, "--demo", "--demo-port", bad)
            self.assertIn("--demo-port", str(e))

    def test_keyFromEnvironment(self) -> None:
        """
        The API key can come from C{$OLLAMA_PROXY_API_KEY}, so it is not in
        C{ps} output.
        """
        os.environ[API_KEY_ENV] = "sk-env"
        self.assertEqual(parse("--target", "http://a").settings.backends[0].apiKey, "sk-env")

    def test_keyFromFile(self) -> None:
        """
        Or from a file, stripped of its newline; the file wins over the
        environment.
        """
        os.environ[API_KEY_ENV] = "sk-env"
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("sk-file\n")
        self.assertEqual(parse("--target", "http://a", "--api-key-file", path).settings.backends[0].apiKey, "sk-file")

    def test_keyFileMissing(self) -> None:
        """
        An unreadable key file is one line naming it, not a traceback.
        """
        e = self.assertRaises(
            FileProblem, parse, "--target", "http://a", "--api-key-file", "/nonexistent/key"
        )
        self.assertIn("cannot read --api-key-file", str(e))

    def test_positiveNumbers(self) -> None:
        """
        Timeouts must be positive numbers.
        """
        self.assertRaises(UsageError, parse, "--target", "http://a", "--idle-timeout", "0")
        self.assertRaises(UsageError, parse, "--target", "http://a", "--max-body", "-1")


class ServiceTests(SynchronousTestCase):
    """
    L{makeService} wiring.
    """

    def test_shape(self) -> None:
        """
        One listening service per C{--listen}, plus the pool owner and the
        drain on shutdown.
        """
        options = parse(
            "--target", "http://a", "--listen", "tcp:0:interface=127.0.0.1",
            "--listen", "tcp:0:interface=127.0.0.1",
        )
        service = makeService(options, reactor=MemoryReactorClock())
        self.assertIsInstance(service, MultiService)
        children = list(service)  # type: ignore[call-overload]
        self.assertEqual([type(c) for c in children], [DrainService, ModelListing, TimerService])
        drain = children[0]
        self.assertEqual(
            [type(c) for c in [*drain, *drain.after]],
            [StreamServerEndpointService, StreamServerEndpointService, PoolService],
        )

    def test_listens(self) -> None:
        """
        Starting the service listens where C{--listen} says, on loopback by
        default, and stopping it closes the pool.
        """
        reactor = MemoryReactorClock()
        service = makeService(parse("--target", "http://a", "--drain-delay", "0"),
                              reactor=reactor)
        service.startService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (11434, "127.0.0.1"))
        self.successResultOf(service.stopService())

    def test_backlog(self) -> None:
        """
        The listeners ask for the kernel's accept-queue ceiling, unless
        C{--listen} names a backlog.
        """
        from ollama_proxy.service.listen import somaxconn

        reactor = MemoryReactorClock()
        service = makeService(
            parse("--target", "http://a", "--listen", "tcp:1:interface=127.0.0.1",
                  "--listen", "tcp:2:interface=127.0.0.1:backlog=7", "--drain-delay", "0"),
            reactor=reactor,
        )
        service.startService()
        self.assertEqual(sorted((s[0], s[2]) for s in reactor.tcpServers),
                         [(1, somaxconn()), (2, 7)])
        self.successResultOf(service.stopService())

    def test_hostCheckOnLoopbackOnly(self) -> None:
        """
        The C{Host} check is on when every listener is on loopback (with the
        C{--allow-host} names), off when one listens beyond it.
        """
        from ollama_proxy.web.site import ProxySite

        def site(*argv: str) -> ProxySite:
            reactor = MemoryReactorClock()
            service = makeService(parse("--target", "http://a", *argv), reactor=reactor)
            service.startService()
            self.addCleanup(service.stopService)
            found = reactor.tcpServers[0][1]
            assert isinstance(found, ProxySite)
            return found

        guarded = site("--allow-host", "proxy.lan")
        assert guarded.hosts is not None
        self.assertTrue(guarded.hosts.allows(b"proxy.lan:11434"))
        self.assertFalse(guarded.hosts.allows(b"evil.example.com"))
        self.assertIsNone(site("--listen", "tcp:11434").hosts)
    def test_discoverySettings(self) -> None:
        """
        C{--remote-host} and C{--ollama-version} reach the served models
        and C{/api/version}; by default each backend's origin and the
        newest covered Ollama version.
        """
        for argv, host, version in (
            ((), "auto", DEFAULT_VERSION),
            (("--remote-host", "", "--ollama-version", "0.9.1"), "", "0.9.1"),
        ):
            reactor = MemoryReactorClock()
            service = makeService(parse("--target", "http://a", "--drain-delay", "0", *argv),
                                  reactor=reactor)
            service.startService()
            site: Any = reactor.tcpServers[0][1]
            root = site.resource
            for _ in range(5):  # through the CORS and key wrappers
                if not hasattr(root, "ctx"):
                    root = root.wrapped
            self.assertEqual(root.ctx.models.remoteHost, host)
            self.assertEqual(root.ctx.version, version)
            self.successResultOf(service.stopService())

    def test_statusSampler(self) -> None:
        """
        The status page's history is sampled at start and every interval
        after, on the injected clock.
        """
        reactor = MemoryReactorClock()
        service = makeService(parse("--target", "http://a", "--drain-delay", "0"),
                              reactor=reactor)
        service.startService()
        site: Any = reactor.tcpServers[0][1]
        root = site.resource
        while not hasattr(root, "ctx"):
            root = root.wrapped
        history = root.ctx.metrics.history
        reactor.advance(10)
        reactor.advance(10)
        self.assertEqual([when for when, _ in history.samples], [0.0, 10.0, 20.0])
        self.successResultOf(service.stopService())

    def test_demoAddsBackend(self) -> None:
        """
        C{--demo} also listens for the fake backend.
        """
        reactor = MemoryReactorClock()
        service = makeService(parse("--demo"), reactor=reactor)
        service.startService()
        self.assertEqual(sorted(s[0] for s in reactor.tcpServers), [11434, 11435])
        stopped = service.stopService()
        reactor.advance(5)  # the default --drain-delay
        self.successResultOf(stopped)
        reactor = MemoryReactorClock()
        service = makeService(parse("--demo", "--demo-port", "24680", "--drain-delay", "0"),
                              reactor=reactor)
        service.startService()
        self.assertEqual(sorted((s[0], s[3]) for s in reactor.tcpServers),
                         [(11434, "127.0.0.1"), (24680, "127.0.0.1")])
        self.successResultOf(service.stopService())


class ListenFailureTests(SynchronousTestCase):
    """
    L{listenFailure}: the one line for a port that cannot be bound.
    """

    def test_ollamaPort(self) -> None:
        """
        Ollama's own port, taken: probably Ollama, and the two ways out.
        """
        error = CannotListenError(
            "127.0.0.1", 11434, OSError(errno.EADDRINUSE, "Address already in use"))
        self.assertEqual(
            listenFailure(error),
            "ollama-proxy: cannot listen on 127.0.0.1:11434: Address already in use "
            "(probably Ollama itself, which listens there). Either move Ollama, e.g. to the "
            "proxy's fallback port: OLLAMA_HOST=127.0.0.1:11505 ollama serve, or run the "
            "proxy elsewhere: --listen tcp:11435:interface=127.0.0.1",
        )

    def test_otherPortOrReason(self) -> None:
        """
        Another port, or another reason on Ollama's, names the address and
        the reason only; all interfaces show as C{*}.
        """
        self.assertEqual(
            listenFailure(CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))),
            "ollama-proxy: cannot listen on *:80: Permission denied",
        )
        self.assertEqual(
            listenFailure(CannotListenError(
                "127.0.0.1", 11434, OSError(errno.EACCES, "Permission denied"))),
            "ollama-proxy: cannot listen on 127.0.0.1:11434: Permission denied",
        )

    def test_serviceRaisesStartupError(self) -> None:
        """
        Starting a service whose port is taken raises L{StartupError} with
        that line (which twistd's exit then prints alone).
        """
        holder = socket.socket()
        self.addCleanup(holder.close)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        from twisted.internet import reactor

        service = makeService(
            parse("--target", "http://a", "--listen", f"tcp:{port}:interface=127.0.0.1"),
            reactor=reactor,
        )
        with self.assertRaises(StartupError) as e:
            service.privilegedStartService()
        self.assertEqual(str(e.exception),
                         f"ollama-proxy: cannot listen on 127.0.0.1:{port}: Address already in use")


class LargeAllocationTests(SynchronousTestCase):
    """
    L{returnLargeAllocations}: glibc's mmap threshold fixed (issue 19: the
    pieces of refused decoded bodies otherwise fragment the heap).
    """

    def test_setOnGlibc(self) -> None:
        """
        On glibc the threshold is set; elsewhere the call says it was not.
        """
        import platform

        from ollama_proxy.service.tap import returnLargeAllocations
        expected = platform.libc_ver()[0] == "glibc"
        self.assertEqual(returnLargeAllocations(), expected)


class FreezeStartupTests(SynchronousTestCase):
    """
    L{freezeStartup}: what start-up made is exempt from the cyclic
    collector; what comes after is collected as before.
    """

    def test_freeze(self) -> None:
        """
        Objects alive at the call are frozen (a full collection does not
        walk them), start-up's cyclic garbage is collected first, and a
        cycle made afterwards is still collected.
        """
        import gc
        import weakref

        from ollama_proxy.service.tap import freezeStartup

        class Node:
            other: object = None

        self.addCleanup(gc.unfreeze)
        garbage = Node()
        garbage.other = garbage
        dead = weakref.ref(garbage)
        kept = Node()
        del garbage
        frozen = freezeStartup()
        self.assertGreater(frozen, 0)
        self.assertIsNone(dead())  # collected before the freeze, not frozen with it
        self.assertFalse(any(obj is kept for obj in gc.get_objects()))
        later = Node()
        later.other = later
        lost = weakref.ref(later)
        del later
        gc.collect()
        self.assertIsNone(lost())


class StartupFreezerTests(SynchronousTestCase):
    """
    L{StartupFreezer}: a reload thaws what start-up froze, so what the old
    configuration leaves in cycles is collected, and freezes again later.
    """

    def test_thawCollectsWhatAReloadLeft(self) -> None:
        """
        A cycle frozen at start-up and let go by a reload is collected
        after the thaw (frozen, it was not); the freeze comes back after
        C{settle} seconds, once however many reloads come first.
        """
        import gc
        import weakref

        from twisted.internet.task import Clock

        from ollama_proxy.service.tap import StartupFreezer

        class Node:
            other: object = None

        self.addCleanup(gc.unfreeze)
        clock = Clock()
        freezer = StartupFreezer(clock)
        old = Node()
        old.other = old
        gone = weakref.ref(old)
        self.assertGreater(freezer.freeze(), 0)
        del old
        gc.collect()
        self.assertIsNotNone(gone())  # frozen: never collected
        freezer.thaw()
        self.assertEqual(gc.get_freeze_count(), 0)
        gc.collect()
        self.assertIsNone(gone())
        clock.advance(freezer.settle / 2)
        freezer.thaw()  # a second reload: one freeze, settle seconds after it
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(freezer.settle / 2)
        self.assertEqual(gc.get_freeze_count(), 0)
        clock.advance(freezer.settle / 2)
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
