"""The CLI package's shape: one module per command group under ``explorer/cli/``, every module
says what it owns, and the import graph among ``explorer.cli*`` modules has no cycle (no command
module imports the package back; only ``__main__`` runs it)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "explorer.cli"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """``{dotted name: file}`` of the package's modules under ``root``, plus any sibling module
    named like it (``explorer/cli_*.py``)."""
    parts = package.split(".")
    pkg_dir = root.joinpath(*parts)
    out = {package: pkg_dir / "__init__.py"} if (pkg_dir / "__init__.py").exists() else {}
    for f in sorted(pkg_dir.glob("*.py")):
        if f.name != "__init__.py":
            out[f"{package}.{f.stem}"] = f
    for f in sorted(pkg_dir.parent.glob(parts[-1] + "*.py")):
        out[".".join(parts[:-1] + [f.stem])] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules in ``known`` that ``path`` (module ``name``) imports anywhere (also inside functions)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:  # explorer.cli.common.x -> explorer.cli.common
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:  # `from . import search` names a module; `from . import main` a name
                full = f"{mod}.{a.name}"
                add(full if full in known else mod)
    found.discard(name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    files = module_files(root, package)
    return {n: imports_of(n, p, set(files)) for n, p in files.items()}


def test_the_check_finds_a_cycle_and_a_module_importing_its_package(tmp_path):
    pkg = tmp_path / "app" / "cli"
    pkg.mkdir(parents=True)
    (tmp_path / "app" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from . import a\nfrom .b import run\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from ..core import x\nfrom app.cli.a import f\n")
    (tmp_path / "app" / "cli_extra.py").write_text("from .cli import main\n")
    g = import_graph(tmp_path, "app.cli")
    assert g == {"app.cli": {"app.cli.a", "app.cli.b"}, "app.cli.a": {"app.cli.b"}, "app.cli.b": {"app.cli.a"},
                 "app.cli_extra": {"app.cli"}}
    assert find_cycle(g) in (["app.cli.a", "app.cli.b", "app.cli.a"], ["app.cli.b", "app.cli.a", "app.cli.b"])
    (pkg / "a.py").write_text("from . import run\n")  # a command module importing its package: a cycle too
    assert find_cycle(import_graph(tmp_path, "app.cli")) == ["app.cli", "app.cli.a", "app.cli"]


def test_no_import_cycle_among_the_cli_modules():
    g = import_graph(ROOT, PACKAGE)
    assert [n for n in g if not n.startswith(PACKAGE + ".") and n != PACKAGE] == [], "the CLI lives in explorer/cli/ only"
    assert find_cycle(g) is None
    back = [n for n, deps in g.items() if PACKAGE in deps and n != f"{PACKAGE}.__main__"]
    assert back == [], f"{back} import their package; import .common (or a sibling) instead"
    assert {"explorer.cli.common", "explorer.cli.search", "explorer.cli.evaluation", "explorer.cli.indexing",
            "explorer.cli.views", "explorer.cli.models", "explorer.cli.gui"} <= set(g)
    assert g["explorer.cli.common"] == set(), "common.py is the leaf every command module shares"


def test_every_cli_module_says_what_it_owns():
    for name, path in module_files(ROOT, PACKAGE).items():
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, name


def test_python_m_explorer_cli_runs_the_package():
    out = subprocess.run([sys.executable, "-m", "explorer.cli", "search", "--text", "x", "--library", str(ROOT / "no-such-library")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: no library at {ROOT / 'no-such-library'}: index a folder first with "
                                               f"`explorer index FOLDER --library {ROOT / 'no-such-library'}`"]
