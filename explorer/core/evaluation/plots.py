"""Precision-recall plots. Uses ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot,
so it holds no global state and can run in a worker thread of the GUI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import ExplorerError
from .metrics import ModeMetrics
from .report import atomic_path, json_safe

PLOT_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
PNG_DPI = 150
# Fixed dates keep SVG/PDF output reproducible.
_METADATA = {"svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}, "png": {}}


def config_hash(d: dict) -> str:
    """8 hex characters of the SHA-256 of the canonical JSON of ``d``."""
    canon = json.dumps(json_safe(d), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()[:8]


def make_pr_figure(results: Sequence[ModeMetrics], title: str = "", footer: str = "") -> Figure:
    """One interpolated PR curve per mode, legend ``"mode (mAP 0.xxx)"``, axes 0..1, grid."""
    fig = Figure(figsize=(7.0, 5.6))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.11, right=0.97, top=0.92, bottom=0.17 if footer else 0.11)
    ax = fig.add_subplot(1, 1, 1)
    for m in results:
        ax.plot(m.pr_recall, m.pr_precision, linewidth=1.8, label=m.label())
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision (interpolated)")
    ax.grid(True, alpha=0.35)
    if title:
        ax.set_title(title)
    if results:
        ax.legend(loc="lower left")
    if footer:
        fig.text(0.01, 0.015, footer, fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)
    return fig


def plot_pr(results: Sequence[ModeMetrics], out_paths: Sequence[Path], title: str, footer: str) -> list[Path]:
    """Write the PR figure to each path (format from the suffix: .png 150 dpi, .svg, .pdf)."""
    paths = [Path(p) for p in out_paths]
    for p in paths:
        if p.suffix.lower() not in PLOT_FORMATS:
            raise ExplorerError(f"cannot write plot '{p}': unsupported format '{p.suffix}'; use .png, .svg or .pdf")
    fig = make_pr_figure(results, title, footer)
    written = []
    for p in paths:
        fmt = PLOT_FORMATS[p.suffix.lower()]
        with atomic_path(p) as tmp:
            kwargs = {"dpi": PNG_DPI} if fmt == "png" else {}
            fig.savefig(tmp, format=fmt, metadata=_METADATA[fmt], **kwargs)
        written.append(p)
    return written
