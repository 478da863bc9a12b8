"""Frozen-backbone features for learned fusion, cached in the library database.

Per ok image the head sees three inputs, none of which needs a model at training time:

* the **global image feature**: the stored ``image`` vector (GeM descriptor, 1280-d);
* the **caption embedding**: the stored ``caption`` vector (384-d with MiniLM) and the
  caption's fusion weight (``fusion.caption_weight``);
* **box features**: RoI-align on the EfficientNet-Lite0 final feature map. The backbone runs
  once on the whole image resized to ``ROI_INPUT`` x ``ROI_INPUT`` (no crop, so every stored
  detection box maps onto the map), each box is RoI-aligned to ``ROI_BINS`` x ``ROI_BINS``
  bins, GeM-pooled (p = 3, as the global descriptor) and L2-normalised. At most
  ``MAX_BOXES`` boxes per image are kept, highest detector score first.

The box features are cached as ``VectorRow(kind="boxes", model_id=box_feature_id(...))``
holding an ``(n, 1280)`` float32 matrix (``n`` may be 0: "computed, nothing detected"), and
their labels, scores and normalised boxes in the small table ``learned_boxes`` (one row per
image and feature id, in the library database). A cache entry is valid
only while the image vector it was computed alongside (its ``seq``) and the detector that
produced the boxes are unchanged, so re-indexed images are recomputed automatically.
Deleting an image deletes both (foreign keys cascade). The table (``store.BoxMetaRow``) lives
with the store, which creates it with the others; this module reads the cache through named
``Catalog`` queries and writes it with ``Store.write_box_features``, and speaks no SQL itself.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from ..errors import BadImage, Cancelled, ExplorerError
from ..imageio import load_image
from ..models.base import Detection
from ..catalog import Catalog
from ..store import BoxMetaRow  # noqa: F401  (the cache's table lives with the store; re-exported)

FEATURE_VERSION = "roi-v1"
MAX_BOXES = 8
ROI_INPUT = 320
ROI_BINS = 3
GEM_P = 3.0
#: Per box geometry handed to the head: x1, y1, x2, y2 (0..1), detector score, sqrt(area).
GEOM_DIM = 6
BOX_DIM = 1280
BATCH = 16


def box_feature_id(image_model_id: str) -> str:
    return f"{image_model_id}/{FEATURE_VERSION}"


def box_support(library) -> tuple[bool, str]:
    """Whether this library's image encoder can make box features, and if not, why."""
    from ..models.effnet import EffNetImageEncoder

    enc = library.image_model
    if isinstance(enc, EffNetImageEncoder):
        return True, ""
    return False, (f"box features need the EfficientNet-Lite0 image encoder (the default); this library uses "
                   f"'{enc.model_id}', so the box term is disabled (train with boxes off)")


def ensure_table(store) -> None:
    store.ensure_box_table()


# ---------------------------------------------------------------------------------------
# computing


@dataclass
class BoxFeatures:
    """Box features of one image: ``feats (n, 1280)``, ``geom (n, GEOM_DIM)``, ``labels`` (n)."""

    feats: np.ndarray
    geom: np.ndarray
    labels: list[str]

    @classmethod
    def empty(cls) -> "BoxFeatures":
        return cls(np.zeros((0, BOX_DIM), np.float32), np.zeros((0, GEOM_DIM), np.float32), [])


def _preprocess_full(images: Sequence[Image.Image]) -> np.ndarray:
    from ..models.effnet import as_rgb, normalise_into

    out = np.empty((len(images), 3, ROI_INPUT, ROI_INPUT), np.float32)
    for i, im in enumerate(images):
        r = as_rgb(im).resize((ROI_INPUT, ROI_INPUT), Image.Resampling.BILINEAR, reducing_gap=2.0)
        normalise_into(out[i], np.asarray(r))
    return out


def select_boxes(dets: Sequence[Detection], width: float, height: float, max_boxes: int = MAX_BOXES):
    """Top boxes by score as ``(labels, scores, boxes01 (n, 4))``; boxes clipped to the image."""
    order = sorted(range(len(dets)), key=lambda i: (-float(dets[i].score), i))[:max_boxes]
    w, h = max(float(width), 1.0), max(float(height), 1.0)
    boxes = np.zeros((len(order), 4), np.float32)
    labels, scores = [], []
    for j, i in enumerate(order):
        x1, y1, x2, y2 = dets[i].box
        b = np.clip(np.array([x1 / w, y1 / h, x2 / w, y2 / h], np.float32), 0.0, 1.0)
        b[2], b[3] = max(b[2], b[0]), max(b[3], b[1])
        boxes[j] = b
        labels.append(str(dets[i].label))
        scores.append(float(dets[i].score))
    return labels, np.asarray(scores, np.float32), boxes


