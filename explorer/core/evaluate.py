"""Evaluate a library's retrieval modes against ground truth.

Glue between the library (stored vectors and caption weights) and ``explorer.core.evaluation``
(metrics, comparisons, plots, reports). Every mode is expressed as a dot product between a
query matrix and a gallery matrix, so evaluation is one chunked matrix product per mode:

- ``image``: image vectors;
- ``caption``: caption vectors;
- ``fused``: the exact per-pair score of ``explorer.core.fusion`` with b = alpha * w_q * w_i,
  which is the dot product of ``Q = [img_q, alpha w_q cap_q, -alpha w_q img_q]`` and
  ``G = [img_i, w_i cap_i, w_i img_i]`` (shared space or not);
- ``learned``: a trained fusion head's embeddings (when a head is given).

Reranking ``aqe`` (alpha-query expansion) replaces each query vector by the similarity-weighted
mean of itself and its top-n gallery neighbours, per representation, then re-scores.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from sqlalchemy import select

from . import fusion
from .errors import BadGroundTruth, Cancelled, ExplorerError
from .evaluation import (
    ModeMetrics,
    config_hash,
    evaluate_embeddings,
    load_ground_truth,
    make_pr_figure,
    paired_comparison,
    plot_pr,
    write_metrics,
)
from .evaluation.groundtruth import GroundTruth
from .library import GalleryVectors, Library
from .models.base import l2_normalise
from .store import ImageRow

EVAL_MODES = ("image", "fused", "caption")
SWEEP_ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
AQE_N, AQE_POWER = 5, 3.0


@dataclass
class EvaluationReport:
    gt_name: str
    gt_description: str
    results: list[ModeMetrics]
    comparisons: dict[str, dict]
    meta: dict
    query_paths: list[str]
    sweep: list[tuple[float, float]] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def footer(self) -> str:
        m = self.meta
        return (f"{self.gt_description} | image: {m['models']['image']}, text: {m['models']['text']}, "
                f"captioner: {m['models']['captioner']} | alpha {m['alpha']:.2f} | rerank {m['rerank']} | config {m['config_hash']}")

    def figure(self):
        return make_pr_figure(self.results, title=f"Precision-recall: {self.gt_name}", footer=self.footer)

    def write_plot(self, path: str | Path) -> list[Path]:
        return plot_pr(self.results, [Path(path)], title=f"Precision-recall: {self.gt_name}", footer=self.footer)

    def write_metrics(self, path: str | Path):
        meta = dict(self.meta)
        if self.sweep is not None:
            meta["alpha_sweep"] = list(self.sweep)
        return write_metrics(self.results, self.comparisons, Path(path), meta, self.query_paths)

    def summary_lines(self) -> list[str]:
        lines = [self.gt_description]
        for r in self.results:
            pk = "  ".join(f"P@{k} {v:.3f}" for k, v in r.precision_at_k.items() if k in (1, 5, 10))
            rk = "  ".join(f"R@{k} {v:.3f}" for k, v in r.recall_at_k.items() if k in (10, 50))
            lines.append(f"{r.mode:<14} mAP {r.map_text}  {pk}  {rk}")
        for name, c in self.comparisons.items():
            lo, hi = c["ci95"]
            lines.append(f"{name}: mean AP diff {c['mean_diff']:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}], "
                         f"sign test p={c['sign_test_p']:.3g} ({c['wins']} better, {c['losses']} worse, {c['ties']} tied)")
        if self.sweep:
            lines.append("alpha sweep (fused mAP): " + ", ".join(f"{a:.1f}:{m:.3f}" for a, m in self.sweep))
        return lines


def _match(gt: GroundTruth, lib: Library) -> tuple[dict[Path, int], list[str]]:
    """Map ground-truth paths to library image ids; report what is missing."""
    wanted = {it.path for it in gt.items}
    found: dict[Path, int] = {}
    failed = 0
    with lib.store.session() as s:
        for iid, path_key, status in s.execute(select(ImageRow.id, ImageRow.path_key, ImageRow.status)):
            p = Path(os.fsdecode(path_key))
            if p in wanted:
                if status == "ok":
                    found[p] = iid
                else:
                    failed += 1
    warnings = []
    missing = len(wanted) - len(found) - failed
    if not found:
        raise BadGroundTruth(f"none of the {len(wanted)} ground-truth images are in the library at {lib.dir}: index their folder first")
    if missing:
        warnings.append(f"{missing} ground-truth images are not in the library (not indexed); they are left out")
    if failed:
        warnings.append(f"{failed} ground-truth images failed to index; they are left out")
    return found, warnings


def _fused_matrices(q: GalleryVectors, g: GalleryVectors, alpha: float, w_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    aw = (alpha * w_q)[:, None]
    Q = np.concatenate([q.image, aw * q.caption, -aw * q.image], axis=1)
    G = np.concatenate([g.image, g.weights[:, None] * g.caption, g.weights[:, None] * g.image], axis=1)
    return Q.astype(np.float32), G.astype(np.float32)


def _aqe(Q: np.ndarray, G: np.ndarray, exclude: np.ndarray | None, n: int = AQE_N, power: float = AQE_POWER, chunk: int = 1024) -> np.ndarray:
    """alpha-QE on one representation: Q' = normalise(Q + sum_top-n max(s,0)^power * G_j)."""
    out = np.empty_like(Q)
    for s in range(0, len(Q), chunk):
        e = min(len(Q), s + chunk)
        S = Q[s:e] @ G.T
        if exclude is not None:
            rows = np.arange(e - s)
            ex = exclude[s:e]
            ok = ex >= 0
            S[rows[ok], ex[ok]] = -np.inf
        top = np.argpartition(-S, min(n, S.shape[1] - 1), axis=1)[:, :n]
        w = np.clip(np.take_along_axis(S, top, 1), 0, None) ** power
        out[s:e] = l2_normalise(Q[s:e] + np.einsum("qn,qnd->qd", w, G[top]))
    return out


