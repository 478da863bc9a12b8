"""Writing evaluation results: JSON (everything) or CSV (summary + per-query AP). Atomic writes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ExplorerError
from .compare import PairedComparison
from .metrics import ModeMetrics


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplorerError(f"cannot write {path}: {e.strerror or e}") from None
    # A unique name created by the writer itself, so the file gets the usual (umask) mode.
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        raise ExplorerError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
    return Path(path)


def json_safe(obj: Any) -> Any:
    """Recursively convert to JSON-safe values: NaN/inf -> None, numpy -> Python, Path -> str."""
    if isinstance(obj, (ModeMetrics, PairedComparison)):
        return json_safe(obj.to_dict())
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict"):
        return json_safe(obj.to_dict())
    return str(obj)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return str(v)


def write_metrics(
    results: Sequence[ModeMetrics],
    comparisons: Mapping[str, Any] | None,
    path: Path,
    meta: Mapping[str, Any] | None,
    query_paths: Sequence,
) -> list[Path]:
    """Write results by suffix; returns the files written.

    ``.json``: ``meta``, per-mode summary, per-query AP per mode, ``comparisons`` and
    ``alpha_sweep`` (taken from ``meta["alpha_sweep"]`` when present, a list of
    ``(alpha, mAP)``). ``.csv``: one row per mode x metric (plus comparison rows), and
    ``<stem>_per_query.csv`` with the query path and the AP of each mode.
    """
    path = Path(path)
    comparisons = dict(comparisons or {})
    meta = dict(meta or {})
    queries = [os.fspath(q) for q in query_paths]
    for m in results:
        if len(m.ap) != len(queries):
            raise ValueError(f"mode '{m.mode}' has {len(m.ap)} APs for {len(queries)} query paths")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return [_write_json(results, comparisons, path, meta, queries)]
    if suffix == ".csv":
        return _write_csv(results, comparisons, path, queries)
    raise ExplorerError(f"cannot write metrics to '{path}': unsupported format '{path.suffix}'; use .json or .csv")


def _write_json(results, comparisons, path, meta, queries) -> Path:
    sweep = meta.pop("alpha_sweep", None)
    doc: dict[str, Any] = {
        "meta": json_safe(meta),
        "modes": {m.mode: m.to_dict(per_query=False) for m in results},
        "per_query": [
            {"query": q, "ap": {m.mode: json_safe(float(m.ap[i])) for m in results}} for i, q in enumerate(queries)
        ],
        "comparisons": json_safe(comparisons),
    }
    if sweep is not None:
        doc["alpha_sweep"] = [{"alpha": json_safe(float(a)), "map": json_safe(float(v))} for a, v in sweep]
    text = json.dumps(json_safe(doc), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def _csv_text(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    return buf.getvalue()


def _write_csv(results, comparisons, path, queries) -> list[Path]:
    rows: list[list[Any]] = [["mode", "metric", "value"]]
    for m in results:
        rows.append([m.mode, "map", float(m.map)])
        rows.append([m.mode, "n_queries", m.n_queries])
        rows.append([m.mode, "n_queries_without_relevant", m.n_queries_without_relevant])
        for k, v in m.precision_at_k.items():
            rows.append([m.mode, f"P@{k}", float(v)])
        for k, v in m.recall_at_k.items():
            rows.append([m.mode, f"R@{k}", float(v)])
    for name, c in comparisons.items():
        d = json_safe(c)
        for key in ("mean_diff", "ci95", "sign_test_p", "wins", "losses", "ties", "n_pairs"):
            if key not in d:
                continue
            if key == "ci95":
                rows.append([name, "ci95_low", d[key][0]])
                rows.append([name, "ci95_high", d[key][1]])
            else:
                rows.append([name, key, d[key]])
    per_q: list[list[Any]] = [["query"] + [f"ap_{m.mode}" for m in results]]
    for i, q in enumerate(queries):
        per_q.append([q] + [float(m.ap[i]) for m in results])
    second = path.with_name(f"{path.stem}_per_query.csv")
    return [atomic_write_text(path, _csv_text(rows)), atomic_write_text(second, _csv_text(per_q))]
