"""One home per list of names. The retrieval modes (``explorer/core/modes.py``): the list is
consistent, the CLI's choices and the window's columns come from it, and no other module types a
mode name out where it decides something by mode. The model roles (``core/models/registry.py``)
and the caption sources (``core/captions/sources.py``): every list of them is the registry's,
and no caption is made with a source name typed out."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from explorer.core import modes

ROOT = Path(__file__).resolve().parent.parent
EXPLORER = ROOT / "explorer"
HOME = EXPLORER / "core" / "modes.py"
SOURCES_HOME = EXPLORER / "core" / "captions" / "sources.py"

#: identifiers that hold a mode, a list of modes, or something keyed by mode
MODE_WORDS = re.compile(r"(?i:mode(?!l)|representation)|^columns$|^TITLES$|^COMPARE$")
#: calls that take a mode (or a library index, named by mode) as an argument
MODE_CALLS = re.compile(r"^(index|live_ids|title)$|(?i:mode(?!l))")


def _ident(node) -> str:
    """The name a node is known by: ``mode`` for ``mode``, ``r.mode``, ``self.columns[...]``..."""
    while isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _literals(node) -> list[ast.Constant]:
    """Mode-name string constants in ``node`` (itself, or inside tuples, lists, sets and dicts)."""
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in modes.BY_NAME]


def mode_literals(source: str) -> list[tuple[int, str]]:
    """(line, code) of every mode name written as a string where code decides by mode:
    compared with (or tested for membership in) something named like a mode; assigned to, or
    looped over as, a name like ``MODES``, ``modes``, ``TITLES``, ``columns``; a tuple, list or
    set made of mode names only (a list of modes is the home's job); passed as a
    ``mode``/``modes`` argument or parameter default; used as a key of something named like a
    mode or a column; or passed to ``index(...)`` / ``live_ids(...)`` (the library's indices
    are named by mode)."""
    tree = ast.parse(source)
    found: list[ast.Constant] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(MODE_WORDS.search(_ident(o)) for o in operands):
                for o in operands:
                    found += _literals(o)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and any(MODE_WORDS.search(_ident(t)) for t in targets):
                found += _literals(node.value)
        elif isinstance(node, (ast.For, ast.comprehension)):
            if MODE_WORDS.search(_ident(node.target)):
                found += _literals(node.iter)
        elif isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg and MODE_WORDS.search(kw.arg):
                    found += _literals(kw.value)
            if MODE_CALLS.search(_ident(node.func)):
                for a in node.args:
                    found += _literals(a)
        elif isinstance(node, ast.Subscript):
            if MODE_WORDS.search(_ident(node.value)):
                found += _literals(node.slice)
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            if len(node.elts) >= 2 and all(isinstance(e, ast.Constant) and e.value in modes.BY_NAME for e in node.elts):
                found += node.elts
        elif isinstance(node, ast.arguments):
            args = node.posonlyargs + node.args
            for a, d in zip(args[len(args) - len(node.defaults):], node.defaults):
                if MODE_WORDS.search(a.arg):
                    found += _literals(d)
            for a, d in zip(node.kwonlyargs, node.kw_defaults):
                if d is not None and MODE_WORDS.search(a.arg):
                    found += _literals(d)
    lines = source.splitlines()
    return sorted({(c.lineno, lines[c.lineno - 1].strip()) for c in found})


def test_the_mode_list_is_consistent():
    assert modes.ALL == ("image", "fused", "caption", "learned")
    assert modes.BASE + modes.HEAD == modes.ALL
    assert set(modes.INDEXED) == {m.name for m in modes.MODES if m.indexed}
    assert all(m.compare_with in modes.BY_NAME and m.compare_with != m.name for m in modes.MODES)
    assert len(set(modes.TITLES.values())) == len(modes.MODES)
    assert modes.with_head(("image", "learned")) == ("image", "learned")
    assert modes.with_head(modes.BASE) == modes.ALL
    assert modes.unknown(["image", "colour"]) == ["colour"] and modes.needing_head(modes.ALL) == ["learned"]
    assert modes.title("fused+aqe") == "fused+aqe"


def test_the_literal_check_finds_mode_names_where_code_decides_by_mode():
    caught = mode_literals(
        'MODES = ("image", "fused")\n'
        'if mode == "learned": pass\n'
        'if "caption" in modes: pass\n'
        'for mode in ("image", "caption"): pass\n'
        'lib.index("fused")\n'
        'search(spec, modes=("image",))\n'
        'self.columns["learned"].hide()\n'
        'def f(mode: str = "image"): pass\n'
        'for a, b in (("image", "fused"), ("fused", "learned")): pass\n')
    assert [line for line, _ in caught] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    # other meanings of the same words are left alone
    assert mode_literals('Caption(text, "generated")\nif spec.kind == "image": pass\n'
                         'v = Vectors({"image": q, "caption": c})\nim.mode == "RGB"\n') == []


def test_no_module_types_a_mode_name_out_outside_the_home():
    offenders = {}
    for path in sorted(EXPLORER.rglob("*.py")):
        if path == HOME:
            continue
        hits = mode_literals(path.read_text(encoding="utf-8"))
        if hits:
            offenders[str(path.relative_to(ROOT))] = hits
    assert offenders == {}, "use the names of explorer.core.modes:\n" + "\n".join(
        f"{p}:{line}: {code}" for p, hits in offenders.items() for line, code in hits)


def test_the_cli_choices_come_from_the_mode_list():
    import argparse

    from explorer.cli import build_parser
    from explorer.core.projection import REPRESENTATIONS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    opt = {c: {a.dest: a for a in p._actions} for c, p in sub.items()}
    assert opt["eval"]["modes"].default == ",".join(modes.BASE)
    assert opt["search"]["mode"].default == "all"
    assert tuple(opt["map"]["representation"].choices) == REPRESENTATIONS
    assert set(REPRESENTATIONS) == set(modes.ALL)
    for text in (opt["eval"]["modes"].help, opt["search"]["mode"].help):
        assert all(m in text for m in modes.BASE)


def test_the_windows_columns_and_evaluation_checks_come_from_the_mode_list(qtbot, tmp_path):
    pytest.importorskip("PySide6")
    from explorer.ui.results import ResultsPanel
    from explorer.ui.thumbnails import ThumbnailLoader

    thumbs = ThumbnailLoader(tmp_path / "thumbs", threads=1)
    try:
        panel = ResultsPanel(thumbs)
        qtbot.addWidget(panel)
        assert tuple(panel.columns) == modes.ALL
        for name, col in panel.columns.items():
            if name != modes.FUSED:  # the fused header also says α
                assert col.header.text() == modes.TITLES[name]
            assert col.sub.text() == f"rank change vs {modes.TITLES[modes.COMPARE[name]].lower()}"
    finally:
        thumbs.stop()
    from explorer.ui.context import AppContext
    from explorer.ui.evaluation import EvaluationPanel
    from explorer.core.config import Settings

    ctx = AppContext(Settings(library=str(tmp_path / "lib")))
    try:
        ev = EvaluationPanel(ctx)
        qtbot.addWidget(ev)
        assert tuple(ev.mode_checks) == modes.BASE
        assert [cb.text() for cb in ev.mode_checks.values()] == [modes.TITLES[m] for m in modes.BASE]
    finally:
        ctx.tasks.shutdown(10_000)


def test_model_role_lists_are_the_registrys():
    from explorer.cli.common import ROLE_OPTIONS
    from explorer.core.config import Settings
    from explorer.core.distributed import ray_engine
    from explorer.core.models import registry

    assert registry.ROLES == (registry.IMAGE_ENCODER, registry.TEXT_ENCODER, registry.CAPTIONER, registry.DETECTOR)
    assert tuple(registry.ROLE_TITLES) == registry.ROLES
    assert tuple(ROLE_OPTIONS) == registry.ROLES
    assert sorted(ray_engine.ROLES) == sorted(registry.ROLES) and set(ray_engine.GPU_ROLES) < set(registry.ROLES)
    settings = Settings()
    assert all(isinstance(settings.spec(r), str) and settings.spec(r) for r in registry.ROLES)


def source_literals(source: str) -> list[tuple[int, str]]:
    """(line, code) of every ``Caption(...)`` made with a caption source's name typed out
    (second argument or ``source=``)."""
    from explorer.core.captions.sources import BY_NAME

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and _ident(node.func) in ("Caption", "ComposedCaption"):
            args = node.args[1:2] + [kw.value for kw in node.keywords if kw.arg == "source"]
            found += [a for a in args if isinstance(a, ast.Constant) and a.value in BY_NAME]
    lines = source.splitlines()
    return sorted({(c.lineno, lines[c.lineno - 1].strip()) for c in found})


def test_captions_are_made_with_the_source_names_of_their_home():
    from explorer.core.captions import sources

    named = {getattr(sources, n) for n in ("USER_EDITED", "SIDECAR", "CAPTIONS_FILE", "GROUND_TRUTH", "METADATA", "GENERATED",
                                           "FILENAME", "FOLDER", "OCR")}
    assert named == set(sources.BY_NAME)
    assert [line for line, _ in source_literals('Caption("x", "generated", "m", 1.0)\nCaption(t, source="ocr")\n'
                                                'Caption(t, GENERATED)\n')] == [1, 2]
    offenders = [f"{p.relative_to(ROOT)}:{line}: {code}" for p in sorted(EXPLORER.rglob("*.py")) if p != SOURCES_HOME
                 for line, code in source_literals(p.read_text(encoding="utf-8"))]
    assert offenders == []
