"""House rules that the code itself can check (see CONTRIBUTING.md).

- the core is napari-free: a script or another GUI can use it without napari or Qt;
- no source file over 600 lines, no class over 400;
- ``core/`` is made of concept packages (at most 8 modules loose beside them), each with a
  public face (``__all__``) over private ``_modules``; a private module is imported only from
  inside its own package, and every name is imported from one module only;
- the imports run downward: between core's packages (in the order of :data:`CORE_FLOORS`)
  and between the package's parts (:data:`PACKAGE_FLOORS`), module-level and lazy imports
  alike; so there is no import loop;
- the napari-free packages never import the command line or the Qt layer;
- no private (``_underscore``) name is imported from another module;
- plain and tiled images share one interface in the core: no ``isinstance`` on a Tiled class.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "napari_focsam"
CORE = PACKAGE / "core"
MAX_LINES = 600
MAX_CLASS_LINES = 400
MAX_LOOSE_CORE_MODULES = 8
NAPARI_FREE = ("napari_focsam.core", "napari_focsam.modeling", "napari_focsam.training",
               "napari_focsam.evaluation")
UPPER_LAYERS = ("napari_focsam.cli", "napari_focsam._qt", "napari_focsam._widget")
#: core's packages and loose modules, bottom to top: each imports only from a lower floor.
CORE_FLOORS = (
    ("defaults", "hashing"),
    ("images",),
    ("models", "outputs"),
    ("embeddings",),
    ("prompting",),
    ("propagation", "automatic", "editing"),
    ("session",),
    ("cluster",),
    ("errors",),
)
#: the parts of the package, bottom to top.
PACKAGE_FLOORS = (
    ("__init__", "errors", "weights_data"),
    ("modeling",),
    ("core",),
    ("evaluation",),
    ("training", "_sample_data"),
    ("_demo",),
    ("cli", "_qt"),
)


def test_core_imports_without_napari_or_qt():
    code = (
        "import sys\n"
        "import napari_focsam.cli, napari_focsam.core.session, napari_focsam.core.models.weights\n"
        "import napari_focsam.evaluation.runner, napari_focsam.training.trainer, napari_focsam._sample_data\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'magicgui'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@lru_cache(maxsize=None)
def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


@lru_cache(maxsize=None)
def _face(package: str) -> dict[str, str]:
    """name -> module, for the names a package's ``__init__`` offers: its lazy table
    (``lazy_loader.attach(..., submod_attrs=...)``) and its own ``from .x import name``."""
    path = _modules().get(package)
    if path is None or path.name != "__init__.py":
        return {}
    out = {}
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "attach":
            for kw in node.keywords:
                if kw.arg == "submod_attrs":
                    for mod, names in ast.literal_eval(kw.value).items():
                        out.update({n: f"{package}.{mod}" for n in names})
                elif kw.arg == "submodules":
                    out.update({m: f"{package}.{m}" for m in ast.literal_eval(kw.value)})
        elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.update({a.asname or a.name: f"{package}.{node.module}" for a in node.names})
    return out


def _resolve(target: str, name: str) -> str:
    """The module that really holds ``name`` imported from ``target`` (through faces)."""
    seen = set()
    while (target, name) not in seen:
        seen.add((target, name))
        nxt = _face(target).get(name)
        if nxt is None or nxt == target:
            break
        target = nxt
    return target


def _imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(imported module, imported names, line)`` for every import of ``path`` inside the package."""
    tree = _tree(path)
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


