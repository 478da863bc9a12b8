"""Headless retrieval evaluation: ground truth, metrics, comparisons, plots, reports.

Pure numpy + matplotlib (Agg, no pyplot); never imports Qt or torch.
"""

from .groundtruth import IMAGE_EXTS, SPEC_FORMS, GroundTruth, GTItem, load_ground_truth
from .metrics import (
    DEFAULT_KS,
    PR_POINTS,
    PR_RECALL,
    DenseRelevance,
    LabelRelevance,
    ModeMetrics,
    PairedComparison,
    alpha_sweep,
    average_precision_from_scores,
    evaluate_embeddings,
    evaluate_scores,
    paired_comparison,
    pr_curve,
    precision_recall_at_k,
    sign_test_p,
)
from .plots import PLOT_FORMATS, config_hash, make_pr_figure, plot_pr
from .report import write_metrics

__all__ = [
    "DEFAULT_KS",
    "IMAGE_EXTS",
    "PLOT_FORMATS",
    "PR_POINTS",
    "PR_RECALL",
    "SPEC_FORMS",
    "DenseRelevance",
    "GTItem",
    "GroundTruth",
    "LabelRelevance",
    "ModeMetrics",
    "PairedComparison",
    "alpha_sweep",
    "average_precision_from_scores",
    "config_hash",
    "evaluate_embeddings",
    "evaluate_scores",
    "load_ground_truth",
    "make_pr_figure",
    "paired_comparison",
    "plot_pr",
    "pr_curve",
    "precision_recall_at_k",
    "sign_test_p",
    "write_metrics",
]