def geometry(boxes01: np.ndarray, scores: np.ndarray) -> np.ndarray:
    boxes01 = np.asarray(boxes01, np.float32).reshape(-1, 4)
    area = np.clip((boxes01[:, 2] - boxes01[:, 0]) * (boxes01[:, 3] - boxes01[:, 1]), 0.0, 1.0)
    return np.concatenate([boxes01, np.asarray(scores, np.float32).reshape(-1, 1), np.sqrt(area)[:, None]], axis=1).astype(np.float32)


class BoxEncoder:
    """Runs the frozen EfficientNet backbone at ``ROI_INPUT`` px and pools the given boxes."""

    def __init__(self, image_encoder):
        from ..models.effnet import EffNetImageEncoder

        if not isinstance(image_encoder, EffNetImageEncoder):
            raise ExplorerError(f"box features need the EfficientNet-Lite0 image encoder, not '{image_encoder.model_id}'")
        self.core = image_encoder.core
        self.feature_id = box_feature_id(image_encoder.model_id)
        self._lock = threading.Lock()

    def encode(self, images: Sequence[Image.Image], boxes01: Sequence[np.ndarray]) -> list[np.ndarray]:
        """For each image, ``(n_i, 1280)`` L2-normalised box features (boxes as 0..1 fractions)."""
        import torch
        from torchvision.ops import roi_align

        out: list[np.ndarray] = []
        for start in range(0, len(images), BATCH):
            ims = list(images[start : start + BATCH])
            bxs = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes01[start : start + BATCH]]
            if not any(len(b) for b in bxs):
                out.extend(np.zeros((0, BOX_DIM), np.float32) for _ in ims)
                continue
            keep = [i for i, b in enumerate(bxs) if len(b)]
            x = torch.from_numpy(_preprocess_full([ims[i] for i in keep])).to(self.core.device)
            with self._lock, torch.inference_mode():
                fmap = self.core.feature_map(x).float()
                rois = [torch.from_numpy(bxs[i] * ROI_INPUT).to(fmap.device) for i in keep]
                pooled = roi_align(fmap, rois, output_size=ROI_BINS, spatial_scale=fmap.shape[-1] / ROI_INPUT,
                                   sampling_ratio=2, aligned=True)
                gem = pooled.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
                gem = torch.nn.functional.normalize(gem, dim=1).cpu().numpy().astype(np.float32)
            counts = {i: len(bxs[i]) for i in keep}
            pos = 0
            for i in range(len(ims)):
                n = counts.get(i, 0)
                out.append(gem[pos : pos + n].copy() if n else np.zeros((0, BOX_DIM), np.float32))
                pos += n
        return out

    def for_query(self, image: Image.Image, detections: Sequence[Detection], max_boxes: int = MAX_BOXES) -> BoxFeatures:
        """Box features of a query image; ``detections`` in pixels of ``image``."""
        labels, scores, boxes = select_boxes(detections, image.width, image.height, max_boxes)
        feats = self.encode([image], [boxes])[0]
        return BoxFeatures(feats, geometry(boxes, scores), labels)


@dataclass
class CacheReport:
    feature_id: str
    computed: int = 0
    cached: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        s = f"box features {self.feature_id}: {self.computed} computed, {self.cached} cached"
        return s + (f", {len(self.failed)} failed (e.g. {self.failed[0][0]}: {self.failed[0][1]})" if self.failed else "")


@dataclass
class _Todo:
    image_id: int
    path: bytes
    size: int
    mtime_ns: int
    seq: int
    detector: str | None


def ensure_box_features(
    library,
    image_ids: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    max_boxes: int = MAX_BOXES,
) -> CacheReport:
    """Compute and store box features for the ok images that lack current ones.

    Only images missing from the cache (or re-indexed since) run the backbone. Images whose
    file changed or vanished since indexing are skipped and listed in ``failed``.
    """
    ok, why = box_support(library)
    if not ok:
        raise ExplorerError(why)
    enc = BoxEncoder(library.image_model)
    store = library.store
    ensure_table(store)
    report = CacheReport(enc.feature_id)
    catalog = Catalog(store)
    seqs, valid, rows = catalog.box_cache_plan(library.image_model.model_id, enc.feature_id, image_ids)
    need = sorted(set(seqs) - valid)
    todo = [_Todo(i, rows[i][0], rows[i][1], rows[i][2], seqs[i], rows[i][3]) for i in need if i in rows]
    report.cached = len(valid)
    total = len(todo)
    if progress:
        progress(0, total)

    def decode(t: _Todo):
        try:
            st = os.stat(t.path)
            if st.st_size != t.size or st.st_mtime_ns != t.mtime_ns:
                return t, None, "file changed since it was indexed: re-index first"
            return t, load_image(t.path), None
        except BadImage as e:
            return t, None, str(e)
        except OSError as e:
            return t, None, f"cannot read file: {e.strerror or e}"

    done = 0
    with ThreadPoolExecutor(2, thread_name_prefix="box-decode") as pool:
        for start in range(0, total, BATCH):
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"box feature computation cancelled after {done} of {total} images (kept)")
            chunk = todo[start : start + BATCH]
            decoded = list(pool.map(decode, chunk))
            ids = [t.image_id for t, li, _ in decoded if li is not None]
            dets: dict[int, list[Detection]] = {i: [Detection(label, score, box) for label, score, box in found]
                                                for i, found in catalog.detections(ids).items()}
            good, sel = [], []
            for t, li, err in decoded:
                if li is None:
                    report.failed.append((os.fsdecode(t.path), err or "unreadable"))
                    continue
                labels, scores, boxes = select_boxes(dets[t.image_id], li.width, li.height, max_boxes)
                good.append((t, li))
                sel.append((labels, scores, boxes))
            feats = enc.encode([li.image for _, li in good], [b for _, _, b in sel])
            _write(store, enc.feature_id, good, sel, feats)
            report.computed += len(good)
            done += len(chunk)
            if progress:
                progress(done, total)
    return report


