"""
C{SIGHUP} reloads (L{ollama_proxy.service.reload}): the new configuration
serves new requests, streams in flight finish on the old one, and a broken
file changes nothing.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.service.reload import LiveConfig, ReloadOnHangup, parser, reload
from ollama_proxy.service.settings import Settings
from ollama_proxy.service.tap import makeRouter
from ollama_proxy.testing.harness import BodyCollector, ProxyHarness, delta
from ollama_proxy.testing.memory import MemoryTreq
from ollama_proxy.upstream.directory import ModelDirectory
from ollama_proxy.web.auth import KeyGate, requireKeys
from ollama_proxy.web.cors import CORSResource
from ollama_proxy.web.metrics import Metrics
from tests.upstream.helpers import LogCapture
from tests.web.helpers import CHAT
from tests.tempdirs import tempDir

OLD = """\
[server]
fallback = ""
require-key-file = "{keys}"

[[backend]]
name = "old"
url = "http://old.test:4000"
discover = false
models = ["m1"]

[backend.aliases]
fast = "m1"
"""

NEW = """\
[server]
fallback = ""
require-key-file = "{keys}"

[[backend]]
name = "new"
url = "http://new.test:4000"
discover = false
models = ["m2"]

[backend.aliases]
fast = "m2"
"""


class ReloadTests(SynchronousTestCase):
    """
    A proxy built from a file, reloaded in memory.
    """

    def setUp(self) -> None:
        self.dir = tempDir(self, "ollama-proxy-reload-")
        self.config = os.path.join(self.dir, "proxy.toml")
        self.keys = os.path.join(self.dir, "keys")
        self.write(self.keys, "key-one\n")
        self.write(self.config, OLD.format(keys=self.keys))
        self.parse = parser(["--config", self.config])
        settings = self.parse()
        h = self.h = ProxyHarness(fallback=False, metrics=Metrics())

        def build(current: Settings) -> Any:
            return makeRouter(current, h.upstream, h.clock)

        h.ctx.models = ModelDirectory(build(settings), settings.modelOverrides)
        root = requireKeys(h.root, settings.requireKeys)
        assert isinstance(root, CORSResource) and isinstance(root.wrapped, KeyGate)
        h.client = MemoryTreq(root)
        self.live = LiveConfig(settings, h.ctx, build, lambda current: None, root.wrapped, root)

    def write(self, path: str, text: str) -> None:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)

    def chat(self, model: str, key: str = "key-one", stream: bool = True) -> Any:
        return self.h.post("/api/chat", {**CHAT, "model": model, "stream": stream},
                           headers={"Authorization": f"Bearer {key}"})

    def lastHost(self) -> str:
        return self.h.backend.received[-1].headers["host"]

    def test_streamSpansReload(self) -> None:
        """
        A stream that began before the reload finishes on the old backend;
        the next request, for the same alias, goes to the new one with the
        new model id.
        """
        d = self.chat("fast")
        upstream = self.h.backend.received[-1]
        self.assertEqual((self.lastHost(), upstream.json()["model"]), ("old.test:4000", "m1"))
        upstream.startSSE()
        upstream.event(delta("Hel", role="assistant"))
        self.h.pump()
        reader = BodyCollector(self.h, self.successResultOf(d))
        self.h.pump()

        self.write(self.config, NEW.format(keys=self.keys))
        self.assertTrue(reload(self.live, self.parse))

        upstream.event(delta("lo", finish_reason="stop"))
        upstream.done()
        self.h.pump()
        self.successResultOf(reader.done)
        lines = reader.lines()
        self.assertEqual("".join(line["message"]["content"] for line in lines), "Hello")
        self.assertTrue(lines[-1]["done"])

        self.chat("fast", stream=False)
        self.assertEqual((self.lastHost(), self.h.backend.received[-1].json()["model"]),
                         ("new.test:4000", "m2"))
        tags = self.successResultOf(self.h.client.get(
            "http://proxy.test/api/tags", headers={"X-API-Key": "key-one"}))
        self.h.pump()
        names = [m["name"] for m in self.successResultOf(self.h.client.json_content(tags))["models"]]
        self.assertEqual(names, ["m2:proxy", "fast:proxy"])

    def test_secretsFollowReload(self) -> None:
        """
        After a reload, the new inbound key and the new backend's key are
        redacted from answers, and the site's own answers follow the new
        CORS origins and C{--allow-host} names.
        """
        from ollama_proxy.web.cors import HostPolicy
        from ollama_proxy.web.site import makeSite

        site = makeSite(self.h.root, self.h.clock, hosts=HostPolicy(hostname="box"))
        self.live.site = site
        self.write(self.keys, "key-two-secret\n")
        self.write(self.config, NEW.format(keys=self.keys).replace(
            'url = "http://new.test:4000"', 'url = "http://new.test:4000"\napi_key = "sk-new-backend"'
        ).replace("[server]\n", '[server]\ncors-origin = "https://app.example"\nallow-host = "proxy.lan"\n'))
        self.assertTrue(reload(self.live, self.parse))
        redactor = self.h.ctx.redactor
        self.assertEqual(redactor.text("sk-new-backend key-two-secret"), "<redacted> <redacted>")
        assert site.origins is not None and site.hosts is not None
        self.assertTrue(site.origins.allows("https://app.example"))
        self.assertTrue(site.hosts.allows(b"proxy.lan"))

    def test_discoveryReloaded(self) -> None:
        """
        C{remote-host} is read again: the models are listed with their
        backend's origin, and without C{remote_host} once the file says
        C{""}.
        """
        def hosts() -> list[Any]:
            tags = self.successResultOf(self.h.client.get(
                "http://proxy.test/api/tags", headers={"X-API-Key": "key-one"}))
            self.h.pump()
            body = self.successResultOf(self.h.client.json_content(tags))
            return [m.get("remote_host") for m in body["models"]]

        self.write(self.config, NEW.format(keys=self.keys))
        self.assertTrue(reload(self.live, self.parse))
        self.assertEqual(hosts(), ["http://new.test:4000"] * 2)
        self.write(self.config, NEW.format(keys=self.keys).replace(
            'fallback = ""', 'fallback = ""\nremote-host = ""'))
        self.assertTrue(reload(self.live, self.parse))
        self.assertEqual(hosts(), [None, None])

    def test_keysReread(self) -> None:
        """
        A changed key file takes effect on reload, though the file naming
        it did not change: the new key is accepted, the old one refused.
        """
        self.write(self.keys, "key-two\n")
        self.assertTrue(reload(self.live, self.parse))
        self.assertEqual(self.successResultOf(self.chat("m1", key="key-one")).code, 401)
        self.chat("m1", key="key-two", stream=False)
        self.assertEqual(self.lastHost(), "old.test:4000")

    def test_badFileKeepsOld(self) -> None:
        """
        A file that does not parse is logged as C{file:line: key: reason}
        and the running configuration stays.
        """
        logs = LogCapture(self)
        self.write(self.config, NEW.format(keys=self.keys).replace(
            "discover = false\n", "discover = false\ndiscovr = false\n"))
        self.assertFalse(reload(self.live, self.parse))
        [event] = logs.errors()
        self.assertTrue(formatEvent(event).startswith(
            "reload refused, the running configuration stays: "
            f"{self.config}:9: backend[0].discovr: unknown key (expected one of: "),
            formatEvent(event))
        self.chat("fast", stream=False)
        self.assertEqual(self.lastHost(), "old.test:4000")
        self.write(self.config, NEW.format(keys=self.keys))
        os.remove(self.keys)
        self.assertFalse(reload(self.live, self.parse))
        self.assertIn("--require-key-file", formatEvent(logs.errors()[-1]))
        self.assertEqual(self.live.settings.backends[0].name, "old")

    def test_fleetChecksFollowReload(self) -> None:
        """
        With the checks running, a reload to two backends starts the new
        fleet's checks (each backend's model list, at once), and a reload
        back to one backend stops them: no timer of the replaced fleet
        stays on the reactor.
        """
        self.live.checks = True
        two = NEW + """
