"""
Tests for L{ollama_proxy.web.statuspage}: the status page's assets as
built, without serving them (L{tests.web.test_status} checks that they are
served as they are here): a CSP that allows exactly the inline style, an
HTML shell with no inline script, handler or external asset, and a script
that fetches only C{status.json} and never parses text as markup.
"""

from __future__ import annotations

import base64
import hashlib
import re

from twisted.trial.unittest import SynchronousTestCase

from ollama_proxy.web.statuspage import CSP, PAGE, SCRIPT, STYLE


class PageTests(SynchronousTestCase):
    """
    L{PAGE} and its L{CSP}.
    """

    def test_cspAllowsTheStyleByHash(self) -> None:
        """
        The CSP names the inline style's SHA-256 and allows scripts only
        from the page's own origin; nothing is C{unsafe}.
        """
        csp = CSP.decode("ascii")
        digest = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
        self.assertIn(f"style-src 'sha256-{digest}'", csp)
        self.assertIn("script-src 'self'", csp)
        self.assertIn("default-src 'none'", csp)
        self.assertNotIn("unsafe", csp)

    def test_styleInlineScriptNot(self) -> None:
        """
        The page carries its style inline (the one the CSP hashes) and
        loads its only script from its own origin; no inline handler, no
        asset from elsewhere.
        """
        self.assertIn(b"<style>" + STYLE.encode() + b"</style>", PAGE)
        scripts = re.findall(rb"<script[^>]*>", PAGE)
        self.assertEqual(scripts, [b'<script src="status.js" defer>'])
        self.assertNotRegex(PAGE, rb"(src|href)=\"(https?:)?//")
        self.assertNotRegex(PAGE, rb"\son[a-z]+=")  # no inline event handlers
        self.assertIn(b'name="viewport"', PAGE)


class ScriptTests(SynchronousTestCase):
    """
    L{SCRIPT}.
    """

    def test_fetchesOnlyStatusJSON(self) -> None:
        """
        The script's one fetch is C{status.json}; its only URL is the SVG
        namespace.
        """
        self.assertEqual(re.findall(rb'fetch\("([^"]+)"', SCRIPT), [b"status.json"])
        urls = set(re.findall(rb"https?://[^\"' ]+", SCRIPT))
        self.assertEqual(urls, {b"http://www.w3.org/2000/svg"})  # a namespace, not a fetch

    def test_noMarkupParsing(self) -> None:
        """
        Text from the JSON (backend error messages included) is never
        parsed as markup or code.
        """
        self.assertNotIn(b"innerHTML", SCRIPT)
        self.assertNotIn(b"outerHTML", SCRIPT)
        self.assertNotIn(b"insertAdjacentHTML", SCRIPT)
        self.assertNotIn(b"eval(", SCRIPT)
