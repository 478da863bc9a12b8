"""The candidate-count selection rule of ``bench/scale_million.py`` (a pure function of grid rows)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from scale_million import GRID, TARGET, select_candidates  # noqa: E402


def rows(val):
    return [{"candidates": c, "recall_val": v, "recall_real": 0.5} for c, v in zip(GRID, val)]


def test_selection_takes_the_fewest_candidates_reaching_the_target_on_validation():
    assert TARGET == 0.95 and list(GRID) == [100, 200, 400, 1000]
    assert select_candidates(rows([0.94, 0.951, 0.97, 0.99]))["candidates"] == 200
    assert select_candidates(rows([0.95, 0.96, 0.97, 0.99]))["candidates"] == 100  # reaching it counts
    # not monotone: still the fewest that reaches it
    assert select_candidates(rows([0.90, 0.96, 0.949, 0.99]))["candidates"] == 200
    # the order of the rows does not matter
    assert select_candidates(list(reversed(rows([0.90, 0.93, 0.955, 0.99]))))["candidates"] == 400


def test_selection_ignores_test_recall_and_reports_a_miss_as_none():
    r = rows([0.90, 0.92, 0.93, 0.94])
    for row in r:
        row["recall_real"] = 0.99  # the test queries never decide
    assert select_candidates(r) is None
    assert select_candidates([]) is None
    assert select_candidates([{"candidates": 100, "recall_real": 0.99}]) is None  # no validation figure: no pick
    assert select_candidates(rows([0.90, 0.96, 0.97, 0.98]), target=0.97)["candidates"] == 400
