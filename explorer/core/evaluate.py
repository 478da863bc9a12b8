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

Reranking (``explorer.core.rerank``: ``aqe``, ``superglobal``, ``kreciprocal``) runs the very
code that search runs, on the mode's ``Scorer`` and vectors, a block of queries at a time
against the whole gallery (``score_matrix``), so a query's reranked scores here equal its
reranked scores in a search.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from . import fusion
from . import rerank as rr
from .errors import BadGroundTruth, Cancelled, ExplorerError
from .evaluation import (
    ModeMetrics,
    config_hash,
    evaluate_embeddings,
    evaluate_scores,
    load_ground_truth,
    make_pr_figure,
    paired_comparison,
    plot_pr,
    write_metrics,
)
from .evaluation.groundtruth import GroundTruth
from .library import GalleryVectors, Library
from .catalog import Catalog, path_key
from .models.registry import ROLES
from .modes import ALL as ALL_MODES
from .modes import BASE, CAPTION, FUSED, IMAGE, LEARNED

EVAL_MODES = BASE
SWEEP_ALPHAS = tuple(round(a, 2) for a in np.linspace(0.0, 1.0, 11))
RERANK_CHUNK = 256


def rerank_methods(rerank: str) -> list[str]:
    """``none``, one method, ``both`` (none and aqe) or a comma list -> the methods to run."""
    parts = ["none", "aqe"] if rerank == "both" else [p.strip() for p in str(rerank).split(",") if p.strip()]
    bad = [p for p in parts if p not in rr.METHODS]
    if bad or not parts:
        raise ExplorerError(f"unknown rerank '{rerank}'; choose from {', '.join(rr.METHODS)}, both, or a comma list")
    return list(dict.fromkeys(parts))


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
    #: library image id and caption weight of each query (aligned with ``query_paths``)
    query_ids: list[int] = field(default_factory=list)
    query_weights: list[float] = field(default_factory=list)

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
            if c.get("mean_diff") is None:  # no query kept a relevant item (e.g. all were duplicates)
                lines.append(f"{name}: no query with relevant items to compare")
                continue
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
    known = Catalog(lib.store).image_statuses(wanted)
    for p in wanted:
        hit = known.get(path_key(p))
        if hit is not None:
            if hit[1] == "ok":
                found[p] = hit[0]
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


def image_labels(library: Library, gt_spec: str | GroundTruth) -> dict[int, str]:
    """Library image id -> ground-truth label (for supervised learned whitening)."""
    gt = load_ground_truth(gt_spec) if isinstance(gt_spec, str) else gt_spec
    found, _ = _match(gt, library)
    out = {found[it.path]: str(it.label) for it in gt.items if it.label is not None and it.path in found}
    if not out:
        raise BadGroundTruth(f"the ground truth {gt.name} gives no labels (learned whitening needs one label per image)")
    return out


#: the fused matrices' old name here (their one home is ``fusion.fused_matrices``)
_fused_matrices = fusion.fused_matrices


def mode_space(mode: str, q: GalleryVectors, g: GalleryVectors, alpha: float, learned=None):
    """A mode as ``(scorer, query rows, gallery rows)`` for ``explorer.core.rerank``;
    ``learned`` = (query matrix, gallery matrix) of a fusion head."""
    if mode == IMAGE:
        return rr.Scorer("dot", "image"), rr.Vectors({"image": q.image}), rr.Vectors({"image": g.image})
    if mode == CAPTION:
        return rr.Scorer("dot", "caption"), rr.Vectors({"caption": q.caption}), rr.Vectors({"caption": g.caption})
    if mode == FUSED:
        return (rr.Scorer("fused", alpha=alpha), rr.Vectors({"image": q.image, "caption": q.caption}, q.weights.astype(np.float32)),
                rr.Vectors({"image": g.image, "caption": g.caption}, g.weights.astype(np.float32)))
    if mode == LEARNED:
        return rr.Scorer("dot", "learned"), rr.Vectors({"learned": learned[0]}), rr.Vectors({"learned": learned[1]})
    raise AssertionError(mode)


