"""Paired comparisons of two retrieval modes on the same queries: mean AP difference, 95%
percentile-bootstrap confidence interval, exact sign test, wins/losses/ties.

Pure numpy; works on per-query AP arrays as ``metrics`` produces them (``ModeMetrics.ap``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def json_number(v) -> float | None:
    """A float as the JSON reports write it: NaN and infinities become None (also used by ``metrics``)."""
    v = float(v)
    return v if math.isfinite(v) else None


_num = json_number


@dataclass
class PairedComparison:
    """Mode B against mode A on the same queries (``diff = b - a``)."""

    name_a: str
    name_b: str
    n_pairs: int
    n_dropped: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    p_value: float
    wins: int
    losses: int
    ties: int
    n_boot: int
    seed: int

    def to_dict(self) -> dict:
        return {
            "a": self.name_a,
            "b": self.name_b,
            "n_pairs": self.n_pairs,
            "n_dropped": self.n_dropped,
            "mean_a": _num(self.mean_a),
            "mean_b": _num(self.mean_b),
            "mean_diff": _num(self.mean_diff),
            "ci95": [_num(self.ci_low), _num(self.ci_high)],
            "sign_test_p": _num(self.p_value),
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "n_boot": self.n_boot,
            "seed": self.seed,
        }


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test (binomial, p = 1/2) on the non-tied pairs."""
    n = wins + losses
    if n == 0:
        return 1.0
    m = min(wins, losses)
    term = total = 1  # C(n, 0)
    for i in range(1, m + 1):
        term = term * (n - i + 1) // i
        total += term
    return min(1.0, (2 * total) / (1 << n))  # exact integers; correctly rounded float


def paired_comparison(
    ap_a, ap_b, n_boot: int = 10000, seed: int = 0, name_a: str = "a", name_b: str = "b"
) -> PairedComparison:
    """Mean AP difference (b - a), 95% percentile-bootstrap CI, sign test, wins/losses/ties.

    Pairs where either AP is NaN are dropped. The bootstrap resamples queries with
    replacement ``n_boot`` times (vectorised in batches, seeded).
    """
    a = np.asarray(ap_a, np.float64).reshape(-1)
    b = np.asarray(ap_b, np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"AP arrays differ in length: {a.size} vs {b.size}")
    ok = ~(np.isnan(a) | np.isnan(b))
    a, b = a[ok], b[ok]
    d = b - a
    n = int(d.size)
    wins, losses = int(np.sum(d > 0)), int(np.sum(d < 0))
    nan = float("nan")
    if n == 0:
        lo = hi = mean = nan
    else:
        mean = float(d.mean())
        rng = np.random.default_rng(seed)
        means = np.empty(int(n_boot))
        batch = max(1, 2_000_000 // n)
        for s in range(0, int(n_boot), batch):
            m = min(batch, int(n_boot) - s)
            means[s : s + m] = d[rng.integers(0, n, size=(m, n))].mean(axis=1)
        lo, hi = (float(v) for v in np.percentile(means, [2.5, 97.5])) if n_boot > 0 else (nan, nan)
    return PairedComparison(
        name_a=name_a,
        name_b=name_b,
        n_pairs=n,
        n_dropped=int((~ok).sum()),
        mean_a=float(a.mean()) if n else nan,
        mean_b=float(b.mean()) if n else nan,
        mean_diff=mean,
        ci_low=lo,
        ci_high=hi,
        p_value=sign_test_p(wins, losses),
        wins=wins,
        losses=losses,
        ties=n - wins - losses,
        n_boot=int(n_boot),
        seed=int(seed),
    )


__all__ = ["PairedComparison", "json_number", "paired_comparison", "sign_test_p"]
