"""The house rules that a source scan can check: only the catalog and the store speak SQL, a long
module says why it is long, and ``explorer/core`` and ``explorer/ui`` import no module that
imports them back. Each rule is a function of a source tree, so the tests also show that it
fails on a tree that breaks it (a copy with ``import sqlalchemy`` added to ``pipeline.py``...)."""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "explorer"

#: the modules that may speak SQL (relative to the package's parent folder)
SQL_OWNERS = {"explorer/core/catalog.py", "explorer/core/store.py"}
#: what speaking SQL looks like: SQLAlchemy itself, statements, and opening the store's sessions
SQL_PATTERNS = {
    "sqlalchemy": re.compile(r"\bsqlalchemy\b"),
    "select(": re.compile(r"(?<![\w.])select\("),
    ".execute(": re.compile(r"\.execute\("),
    ".scalar(s)(": re.compile(r"\.scalars?\("),
    "store.session()": re.compile(r"\bstore\.session\("),
    "Session.begin()": re.compile(r"\bSession\.begin\("),
}
LONG_LINES = 600
LONG_MARK = "Long because:"


def sql_speakers(package: Path) -> dict[str, list[str]]:
    """``{module path: [what]}`` for every module outside ``SQL_OWNERS`` that speaks SQL."""
    out: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).as_posix()
        if rel in SQL_OWNERS:
            continue
        text = path.read_text(encoding="utf-8")
        found = [name for name, pat in SQL_PATTERNS.items() if pat.search(text)]
        if found:
            out[rel] = found
    return out


def long_modules_without_reason(package: Path, limit: int = LONG_LINES) -> dict[str, int]:
    """``{module path: lines}`` for modules over ``limit`` lines whose docstring has no "Long because:" line."""
    out: dict[str, int] = {}
    for path in sorted(package.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        if n <= limit:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if not any(line.strip().startswith(LONG_MARK) for line in doc.splitlines()):
            out[path.relative_to(package.parent).as_posix()] = n
    return out


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path, prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    """The import graph among the modules under ``root`` whose dotted names start with one of
    ``prefixes``: ``{module: {modules it imports}}``. Every import statement counts, also those
    inside functions and ``TYPE_CHECKING`` blocks (a cycle there still ties the modules together).
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    modules = {}
    for path in root.rglob("*.py"):
        name = _module_name(path, root)
        if name.startswith(prefixes):
            modules[name] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                while t and t not in modules:  # ``import a.b.c`` of a name inside a module: its module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _copy_package(tmp_path: Path) -> Path:
    dst = tmp_path / "explorer"
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# -- only the catalog and the store speak SQL ------------------------------------------------------


def test_only_the_catalog_and_the_store_speak_sql():
    assert sql_speakers(PACKAGE) == {}


def test_the_sql_rule_catches_sqlalchemy_in_the_pipeline(tmp_path):
    pkg = _copy_package(tmp_path)
    pipeline = pkg / "core" / "pipeline.py"
    pipeline.write_text(pipeline.read_text(encoding="utf-8") + "\nimport sqlalchemy  # noqa\n", encoding="utf-8")
    assert sql_speakers(pkg) == {"explorer/core/pipeline.py": ["sqlalchemy"]}


def test_the_sql_rule_catches_a_session_opened_outside_the_store(tmp_path):
    pkg = _copy_package(tmp_path)
    edits = pkg / "core" / "edits.py"
    edits.write_text(edits.read_text(encoding="utf-8") + "\n\ndef f(lib):\n    with lib.store.session() as s:\n"
                     "        return s.scalars(q)\n", encoding="utf-8")
    assert sql_speakers(pkg) == {"explorer/core/edits.py": [".scalar(s)(", "store.session()"]}


def test_a_method_named_like_select_is_not_sql():
    assert not SQL_PATTERNS["select("].search("self.owner.lasso_select(points)")
    assert SQL_PATTERNS["select("].search("q = select(ImageRow.id)")


# -- long modules say why --------------------------------------------------------------------------


def test_every_module_over_600_lines_says_why_it_is_long():
    assert long_modules_without_reason(PACKAGE) == {}


def test_the_length_rule_catches_a_long_module_and_accepts_its_reason(tmp_path):
    pkg = _copy_package(tmp_path)
    mod = pkg / "core" / "longish.py"
    body = "\n".join(f"x{i} = {i}" for i in range(LONG_LINES + 5)) + "\n"
    mod.write_text('"""A module."""\n' + body, encoding="utf-8")
    assert long_modules_without_reason(pkg) == {"explorer/core/longish.py": LONG_LINES + 6}
    mod.write_text(f'"""A module.\n\n{LONG_MARK} one table of constants.\n"""\n' + body, encoding="utf-8")
    assert long_modules_without_reason(pkg) == {}


# -- no import cycle in explorer/core and explorer/ui -------------------------------------------


def test_no_import_cycle_in_core_and_ui():
    graph = import_graph(ROOT, ("explorer.core", "explorer.ui"))
    assert len(graph) > 50 and "explorer.core.catalog" in graph["explorer.core.library"]
    assert find_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _copy_package(tmp_path)
    store = pkg / "core" / "store.py"
    store.write_text(store.read_text(encoding="utf-8") + "\n\ndef _f():\n    from .library import Library  # noqa\n", encoding="utf-8")
    cycles = find_cycles(import_graph(tmp_path, ("explorer.core", "explorer.ui")))
    assert any({"explorer.core.store", "explorer.core.library"} <= set(c) for c in cycles), cycles


def test_every_core_and_ui_module_imports():
    """Every module of core (and ui, with Qt) imports; a circular import the scan cannot see (e.g.
    through ``importlib``) fails here. A missing optional backend (ray, rapidocr...) is not a failure."""
    import importlib
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    names = sorted(import_graph(ROOT, ("explorer.core",)))
    try:
        import PySide6  # noqa: F401
        names += sorted(import_graph(ROOT, ("explorer.ui",)))
    except ImportError:
        pass
    failed = {}
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            # an optional backend (ray, rapidocr, faiss...) that is not installed is not a cycle
            if "partially initialized" in str(e) or "circular import" in str(e):
                failed[name] = str(e)
    assert failed == {}
