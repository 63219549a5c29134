"""
The package's shape, checked rather than hoped for: the protocol package
is pure (no Twisted, no treq, no I/O layer), each layer imports only the
layers below it, there are no import cycles, no module grows past about 600
lines, and the README's Layout section names every module.
"""

from __future__ import annotations

import ast
import os
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

import ollama_proxy

PACKAGE = os.path.dirname(os.path.abspath(ollama_proxy.__file__))
ROOT = os.path.dirname(os.path.dirname(PACKAGE))


def modules() -> dict[str, str]:
    """
    @return: every module of the package, dotted name to file path.
    """
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


def _typeChecking(node: ast.stmt) -> bool:
    """
    @return: whether C{node} is an C{if TYPE_CHECKING:} block.
    """
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(
    path: str, moduleLevelOnly: bool = False, typeChecking: bool = False
) -> Iterator[str]:
    """
    @param path: a module's file.
    @param moduleLevelOnly: only the imports that run when the module is
        imported (not those in functions or under C{TYPE_CHECKING}).
    @param typeChecking: with C{moduleLevelOnly}, also those under
        C{TYPE_CHECKING} (what the type checker reads as the module's
        dependencies).
    @return: the names of the modules it imports.
    """
    tree = ast.parse(open(path, encoding="utf-8").read())
    if not moduleLevelOnly:
        nodes: Iterator[ast.AST] = ast.walk(tree)
    else:
        top: list[ast.AST] = []
        for statement in tree.body:
            if typeChecking and _typeChecking(statement):
                assert isinstance(statement, ast.If)
                top.extend(statement.body)
            else:
                top.append(statement)
        nodes = iter(top)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


LAYERS = {
    "ollama_proxy.protocol": ("ollama_proxy.protocol",),
    "ollama_proxy.upstream": ("ollama_proxy.protocol", "ollama_proxy.upstream"),
    "ollama_proxy.web": ("ollama_proxy.protocol", "ollama_proxy.upstream", "ollama_proxy.web"),
}
"""What each layer may import from the package: the pure hub below
everything, the backend client on it, the web layer on both.  The
configuration's value types live in L{ollama_proxy.protocol.backends}, so
no layer below C{service/} imports it."""


