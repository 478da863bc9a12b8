"""Learned whitening of global image vectors: fit, apply, persist.

Owns the whitening formulas and their file format. Two fits:

* **PCA-whitening** (unsupervised, ``fit_pca``), fitted on the library's own image vectors:
  ``x -> normalise(diag(l_s)^-1/2 V^T (x - mean))`` with the covariance's eigenvectors ``V``
  and *shrunk* eigenvalues ``l_s = (1 - shrinkage) l + shrinkage mean(l)`` (Ledoit-Wolf-style
  shrinkage towards the mean eigenvalue). Shrinkage keeps the directions a small gallery
  barely sees (a 1280-d vector from a few hundred images: most eigenvalues are ~0) from being
  blown up. ``dim`` keeps the leading components only (smaller index, faster search).
* **Learned whitening** (supervised, ``fit_lw``, Radenović et al.): whiten the within-class
  scatter (images sharing a label should be close), then rotate to the principal axes of the
  whitened between-class scatter. Needs ground-truth labels.

A ``Whitening`` carries a ``stamp`` of what it was fitted on (image model id, kind, number of
vectors, a digest of their ids, shrinkage, dim, time). The library stores it as one ``.npz``
file (written to a temp file, then renamed) and names its image and fused indices after its
``tag``, so a refit rebuilds them. Raw vectors in the database are never changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ExplorerError
from .models.base import l2_normalise

KINDS = ("pca", "lw")
#: fewer vectors than this and no whitening is fitted (the estimate would be noise)
MIN_FIT = 32
#: the library refits automatically once it has this many times the vectors it was fitted on
REFIT_GROWTH = 1.5
FORMAT = "retrieval-explorer/whitening/v1"


@dataclass
class Whitening:
    """``apply(x) = normalise((x - mean) @ proj)``; ``proj`` is (in_dim, out_dim)."""

    mean: np.ndarray
    proj: np.ndarray
    stamp: dict = field(default_factory=dict)

    @property
    def in_dim(self) -> int:
        return int(self.proj.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.proj.shape[1])

    @property
    def kind(self) -> str:
        return str(self.stamp.get("kind", "pca"))

    @property
    def tag(self) -> str:
        """A short name of these parameters (index names carry it, so a refit rebuilds them)."""
        h = hashlib.sha1(self.mean.tobytes() + self.proj.tobytes()).hexdigest()[:10]
        return f"w{self.kind}{self.out_dim}-{h}"

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whiten one vector (d,) or a matrix (n, d); the result is L2-normalised float32."""
        x = np.asarray(x, np.float32)
        if x.shape[-1] != self.in_dim:
            raise ExplorerError(f"whitening expects {self.in_dim}-d vectors, got {x.shape[-1]}-d")
        one = x.ndim == 1
        y = l2_normalise(((x.reshape(-1, self.in_dim) - self.mean) @ self.proj).astype(np.float32))
        return y[0] if one else y

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, mean=self.mean, proj=self.proj, stamp=np.array(json.dumps({"format": FORMAT, **self.stamp})))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Whitening":
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                stamp = json.loads(str(z["stamp"]))
                w = cls(np.asarray(z["mean"], np.float32), np.asarray(z["proj"], np.float32), stamp)
        except (OSError, ValueError, KeyError) as e:
            raise ExplorerError(f"cannot read the whitening file {path}: {e}") from None
        if stamp.get("format") != FORMAT or w.mean.shape != (w.in_dim,):
            raise ExplorerError(f"the whitening file {path} is not a {FORMAT} file")
        return w


def ids_digest(ids) -> str:
    return hashlib.sha1(np.asarray(sorted(int(i) for i in ids), np.int64).tobytes()).hexdigest()[:16]


def _check(x: np.ndarray, dim: int, shrinkage: float) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ExplorerError(f"whitening needs at least 2 vectors, got {len(x)}")
    if not 0.0 <= shrinkage <= 1.0:
        raise ExplorerError(f"whitening shrinkage must be in [0, 1], got {shrinkage}")
    if dim < 0 or dim > x.shape[1]:
        raise ExplorerError(f"whitening dimension must be 0 (all) or at most {x.shape[1]}, got {dim}")
    return x


