"""House rules that the code itself can check (see CONTRIBUTING.md).

- the core is napari-free: a script or another GUI can use it without napari or Qt;
- no source file over 600 lines;
- no import loop between the package's modules (module-level or lazy imports alike);
- the napari-free packages never import the command line or the Qt layer;
- no private (``_underscore``) name is imported from another module.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "napari_focsam"
MAX_LINES = 600
NAPARI_FREE = ("napari_focsam.core", "napari_focsam.modeling", "napari_focsam.training",
               "napari_focsam.evaluation")
UPPER_LAYERS = ("napari_focsam.cli", "napari_focsam._qt", "napari_focsam._widget")


def test_core_imports_without_napari_or_qt():
    code = (
        "import sys\n"
        "import napari_focsam.cli, napari_focsam.core.session, napari_focsam.core.weights\n"
        "import napari_focsam.evaluation.runner, napari_focsam.training.trainer, napari_focsam._sample_data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every import of ``path`` inside the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_focsam"):
                    found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("napari_focsam"):
                continue
            names = [a.name for a in node.names]
            # ``from pkg import module`` imports a module, not a name
            submodules = [n for n in names if f"{target}.{n}" in known]
            for sub in submodules:
                found.append((f"{target}.{sub}", [], node.lineno))
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((target, rest, node.lineno))
    return found


def test_no_source_file_over_the_limit():
    too_long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"


def test_no_import_loop():
    known = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        deps = set()
        for target, _, _ in _imports(name, path, known):
            while target not in known and "." in target:
                target = target.rpartition(".")[0]
            # a package's __init__ re-exporting its own submodules is not a loop
            if target != name and not target.startswith(name + "."):
                deps.add(target)
        graph[name] = deps

    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                loops.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for v in graph:
        if v not in index:
            visit(v)
    assert not loops, f"import loops: {loops}"


def test_napari_free_packages_do_not_import_the_upper_layers():
    known = _modules()
    bad = []
    for name, path in known.items():
        if not name.startswith(NAPARI_FREE):
            continue
        for target, _, line in _imports(name, path, known):
            if target.startswith(UPPER_LAYERS):
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not bad, bad


@pytest.mark.parametrize("root", [PACKAGE, SRC.parent / "benchmarks"], ids=["package", "benchmarks"])
def test_no_private_names_across_modules(root):
    known = _modules()
    bad = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(SRC.parent)
        if path.is_relative_to(PACKAGE):
            name = next(k for k, v in known.items() if v == path)
        else:
            name = "benchmarks." + path.stem
        for target, names, line in _imports(name, path, known):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                bad.append(f"{rel}:{line} imports {', '.join(private)} from {target}")
    assert not bad, bad


def test_code_tests_docs_and_benchmarks_speak_of_the_product_not_of_its_history():
    """Code, tests, docs and benchmarks name rules and results by what they are: no "issue N" or
    "session N" (a newcomer cannot know what they were; history goes into CHANGELOG.md).
    References to other projects' issues name the project (``napari/napari#5767``)."""
    repo = SRC.parent
    pattern = re.compile(r"\b(issue|session)s? #?\d+", re.IGNORECASE)
    found = []
    for folder, suffixes in (("src", {".py", ".yaml"}), ("docs", {".md"}), ("benchmarks", {".py", ".md"}),
                             ("tests", {".py"})):
        for path in sorted((repo / folder).rglob("*")):
            if path.suffix in suffixes and path.is_file():
                for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if pattern.search(line):
                        found.append(f"{path.relative_to(repo)}:{n}: {line.strip()[:80]}")
    assert not found, "\n".join(found)