def _write(store, feature_id, good, sel, feats) -> None:
    import time

    store.write_box_features(feature_id, [
        (t.image_id, t.seq, t.detector, np.ascontiguousarray(f, np.float32).tobytes(), BOX_DIM, len(labels),
         json.dumps(labels), json.dumps([round(float(v), 5) for v in scores]), json.dumps(np.round(boxes, 5).tolist()), time.time())
        for (t, _li), (labels, scores, boxes), f in zip(good, sel, feats)
    ])


# ---------------------------------------------------------------------------------------
# loading


@dataclass
class FeatureSet:
    """Everything the head needs for a set of images, rows ordered by ``ids``."""

    ids: np.ndarray  # (N,) int64
    image: np.ndarray  # (N, Di)
    caption: np.ndarray  # (N, Dt)
    weight: np.ndarray  # (N,) caption fusion weight
    boxes: np.ndarray  # (N, B, 1280) float32, zero where padded (B may be 0)
    box_mask: np.ndarray  # (N, B) True where a real box
    geom: np.ndarray  # (N, B, GEOM_DIM)
    box_labels: list[list[str]]  # per image, the labels of its real boxes

    def __len__(self) -> int:
        return int(self.ids.size)

    def subset(self, rows) -> "FeatureSet":
        rows = np.asarray(rows, np.int64)
        return FeatureSet(self.ids[rows], self.image[rows], self.caption[rows], self.weight[rows], self.boxes[rows],
                          self.box_mask[rows], self.geom[rows], [self.box_labels[i] for i in rows.tolist()])


def load_features(library, image_ids: Sequence[int] | None = None, use_boxes: bool = True,
                  max_boxes: int = MAX_BOXES, compute_missing: bool = True,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: threading.Event | None = None) -> tuple[FeatureSet, CacheReport | None]:
    """Load (computing missing box features first when ``compute_missing``) the features of
    the ok images that have both an image and a caption vector."""
    report = None
    if use_boxes and compute_missing:
        report = ensure_box_features(library, image_ids, progress, cancel, max_boxes)
    gal = library.gallery_vectors(None if image_ids is None else [int(i) for i in image_ids])
    n = len(gal.ids)
    b = max_boxes if use_boxes else 0
    boxes = np.zeros((n, b, BOX_DIM), np.float32)
    mask = np.zeros((n, b), bool)
    geom = np.zeros((n, b, GEOM_DIM), np.float32)
    labels: list[list[str]] = [[] for _ in range(n)]
    if use_boxes and n:
        feature_id = box_feature_id(library.image_model.model_id)
        store = library.store
        ensure_table(store)
        pos = {int(i): j for j, i in enumerate(gal.ids.tolist())}
        metas, vecs = Catalog(store).box_cache_entries(library.image_model.model_id, feature_id, list(pos))
        for iid, data in vecs:
            m = metas.get(iid)
            if m is None:
                continue
            m_n, m_labels, m_scores, m_boxes = m
            f = np.frombuffer(data, np.float32).reshape(-1, BOX_DIM)[:b]
            k = min(len(f), m_n, b)
            if k == 0:
                continue
            j = pos[iid]
            sc = np.asarray(json.loads(m_scores), np.float32)[:k]
            bx = np.asarray(json.loads(m_boxes), np.float32).reshape(-1, 4)[:k]
            boxes[j, :k] = f[:k]
            mask[j, :k] = True
            geom[j, :k] = geometry(bx, sc)
            labels[j] = list(json.loads(m_labels))[:k]
    fs = FeatureSet(gal.ids.astype(np.int64), np.ascontiguousarray(gal.image, np.float32), np.ascontiguousarray(gal.caption, np.float32),
                    gal.weights.astype(np.float32), boxes, mask, geom, labels)
    return fs, report