def score_matrix(scorer: rr.Scorer, q: rr.Vectors, g: rr.Vectors, self_idx: np.ndarray, method: str,
                 chunk: int = RERANK_CHUNK) -> np.ndarray:
    """Reranked scores (queries x gallery), ``RERANK_CHUNK`` queries at a time; each query's own
    gallery position (``self_idx`` >= 0) is excluded as in a search."""
    nq = len(next(iter(q.reps.values())))
    ng = len(next(iter(g.reps.values())))
    out = np.empty((nq, ng), np.float32)
    for s in range(0, nq, chunk):
        e = min(nq, s + chunk)
        qb = q.rows(s, e)
        base = scorer(qb, g)
        ex = self_idx[s:e]
        ok = ex >= 0
        base[np.arange(e - s)[ok], ex[ok]] = -np.inf
        out[s:e] = rr.rerank(method, scorer, qb, g, base)
    return out


@dataclass
class _Setup:
    q_paths: list[Path]
    g_paths: list[Path]
    Qv: GalleryVectors
    Gv: GalleryVectors
    qi: np.ndarray
    gi: np.ndarray
    ids: np.ndarray
    relevance: object
    self_idx: np.ndarray
    warnings: list[str]
    gt: GroundTruth


def _setup(library: Library, gt_spec: str | GroundTruth, exclude_ids=None) -> _Setup:
    gt = load_ground_truth(gt_spec) if isinstance(gt_spec, str) else gt_spec
    found, warnings = _match(gt, library)
    warnings.extend(gt.warnings)
    if exclude_ids:
        drop = {int(i) for i in exclude_ids}
        n_before = len(found)
        found = {p: i for p, i in found.items() if i not in drop}
        if n_before != len(found):
            warnings.append(f"{n_before - len(found)} duplicate images are excluded from the evaluation")
    q_paths = [p for p in gt.queries() if p in found]
    g_paths = [p for p in gt.gallery() if p in found]
    if not q_paths or len(g_paths) < 2:
        raise BadGroundTruth(f"too few indexed ground-truth images to evaluate ({len(q_paths)} queries, {len(g_paths)} gallery)")
    all_ids = sorted({found[p] for p in q_paths} | {found[p] for p in g_paths})
    vecs = library.gallery_vectors(all_ids)
    pos = {int(i): j for j, i in enumerate(vecs.ids.tolist())}
    q_paths = [p for p in q_paths if found[p] in pos]
    g_paths = [p for p in g_paths if found[p] in pos]
    qi = np.array([pos[found[p]] for p in q_paths])
    gi = np.array([pos[found[p]] for p in g_paths])
    sub = lambda idx: GalleryVectors(vecs.ids[idx], vecs.image[idx], vecs.caption[idx], vecs.weights[idx])  # noqa: E731
    # the query's own position in the gallery: excluded from its ranking and its reranking
    gpos = {p: j for j, p in enumerate(g_paths)}
    self_idx = np.array([gpos.get(p, -1) for p in q_paths])
    return _Setup(q_paths, g_paths, sub(qi), sub(gi), qi, gi, vecs.ids, gt.relevance_source(q_paths, g_paths), self_idx, warnings, gt)