[[backend]]
name = "new2"
url = "http://new2.test:4000"
discover = false
models = ["m2"]
"""
        self.write(self.config, two.format(keys=self.keys))
        self.assertTrue(reload(self.live, self.parse))
        fleet = self.h.ctx.models.router.fleet
        assert fleet is not None
        self.h.clock.advance(0)
        self.h.pump()
        hosts = {r.headers["host"] for r in self.h.backend.received if r.path == "/v1/models"}
        self.assertEqual(hosts, {"new.test:4000", "new2.test:4000"})
        self.write(self.config, NEW.format(keys=self.keys))
        self.assertTrue(reload(self.live, self.parse))
        self.assertIsNone(self.h.ctx.models.router.fleet)
        for r in self.h.backend.received:
            if not r.request.finished:
                r.respond(200, {"object": "list", "data": []})
        self.h.pump()
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_restartOnlyWarned(self) -> None:
        """
        Settings a running process cannot change are named in a warning.
        """
        logs = LogCapture(self)
        self.write(self.config, OLD.format(keys=self.keys).replace(
            'fallback = ""', 'fallback = ""\nmax-body = 1000'))
        self.assertTrue(reload(self.live, self.parse))
        self.assertIn("reload: maxBody changed; that takes a restart",
                      formatEvent(logs.errors()[0]))


class HangupTests(SynchronousTestCase):
    """
    L{ReloadOnHangup} reloads this process, then signals the workers.
    """

    def test_hangup(self) -> None:
        calls: list[str] = []
        service = ReloadOnHangup(MemoryReactorClock(), lambda: calls.append("reload"),
                                 calls.append)
        service.hangup()
        self.assertEqual(calls, ["reload", "HUP"])