def _module_deps(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports, names followed through the faces to the modules holding them."""
    known = _modules()
    deps = set()
    for target, names, _ in _imports(name, path, known):
        targets = {_resolve(target, n) for n in names} or {target}
        for t in targets:
            while t not in known and "." in t:
                t = t.rpartition(".")[0]
            # a package's __init__ offering its own submodules is not a loop
            if t != name and not t.startswith(name + "."):
                deps.add(t)
    return deps


def test_no_source_file_over_the_limit():
    too_long = {str(p.relative_to(SRC)): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, f"files over {MAX_LINES} lines: {too_long}"


def test_no_import_loop():
    graph = {name: _module_deps(name, path) for name, path in _modules().items()}

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


def test_no_class_over_the_limit():
    big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ClassDef) and (n := node.end_lineno - node.lineno + 1) > MAX_CLASS_LINES:
                big.append(f"{path.relative_to(SRC)}: {node.name} ({n} lines)")
    assert not big, f"classes over {MAX_CLASS_LINES} lines: {big}"


def test_core_is_concept_packages_with_a_public_face():
    loose = sorted(p.name for p in CORE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_CORE_MODULES, f"{len(loose)} modules loose in core/: {loose}"
    packages = sorted(p.parent for p in CORE.rglob("__init__.py") if p.parent != CORE)
    assert len(packages) >= len(CORE_FLOORS) - 2
    for folder in packages:
        name = ".".join(folder.relative_to(SRC).parts)
        assert _face(name), f"{name} has no public face"
        init = folder / "__init__.py"
        assert "__all__" in init.read_text(), f"{init.relative_to(SRC)} does not list its public names"
        public = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py" and not p.name.startswith("_"))
        assert not public, f"{name}: modules behind a face are private (_name.py): {public}"
        for mod in set(_face(name).values()):
            assert mod in _modules(), f"{name}'s face names a module that does not exist: {mod}"
    # every name of every face resolves (the lazy tables are right)
    names = {".".join(f.relative_to(SRC).parts) for f in packages} | {"napari_focsam.core"}
    code = ("import importlib\n"
            f"for pkg in {sorted(names)!r}:\n"
            "    m = importlib.import_module(pkg)\n"
            "    for n in m.__all__:\n"
            "        getattr(m, n)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("root", [PACKAGE, SRC.parent / "benchmarks"], ids=["package", "benchmarks"])
def test_private_modules_of_core_are_imported_only_from_their_package(root):
    """``napari_focsam.core.images._volume`` is reached from inside ``core/images/`` (or a package
    below it) only; everything else imports ``from napari_focsam.core.images import ImageVolume``."""
    known = _modules()
    bad = []
    for path in sorted(root.rglob("*.py")):
        name = next((k for k, v in known.items() if v == path), "benchmarks." + path.stem)
        for target, names, line in _imports(name, path, known):
            for full in [target] + [f"{target}.{n}" for n in names]:
                parts = full.split(".")
                for i, part in enumerate(parts[2:], 2):
                    if part.startswith("_") and not part.startswith("__") and parts[1] == "core":
                        owner = ".".join(parts[:i])
                        if name != owner and not name.startswith(owner + "."):
                            bad.append(f"{path.relative_to(SRC.parent)}:{line} imports {full}")
                        break
    assert not bad, bad


def test_every_name_is_imported_from_one_module():
    """One import path per name: ``Click`` comes from ``napari_focsam.core.prompting`` everywhere
    outside its package, never from a module that happens to import it."""
    known = _modules()
    paths: dict[tuple[str, str], set[str]] = {}
    where: dict[tuple[str, str, str], str] = {}
    roots = [PACKAGE, SRC.parent / "benchmarks", SRC.parent / "tests"]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            name = next((k for k, v in known.items() if v == path), f"{root.name}.{path.stem}")
            for target, names, line in _imports(name, path, known):
                for n in names:
                    home = _resolve(target, n)
                    # inside its own package a name comes from its private module
                    owner = home.rpartition(".")[0]
                    inside = name == owner or name.startswith(owner + ".")
                    key = (home, n)
                    if not inside:
                        paths.setdefault(key, set()).add(target)
                        where.setdefault((home, n, target), f"{path.relative_to(SRC.parent)}:{line}")
    bad = {f"{k[1]} (from {k[0]})": sorted(f"{t} at {where[(k[0], k[1], t)]}" for t in v)
           for k, v in paths.items() if len(v) > 1}
    assert not bad, bad


def _floor(name: str) -> tuple[int, int] | None:
    """(floor of the package part, floor inside core) of a module, None outside the package."""
    parts = name.split(".")
    if parts[0] != "napari_focsam":
        return None
    top = parts[1] if len(parts) > 1 else "__init__"
    outer = next(i for i, floor in enumerate(PACKAGE_FLOORS) if top in floor)
    inner = -1
    if top == "core" and len(parts) > 2:
        inner = next(i for i, floor in enumerate(CORE_FLOORS) if parts[2] in floor)
    return outer, inner


def test_imports_run_downward():
    """Between the package's parts and between core's packages no import runs up (or sideways
    to another package on the same floor): :data:`PACKAGE_FLOORS`, :data:`CORE_FLOORS`."""
    bad = []
    for name, path in _modules().items():
        me = _floor(name)
        for dep in _module_deps(name, path):
            to = _floor(dep)
            if to is None:
                continue
            same_part = name.split(".")[:2] == dep.split(".")[:2]
            if not same_part and to[0] >= me[0]:
                bad.append(f"{name} -> {dep}")
            if same_part and name.split(".")[1] == "core" and len(name.split(".")) > 2 and len(dep.split(".")) > 2:
                if name.split(".")[2] != dep.split(".")[2] and to[1] >= me[1]:
                    bad.append(f"{name} -> {dep}")
    assert not bad, "imports that run upward or sideways:\n" + "\n".join(sorted(bad))


def test_no_isinstance_on_a_tiled_class_in_core():
    """Plain and tiled images are one interface to the core (the stores, the slice histories):
    no branch on ``isinstance(x, Tiled...)``."""
    bad = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance" and len(node.args) == 2:
                names = {getattr(n, "id", getattr(n, "attr", "")) for n in ast.walk(node.args[1])}
                if any("Tiled" in n for n in names):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bad, bad


def test_tests_mirror_the_package():
    """``tests/core/images/`` tests ``napari_focsam.core.images``, ``tests/qt/`` the Qt layer, ...;
    only the house rules, the user guide's examples and the sample data are tested at the top."""
    tests = SRC.parent / "tests"
    alias = {"qt": "_qt"}
    for folder in sorted(p for p in tests.rglob("*") if p.is_dir() and any(p.glob("test_*.py"))):
        parts = [alias.get(x, x) for x in folder.relative_to(tests).parts]
        assert (PACKAGE.joinpath(*parts)).is_dir(), f"tests/{folder.relative_to(tests)} mirrors no package"
    top = sorted(p.name for p in tests.glob("test_*.py"))
    assert top == ["test_docs_examples.py", "test_layout.py", "test_sample_data.py"], top
