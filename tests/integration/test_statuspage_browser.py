"""
The status page in a real browser: headless Chromium (Debian's
C{chromium}, driven by Playwright from PyPI) loads C{/status} from a proxy
with two backends, one of them down, and checks what an operator reads:
the down backend shown as down, the live request counter moving after a
request, the page fitting a phone's width, and no script or CSP error.

Opt-in: set C{OLLAMA_PROXY_CHROMIUM} to a Chromium executable (see
C{.ci/browser.sh}, which installs C{chromium} and C{playwright}).  With
C{OLLAMA_PROXY_SCREENSHOT=PATH} the same test also writes the screenshot
that C{docs/operations.md} shows, after some traffic so that the charts
have a shape.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ollama_proxy.protocol import codec
from tests.integration.servers import Twistd, freePort
from tests.tempdirs import makeTempDir, removeTempDir

CHROMIUM = os.environ.get("OLLAMA_PROXY_CHROMIUM", "")
KEY = "k-status-page"
SCREENSHOT = os.environ.get("OLLAMA_PROXY_SCREENSHOT", "")

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
"""Debian's chromium, offline and without a profile to update or sync."""


class BrowserTests(SynchronousTestCase):
    """
    C{/status} in headless Chromium.
    """

    if not CHROMIUM:
        skip = ("set OLLAMA_PROXY_CHROMIUM to a Chromium executable (see .ci/browser.sh) to "
                "run the browser test")

    def setUp(self) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise SkipTest(f"OLLAMA_PROXY_CHROMIUM={CHROMIUM} is not an executable file")
        backendPort = freePort()
        self.backend = Twistd(
            "fake-openai", ["--listen", f"tcp:{backendPort}:interface=127.0.0.1",
                            "--delay", "0.02"], backendPort)
        self.addCleanup(self.backend.stop)
        self.dir = makeTempDir("ollama-proxy-browser-")
        self.addCleanup(removeTempDir, self.dir)
        downPort = freePort()  # nothing listens there
        proxyPort = freePort()
        config = os.path.join(self.dir, "proxy.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(f"""\
[server]
fallback = ""
listen = "tcp:{proxyPort}:interface=127.0.0.1"
models-ttl = 5
connect-timeout = 1
require-key = "{KEY}"

[[backend]]
name = "litellm"
url = "http://127.0.0.1:{backendPort}"

[[backend]]
name = "vllm-gpu2"
url = "http://127.0.0.1:{downPort}/v1"
""")
        self.proxy = Twistd("ollama-proxy", ["--config", config], proxyPort)
        self.addCleanup(self.proxy.stop)
        self.url = f"http://127.0.0.1:{proxyPort}"

    def chat(self) -> None:
        data = codec.dumps({"model": "fake-model",
                            "messages": [{"role": "user", "content": "hi"}]})
        request = urllib.request.Request(self.url + "/api/chat", data=data, method="POST",
                                         headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()

    def browser(self, playwright: Any, **options: Any) -> Any:
        """
        A fresh profile in this test's directory, removed with it.
        """
        profile = makeTempDir("ollama-proxy-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        # The key as HTTP Basic credentials, as a person types it at the
        # browser's prompt (the page is behind --require-key).
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            http_credentials={"username": "operator", "password": KEY}, **options)
        self.contexts.append(context)
        return context

    def test_statusPage(self) -> None:
        """
        Behind C{--require-key}, with the key given as the browser's
        credentials: the down backend is shown as down and the live one as
        up with its models; the request counter moves after a request without a
        reload; no console error (a CSP violation would be one); on a
        phone-sized screen nothing overflows the page's width.
        """
        from playwright.sync_api import sync_playwright

        self.contexts: list[Any] = []
        with sync_playwright() as p:
            try:
                self.checkPage(p)
            finally:
                for context in self.contexts:
                    context.close()

    def checkPage(self, p: Any) -> None:
        """
        The checks of L{test_statusPage}, with Playwright running.
        """
        if True:
            context = self.browser(p, viewport={"width": 1000, "height": 620})
            page = context.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(self.url + "/status")
            down = page.locator('tr[data-backend="vllm-gpu2"] [data-state]')
            down.wait_for(timeout=15000)
            deadline = time.monotonic() + 15
            while down.get_attribute("data-state") != "down" and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            self.assertEqual(down.get_attribute("data-state"), "down")
            self.assertEqual(down.inner_text(), "down")
            up = page.locator('tr[data-backend="litellm"] [data-state]')
            self.assertEqual(up.get_attribute("data-state"), "up")
            self.assertIn("fake-model", page.locator('tr[data-backend="litellm"]').inner_text())
            # Let the browser's own requests (its favicon) be counted first.
            # (Polled from here: wait_for_function evaluates a string, which
            # the page's CSP rightly forbids.)
            for _ in range(2):
                stamp = page.locator("body").get_attribute("data-updated")
                self.waitFor(page, lambda: page.locator("body").get_attribute(
                    "data-updated") != stamp)
            before = int(page.locator("#requests").inner_text())
            self.chat()
            self.waitFor(page, lambda: int(page.locator("#requests").inner_text()) > before)
            after = int(page.locator("#requests").inner_text())
            self.assertEqual(after, before + 1)
            if SCREENSHOT:
                self.traffic(page)
                page.screenshot(path=SCREENSHOT)
            self.assertEqual(problems, [])
            phone = self.browser(p, viewport={"width": 390, "height": 844},
                                 device_scale_factor=2, is_mobile=True).new_page()
            phone.goto(self.url + "/status")
            phone.locator('tr[data-backend="vllm-gpu2"]').wait_for(timeout=15000)
            width = phone.evaluate("document.documentElement.scrollWidth")
            self.assertLessEqual(width, 390)

    def waitFor(self, page: Any, condition: Any, timeout: float = 10.0) -> None:
        """
        Poll C{condition} (bounded) while the page runs.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("the page did not change in time")
            page.wait_for_timeout(100)

    def traffic(self, page: Any) -> None:
        """
        For the screenshot: a few streams at a time for half a minute, so
        that the rate charts have three samples and the counters a value.
        """
        stop = time.monotonic() + 32

        def load() -> None:
            while time.monotonic() < stop:
                try:
                    self.chat()
                except OSError:
                    pass

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        page.wait_for_timeout(2500)  # one more poll
        page.evaluate("window.scrollTo(0, 0)")