class LayoutTests(SynchronousTestCase):
    """
    The architecture of C{docs}/README, enforced.
    """

    def test_protocolIsPure(self) -> None:
        """
        Nothing in L{ollama_proxy.protocol} imports Twisted, treq or zope
        (anywhere in the module, not only at its top), so the hub runs and
        is tested without a reactor.
        """
        found = [
            (name, imported)
            for name, path in modules().items() if name.startswith("ollama_proxy.protocol")
            for imported in imports(path)
            if imported.split(".")[0] in ("twisted", "treq", "zope")
        ]
        self.assertEqual(found, [])

    def test_httptoolsFenced(self) -> None:
        """
        Only L{ollama_proxy.protocol.llhttp} imports C{httptools}: one
        module to look at when llhttp changes (its version bounds are
        pinned by C{tests.protocol.test_llhttp}).
        """
        found = sorted({
            name
            for name, path in modules().items()
            for imported in imports(path)
            if imported.split(".")[0] == "httptools"
        })
        self.assertEqual(found, ["ollama_proxy.protocol.llhttp"])

    def test_layers(self) -> None:
        """
        Each layer imports only from the layers it stands on.
        """
        wrong = []
        for name, path in modules().items():
            for layer, allowed in LAYERS.items():
                if name == layer or name.startswith(layer + "."):
                    for imported in imports(path):
                        if imported.startswith("ollama_proxy.") and not any(
                            imported == a or imported.startswith(a + ".") for a in allowed
                        ):
                            wrong.append((name, imported))
        self.assertEqual(wrong, [])

    def test_noImportCycles(self) -> None:
        """
        The modules' import-time dependencies form no cycle.
        """
        self.assertEqual(self._cycles(typeChecking=False), [])

    def test_noTypeCheckingCycles(self) -> None:
        """
        Nor do they with the imports made only for the type checker: a
        cycle hidden under C{TYPE_CHECKING} is still two modules that
        cannot be understood apart.
        """
        self.assertEqual(self._cycles(typeChecking=True), [])

    def _cycles(self, typeChecking: bool) -> list[list[str]]:
        """
        @return: the import cycles among the package's modules.
        """
        known = modules()
        graph = {
            name: {
                i for i in imports(path, moduleLevelOnly=True, typeChecking=typeChecking)
                if i in known and i != name
            }
            for name, path in known.items()
        }
        state: dict[str, int] = {}
        cycles: list[list[str]] = []

        def visit(name: str, stack: list[str]) -> None:
            state[name] = 1
            for other in sorted(graph[name]):
                if state.get(other) == 1:
                    cycles.append(stack[stack.index(other):] + [other])
                elif other not in state:
                    visit(other, stack + [other])
            state[name] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name, [name])
        return cycles

    def test_privateTwistedFenced(self) -> None:
        """
        Only L{ollama_proxy.upstream.compat} imports Twisted's or treq's
        private names (a module or a name with a leading underscore): one
        fence, checked at import, to look at when Twisted changes.
        """
        found = []
        for name, path in modules().items():
            for imported in imports(path):
                if not imported.startswith(("twisted.", "treq.")):
                    continue
                if any(part.startswith("_") and part != "__init__"
                       for part in imported.split(".")):
                    found.append((name, imported))
        self.assertEqual(
            sorted({n for n, _ in found}), ["ollama_proxy.upstream.compat"], found
        )

    UNMIRRORED: frozenset[str] = frozenset()
    """Modules whose tests live in another module's test file (the debt
    issue 20 found: 19 of them, none now); the list may only shrink."""

    def test_mirroredTestFiles(self) -> None:
        """
        Every module has its mirrored test file
        (C{src/ollama_proxy/<layer>/<mod>.py} ->
        C{tests/<layer>/test_<mod>.py}), except the listed debt, and the
        debt list names only modules that still lack one.
        """
        missing, paid = [], []
        for name, path in modules().items():
            rel = os.path.relpath(path, PACKAGE)[:-3]
            if os.path.basename(rel) == "__init__":
                continue
            folder, module = os.path.split(rel)
            test = os.path.join(ROOT, "tests", folder, f"test_{module}.py")
            key = rel.replace(os.sep, "/")
            if not os.path.exists(test):
                if key not in self.UNMIRRORED:
                    missing.append(key)
            elif key in self.UNMIRRORED:
                paid.append(key)
        self.assertEqual((sorted(missing), sorted(paid)), ([], []))

    GENERATED = frozenset({"_version"})
    """Modules a tool writes whole (C{incremental} rewrites C{_version.py}
    on every version bump), which cannot keep a C{test-case-name} header."""

    def test_testCaseNames(self) -> None:
        """
        A module with a mirrored test file names it in its C{test-case-name}
        header (what C{trial --testmodule} and editors run for it).
        """
        wrong = []
        for name, path in modules().items():
            rel = os.path.relpath(path, PACKAGE)[:-3]
            folder, module = os.path.split(rel)
            if module == "__init__":
                continue
            test = os.path.join(ROOT, "tests", folder, f"test_{module}.py")
            if not os.path.exists(test):
                continue
            expected = ".".join(["tests", *folder.split(os.sep), f"test_{module}"]).replace("..", ".")
            with open(path, encoding="utf-8") as f:
                first = f.readline()
            if rel in self.GENERATED:
                continue
            if f"test-case-name: {expected} " not in first:
                wrong.append((rel, first.strip()))
        self.assertEqual(wrong, [])

    def test_moduleSize(self) -> None:
        """
        No module is over 600 lines.
        """
        sizes = {name: sum(1 for _ in open(path, encoding="utf-8")) for name, path in modules().items()}
        self.assertEqual({name: n for name, n in sizes.items() if n > 600}, {})

    def test_readmeNamesEveryModule(self) -> None:
        """
        The README's Layout section names every module (as its path below
        C{src/ollama_proxy/}), so a reader can find where behaviour lives.
        """
        readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
        start = readme.index("## Layout")
        section = readme[start:readme.index("\n## ", start + 1)]
        missing = [
            os.path.relpath(path, PACKAGE)
            for name, path in sorted(modules().items())
            if not path.endswith(("__init__.py", "_version.py"))
            and os.path.relpath(path, PACKAGE) not in section
        ]
        self.assertEqual(missing, [])

    def test_testsCleanUpTempDirs(self) -> None:
        """
        Tests make directories outside trial's C{_trial_temp} only through
        C{tests/tempdirs.py}, which removes them: a bare
        C{tempfile.mkdtemp}/C{mkstemp} left about 19 directories in the
        system temp dir per run.
        """
        tests = os.path.join(ROOT, "tests")
        offenders = []
        for folder, _, files in os.walk(tests):
            for name in files:
                path = os.path.join(folder, name)
                if not name.endswith(".py") or path == os.path.join(tests, "tempdirs.py"):
                    continue
                tree = ast.parse(open(path, encoding="utf-8").read())
                for node in ast.walk(tree):
                    if (isinstance(node, ast.Attribute) and node.attr in
                            ("mkdtemp", "mkstemp", "NamedTemporaryFile", "TemporaryDirectory")):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
        self.assertEqual(offenders, [])
