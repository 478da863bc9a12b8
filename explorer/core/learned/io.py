"""Saving and loading a fusion head: one safetensors file, no pickle anywhere.

The file holds the head's tensors; its safetensors metadata (a str -> str map in the JSON
header) holds ``format``, ``config`` (the ``HeadConfig`` as JSON: hyper-parameters, the image
and text model ids and dimensions it expects, the box feature id) and ``train`` (what it was
trained on, for display). ``load_head`` refuses, with an ``ExplorerError`` saying why, a
missing file, anything that is not a readable safetensors file of this format, a head whose
models do not match the library's, and a configuration that does not fit its own tensors:
the config is checked against sane bounds and against the tensors' shapes (computed on
torch's ``meta`` device, which allocates nothing) *before* the head is built, so a crafted
file cannot make the loader allocate gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import ExplorerError

#: bounds on a head configuration's sizes (far above anything trained here; far below a memory bomb)
MAX_WIDTH = 16384
MAX_HEADS = 256
MAX_BOXES_BOUND = 256

FORMAT = "retrieval-explorer/learned-fusion"
FORMAT_VERSION = "2"  # 2: the head starts from the α-fused pair (query and gallery vectors differ)
SUFFIX = ".safetensors"


def save_head(head, path: str | os.PathLike, train_info: dict | None = None) -> Path:
    """Write ``head`` (a ``FusionHead``) to ``path`` atomically; returns the resolved path."""
    from safetensors.torch import save_file

    p = Path(path).expanduser()
    if p.suffix != SUFFIX:
        raise ExplorerError(f"a fusion head is saved as a {SUFFIX} file, got '{p.name}'")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExplorerError(f"cannot create folder {p.parent}: {e.strerror or e}") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in head.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(head.cfg.to_dict(), sort_keys=True),
        "train": json.dumps(train_info or {}, sort_keys=True, default=str),
    }
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ExplorerError(f"cannot write {p}: {e.strerror or e}") from None
    return p.resolve()


def read_head_file(path: str | os.PathLike):
    """``(HeadConfig, tensors, metadata)`` of a head file, without checking it against a library."""
    from safetensors import safe_open

    from .head import HeadConfig

    p = Path(path).expanduser()
    if not p.exists():
        raise ExplorerError(f"fusion head file not found: {p}")
    if not p.is_file():
        raise ExplorerError(f"fusion head path is not a file: {p}")
    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for any bad file
        msg = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise ExplorerError(f"{p} is not a readable safetensors fusion head ({msg})") from None
    if meta.get("format") != FORMAT:
        raise ExplorerError(f"{p} is a safetensors file but not a fusion head of Retrieval Explorer (format '{meta.get('format')}')")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ExplorerError(f"{p}: fusion head format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    try:
        cfg = HeadConfig.from_dict(json.loads(meta.get("config", "")))
    except (ValueError, TypeError) as e:
        raise ExplorerError(f"{p}: the head configuration in the file is invalid ({e})") from None
    validate_config(cfg, tensors, str(p))
    return cfg, tensors, meta


def validate_config(cfg, tensors: dict, where: str = "fusion head") -> None:
    """Refuse a configuration outside sane bounds or not matching ``tensors``, allocating nothing."""
    import torch

    from .head import BASES, FusionHead

    def bad(why: str):
        return ExplorerError(f"{where}: the head configuration in the file is invalid ({why})")

    ints = {"image_dim": MAX_WIDTH, "text_dim": MAX_WIDTH, "box_dim": MAX_WIDTH, "geom_dim": MAX_WIDTH,
            "max_boxes": MAX_BOXES_BOUND, "d_model": MAX_WIDTH, "n_heads": MAX_HEADS, "ff_dim": 4 * MAX_WIDTH,
            "n_layers": 16, "out_dim": MAX_WIDTH}
    for name, top in ints.items():
        v = getattr(cfg, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= top:
            raise bad(f"{name} = {v!r}, expected an integer in [1, {top}]")
    if cfg.d_model % cfg.n_heads:
        raise bad(f"d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}")
    if not isinstance(cfg.dropout, (int, float)) or not 0.0 <= cfg.dropout < 1.0:
        raise bad(f"dropout = {cfg.dropout!r}, expected a number in [0, 1)")
    if not isinstance(cfg.use_caption, bool):
        raise bad("use_caption must be true or false")
    if cfg.base not in BASES:
        raise bad(f"base = {cfg.base!r}, expected one of {', '.join(BASES)}")
    for name in ("alpha", "token_dropout"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise bad(f"{name} = {v!r}, expected a number in [0, 1]")
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in FusionHead(cfg).state_dict().items()}
    except (RuntimeError, ValueError, TypeError, AssertionError) as e:
        raise bad(str(e).splitlines()[0][:200]) from None
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if set(shapes) != set(got):
        diff = sorted(set(shapes) ^ set(got))[:3]
        raise ExplorerError(f"{where}: the tensors do not match the head configuration (tensors {diff} missing or unexpected)")
    wrong = [k for k in shapes if shapes[k] != got[k]]
    if wrong:
        k = wrong[0]
        raise ExplorerError(f"{where}: the tensors do not match the head configuration ({k}: file has {list(got[k])}, "
                            f"the configuration needs {list(shapes[k])})")


def build_head(cfg, tensors, where: str = "file"):
    from .head import FusionHead

    try:
        head = FusionHead(cfg)
        head.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0][:200]
        raise ExplorerError(f"{where}: the tensors do not match the head configuration ({first})") from None
    head.eval()
    return head


def check_compatible(cfg, library, where: str = "fusion head") -> None:
    """Refuse a head trained on other backbones than the library's."""
    from .features import box_feature_id, box_support

    im, tx = library.image_model, library.text_model
    problems = []
    if cfg.image_model_id != im.model_id or cfg.image_dim != library.image_dim:  # image_dim: after whitening
        problems.append(f"image encoder {cfg.image_model_id} ({cfg.image_dim}-d), library has {im.model_id} ({library.image_dim}-d)")
    if cfg.text_model_id != tx.model_id or cfg.text_dim != tx.dim:
        problems.append(f"text encoder {cfg.text_model_id} ({cfg.text_dim}-d), library has {tx.model_id} ({tx.dim}-d)")
    if cfg.use_boxes and not problems:
        ok, why = box_support(library)
        if not ok:
            problems.append(why)
        elif cfg.box_feature_id != box_feature_id(im.model_id):
            problems.append(f"box features {cfg.box_feature_id}, this version makes {box_feature_id(im.model_id)}")
    if problems:
        raise ExplorerError(f"{where} was trained for other models: " + "; ".join(problems) + ". Retrain it on this library")


def load_head(path: str | os.PathLike, library=None):
    """Load a head; with ``library``, also check it was trained for the library's models.

    The returned ``FusionHead`` (eval mode) carries ``source_path``, ``fingerprint`` (sha256
    of the file, e.g. to name an index of its vectors) and ``train_info`` (dict).
    """
    p = Path(path).expanduser()
    cfg, tensors, meta = read_head_file(p)
    head = build_head(cfg, tensors, str(p))
    if library is not None:
        check_compatible(cfg, library, f"the fusion head {p.name}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    head.source_path = str(p.resolve())
    head.fingerprint = h.hexdigest()
    try:
        head.train_info = json.loads(meta.get("train", "{}"))
    except ValueError:
        head.train_info = {}
    return head