def run_evaluation(
    library: Library,
    gt_spec: str | GroundTruth,
    modes: Sequence[str] = EVAL_MODES,
    alpha: float | None = None,
    rerank: str = "none",
    alpha_sweep: bool = False,
    progress: Callable[[str, float], None] | None = None,
    cancel: threading.Event | None = None,
    learned_head=None,
) -> EvaluationReport:
    """Evaluate ``modes`` on ``gt_spec``; ``rerank`` is ``none``, ``aqe`` or ``both``."""
    t0 = time.perf_counter()
    emit = progress or (lambda msg, frac: None)
    alpha = library.alpha if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ExplorerError(f"alpha must be in [0, 1], got {alpha}")
    unknown = [m for m in modes if m not in EVAL_MODES + ("learned",)]
    if unknown:
        raise ExplorerError(f"unknown mode(s) {unknown}; choose from {', '.join(EVAL_MODES + ('learned',))}")
    if "learned" in modes and learned_head is None:
        raise ExplorerError("mode 'learned' needs a trained fusion head (--head models/fusion-NAME.safetensors)")
    if rerank not in ("none", "aqe", "both"):
        raise ExplorerError(f"unknown rerank '{rerank}'; choose none, aqe or both")
    emit("loading ground truth", 0.0)
    gt = load_ground_truth(gt_spec) if isinstance(gt_spec, str) else gt_spec
    found, warnings = _match(gt, library)
    warnings.extend(gt.warnings)
    q_paths = [p for p in gt.queries() if p in found]
    g_paths = [p for p in gt.gallery() if p in found]
    if not q_paths or len(g_paths) < 2:
        raise BadGroundTruth(f"too few indexed ground-truth images to evaluate ({len(q_paths)} queries, {len(g_paths)} gallery)")
    emit("loading vectors", 0.05)
    all_ids = sorted({found[p] for p in q_paths} | {found[p] for p in g_paths})
    vecs = library.gallery_vectors(all_ids)
    pos = {int(i): j for j, i in enumerate(vecs.ids.tolist())}
    q_paths = [p for p in q_paths if found[p] in pos]
    g_paths = [p for p in g_paths if found[p] in pos]
    qi = np.array([pos[found[p]] for p in q_paths])
    gi = np.array([pos[found[p]] for p in g_paths])
    sub = lambda idx: GalleryVectors(vecs.ids[idx], vecs.image[idx], vecs.caption[idx], vecs.weights[idx])  # noqa: E731
    Qv, Gv = sub(qi), sub(gi)
    relevance = gt.relevance_source(q_paths, g_paths)
    # the query's own position in the gallery, for excluding it during query expansion
    gpos = {p: j for j, p in enumerate(g_paths)}
    self_idx = np.array([gpos.get(p, -1) for p in q_paths])

    def matrices(mode: str, a: float):
        if mode == "image":
            return [(Qv.image, Gv.image)]
        if mode == "caption":
            return [(Qv.caption, Gv.caption)]
        if mode == "fused":
            return [_fused_matrices(Qv, Gv, a, Qv.weights)]
        if mode == "learned":
            from .learned import learned_vectors_for_eval

            LQ, LG = learned_vectors_for_eval(learned_head, library, vecs.ids.tolist())
            return [(LQ[qi], LG[gi])]
        raise AssertionError(mode)

    def expanded(mode: str, a: float):
        if mode == "fused":
            qimg = _aqe(Qv.image, Gv.image, self_idx)
            qcap = _aqe(Qv.caption, Gv.caption, self_idx)
            exp = GalleryVectors(Qv.ids, qimg, qcap, Qv.weights)
            return _fused_matrices(exp, Gv, a, Qv.weights)
        Q, G = matrices(mode, a)[0]
        return _aqe(l2_normalise(Q), G, self_idx), G

    runs = []
    for m in modes:
        if rerank in ("none", "both"):
            runs.append((m, False))
        if rerank in ("aqe", "both"):
            runs.append((m, True))
    results: list[ModeMetrics] = []
    for n, (m, aqe) in enumerate(runs):
        if cancel is not None and cancel.is_set():
            raise Cancelled("evaluation cancelled")
        name = f"{m}+aqe" if aqe else m
        emit(f"evaluating {name}", 0.1 + 0.7 * n / len(runs))
        Q, G = expanded(m, alpha) if aqe else matrices(m, alpha)[0]
        results.append(evaluate_embeddings(Q, G, relevance, mode=name))
    sweep = None
    if alpha_sweep:
        sweep = []
        for a in SWEEP_ALPHAS:
            if cancel is not None and cancel.is_set():
                raise Cancelled("evaluation cancelled")
            emit(f"alpha sweep {a:.1f}", 0.8 + 0.2 * a)
            Q, G = _fused_matrices(Qv, Gv, a, Qv.weights)
            sweep.append((a, evaluate_embeddings(Q, G, relevance, mode=f"alpha={a}", ks=(1,)).map))
    comparisons = {}
    base = next((r for r in results if r.mode == "image"), None)
    for r in results:
        if base is not None and r is not base:
            comparisons[f"image_vs_{r.mode}"] = paired_comparison(base.ap, r.ap, name_a="image", name_b=r.mode).to_dict()
    models = {role: library.loader.get(role).model_id for role in ("image", "text", "captioner", "detector")}
    meta = {
        "ground_truth": gt.spec or gt.name, "dataset": gt.name, "n_queries": len(q_paths), "n_gallery": len(g_paths),
        "modes": list(modes), "alpha": alpha, "rerank": rerank, "models": models,
        "fusion": {"caption_weights": "agreement-v1", "agreement_k": fusion.AGREEMENT_K}, "elapsed_s": round(time.perf_counter() - t0, 3),
        "warnings": warnings,
    }
    meta["config_hash"] = config_hash({k: meta[k] for k in ("ground_truth", "alpha", "rerank", "models", "fusion", "modes")})
    emit("done", 1.0)
    return EvaluationReport(gt.name, f"{gt.name}: {len(q_paths)} queries, {len(g_paths)} gallery images", results,
                            comparisons, meta, [str(p) for p in q_paths], sweep, warnings)
