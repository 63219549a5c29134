"""
The one way tests make directories outside trial's own C{_trial_temp}:
each is removed again, by the test's cleanup or by the owner's C{stop}.
C{tests/test_layout.py} checks that no other test module calls
C{tempfile.mkdtemp} or C{tempfile.mkstemp}.
"""

from __future__ import annotations

import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase


def makeTempDir(prefix: str = "ollama-proxy-test-") -> str:
    """
    @param prefix: the directory name's start, to recognise leftovers.
    @return: a new directory in the system temp dir; the caller removes it
        with L{removeTempDir}.
    """
    return tempfile.mkdtemp(prefix=prefix)


def removeTempDir(path: str) -> None:
    """
    @param path: a directory from L{makeTempDir}; removed with its content
        (a missing one is fine).
    """
    shutil.rmtree(path, ignore_errors=True)


def tempDir(case: SynchronousTestCase, prefix: str = "ollama-proxy-test-") -> str:
    """
    @param case: the test that owns the directory.
    @param prefix: the directory name's start.
    @return: a new directory, removed when C{case} is cleaned up.
    """
    path = makeTempDir(prefix)
    case.addCleanup(removeTempDir, path)
    return path