def query_scores(library: Library, gt_spec: str | GroundTruth, mode: str, rerank: str = "none", alpha: float | None = None,
                 learned_head=None) -> tuple[list[Path], list[Path], np.ndarray]:
    """(query paths, gallery paths, scores) exactly as ``run_evaluation`` ranks them for one mode
    and reranking (``-inf`` at each query's own gallery position)."""
    alpha = library.fused_index_alpha if alpha is None else float(alpha)
    st = _setup(library, gt_spec)
    learned = None
    if mode == LEARNED:
        from .learned import learned_vectors_for_eval

        LQ, LG = learned_vectors_for_eval(learned_head, library, st.ids.tolist())
        learned = (LQ[st.qi], LG[st.gi])
    scorer, q, g = mode_space(mode, st.Qv, st.Gv, alpha, learned)
    g.ids = st.Gv.ids
    return st.q_paths, st.g_paths, score_matrix(scorer, q, g, st.self_idx, rr.check_method(rerank))


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
    exclude_ids=None,
) -> EvaluationReport:
    """Evaluate ``modes`` on ``gt_spec``; ``rerank`` is ``none``, one of ``explorer.core.rerank.METHODS``,
    ``both`` (none and aqe) or a comma list of methods.

    ``exclude_ids``: library image ids left out as queries and from the gallery (e.g. the
    non-representative members of duplicate groups, ``DuplicateReport.exclusions()``).
    """
    t0 = time.perf_counter()
    emit = progress or (lambda msg, frac: None)
    alpha = library.fused_index_alpha if alpha is None else float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ExplorerError(f"alpha must be in [0, 1], got {alpha}")
    unknown = [m for m in modes if m not in ALL_MODES]
    if unknown:
        raise ExplorerError(f"unknown mode(s) {unknown}; choose from {', '.join(ALL_MODES)}")
    if LEARNED in modes and learned_head is None:
        raise ExplorerError("mode 'learned' needs a trained fusion head (--head models/fusion-NAME.safetensors)")
    methods = rerank_methods(rerank)
    emit("loading ground truth", 0.0)
    st = _setup(library, gt_spec, exclude_ids)
    gt, warnings, q_paths, g_paths, Qv, Gv, relevance = st.gt, st.warnings, st.q_paths, st.g_paths, st.Qv, st.Gv, st.relevance
    emit("loading vectors", 0.05)
    learned = None
    if LEARNED in modes:
        from .learned import learned_vectors_for_eval

        LQ, LG = learned_vectors_for_eval(learned_head, library, st.ids.tolist())
        learned = (LQ[st.qi], LG[st.gi])

    def matrices(mode: str, a: float):
        if mode == IMAGE:
            return Qv.image, Gv.image
        if mode == CAPTION:
            return Qv.caption, Gv.caption
        if mode == FUSED:
            return fusion.fused_matrices(Qv, Gv, a, Qv.weights)
        if mode == LEARNED:
            return learned
        raise AssertionError(mode)

    runs = [(m, method) for m in modes for method in methods]
    results: list[ModeMetrics] = []
    for n, (m, method) in enumerate(runs):
        if cancel is not None and cancel.is_set():
            raise Cancelled("evaluation cancelled")
        name = m if method == "none" else f"{m}+{method}"
        emit(f"evaluating {name}", 0.1 + 0.7 * n / len(runs))
        if method == "none":
            Q, G = matrices(m, alpha)
            results.append(evaluate_embeddings(Q, G, relevance, mode=name))
        else:
            scorer, q, g = mode_space(m, Qv, Gv, alpha, learned)
            g.ids = Gv.ids  # ties broken by image id, as in a search
            results.append(evaluate_scores(score_matrix(scorer, q, g, st.self_idx, method), relevance, mode=name))
    sweep = None
    if alpha_sweep:
        sweep = []
        for a in SWEEP_ALPHAS:
            if cancel is not None and cancel.is_set():
                raise Cancelled("evaluation cancelled")
            emit(f"alpha sweep {a:.1f}", 0.8 + 0.2 * a)
            Q, G = fusion.fused_matrices(Qv, Gv, a, Qv.weights)
            sweep.append((a, evaluate_embeddings(Q, G, relevance, mode=f"alpha={a}", ks=(1,)).map))
    comparisons = {}
    base = next((r for r in results if r.mode == IMAGE), None)
    for r in results:
        if base is not None and r is not base:
            comparisons[f"image_vs_{r.mode}"] = paired_comparison(base.ap, r.ap, name_a=IMAGE, name_b=r.mode).to_dict()
    models = {role: library.loader.get(role).model_id for role in ROLES}
    meta = {
        "ground_truth": gt.spec or gt.name, "dataset": gt.name, "n_queries": len(q_paths), "n_gallery": len(g_paths),
        "modes": list(modes), "alpha": alpha, "rerank": rerank, "models": models,
        "whitening": library.whitening.tag if library.whitening is not None else "none",
        "fusion": {"caption_weights": fusion.WEIGHT_RULE, "agreement_k": fusion.AGREEMENT_K}, "elapsed_s": round(time.perf_counter() - t0, 3),
        "warnings": warnings, "excluded_ids": sorted(int(i) for i in exclude_ids) if exclude_ids else [],
    }
    meta["config_hash"] = config_hash({k: meta[k] for k in ("ground_truth", "alpha", "rerank", "models", "whitening", "fusion", "modes",
                                                            "excluded_ids")})
    emit("done", 1.0)
    return EvaluationReport(gt.name, f"{gt.name}: {len(q_paths)} queries, {len(g_paths)} gallery images", results,
                            comparisons, meta, [str(p) for p in q_paths], sweep, warnings,
                            [int(i) for i in Qv.ids.tolist()], [float(w) for w in Qv.weights.tolist()])
