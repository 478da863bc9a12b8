"""Query latency and ANN quality at 10k / 100k (and optionally 1M) gallery images.

In one process this script

1. **warm end-to-end query latency**: for each gallery size it writes a synthetic library
   straight into the database (``ImageRow``/``CaptionRow``/``DetectionRow``/``VectorRow`` with
   SQLAlchemy bulk inserts), builds the three hnswlib indices (image 1280-d, caption 384-d,
   fused 1664-d) from the vectors ``Library`` reads for a sync, with the library's M and
   ef_construction but 2 insert threads (the caption index, full of identical vectors, with 1
   thread as in the app), saves them with their manifests, then opens the folder
   as a fresh ``Library`` + ``Searcher`` (whose consistency check loads the files and must find
   nothing to repair) and runs a real photo (scikit-image's ``coffee.png``) through the real
   offline models and the whole search path: decode, detect, caption, encode (model time) and
   ANN, re-score, rank, alpha-QE rerank (retrieval time). Median and p90 over ``--queries`` warm
   queries (after ``--warmup`` untimed ones), interleaved round-robin over the gallery sizes so
   that load from other processes falls on every size alike. Each size is queried by two
   searchers on the same library, interleaved: **after**, the app's ``Searcher`` (candidates
   re-scored from the in-memory gallery, ``explorer.core.gallery_arrays``; no SQL per query),
   and **before**, ``SqlPathSearcher`` below: the search path as it was before the in-memory
   gallery (candidate vectors from hnswlib ``get_items`` after live-id filtering, metadata and
   caption weights from SQLite per query). The before variant shares the query preparation of the
   after one, so it omits the old path's two SQL look-ups of the query's path and content hash in
   ``prepare`` (about a millisecond: it flatters *before* slightly). The in-memory gallery's load
   time, array bytes and resident-memory delta are reported, and the largest float32 - float16
   score difference over the held-out queries;
2. **hnswlib recall@10 against exact brute force** on the same indices: 200 held-out vectors
   from the same distribution, ef in (16, 32, 64, 128, 256, 512), recall@10 and per-query time,
   the smallest ef reaching recall@10 >= 0.99 and what ``index.DEFAULT_EF`` achieves;
3. with ``--million``: a 1M-vector hnswlib index (same M / ef_construction) against exact numpy
   search of one query (``X @ q`` + ``argpartition``), at the smallest ef giving recall@10 >= 0.95,
   and the resident memory of the index loaded from disk in a fresh subprocess (VmRSS delta).
   The dimension is 1280 (the image index's) unless memory is short or the build, projected
   from its first 50k inserts, would exceed ``--million-budget`` minutes (later in the build:
   1.5x that); then it starts again at 384-d (the caption index's) and says so;
4. a Markdown summary table for the README.

Synthetic data (see ``Mixture``): a two-level Gaussian mixture (60 object categories, ~100
images per fine cluster, Dirichlet cluster sizes) in a 128-d latent space with a decaying
spectrum, embedded in d dimensions, plus a shared offset direction (GeM features are all
positive, so real image embeddings share a large mean component: the offset is the mean
direction of the real encoder's embeddings of the scikit-image photos) and isotropic noise.
The parameters were chosen so that, on 600 vectors, the statistics are close to the real
encoder's embeddings of 600 Fashion-MNIST images (real: mean pairwise cosine 0.54, mean
nearest-neighbour cosine 0.82, 10th-neighbour 0.75, participation-ratio dimension 32; synthetic:
about 0.50, 0.75, 0.69, 27-34); the script prints them.
Caption vectors are *real* MiniLM embeddings of structured-captioner captions (composed with
``structured_captioner.compose`` from synthetic detections, ImageNet labels and colours); a
fine cluster draws its images' captions from a few captions of its category, so identical
captions (and hence identical caption vectors) recur, as they do with the structured captioner.

    .venv/bin/python bench/query_latency.py --quick               # 10k only, smoke test
    .venv/bin/python bench/query_latency.py                       # 10k and 100k
    .venv/bin/python bench/query_latency.py --sizes 10000,100000 --million --json /tmp/qlat.json
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

QUERY_PHOTO = "coffee.png"
EF_SWEEP = (16, 32, 64, 128, 256, 512)
RECALL_QUERIES = 200
RECALL_K = 10
RECALL_TARGET = 0.99
MILLION = 1_000_000
MILLION_RECALL_TARGET = 0.95
MILLION_SPEEDUP_TARGET = 50.0
#: 1M build budget (minutes): a 1280-d build projected to take longer falls back to 384-d.
MILLION_BUDGET_MIN = 25.0
N_CATEGORIES = 60
STAGES_MODEL = ("decode", "detect", "caption", "encode")
STAGES_RETRIEVAL = ("ann", "rescore", "rank", "rerank")
#: the rest of preparing an image query: matching it to a library image (path, content hash) and
#: the caption sources that need no model (metadata, file name), re-embedding the joined caption
STAGES_OTHER = ("caption_sources",)
#: targets of issue 12 for a warm query at 100k images
TARGET_WALL_OVER_MODEL = 1.3
TARGET_RESCORE_META_MS = 10.0
COCO = ("person", "bicycle", "car", "motorcycle", "bus", "truck", "boat", "bird", "cat", "dog", "horse", "sheep", "cow",
        "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "skis", "kite",
        "skateboard", "surfboard", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
        "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
        "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear")
COLOURS = ("black", "white", "grey", "red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown")
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
                  "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "brick.png", "grass.png", "gravel.png", "coins.png",
                  "camera.png", "horse.png", "cell.png")

T_START = time.monotonic()


def log(msg: str) -> None:
    el = time.monotonic() - T_START
    print(f"[{int(el // 60):3d}:{int(el % 60):02d}] {msg}", flush=True)


def fmt_s(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def vm_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mem_available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return float("nan")


def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float("nan")


# ---------------------------------------------------------------------------------------------
# synthetic data


class Mixture:
    """Two-level Gaussian mixture of unit vectors (see the module docstring).

    ``sample`` draws images (and their fine cluster and category) from the same fixed
    clusters, so vectors drawn later are held-out samples of the same distribution.
    """

    def __init__(self, dim: int, n_clusters: int, offset: np.ndarray | None, seed: int, n_cat: int = N_CATEGORIES,
                 rank: int = 128, a: float = 1.7, s_cat: float = 1.0, s_fine: float = 0.6, s_item: float = 0.9,
                 s_iso: float = 0.9):
        rng = np.random.default_rng(seed)
        self.dim, self.rank, self.a, self.s_item, self.s_iso = dim, rank, a, s_item, s_iso
        if offset is None:  # a positive direction, as for GeM features
            offset = np.abs(rng.standard_normal(dim))
        self.offset = (np.asarray(offset, np.float64) / np.linalg.norm(offset)).astype(np.float32)
        self.P = np.linalg.qr(rng.standard_normal((dim, rank)))[0].T.astype(np.float32)  # rank x dim, orthonormal rows
        spec = (np.arange(rank) + 1.0) ** -0.5
        self.spec = (spec / np.sqrt((spec ** 2).sum())).astype(np.float32)
        cat_c = rng.standard_normal((n_cat, rank)) * self.spec
        self.cluster_cat = rng.integers(0, n_cat, n_clusters)
        self.centres = (cat_c[self.cluster_cat] * s_cat + rng.standard_normal((n_clusters, rank)) * self.spec * s_fine).astype(np.float32)
        self.weights = rng.dirichlet(np.full(n_clusters, 1.0))

    def sample(self, n: int, rng: np.random.Generator, chunk: int = 50_000, progress: str | None = None):
        out = np.empty((n, self.dim), np.float32)
        clusters = rng.choice(len(self.centres), n, p=self.weights)
        for s in range(0, n, chunk):
            c = clusters[s:s + chunk]
            lat = self.centres[c] + rng.standard_normal((len(c), self.rank), dtype=np.float32) * (self.spec * self.s_item)
            x = lat @ self.P
            x += self.a * self.offset
            x += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(self.s_iso / math.sqrt(self.dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:s + len(c)] = x
            if progress and (s // chunk) % 4 == 3:
                log(f"{progress}: generated {s + len(c):,}/{n:,} vectors")
        return out, clusters, self.cluster_cat[clusters]


def neighbourhood_stats(x: np.ndarray, n: int = 2000) -> dict:
    """Statistics of a sample, to compare with real embeddings (see the module docstring)."""
    v = np.asarray(x[:n], np.float64)
    s = v @ v.T
    iu = np.triu_indices(len(v), 1)
    np.fill_diagonal(s, -9)
    srt = -np.sort(-s, axis=1)
    ev = np.linalg.eigvalsh(np.cov(v.T))
    return {"n": len(v), "mean_pair_cos": round(float(s[iu].mean()), 3), "nn1_cos": round(float(srt[:, 0].mean()), 3),
            "nn10_cos": round(float(srt[:, 9].mean()), 3), "pr_dim": round(float(ev.sum() ** 2 / (ev ** 2).sum()), 1)}


class CaptionBank:
    """Distinct structured captions per category, embedded once with the real text encoder."""

    def __init__(self, loader, n_proto: int, seed: int):
        from explorer.core.models.base import ClassScore, Detection
        from explorer.core.models.structured_captioner import compose

        rng = np.random.default_rng(seed + 7)
        imagenet = list(loader.get("classifier", "effnet-classifier").core.labels)
        cat_labels = [[imagenet[j] for j in rng.choice(len(imagenet), 3, replace=False)] for _ in range(N_CATEGORIES)]
        self.texts: list[str] = []
        self.conf: list[float] = []
        self.dets: list[list[tuple]] = []  # (label, score, box) in a 640 x 480 image
        self.cat: list[int] = []
        seen = set()
        tries = 0
        while len(self.texts) < n_proto and tries < n_proto * 50:
            tries += 1
            c = len(self.texts) % N_CATEGORIES
            dets = []
            if rng.random() < 0.8:
                for j in range(1 + int(rng.random() < 0.25)):
                    w, h = rng.uniform(40, 600), rng.uniform(40, 460)
                    x, y = rng.uniform(0, 640 - w), rng.uniform(0, 480 - h)
                    dets.append(Detection(COCO[c], float(rng.uniform(0.45, 0.99)), (x, y, x + w, y + h)))
                if rng.random() < 0.3:
                    dets.append(Detection(COCO[rng.integers(len(COCO))], float(rng.uniform(0.4, 0.9)), (0.0, 0.0, 320.0, 240.0)))
            labels = [ClassScore(lab, float(rng.uniform(0.05, 0.6))) for lab in rng.permutation(cat_labels[c])[: rng.integers(0, 4)]]
            colours = list(rng.choice(COLOURS, rng.integers(1, 4), replace=False))
            text, conf = compose(dets, labels, colours, 640, 480)
            if text in seen:
                continue
            seen.add(text)
            self.texts.append(text)
            self.conf.append(conf)
            self.dets.append([(d.label, d.score, d.box) for d in dets])
            self.cat.append(c)
        self.cat_arr = np.array(self.cat)
        text_enc = loader.get("text")
        t0 = time.perf_counter()
        vecs = []
        for s in range(0, len(self.texts), 128):
            vecs.append(np.asarray(text_enc.embed_texts(self.texts[s:s + 128]), np.float32))
            if (s // 128) % 5 == 4:
                log(f"caption bank: embedded {s + 128:,}/{len(self.texts):,} distinct captions")
        self.vecs = np.concatenate(vecs)
        self.embed_s = time.perf_counter() - t0
        log(f"caption bank: {len(self.texts):,} distinct captions embedded with {text_enc.model_id} in {fmt_s(self.embed_s)}")

    def assign(self, clusters: np.ndarray, cluster_cat: np.ndarray, n_proto: int, rng: np.random.Generator, per_cluster: int = 5):
        """One caption prototype per image: each fine cluster draws from a few captions of its category."""
        by_cat = [np.flatnonzero(self.cat_arr[:n_proto] == c) for c in range(N_CATEGORIES)]
        table = np.array([rng.choice(by_cat[c], per_cluster) for c in cluster_cat], np.int64)
        return table[clusters, rng.integers(0, per_cluster, len(clusters))]


# ---------------------------------------------------------------------------------------------
# the synthetic library


def write_library(lib, img: np.ndarray, proto: np.ndarray, bank: CaptionBank, cats: np.ndarray, rng, model_ids: dict,
                  chunk: int = 10_000) -> float:
    """Bulk-insert ``len(img)`` images with captions, detections and vectors; returns seconds."""
    from sqlalchemy import insert

    from explorer.core.store import CaptionRow, DetectionRow, ImageRow, VectorRow

    n = len(img)
    agreement = rng.beta(2.0, 3.0, n)
    cap_bytes = [v.tobytes() for v in bank.vecs]
    t0 = time.perf_counter()
    now = time.time()
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        images, caps, dets, vecs = [], [], [], []
        for i in range(s, e):
            iid = i + 1
            p = int(proto[i])
            folder = f"/synthetic/gallery/{COCO[cats[i]].replace(' ', '_')}"
            path = f"{folder}/img_{iid:07d}.jpg"
            images.append({"id": iid, "path_key": path.encode(), "path": path, "folder": folder, "size": 100_000 + iid,
                           "mtime_ns": 1_700_000_000_000_000_000 + iid, "content_hash": f"{iid:032x}", "width": 640,
                           "height": 480, "status": "ok", "error": None, "indexed_at": now,
                           "caption_agreement": float(agreement[i]), "detector_model": model_ids["detector"]})
            caps.append({"image_id": iid, "text": bank.texts[p], "source": "generated", "model_id": model_ids["captioner"],
                         "confidence": bank.conf[p], "created_at": now})
            for label, score, (x1, y1, x2, y2) in bank.dets[p]:
                dets.append({"image_id": iid, "model_id": model_ids["detector"], "label": label, "score": score,
                             "x1": x1, "y1": y1, "x2": x2, "y2": y2})
            vecs.append({"image_id": iid, "kind": "image", "model_id": model_ids["image"], "dim": img.shape[1],
                         "data": img[i].tobytes(), "seq": 2 * iid - 1})
            vecs.append({"image_id": iid, "kind": "caption", "model_id": model_ids["text"], "dim": bank.vecs.shape[1],
                         "data": cap_bytes[p], "seq": 2 * iid})
        with lib.store.Session.begin() as sess:
            sess.execute(insert(ImageRow), images)
            sess.execute(insert(CaptionRow), caps)
            if dets:
                sess.execute(insert(DetectionRow), dets)
            sess.execute(insert(VectorRow), vecs)
        if (s // chunk) % 5 == 4 or e == n:
            log(f"  db: {e:,}/{n:,} images written")
    return time.perf_counter() - t0


def build_indices(lib, threads: int) -> dict:
    """Build the three indices exactly as ``VectorIndex.sync`` would (same vectors through
    ``Library._changed``, same ``_new`` parameters, same manifest), but inserting with
    ``threads`` threads instead of ``upsert``'s one, then save index + manifest.

    The caption index is built with one thread, as the app builds it: it holds many identical
    vectors (repeated captions), and parallel insertion of duplicates leaves its graph worse
    connected (more k=200 searches that find fewer than 200 vectors) than sequential insertion."""
    out = {}
    for mode in ("image", "caption", "fused"):
        vi = lib.index(mode)
        threads_m = 1 if mode == "caption" else threads
        t0 = time.perf_counter()
        ids, vecs, high = lib._changed(mode)(0)[:3]  # (the image and caption readers also return what they refused)
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        idx = vi._new(len(ids))
        step = 20_000
        for s in range(0, len(ids), step):
            idx.add_items(np.ascontiguousarray(vecs[s:s + step], np.float32), ids[s:s + step], num_threads=threads_m)
            if len(ids) > step and (s // step) % 2 == 1:
                log(f"  {mode} index ({vecs.shape[1]}-d): {min(len(ids), s + step):,}/{len(ids):,} inserted")
        t_build = time.perf_counter() - t0
        with vi.lock:
            vi.index = idx
            vi.manifest.seq_high = int(high)
            vi.manifest.deleted = []
            vi._live = set(ids.tolist())  # what VectorIndex keeps in step with its inserts
            vi.dirty = True
        vi.save()
        out[mode] = {"dim": int(vecs.shape[1]), "n": int(len(ids)), "read_s": t_read, "build_s": t_build, "threads": threads_m,
                     "file_mib": vi.path.stat().st_size / 2 ** 20, "ids": ids, "vecs": vecs}
        log(f"  {mode} index: {len(ids):,} x {vecs.shape[1]}-d built in {fmt_s(t_build)} ({threads_m} thread{'s' if threads_m > 1 else ''}; "
            f"reading the vectors from the db {fmt_s(t_read)}), file {out[mode]['file_mib']:.0f} MiB")
    return out


# ---------------------------------------------------------------------------------------------
# the search path before the in-memory gallery (for the before/after comparison)


def sql_path_searcher(lib, after):
    """A ``Searcher`` whose candidate pool is gathered as before ``gallery_arrays`` (commit ba63c9c):
    ANN ids filtered by the indices' live-id sets, vectors from hnswlib ``get_items``, metadata and
    caption weights read from SQLite (``Catalog.result_meta``) for every query. It shares ``after``'s
    in-memory gallery only for ``prepare`` (see the module docstring) and is not opened again."""
    from dataclasses import dataclass, replace

    from explorer.core import fusion
    from explorer.core.catalog import Catalog
    from explorer.core.search import POOL_MIN, CandidatePool, Hit, Searcher

    @dataclass
    class SqlPool(CandidatePool):
        meta: dict = None

        def hit(self, rank, j, score):
            i = int(self.ids[j])
            m = self.meta[i]
            return Hit(rank, i, m["path"], score, m["caption"], m["source"], m["detections"], m["w"], m["h"])

    class SqlPathSearcher(Searcher):
        def candidate_pool(self, pq, k):
            t0 = time.perf_counter()
            pool_k = max(POOL_MIN, 4 * k)
            ids: set[int] = set()
            img_idx, cap_idx, fused_idx = self.lib.index("image"), self.lib.index("caption"), self.lib.index("fused")
            ids.update(img_idx.search(pq.image_vec, pool_k)[0].tolist())
            ids.update(cap_idx.search(pq.caption_vec, pool_k)[0].tolist())
            ids.update(fused_idx.search(fusion.fuse_query(pq.image_vec, pq.caption_vec, self.lib.fused_index_alpha, self.lib.shared_space), pool_k)[0].tolist())
            if pq.library_id is None:
                self_id = Catalog(self.lib.store).image_id(pq.self_path) if pq.self_path else None
                agreement = self.lib.query_agreement(pq.image_vec, pq.caption_vec, set() if self_id is None else {self_id})
                pq = replace(pq, caption_weight=fusion.caption_weight(pq.caption.source, pq.caption.confidence, agreement))
            t_ann = time.perf_counter() - t0
            t0 = time.perf_counter()
            live_img, live_cap = img_idx.live_ids(), cap_idx.live_ids()
            id_arr = np.array([i for i in sorted(ids) if i in live_img and i in live_cap], np.int64)
            gi, gc = img_idx.get_vectors(id_arr), cap_idx.get_vectors(id_arr)
            meta = {}
            for i, m in Catalog(self.lib.store).result_meta(id_arr.tolist()).items():
                c = m["caption"]
                meta[i] = {"path": m["path"], "w": m["w"], "h": m["h"], "caption": c.text if c else "", "source": c.source if c else "",
                           "weight": fusion.caption_weight(c.source, c.confidence, m["agreement"]) if c else 0.0,
                           "detections": [{"label": lab, "score": round(sc, 4), "box": [round(v, 1) for v in box]}
                                          for lab, sc, box in m["detections"]]}
            weights = np.array([meta[i]["weight"] for i in id_arr.tolist()], np.float32)
            cos_img, cos_cap = gi @ pq.image_vec, gc @ pq.caption_vec
            excluded = np.array([meta[i]["path"] == pq.self_path or i == pq.library_id for i in id_arr.tolist()], bool)
            t_db = time.perf_counter() - t0
            return SqlPool(id_arr, gi, gc, cos_img, cos_cap, weights, None, None, excluded, pq,
                           {"ann": t_ann, "rescore": t_db}, meta=meta)

    old = SqlPathSearcher(lib)
    old._gallery = after._gallery  # prepare's library look-up of the query (see the docstring)
    old.repairs, old.opened = [], True
    return old


# ---------------------------------------------------------------------------------------------
# measurements


def exact_topk(gallery: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows (and scores) by inner product, chunked over the gallery."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for s in range(0, len(gallery), chunk):
        sc = queries @ gallery[s:s + chunk].T
        kk = min(k, sc.shape[1])
        part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], 1)
        best_i = np.concatenate([best_i, part + s], 1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1), np.take_along_axis(best_s, order, 1)


def tie_aware_recall(gallery: np.ndarray, queries: np.ndarray, ann_rows: np.ndarray, kth_score: np.ndarray, k: int) -> float:
    """Fraction of the ANN top-k whose exact score reaches the exact k-th score (so that among
    identical vectors, e.g. repeated captions, any of them counts as a correct neighbour)."""
    hits = 0
    for q, rows, th in zip(queries, ann_rows, kth_score):
        rows = rows[rows >= 0]
        if len(rows):
            hits += min(k, int(((gallery[rows] @ q) >= th - 1e-5).sum()))
    return hits / (k * len(queries))


def exact_single_query_ms(gallery: np.ndarray, queries: np.ndarray, k: int, reps: int) -> list[float]:
    """What a brute-force search of one query costs: ``X @ q`` and ``argpartition`` top-k."""
    out = []
    for q in queries[:reps]:
        t0 = time.perf_counter()
        s = gallery @ q
        top = np.argpartition(-s, k - 1)[:k]
        top = top[np.argsort(-s[top])]
        out.append((time.perf_counter() - t0) * 1000)
    return out


def ef_sweep(index, queries: np.ndarray, k: int, efs) -> dict[int, tuple[np.ndarray, list[float], int]]:
    """Labels of single-query, single-thread knn_query calls (as the app makes them), their times and
    how many calls failed (hnswlib raises when the graph search finds fewer than k vectors, which
    happens with many identical vectors; such a query's labels stay -1)."""
    for q in queries[:20]:  # warm the caches
        index.set_ef(max(efs[-1], k))
        index.knn_query(q.reshape(1, -1), k=1, num_threads=1)
    out = {}
    for ef in efs:
        index.set_ef(max(ef, k))
        labels = np.full((len(queries), k), -1, np.int64)
        times, failed = [], 0
        for j, q in enumerate(queries):
            t0 = time.perf_counter()
            try:
                lab, _ = index.knn_query(q.reshape(1, -1), k=k, num_threads=1)
            except RuntimeError:
                failed += 1
                continue
            times.append((time.perf_counter() - t0) * 1000)
            labels[j] = lab[0]
        out[ef] = (labels, times, failed)
    return out


def recall_study(name: str, built: dict, queries: np.ndarray, vi, default_ef: int, exact_reps: int = 30) -> dict:
    """recall@10 and per-query time of one library index against exact search, over the ef sweep."""
    ids, gal = built["ids"], built["vecs"]
    exact_rows, exact_scores = exact_topk(gal, queries, RECALL_K)
    row_of = {int(i): r for r, i in enumerate(ids.tolist())}
    sweep = ef_sweep(vi.index, queries, RECALL_K, EF_SWEEP)
    res = {"dim": int(gal.shape[1]), "n": int(len(ids)), "ef": {}}
    for ef, (labels, times, failed) in sweep.items():
        rows = np.vectorize(lambda x: row_of.get(int(x), -1), otypes=[np.int64])(labels)
        rec = tie_aware_recall(gal, queries, rows, exact_scores[:, -1], RECALL_K)
        res["ef"][ef] = {"recall": rec, "ms_median": pct(times, 50), "ms_p90": pct(times, 90), "errors": failed}
    ex = exact_single_query_ms(gal, queries, RECALL_K, exact_reps)
    res["exact_ms_median"] = pct(ex, 50)
    ok = [ef for ef in EF_SWEEP if res["ef"][ef]["recall"] >= RECALL_TARGET]
    res["min_ef_099"] = ok[0] if ok else None
    # the app's own call: k = POOL_MIN (200) candidates, ef = max(DEFAULT_EF, k); recall@10 within them
    from explorer.core.search import POOL_MIN

    # (a query that raises counts as finding nothing: in the app the search fails)
    vi.index.set_ef(max(default_ef, POOL_MIN))
    hit, failed = 0, 0
    for q, th in zip(queries, exact_scores[:, -1]):
        try:
            lab, _ = vi.index.knn_query(q.reshape(1, -1), k=POOL_MIN, num_threads=1)
        except RuntimeError:
            failed += 1
            continue
        rows = np.array([row_of.get(int(x), -1) for x in lab[0]], np.int64)
        hit += min(RECALL_K, int(((gal[rows[rows >= 0]] @ q) >= th - 1e-5).sum()))
    res["app_pool_recall10"] = hit / (RECALL_K * len(queries))
    res["app_pool_errors"] = failed
    vi.index.set_ef(vi.ef)
    log(f"  recall@10 {name} index ({res['dim']}-d, {res['n']:,}): " + ", ".join(
        f"ef {ef}: {rc(v['recall'])} ({v['ms_median']:.2f} ms)" for ef, v in res["ef"].items())
        + f"; exact numpy {res['exact_ms_median']:.2f} ms/query; app pool (k={POOL_MIN}, ef={max(default_ef, POOL_MIN)}) "
        f"recall@10 {rc(res['app_pool_recall10'])}"
        + (f"; hnswlib RuntimeError ('Cannot return the results in a contiguous 2D array') on {failed}/{len(queries)} "
           f"k={POOL_MIN} queries" if failed else "")
        + "".join(f"; {v['errors']} errors at ef {ef}" for ef, v in res["ef"].items() if v["errors"]))
    return res


def time_queries(searchers: list, query_path: str, n_warm: int, n_timed: int) -> list[dict]:
    """Warm queries, interleaved round-robin over the libraries (alternating the order each round),
    so that load from other processes on a shared machine falls on every gallery size alike."""
    from explorer.core.search import MODES, QuerySpec

    spec = QuerySpec(image=query_path)
    rows: list[list[dict]] = [[] for _ in searchers]
    errors = [0 for _ in searchers]
    for j in range(n_warm + n_timed):
        order = list(range(len(searchers)))
        if j % 2:
            order.reverse()
        for si in order:
            searcher = searchers[si]
            alpha = searcher.lib.fused_index_alpha
            t0 = time.perf_counter()
            pq = searcher.prepare(spec)
            try:
                pool = searcher.candidate_pool(pq, 10)
            except RuntimeError as e:  # hnswlib found fewer than k (see ef_sweep): the app's search fails
                errors[si] += 1
                log(f"  [{searcher.lib.store.count_images():,}] the search raised: {e}")
                continue
            res_aqe = searcher.rank_all(pq, pool, MODES, 10, alpha, "aqe")
            wall = time.perf_counter() - t0
            res = searcher.rank_all(pq, pool, MODES, 10, alpha, "none")  # rank alone, outside the wall-clock
            t = dict(res.timings)
            t["rerank"] = max(0.0, res_aqe.timings["rank"] - t["rank"])
            t["wall"] = wall
            t["pool"] = len(pool.ids)
            t.setdefault("caption_sources", 0.0)
            if j >= n_warm:
                rows[si].append(t)
            elif j == 0:
                top = res_aqe.modes["fused"].hits[0] if res_aqe.modes["fused"].hits else None
                log(f"  [{searcher.lib.store.count_images():,}] query caption: {pq.caption.text!r}; "
                    f"fused top-1: {top.caption if top else None!r}")
        if j >= n_warm and (j - n_warm) % 5 == 4:
            log(f"  {j - n_warm + 1}/{n_timed} timed rounds")
    outs = []
    for r, err in zip(rows, errors):
        if not r:
            raise RuntimeError(f"every query failed ({err} errors)")
        out = {"errors": err}
        for key in STAGES_MODEL + STAGES_OTHER + STAGES_RETRIEVAL + ("wall",):
            xs = [x[key] * 1000 for x in r]
            out[key] = {"median": pct(xs, 50), "p90": pct(xs, 90)}
        for group, keys in (("model", STAGES_MODEL), ("retrieval", STAGES_RETRIEVAL), ("rescore_meta", ("rescore", "rank"))):
            xs = [sum(x[k] for k in keys) * 1000 for x in r]
            out[group] = {"median": pct(xs, 50), "p90": pct(xs, 90)}
        xs = [x["wall"] / sum(x[k] for k in STAGES_MODEL) for x in r]  # each query's end to end over its own model time
        out["wall_over_model"] = {"median": pct(xs, 50), "p90": pct(xs, 90)}
        out["pool_size"] = int(np.median([x["pool"] for x in r]))
        out["n"] = len(r)
        outs.append(out)
    return outs


def ann_breakdown(searcher, query_path: str, reps: int = 20) -> dict:
    """Where the 'ann' and 'db_fetch' stages go: raw hnswlib calls vs the VectorIndex.search wrapper
    (and its live-id bookkeeping: ``len(self)``, ``live_ids()``), hnswlib ``get_items`` and SQLite."""
    from explorer.core import fusion
    from explorer.core.search import POOL_MIN, QuerySpec

    lib = searcher.lib
    pq = searcher.prepare(QuerySpec(image=query_path))
    qs = {"image": pq.image_vec, "caption": pq.caption_vec,
          "fused": fusion.fuse_query(pq.image_vec, pq.caption_vec, lib.fused_index_alpha, lib.shared_space)}
    out = {}
    for mode, q in qs.items():
        vi = lib.index(mode)
        raw, wrapped, live = [], [], []
        for _ in range(reps):
            vi.index.set_ef(max(vi.ef, POOL_MIN))
            t0 = time.perf_counter()
            vi.index.knn_query(np.asarray(q, np.float32).reshape(1, -1), k=POOL_MIN, num_threads=1)
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            vi.search(q, POOL_MIN)
            wrapped.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            vi.live_ids()
            live.append(time.perf_counter() - t0)
        out[mode] = {"knn_ms": pct(raw, 50) * 1000, "search_ms": pct(wrapped, 50) * 1000, "live_ids_ms": pct(live, 50) * 1000}
    # the old 'db_fetch' stage (vectors from hnswlib, metadata from SQLite) against the new 'rescore'
    # stage (rows of the in-memory gallery)
    from explorer.core.catalog import Catalog

    pool = searcher.candidate_pool(pq, 10)
    ids = pool.ids
    gal = searcher.gallery()
    gi, gc_, meta, fancy, hits = [], [], [], [], []
    img_idx, cap_idx = lib.index("image"), lib.index("caption")
    for _ in range(max(5, reps // 2)):
        t0 = time.perf_counter()
        img_idx.index.get_items(ids)
        gi.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        cap_idx.index.get_items(ids)
        gc_.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        Catalog(lib.store).result_meta(ids.tolist())
        meta.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gal.vectors(gal.rows(ids))
        fancy.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        [pool.hit(r, j, 0.0) for r, j in enumerate(range(min(10, len(ids))), 1)]
        hits.append(time.perf_counter() - t0)
    out["pool"] = {"n": int(len(ids)), "get_items_image_ms": pct(gi, 50) * 1000, "get_items_caption_ms": pct(gc_, 50) * 1000,
                   "fetch_meta_ms": pct(meta, 50) * 1000, "arrays_gather_ms": pct(fancy, 50) * 1000,
                   "arrays_hits10_ms": pct(hits, 50) * 1000}
    # the 'ann' stage makes 5 VectorIndex.search calls (3 pools + image and caption again for the query's
    # caption agreement); the old 'db_fetch' stage also built the image and caption live-id sets
    im, cp, fu = (out[m]["live_ids_ms"] for m in ("image", "caption", "fused"))
    out["live_ids_in_ann_ms"] = 2 * im + 2 * cp + fu
    out["live_ids_in_db_fetch_ms"] = im + cp
    return out


def search_path_recall(searcher, held_img, held_cap, held_proto, bank: CaptionBank, n_queries: int) -> dict:
    """recall@10 of the app's own search path (candidate pool from the three indices, exact re-scoring,
    default settings) against exact scoring of the whole gallery, per mode, for held-out queries."""
    from explorer.core.models.base import Caption
    from explorer.core.search import PreparedQuery, QuerySpec

    lib = searcher.lib
    gal = lib.gallery_vectors()
    alpha = lib.fused_index_alpha
    out = {m: [] for m in ("image", "caption", "fused")}
    errors: list[str] = []
    fp16_err = 0.0  # largest |float32 score - float16 score| of a candidate (gallery vectors stored as float16)
    for j in range(min(n_queries, len(held_img))):
        p = int(held_proto[j])
        cap = Caption(bank.texts[p], "generated", "structured-v1", bank.conf[p])
        pq = PreparedQuery(QuerySpec(image="held-out"), held_img[j], cap, held_cap[j], 0.0)
        try:
            pool = searcher.candidate_pool(pq, 10)  # pool.query has the caption weight from the query's agreement
        except RuntimeError as e:  # hnswlib found fewer than k (see ef_sweep): the app's search fails
            errors.append(str(e))
            for mode in out:
                out[mode].append(0.0)
            continue
        f16 = max(np.abs(pool.gi.astype(np.float16).astype(np.float32) @ held_img[j] - pool.cos_img).max(),
                  np.abs(pool.gc.astype(np.float16).astype(np.float32) @ held_cap[j] - pool.cos_cap).max())
        fp16_err = max(fp16_err, float(f16))
        ci, cc = gal.image @ held_img[j], gal.caption @ held_cap[j]
        b = np.clip(alpha * pool.query.caption_weight * gal.weights, 0.0, 1.0)
        exact = {"image": ci, "caption": cc, "fused": (1.0 - b) * ci + b * cc}
        for mode in out:
            th = np.partition(-exact[mode], RECALL_K - 1)[RECALL_K - 1] * -1
            hits = searcher.rank(pq, pool, mode, RECALL_K, alpha).hits
            out[mode].append(min(RECALL_K, sum(h.score >= th - 1e-5 for h in hits)) / RECALL_K)
    res = {m: float(np.mean(v)) for m, v in out.items()}
    res["errors"] = len(errors)
    res["float16_max_err"] = fp16_err
    if errors:
        log(f"  search path: {len(errors)}/{len(out['image'])} held-out queries failed in candidate_pool: {errors[0]}")
    return res


def build_size(n: int, args, loader, bank: CaptionBank, offset: np.ndarray, work: Path) -> dict:
    """Write the synthetic library of ``n`` images, build its indices and open a Searcher on it."""
    from explorer.core.config import Settings
    from explorer.core.library import Library
    from explorer.core.search import Searcher

    log(f"=== gallery size {n:,} ===")
    rng = np.random.default_rng(args.seed + n)
    n_clusters = max(N_CATEGORIES, n // 100)
    mix = Mixture(1280, n_clusters, offset, seed=args.seed + 1)
    t0 = time.perf_counter()
    img_all, clusters_all, cats_all = mix.sample(n + RECALL_QUERIES, rng)
    n_proto = min(len(bank.texts), max(500, n // 30))
    proto_all = bank.assign(clusters_all, mix.cluster_cat, n_proto, rng)
    stats = neighbourhood_stats(img_all[:n], 600)
    log(f"  synthetic image vectors: {n_clusters:,} fine clusters in {N_CATEGORIES} categories, {n_proto:,} distinct captions; "
        f"generated in {fmt_s(time.perf_counter() - t0)}; sample of 600: mean pair cos {stats['mean_pair_cos']}, "
        f"nn1 cos {stats['nn1_cos']}, nn10 cos {stats['nn10_cos']}, PR-dim {stats['pr_dim']}")
    lib_dir = work / f"lib-{n}"
    settings = Settings(library=str(lib_dir))
    ctx = {"n": n, "dir": lib_dir, "held_img": img_all[n:], "held_proto": proto_all[n:],
           "out": {"n": n, "stats": stats, "distinct_captions": n_proto}}
    out = ctx["out"]
    writer = Library(lib_dir, settings, loader=loader)
    try:
        model_ids = {r: loader.get(r).model_id for r in ("image", "text", "captioner", "detector")}
        out["db_write_s"] = write_library(writer, img_all[:n], proto_all[:n], bank, cats_all[:n], rng, model_ids)
        log(f"  database written in {fmt_s(out['db_write_s'])} ({(lib_dir / 'library.sqlite').stat().st_size / 2 ** 20:.0f} MiB)")
        ctx["built"] = build_indices(writer, args.threads)
    finally:
        writer.store.close()
        del writer
        gc.collect()
    out["build"] = {m: {k: v for k, v in b.items() if k not in ("ids", "vecs")} for m, b in ctx["built"].items()}
    # a fresh Library on the same folder, as the app would open it: its consistency check loads the
    # index files from disk and must find nothing to add or remove
    ctx["lib"] = lib = Library(lib_dir, settings, loader=loader)
    gc.collect()
    rss0 = vm_rss_mib()
    t0 = time.perf_counter()
    ctx["searcher"] = Searcher(lib).open()  # runs Library.check() (loads and syncs the indices), reads the gallery
    out["open_s"] = time.perf_counter() - t0
    out["open_rss_mib"] = vm_rss_mib() - rss0
    if ctx["searcher"].repairs:
        raise RuntimeError(f"the consistency check had to repair the bench-built indices: {ctx['searcher'].repairs}")
    ga = ctx["searcher"].gallery()
    # the in-memory gallery alone: a second copy loaded and measured, then dropped
    from explorer.core.gallery_arrays import GalleryArrays

    gc.collect()
    rss1 = vm_rss_mib()
    extra = GalleryArrays.load(lib)
    out["arrays"] = {"n": len(ga), "load_s": extra.load_s, "vectors_s": extra.timings["vectors_s"], "meta_s": extra.timings["meta_s"],
                     "nbytes_mib": extra.nbytes / 2 ** 20, "vectors_mib": (extra.image.nbytes + extra.caption.nbytes) / 2 ** 20,
                     "rss_mib": vm_rss_mib() - rss1, "load_in_open_s": ga.load_s}
    del extra
    gc.collect()
    a = out["arrays"]
    log(f"  Searcher opened in {fmt_s(out['open_s'])} (consistency check: nothing to repair; VmRSS +{out['open_rss_mib']:.0f} MiB); "
        f"in-memory gallery: {a['n']:,} images read in {fmt_s(a['load_s'])} (vectors {fmt_s(a['vectors_s'])}, metadata "
        f"{fmt_s(a['meta_s'])}), numpy arrays {a['nbytes_mib']:.0f} MiB (vectors {a['vectors_mib']:.0f} MiB), VmRSS +{a['rss_mib']:.0f} MiB")
    ctx["before"] = sql_path_searcher(lib, ctx["searcher"])
    return ctx


def finish_size(ctx: dict, args, bank: CaptionBank, query_path: str) -> dict:
    """Stage breakdowns, the recall study and the search-path recall of one library; then remove it."""
    from explorer.core import fusion
    from explorer.core import index as index_mod

    n, lib, searcher, out = ctx["n"], ctx["lib"], ctx["searcher"], ctx["out"]
    log(f"=== gallery size {n:,}: stage breakdown and recall ===")
    try:
        out["ann_breakdown"] = ab = ann_breakdown(searcher, query_path)
        pl = ab["pool"]
        log(f"  pool of {pl['n']} candidates: before: get_items image {pl['get_items_image_ms']:.1f} ms + caption "
            f"{pl['get_items_caption_ms']:.1f} ms, metadata from SQLite {pl['fetch_meta_ms']:.1f} ms, live-id sets "
            f"{ab['live_ids_in_db_fetch_ms']:.1f} ms; after: in-memory gather of both vectors {pl['arrays_gather_ms']:.2f} ms, "
            f"10 hits' metadata {pl['arrays_hits10_ms']:.2f} ms")
        log("  ann stage: " + ", ".join(f"{m}: knn_query {ab[m]['knn_ms']:.2f} ms, VectorIndex.search {ab[m]['search_ms']:.2f} ms, "
                                        f"live_ids {ab[m]['live_ids_ms']:.2f} ms" for m in ("image", "caption", "fused"))
            + f"; live-id sets in the ann stage {ab['live_ids_in_ann_ms']:.1f} ms per query")

        # recall on the same indices, 200 held-out queries from the same distribution
        held_img, held_proto = ctx["held_img"], ctx["held_proto"]
        held_cap = bank.vecs[held_proto]
        held_fused = np.stack([fusion.fuse_query(a, b, lib.fused_index_alpha, False) for a, b in zip(held_img, held_cap)])
        out["recall"] = {}
        for mode, q in (("image", held_img), ("caption", held_cap), ("fused", held_fused)):
            out["recall"][mode] = recall_study(mode, ctx["built"][mode], q, lib.index(mode), index_mod.DEFAULT_EF)
        ctx.pop("built")
        t0 = time.perf_counter()
        out["search_path_recall"] = sp = search_path_recall(searcher, held_img, held_cap, held_proto, bank, args.path_queries)
        log(f"  search-path recall@10 (candidate pool + exact re-score, {args.path_queries} held-out queries): "
            + ", ".join(f"{m} {rc(sp[m])}" for m in ("image", "caption", "fused"))
            + f"; float16 gallery vectors would move a score by at most {sp['float16_max_err']:.2e} ({fmt_s(time.perf_counter() - t0)})")
    finally:
        close_size(ctx)
    return out


def close_size(ctx: dict) -> None:
    if ctx.get("closed"):
        return
    ctx["closed"] = True
    ctx.pop("built", None)
    ctx.pop("before", None)
    searcher = ctx.pop("searcher", None)
    if searcher is not None:
        searcher.close()
    lib = ctx.pop("lib", None)
    if lib is not None:
        lib.store.close()  # not Library.close(): that would save the indices again, for nothing
    del lib
    shutil.rmtree(ctx["dir"], ignore_errors=True)
    gc.collect()


# ---------------------------------------------------------------------------------------------
# 1M vectors


def ann_worker(spec_json: str) -> int:
    """Runs in a fresh process: load the saved index, measure VmRSS, sweep ef over the queries."""
    import hnswlib

    spec = json.loads(spec_json)
    queries = np.load(spec["queries"])
    gc.collect()
    before = vm_rss_mib()
    t0 = time.perf_counter()
    idx = hnswlib.Index(space="ip", dim=spec["dim"])
    idx.load_index(spec["index"], max_elements=0)
    load_s = time.perf_counter() - t0
    after = vm_rss_mib()
    sweep = ef_sweep(idx, queries, spec["k"], spec["efs"])
    np.savez(spec["out"], **{f"labels_{ef}": lab for ef, (lab, _, _) in sweep.items()},
             **{f"times_{ef}": np.array(t) for ef, (_, t, _) in sweep.items()})
    print(json.dumps({"rss_before_mib": before, "rss_after_mib": after, "load_s": load_s,
                      "rss_after_queries_mib": vm_rss_mib()}), flush=True)
    return 0


def build_million(x: np.ndarray, dim: int, threads: int, budget_min: float, abort_if_over: bool, label: str):
    """Insert ``x`` into a new index with the library's M / ef_construction. Returns (index, seconds)
    or (None, projected_seconds) when the projected build time exceeds the budget."""
    import hnswlib

    from explorer.core.index import EF_CONSTRUCTION, M

    idx = hnswlib.Index(space="ip", dim=dim)
    idx.init_index(max_elements=len(x), ef_construction=EF_CONSTRUCTION, M=M)
    n = len(x)
    pilot, step = 50_000, 50_000
    t0 = time.perf_counter()
    last_t, last_n = t0, 0
    s = 0
    while s < n:
        e = min(n, s + step)
        idx.add_items(x[s:e], np.arange(s, e, dtype=np.int64), num_threads=threads)
        now = time.perf_counter()
        el = now - t0
        recent = (e - last_n) / max(now - last_t, 1e-9)
        last_t, last_n = now, e
        # insertion slows as the graph grows, roughly with log(n)
        proj = el + (n - e) / recent * (math.log(n) / math.log(max(e, 2)))
        log(f"  {label}: {e:,}/{n:,} inserted, {recent:,.0f} vectors/s, elapsed {fmt_s(el)}, projected total {fmt_s(proj)}")
        if abort_if_over and ((e == pilot and proj > budget_min * 60) or (e > pilot and proj > 1.5 * budget_min * 60)):
            return None, proj
        s = e
    return idx, time.perf_counter() - t0


def run_million(args, work: Path, offsets: dict) -> dict:
    from explorer.core.index import DEFAULT_EF, EF_CONSTRUCTION, M

    N = args.million_n

    log(f"=== {N:,} vectors (hnswlib M={M}, ef_construction={EF_CONSTRUCTION}, {args.threads} build threads) ===")
    out: dict = {"n": N, "attempts": []}
    dims = [1280, 384] if args.million_dim == "auto" else [int(args.million_dim)]
    for attempt, dim in enumerate(dims):
        need_gib = N * dim * 4 * 2.2 / 2 ** 30
        avail = mem_available_gib()
        if args.million_dim == "auto" and dim == 1280 and avail < need_gib + 2:
            msg = f"1280-d needs ~{need_gib:.1f} GiB, only {avail:.1f} GiB available"
            log(f"  skipping 1280-d: {msg}")
            out["attempts"].append({"dim": dim, "result": "skipped", "why": msg})
            continue
        rng = np.random.default_rng(args.seed + 99 + dim)
        mix = Mixture(dim, N // 100, offsets.get(dim), seed=args.seed + 3 + dim)
        t0 = time.perf_counter()
        x, _, _ = mix.sample(N + RECALL_QUERIES, rng, progress=f"{N:,} x {dim}-d")
        queries = np.ascontiguousarray(x[N:])
        x = x[:N]
        log(f"  {N:,} x {dim}-d float32 generated in {fmt_s(time.perf_counter() - t0)} ({x.nbytes / 2 ** 30:.2f} GiB); "
            f"sample of 600: {neighbourhood_stats(x, 600)}")
        last = attempt == len(dims) - 1
        idx, secs = build_million(x, dim, args.threads, args.million_budget, abort_if_over=not last, label=f"{N:,} x {dim}-d")
        if idx is None:
            msg = f"projected build time {fmt_s(secs)} exceeds the {args.million_budget:.0f}-minute budget"
            log(f"  giving up on {dim}-d: {msg}; falling back to {dims[attempt + 1]}-d")
            out["attempts"].append({"dim": dim, "result": "abandoned", "why": msg})
            del x, queries
            gc.collect()
            continue
        out["attempts"].append({"dim": dim, "result": "built", "build_s": secs})
        out["dim"], out["build_s"] = dim, secs
        log(f"  built in {fmt_s(secs)}")
        path = work / f"million-{dim}.hnsw"
        t0 = time.perf_counter()
        idx.save_index(str(path))
        out["file_gib"] = path.stat().st_size / 2 ** 30
        out["raw_gib"] = x.nbytes / 2 ** 30
        log(f"  saved in {fmt_s(time.perf_counter() - t0)}: {out['file_gib']:.2f} GiB on disk (raw vectors {out['raw_gib']:.2f} GiB)")
        del idx
        gc.collect()

        log("  exact search: ground truth for 200 queries, then single-query timing ...")
        exact_rows, exact_scores = exact_topk(x, queries, RECALL_K)
        ex = exact_single_query_ms(x, queries, RECALL_K, args.exact_reps)
        out["exact_ms_median"], out["exact_ms_p90"] = pct(ex, 50), pct(ex, 90)
        log(f"  exact numpy (X @ q + argpartition, BLAS threads as configured): median {out['exact_ms_median']:.1f} ms, "
            f"p90 {out['exact_ms_p90']:.1f} ms")

        qpath, rpath = work / "million-queries.npy", work / "million-ann.npz"
        np.save(qpath, queries)
        efs = list(EF_SWEEP) + [1024]
        spec = {"index": str(path), "dim": dim, "queries": str(qpath), "out": str(rpath), "k": RECALL_K, "efs": efs}
        log("  loading the index in a fresh process (VmRSS delta) and sweeping ef ...")
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--ann-worker", json.dumps(spec)],
                              capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"ANN worker failed: {proc.stderr[-2000:]}")
        w = json.loads(proc.stdout.strip().splitlines()[-1])
        out["rss_delta_gib"] = (w["rss_after_mib"] - w["rss_before_mib"]) / 1024
        out["load_s"] = w["load_s"]
        log(f"  index resident memory: {out['rss_delta_gib']:.2f} GiB (VmRSS {w['rss_before_mib']:.0f} -> {w['rss_after_mib']:.0f} MiB), "
            f"loaded in {fmt_s(w['load_s'])}")
        res = np.load(rpath)
        out["ef"] = {}
        for ef in efs:
            rec = tie_aware_recall(x, queries, res[f"labels_{ef}"], exact_scores[:, -1], RECALL_K)
            times = res[f"times_{ef}"]
            out["ef"][ef] = {"recall": rec, "ms_median": pct(times, 50), "ms_p90": pct(times, 90),
                             "speedup": out["exact_ms_median"] / pct(times, 50)}
            log(f"  ef {ef:4d}: recall@10 {rc(rec)}, ANN {pct(times, 50):.3f} ms (p90 {pct(times, 90):.3f}), "
                f"speed-up over exact {out['ef'][ef]['speedup']:.0f}x")
        ok = [ef for ef in efs if out["ef"][ef]["recall"] >= MILLION_RECALL_TARGET]
        out["ef_095"] = ok[0] if ok else None
        ok99 = [ef for ef in efs if out["ef"][ef]["recall"] >= RECALL_TARGET]
        out["ef_099"] = ok99[0] if ok99 else None
        out["default_ef"] = DEFAULT_EF
        del x, queries
        gc.collect()
        for p in (path, qpath, rpath):
            p.unlink(missing_ok=True)
        return out
    raise RuntimeError("no 1M build was possible (see the messages above)")


# ---------------------------------------------------------------------------------------------
# report


def ms(v: float) -> str:
    if v != v:
        return "-"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def rc(x: float) -> str:
    """A recall rounded down to 3 decimals, so that e.g. 0.9895 does not print as 0.990 (>= 0.99)."""
    return f"{math.floor(x * 1000 + 1e-9) / 1000:.3f}"


def markdown(results: dict) -> str:
    from explorer.core.index import DEFAULT_EF, EF_CONSTRUCTION, M

    sizes = results["sizes"]
    lines = []
    if sizes:
        head = " | ".join(f"{s['n'] // 1000}k {v}" for s in sizes for v in ("before", "after"))
        lines.append(f"**Warm query latency** ({QUERY_PHOTO}, real offline models, 3 modes, k=10; ms, median / p90 "
                     f"over {sizes[0]['latency']['n']} queries; {results['cpus']} CPU cores, shared machine; *before*: "
                     f"candidates re-scored from hnswlib vectors with metadata from SQLite per query, *after*: from the "
                     f"in-memory gallery; the two interleaved on the same library in one run)\n")
        lines.append(f"| stage | {head} |")
        lines.append("|---|" + "---|" * (2 * len(sizes)))
        names = {"decode": "decode", "detect": "detect (SSD-MobileNetV2)", "caption": "caption (structured)",
                 "encode": "encode (EffNet-Lite0 + MiniLM)", "model": "**model time**",
                 "caption_sources": "library match + metadata / file-name captions (re-embeds the joined caption)",
                 "ann": "ANN (3 indices + 2 agreement look-ups)", "rescore": "candidate vectors, weights + exact re-score",
                 "rank": "rank (3 modes) + hits' metadata", "rescore_meta": "**re-score + metadata**",
                 "rerank": "rerank aqe (extra)", "retrieval": "**retrieval time**",
                 "wall": "**end to end (with aqe)**", "wall_over_model": "**end to end ÷ model time** (per query)"}
        for key in ("decode", "detect", "caption", "encode", "model", "caption_sources", "ann", "rescore", "rank", "rescore_meta",
                    "rerank", "retrieval", "wall", "wall_over_model"):
            fmt = (lambda v: f"{v:.2f}") if key == "wall_over_model" else ms
            cells = " | ".join(f"{fmt(s[lk][key]['median'])} / {fmt(s[lk][key]['p90'])}" for s in sizes
                               for lk in ("latency_before", "latency"))
            lines.append(f"| {names[key]} | {cells} |")
        lines.append("")
        lines.append("**In-memory gallery** (float32; read when the searcher opens and whenever the library's change counter moves)\n")
        lines.append("| size | images | read in (vectors + metadata) | numpy arrays (of which vectors) | VmRSS delta | "
                     "max float16 score error (candidates of the held-out queries) |")
        lines.append("|---|---|---|---|---|---|")
        for s in sizes:
            a = s["arrays"]
            lines.append(f"| {s['n'] // 1000}k | {a['n']:,} | {fmt_s(a['load_s'])} ({fmt_s(a['vectors_s'])} + {fmt_s(a['meta_s'])}) | "
                         f"{a['nbytes_mib']:.0f} MiB ({a['vectors_mib']:.0f} MiB) | {a['rss_mib']:.0f} MiB | "
                         f"{s['search_path_recall']['float16_max_err']:.1e} |")
        lines.append("")
        lines.append(f"**hnswlib recall@10 vs exact search** (M={M}, ef_construction={EF_CONSTRUCTION}; {RECALL_QUERIES} held-out "
                     f"queries; single query, 1 thread; recall / ms per query)\n")
        cols = [(s, m) for s in sizes for m in ("image", "caption", "fused")]
        lines.append("| ef | " + " | ".join(f"{s['n'] // 1000}k {m} ({s['recall'][m]['dim']}-d)" for s, m in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for ef in EF_SWEEP:
            mark = " (default)" if ef == DEFAULT_EF else ""
            lines.append(f"| {ef}{mark} | " + " | ".join(
                f"{rc(s['recall'][m]['ef'][ef]['recall'])} / {ms(s['recall'][m]['ef'][ef]['ms_median'])}" for s, m in cols) + " |")
        lines.append("| exact numpy | " + " | ".join(f"1.000 / {ms(s['recall'][m]['exact_ms_median'])}" for s, m in cols) + " |")
        lines.append("| min ef for >= 0.99 | " + " | ".join(str(s['recall'][m]['min_ef_099'] or "> 512") for s, m in cols) + " |")
        lines.append("| app pool (k=200, ef=200) | " + " | ".join(
            rc(s['recall'][m]['app_pool_recall10']) + (f" ({s['recall'][m].get('app_pool_errors')} of {RECALL_QUERIES} queries raised)"
                                                       if s['recall'][m].get('app_pool_errors') else "") for s, m in cols) + " |")
        lines.append("| search path (pool of 3 indices + exact re-score) | " + " | ".join(
            rc(s['search_path_recall'][m]) + (f" ({s['search_path_recall']['errors']} failed)" if s['search_path_recall'].get('errors') else "")
            for s, m in cols) + " |")
        lines.append("")
    mil = results.get("million")
    if mil:
        lines.append(f"**{mil['n']:,} vectors, {mil['dim']}-d** (synthetic mixture, 200 held-out queries; M={M}, ef_construction={EF_CONSTRUCTION}; "
                     f"ANN: one query, 1 thread, k=10; exact: `X @ q` + `argpartition`)\n")
        lines.append("| | |")
        lines.append("|---|---|")
        lines.append(f"| build, {results['args'].get('threads', '2')} threads | {fmt_s(mil['build_s'])} |")
        lines.append(f"| index file / resident after loading (VmRSS delta, fresh process) / raw float32 vectors | "
                     f"{mil['file_gib']:.2f} / {mil['rss_delta_gib']:.2f} / {mil['raw_gib']:.2f} GiB |")
        lines.append(f"| exact numpy search, one query | {ms(mil['exact_ms_median'])} ms (p90 {ms(mil['exact_ms_p90'])}) |")
        tags: dict[int, list[str]] = {}
        for ef, tag in ((mil["ef_095"], "smallest with recall@10 >= 0.95"), (DEFAULT_EF, "default"),
                        (mil.get("ef_099"), "smallest with recall@10 >= 0.99")):
            if ef is not None:
                tags.setdefault(ef, []).append(tag)
        for ef in sorted(tags):
            v = mil["ef"][ef]
            lines.append(f"| ANN ef={ef} ({', '.join(tags[ef])}) | recall@10 {rc(v['recall'])}, {ms(v['ms_median'])} ms "
                         f"(p90 {ms(v['ms_p90'])}), **{v['speedup']:.0f}x** faster than exact |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000", help="gallery sizes, comma-separated (default 10000,100000)")
    ap.add_argument("--million", action="store_true", help="also build and measure a 1M-vector index")
    ap.add_argument("--million-dim", default="auto", help="dimension at 1M: auto (1280 unless the build is projected over "
                    "--million-budget minutes or memory is short, then 384), or a number")
    ap.add_argument("--million-n", type=int, default=MILLION, help=argparse.SUPPRESS)  # smaller, to test the code path
    ap.add_argument("--million-budget", type=float, default=MILLION_BUDGET_MIN, help="minutes (default 25)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 10k only, fewer distinct captions")
    ap.add_argument("--queries", type=int, default=25, help="timed warm queries per size (default 25)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--path-queries", type=int, default=50, help="held-out queries through the search path (default 50)")
    ap.add_argument("--threads", type=int, default=2, help="hnsw build threads (default 2)")
    ap.add_argument("--exact-reps", type=int, default=20, help="single-query exact searches timed at 1M")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, help="where the temporary libraries and index files go")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--ann-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.ann_worker:
        return ann_worker(args.ann_worker)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.quick:
        sizes = [10_000]
    if args.queries < 20:
        log(f"note: {args.queries} timed queries (fewer than 20) make the p90 rough")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below on kill
    work = Path(tempfile.mkdtemp(prefix="query-latency-", dir=args.tmp))
    results: dict = {"cpus": len(os.sched_getaffinity(0)), "sizes": [], "args": {k: str(v) for k, v in vars(args).items()}}
    log(f"work dir {work}; sizes {sizes}; 1M: {args.million}; {results['cpus']} CPUs; {mem_available_gib():.1f} GiB available")
    try:
        offsets: dict = {}
        if sizes:
            from explorer.core.config import Settings
            from explorer.core.imageio import load_image
            from explorer.core.models.registry import ModelLoader
            from explorer.core.samples import skimage_data_dir

            t0 = time.perf_counter()
            loader = ModelLoader(Settings())
            for role in ("detector", "captioner", "image", "text"):
                loader.get(role)
            log(f"models loaded in {fmt_s(time.perf_counter() - t0)}: " + ", ".join(loader.get(r).model_id for r in ("detector", "captioner", "image", "text")))
            src = skimage_data_dir()
            query_path = str(src / QUERY_PHOTO)
            photos = [load_image(src / p).image for p in SKIMAGE_PHOTOS if (src / p).is_file()]
            emb = np.asarray(loader.get("image").embed_images(photos), np.float32)
            offsets[1280] = emb.mean(0)
            n_proto = 600 if args.quick else min(3000, max(500, max(sizes) // 30))
            bank = CaptionBank(loader, n_proto, args.seed)
            offsets[384] = bank.vecs.mean(0)
            results["caption_bank"] = {"distinct": len(bank.texts), "embed_s": bank.embed_s}
            ctxs = []
            try:
                for n in sizes:
                    ctxs.append(build_size(n, args, loader, bank, offsets[1280], work))
                log(f"=== warm query latency: {args.warmup} warm-up + {args.queries} timed rounds with {QUERY_PHOTO}, "
                    f"interleaved over {', '.join(format(c['n'], ',') for c in ctxs)} ===")
                lats = time_queries([c[v] for c in ctxs for v in ("searcher", "before")], query_path, args.warmup, args.queries)
                for j, ctx in enumerate(ctxs):
                    ctx["out"]["latency"], ctx["out"]["latency_before"] = lats[2 * j], lats[2 * j + 1]
                    for name, lat in (("after", lats[2 * j]), ("before", lats[2 * j + 1])):
                        log(f"  {ctx['n']:,} {name}: " + ", ".join(f"{k} {lat[k]['median']:.1f}" for k in STAGES_MODEL + STAGES_RETRIEVAL)
                            + f" ms (medians); model {lat['model']['median']:.0f} ms, retrieval {lat['retrieval']['median']:.1f} ms, "
                            f"wall {lat['wall']['median']:.0f} ms, wall / model {lat['wall_over_model']['median']:.2f}; "
                            f"candidate pool {lat['pool_size']} images")
                for ctx in ctxs:
                    results["sizes"].append(finish_size(ctx, args, bank, query_path))
            finally:
                for ctx in ctxs:
                    close_size(ctx)
        if args.million:
            results["million"] = run_million(args, work, offsets)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(markdown(results))
    from explorer.core.index import DEFAULT_EF

    for s in results["sizes"]:
        r = s["recall"]["image"]
        print(f"{s['n']:,}: image index recall@10 at the default ef={DEFAULT_EF}: {rc(r['ef'][DEFAULT_EF]['recall'])}; "
              f"smallest ef with recall@10 >= {RECALL_TARGET}: {r['min_ef_099'] or 'not reached within the sweep'}; "
              f"ann stage ({s['latency']['ann']['median']:.1f} ms): live-id sets ~{s['ann_breakdown']['live_ids_in_ann_ms']:.1f} ms, "
              f"raw knn_query ~{sum(s['ann_breakdown'][m]['knn_ms'] for m in ('image', 'caption', 'fused')):.1f} ms (3 pools); "
              f"before, the re-score stage ({s['latency_before']['rescore']['median']:.0f} ms): hnswlib get_items "
              f"~{s['ann_breakdown']['pool']['get_items_image_ms'] + s['ann_breakdown']['pool']['get_items_caption_ms']:.0f} ms, "
              f"SQLite metadata ~{s['ann_breakdown']['pool']['fetch_meta_ms']:.0f} ms, live-id sets ~{s['ann_breakdown']['live_ids_in_db_fetch_ms']:.0f} ms")
        for name, lk in (("before", "latency_before"), ("after", "latency")):
            lat = s[lk]
            r, m = lat["wall_over_model"]["median"], lat["rescore_meta"]["median"]
            print(f"{s['n']:,} {name}: end to end / model time {r:.2f} (target <= {TARGET_WALL_OVER_MODEL}: "
                  f"{'met' if r <= TARGET_WALL_OVER_MODEL else 'NOT met'}); re-score + metadata {m:.1f} ms (target <= "
                  f"{TARGET_RESCORE_META_MS:.0f} ms: {'met' if m <= TARGET_RESCORE_META_MS else 'NOT met'})")
    mil = results.get("million")
    if mil:
        for a in mil["attempts"]:
            if a["result"] != "built":
                print(f"{mil['n']:,}: {a['dim']}-d {a['result']}: {a['why']}")
        print(f"{mil['n']:,}: built at {mil['dim']}-d in {fmt_s(mil['build_s'])} with {args.threads} threads "
              f"(budget {args.million_budget:.0f} min{'; EXCEEDED' if mil['build_s'] > args.million_budget * 60 else ''})")
        e = mil["ef_095"]
        if e is None:
            print(f"{mil['n']:,} ({mil['dim']}-d): recall@10 >= {MILLION_RECALL_TARGET} not reached within ef <= 1024")
        else:
            sp = mil["ef"][e]["speedup"]
            print(f"{mil['n']:,} ({mil['dim']}-d): ef={e} gives recall@10 {rc(mil['ef'][e]['recall'])}; speed-up over exact search "
                  f"{sp:.0f}x (target >= {MILLION_SPEEDUP_TARGET:.0f}x: {'met' if sp >= MILLION_SPEEDUP_TARGET else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
