"""Where a second representation helps or hurts: per-query rows of an evaluation.

``compare_queries(report, "image", "fused")`` turns an :class:`EvaluationReport` into one row
per query with its caption and caption weight, the AP of both modes, their difference
(b - a) and the 1-based rank of the first relevant result in each mode. Better / worse /
tied use the exact sign of the difference, as the sign test of ``paired_comparison`` does,
so the counts match the report's comparison line. Queries without any relevant item (AP
undefined) are listed but belong to no group.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ExplorerError
from .modes import CAPTION, FUSED, IMAGE, LEARNED

GROUPS = ("better", "worse", "tied")
CSV_COLUMNS = ("query", "image_id", "caption", "caption_source", "caption_weight", "ap_a", "ap_b", "ap_diff",
               "first_relevant_a", "first_relevant_b", "group")


@dataclass
class QueryRow:
    path: str
    image_id: int
    caption: str
    caption_source: str
    weight: float
    ap_a: float
    ap_b: float
    first_a: int  # 1-based; -1 when the query has no relevant item
    first_b: int

    @property
    def diff(self) -> float:
        return self.ap_b - self.ap_a

    @property
    def group(self) -> str:
        d = self.diff
        if not math.isfinite(d):
            return "n/a"
        return "better" if d > 0 else "worse" if d < 0 else "tied"


@dataclass
class QueryComparison:
    mode_a: str
    mode_b: str
    rows: list[QueryRow]

    def summary(self) -> dict[str, dict]:
        """{group: {"count": n, "mean_weight": mean caption weight (NaN when empty)}}."""
        out = {}
        for g in GROUPS:
            w = [r.weight for r in self.rows if r.group == g]
            out[g] = {"count": len(w), "mean_weight": float(np.mean(w)) if w else float("nan")}
        return out

    def sorted_rows(self, key: str = "diff", descending: bool = False) -> list[QueryRow]:
        """Rows by a numeric column (``diff``, ``ap_a``, ``ap_b``, ``weight``, ``first_a``, ``first_b``); NaN last."""
        def k(r):
            v = float(getattr(r, key))
            return (not math.isfinite(v), -v if descending else v)
        return sorted(self.rows, key=k)

    def write_csv(self, path: str | Path) -> Path:
        p = Path(path)
        try:
            with open(p, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow([c.replace("_a", f"_{self.mode_a}").replace("_b", f"_{self.mode_b}") if c.endswith(("_a", "_b")) else c
                            for c in CSV_COLUMNS])
                for r in self.rows:
                    w.writerow([r.path, r.image_id, r.caption, r.caption_source, f"{r.weight:.4f}", _f(r.ap_a), _f(r.ap_b),
                                _f(r.diff), r.first_a, r.first_b, r.group])
        except OSError as e:
            raise ExplorerError(f"cannot write {p}: {e.strerror or e}") from None
        return p

    def summary_line(self) -> str:
        s = self.summary()
        parts = [f"{g} {s[g]['count']} (mean caption weight {s[g]['mean_weight']:.2f})" if s[g]["count"] else f"{g} 0" for g in GROUPS]
        return f"{self.mode_b} vs {self.mode_a}, per query: " + ", ".join(parts)


def _f(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else ""


def compare_queries(report, mode_a: str, mode_b: str, captions: dict[int, tuple[str, str]] | None = None) -> QueryComparison:
    """Rows comparing ``mode_b`` against ``mode_a`` (both evaluated in ``report``).

    ``captions``: image id -> (source, text), e.g. ``Store.active_captions()``.
    """
    by_mode = {r.mode: r for r in report.results}
    for m in (mode_a, mode_b):
        if m not in by_mode:
            raise ExplorerError(f"mode '{m}' was not evaluated; evaluated: {', '.join(by_mode)}")
    a, b = by_mode[mode_a], by_mode[mode_b]
    n = len(report.query_paths)
    ids = report.query_ids or [-1] * n
    weights = report.query_weights or [float("nan")] * n
    captions = captions or {}

    def first(m, i):
        return int(m.first_relevant_rank[i]) if m.first_relevant_rank is not None else -1

    rows = []
    for i, path in enumerate(report.query_paths):
        src, text = captions.get(int(ids[i]), ("none", ""))
        rows.append(QueryRow(path, int(ids[i]), text, src, float(weights[i]), float(a.ap[i]), float(b.ap[i]),
                             first(a, i), first(b, i)))
    return QueryComparison(mode_a, mode_b, rows)


def default_pair(modes) -> tuple[str, str] | None:
    """The comparison shown first: fused vs image, else learned vs fused, else the first two modes."""
    modes = list(modes)
    for a, b in ((IMAGE, FUSED), (FUSED, LEARNED), (IMAGE, LEARNED), (IMAGE, CAPTION)):
        if a in modes and b in modes:
            return a, b
    return (modes[0], modes[1]) if len(modes) >= 2 else None