def _shrunk_inv_sqrt(cov: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending, shrunk) and eigenvectors of a covariance matrix."""
    vals, vecs = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(-vals)
    vals, vecs = np.clip(vals[order], 0.0, None), vecs[:, order]
    vals = (1.0 - shrinkage) * vals + shrinkage * vals.mean()
    floor = max(vals.max(), 1e-12) * 1e-9  # shrinkage 0 on a rank-deficient matrix stays finite
    return np.maximum(vals, floor), vecs


def fit_pca(x: np.ndarray, shrinkage: float = 0.1, dim: int = 0, stamp: dict | None = None) -> Whitening:
    """Unsupervised PCA-whitening of the rows of ``x`` (n, d); ``dim`` 0 keeps all d components."""
    x = _check(x, dim, shrinkage)
    mean = x.mean(0)
    xc = x - mean
    vals, vecs = _shrunk_inv_sqrt(xc.T @ xc / len(x), shrinkage)
    k = dim or x.shape[1]
    proj = vecs[:, :k] / np.sqrt(vals[:k])
    return Whitening(mean.astype(np.float32), proj.astype(np.float32),
                     {"kind": "pca", "n": int(len(x)), "shrinkage": float(shrinkage), "dim": int(k), "fitted_at": time.time(), **(stamp or {})})


def fit_lw(x: np.ndarray, labels, shrinkage: float = 0.1, dim: int = 0, stamp: dict | None = None) -> Whitening:
    """Supervised learned whitening from labels: within-class whitening, then between-class PCA."""
    x = _check(x, dim, shrinkage)
    labels = np.asarray(labels)
    if len(labels) != len(x):
        raise ExplorerError(f"learned whitening: {len(x)} vectors but {len(labels)} labels")
    uniq, inv = np.unique(labels, return_inverse=True)
    if len(uniq) < 2:
        raise ExplorerError("learned whitening needs at least two labels")
    means = np.zeros((len(uniq), x.shape[1]))
    np.add.at(means, inv, x)
    means /= np.bincount(inv)[:, None]
    within = x - means[inv]
    if not np.any(within):
        raise ExplorerError("learned whitening needs some label with at least two images")
    mean = x.mean(0)
    vals, vecs = _shrunk_inv_sqrt(within.T @ within / len(x), shrinkage)
    p1 = vecs / np.sqrt(vals)  # whitens the within-class scatter
    z = (x - mean) @ p1
    bvals, bvecs = np.linalg.eigh(z.T @ z / len(x))
    order = np.argsort(-bvals)
    k = dim or x.shape[1]
    proj = p1 @ bvecs[:, order[:k]]
    return Whitening(mean.astype(np.float32), proj.astype(np.float32),
                     {"kind": "lw", "n": int(len(x)), "labels": int(len(uniq)), "shrinkage": float(shrinkage), "dim": int(k),
                      "fitted_at": time.time(), **(stamp or {})})


def needs_refit(current: Whitening | None, n_now: int, model_id: str, kind: str, dim: int, shrinkage: float) -> str | None:
    """Why the library's whitening should be (re)fitted now, or None if it is fine."""
    if n_now < MIN_FIT:
        return None
    if current is None:
        return "no whitening fitted yet"
    st = current.stamp
    if st.get("model_id") != model_id:
        return "fitted for another image model"
    if st.get("kind") != kind or (dim and int(st.get("dim", 0)) != dim) or (not dim and current.out_dim != current.in_dim):
        return "settings changed"
    if abs(float(st.get("shrinkage", -1)) - shrinkage) > 1e-9:
        return "settings changed"
    n_fit = int(st.get("n", 0))
    if n_now >= REFIT_GROWTH * n_fit:
        return f"the gallery grew from {n_fit} to {n_now} images"
    return None
