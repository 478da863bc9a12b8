"""Write a labelled Fashion-MNIST gallery (PNG files in one folder per class).

Debian's ``fashion-mnist`` package installs the original idx files under
``/usr/share/datasets/fashion-mnist``. Used by the learned-fusion experiment; nothing else
depends on it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ExplorerError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt-top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ExplorerError(f"cannot read Fashion-MNIST file {path}: {e}") from None
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def write_fashion_mnist(out: str | Path, per_class: int = 200, split: str = "t10k", source: str | Path = DEFAULT_SOURCE) -> Path:
    """The first ``per_class`` images of each class of ``split`` as ``out/<class>/<index>.png`` (idempotent)."""
    source = Path(source)
    images = _read_idx(source / f"{split}-images-idx3-ubyte.gz")
    labels = _read_idx(source / f"{split}-labels-idx1-ubyte.gz")
    out = Path(out)
    for c, name in enumerate(CLASSES):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            p = d / f"{split}-{i:05d}.png"
            if not p.exists():
                Image.fromarray(images[i]).save(p)
    return out
