"""
L{ollama_proxy._version}: the one version, written by C{incremental}, that
the package metadata, C{--version} and the status page all report.
"""

from __future__ import annotations

import importlib.metadata
import io
from contextlib import redirect_stdout

from incremental import Version
from twisted.trial.unittest import SynchronousTestCase

import ollama_proxy
from ollama_proxy._version import __version__
from ollama_proxy.service.options import Options


class VersionTests(SynchronousTestCase):
    """
    One version everywhere.
    """

    def test_incremental(self) -> None:
        """
        An C{incremental} version of this package, re-exported by it.
        """
        self.assertIsInstance(__version__, Version)
        self.assertEqual(__version__.package, "ollama_proxy")
        self.assertIs(ollama_proxy.__version__, __version__)

    def test_metadata(self) -> None:
        """
        The installed distribution's version is this file's (hatch reads it
        through C{incremental}), so C{pip} and the program agree.
        """
        self.assertEqual(importlib.metadata.version("ollama-proxy"), __version__.public())

    def test_option(self) -> None:
        """
        C{twistd ollama-proxy --version} prints it and exits 0.
        """
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(SystemExit) as e:
            Options().parseOptions(["--version"])
        self.assertEqual(e.exception.code, 0)
        self.assertEqual(out.getvalue(), f"ollama-proxy {__version__.public()}\n")
