"""1M vectors in one run: resident memory, recall@10 and ms/query of hnswlib, hnswlib-pca256 and Milvus Lite.

Real descriptors cannot be computed for 1M images on this machine, so the gallery is **generated
from real ones**: the image vectors (1280-d, the default encoder) of already indexed libraries
(default: ``/tmp/m-fm`` = 600 Fashion-MNIST images and ``/tmp/m-ic`` = 553 Oxygen icons, read
read-only). 200 real vectors are held out as queries; a generator is fitted on the others:

1. the PCA basis of the fitting vectors (centred; ``n_fit - 1`` directions);
2. a Gaussian mixture (``--components`` = 64, diagonal covariance *in that PCA basis*, scikit-learn
   EM) over the PCA coordinates: categories and their main axes of variation as the real
   encoder produces them;
3. the spectrum's tail, which a sample of ~950 vectors cannot show: the eigenvalues
   ``lambda_i`` (i = 30..600) follow a power law, extrapolated to i = n_fit..1280; that energy is
   added as isotropic Gaussian noise in the orthogonal complement of the fitted span;
4. every vector is normalised to unit length, as the app's image vectors are.

Why not i.i.d. random vectors: in 1280 dimensions independent random vectors are all almost
orthogonal to each other (cosines ~ N(0, 1/1280)); the nearest neighbour is barely nearer than
any other point, so the "exact top 10" is an accident of noise, HNSW recall collapses, and PCA has
no spectrum to exploit: the figures would say nothing about a gallery. Real descriptors share a
large mean direction (GeM features are positive), have a steeply decaying spectrum (participation
ratio ~ 34 dimensions) and form clusters by category; the fitted mixture reproduces these (the
bench prints real vs generated statistics at equal size, and the recall@10 of the bare 256-d
projection on real and on generated vectors at that size: the property the reduced index relies
on). Its neighbourhoods are *looser* than real ones at equal size (nearest-neighbour cosine about
0.78 vs 0.85: real galleries hold near-duplicates, a Gaussian has none), which makes ANN search
harder, not easier. Recall is reported for the 200 **real** held-out queries (the *test* queries)
and for 200 generated held-out queries, against exact brute force (numpy, full 1280-d vectors) over
the generated gallery.

**Validation** (``--val``): image vectors of indexed libraries of *other* real images (e.g.
``/tmp/m-val``: 200 Fashion-MNIST test images not in ``/tmp/m-fm`` and 200 Adwaita icons) are
further queries with their own exact top-10. The reduced store's candidate count is chosen on them
only, by a rule fixed before any run: over :data:`GRID` (ef = ``reduced.CANDIDATE_EF`` x
candidates), the fewest candidates whose validation recall@10 reaches :data:`TARGET`
(:func:`select_candidates`); the test and generated recall at that row are then reported, not used.

Per backend, as ``bench/scale_memory.py`` does, in child processes (``--threads`` build threads):
a **build** child adds the vectors in chunks of 50,000 and saves the store (progress lines with
rate and ETA), then a fresh **measure** child loads it and reports VmRSS / RssAnon / RssFile of
itself and its children before and after loading and after the queries, recall@10 (ef = the
library's default 128; the reduced index re-scores its top ``reduced.MIN_CANDIDATES`` candidates
exactly, found with ef = ``CANDIDATE_EF`` x candidates; then every row of :data:`GRID`) and the
median ms per query (one query at a time, one thread). Each backend's files are deleted before
the next starts. A build that passes ``--budget-min`` minutes, or leaves less than
``--min-free-gib`` of memory available, stops at a chunk boundary; that backend is then measured at
the size it reached, against exact search over that prefix, and the report says so.

Backends are built with ``--threads`` hnswlib threads (the app inserts with one; the graph is the
same algorithm, so memory and recall do not depend on it). Figures are appended to ``--json``
after every backend, so a long run that is stopped keeps what it finished.

    nice -n 10 .venv/bin/python bench/scale_million.py --n 100000 --json /tmp/s100k.json
    nice -n 10 .venv/bin/python bench/scale_million.py --json /tmp/s1m.json 2> /tmp/s1m.log
    nice -n 10 .venv/bin/python bench/scale_million.py --backends hnswlib-pca256 --val /tmp/m-val --json /tmp/v1m.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from scale_memory import rss_tree  # noqa: E402

DIM = 1280
K = 10
CHUNK = 50_000
#: candidates re-scored, tried after the shipped setting (reduced backends only); the projected index
#: searches each with its own beam, ``ef = reduced.CANDIDATE_EF x candidates``
GRID = (100, 200, 400, 1000)
#: the selection rule, fixed before any run: the smallest grid value whose recall@10 on the
#: *validation* queries reaches TARGET; the test (real held-out) queries only report what it gives
TARGET = 0.95
#: bump when the generator changes, so that a kept work folder is not reused
GENERATOR_VERSION = 1
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.monotonic() - T0:7.0f}s] {msg}", file=sys.stderr, flush=True)


def mem_available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2 ** 20
    return float("nan")


# ---------------------------------------------------------------------------------------------
# real vectors and the generator fitted on them


def real_vectors(libraries: list[str]) -> np.ndarray:
    """Image vectors of the most common 1280-d image model in each library (read-only)."""
    out = []
    for lib in libraries:
        db = Path(lib) / "library.sqlite"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            model = con.execute("SELECT model_id FROM vectors WHERE kind='image' AND dim=? GROUP BY model_id "
                                "ORDER BY count(*) DESC LIMIT 1", (DIM,)).fetchone()
            if model is None:
                raise SystemExit(f"{lib}: no {DIM}-d image vectors")
            rows = con.execute("SELECT data FROM vectors WHERE kind='image' AND model_id=? ORDER BY image_id", model).fetchall()
        finally:
            con.close()
        log(f"real vectors: {len(rows)} from {lib} ({model[0]})")
        out.append(np.stack([np.frombuffer(r[0], np.float32) for r in rows]))
    return np.concatenate(out)


class FittedMixture:
    """The generator of the module docstring (PCA basis + diagonal GMM + power-law tail), in ``dim``
    dimensions (the image vectors' 1280; ``bench/library_memory.py`` fits joint image+caption pairs)."""

    def __init__(self, fit: np.ndarray, components: int, seed: int, dim: int = DIM):
        from sklearn.mixture import GaussianMixture

        x = np.asarray(fit, np.float64)
        self.mu = x.mean(0)
        _, s, vt = np.linalg.svd(x - self.mu, full_matrices=False)
        keep = s > s[0] * 1e-6
        self.basis = vt[keep]  # r x d, orthonormal rows
        lam = s[keep] ** 2 / len(x)
        i = np.arange(1, len(lam) + 1)
        sel = (i >= 30) & (i <= min(600, len(lam)))
        self.slope, icpt = np.polyfit(np.log(i[sel]), np.log(lam[sel]), 1)
        tail = np.exp(icpt) * np.arange(len(lam) + 1, dim + 1, dtype=np.float64) ** self.slope
        self.tail_energy = float(tail.sum())
        self.tail_fraction = self.tail_energy / float(lam.sum() + self.tail_energy)
        self.tail_var = self.tail_energy / max(1, dim - len(lam))  # per complement dimension
        # an orthonormal basis of the complement of the fitted span, where the tail noise goes
        q, _ = np.linalg.qr(np.concatenate([self.basis.T, np.random.default_rng(seed).standard_normal((dim, dim - len(lam)))], 1))
        self.complement = np.ascontiguousarray(q[:, len(lam):].T, np.float32)  # (dim - r) x dim
        self.gmm = GaussianMixture(components, covariance_type="diag", reg_covar=1e-6, random_state=seed, max_iter=300)
        self.gmm.fit((x - self.mu) @ self.basis.T)
        self.sd = np.sqrt(self.gmm.covariances_).astype(np.float32)
        self.means = self.gmm.means_.astype(np.float32)
        self.basis32 = self.basis.astype(np.float32)
        self.mu32 = self.mu.astype(np.float32)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        comp = rng.choice(len(self.means), n, p=self.gmm.weights_)
        z = self.means[comp] + rng.standard_normal((n, self.basis.shape[0]), dtype=np.float32) * self.sd[comp]
        x = z @ self.basis32 + self.mu32
        if len(self.complement):  # the tail lives outside the fitted span
            x += (rng.standard_normal((n, len(self.complement)), dtype=np.float32) * np.float32(math.sqrt(self.tail_var))) @ self.complement
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x


def neighbourhood_stats(v: np.ndarray) -> dict:
    v = np.asarray(v, np.float64)
    s = v @ v.T
    iu = np.triu_indices(len(v), 1)
    np.fill_diagonal(s, -9)
    srt = -np.sort(-s, axis=1)
    ev = np.linalg.eigvalsh(np.cov(v.T))
    e2 = np.sort(np.linalg.eigvalsh(v.T @ v))[::-1]
    return {"mean_pair_cos": float(s[iu].mean()), "nn1_cos": float(srt[:, 0].mean()), "nn10_cos": float(srt[:, 9].mean()),
            "pr_dim": float(ev.sum() ** 2 / (ev ** 2).sum()), "energy_top256": float(e2[:256].sum() / e2.sum())}


def projected_recall(gallery: np.ndarray, queries: np.ndarray, r: int = 256) -> float:
    """recall@10 of exact search on the bare uncentred-PCA r-d projection (no re-scoring)."""
    from explorer.core.vectorstore.reduced import fit_projection

    p = fit_projection(gallery, r)
    exact = np.argsort(-(queries @ gallery.T), axis=1)[:, :K]
    proj = np.argsort(-((queries @ p.T) @ (gallery @ p.T).T), axis=1)[:, :K]
    return float(np.mean([len(set(a) & set(b)) / K for a, b in zip(exact, proj)]))


def select_candidates(rows: list[dict], target: float = TARGET, key: str = "recall_val") -> dict | None:
    """The grid row the selection rule picks: the fewest ``candidates`` whose ``key`` recall reaches
    ``target``; None when no row does (then nothing new is shipped)."""
    ok = [r for r in rows if r.get(key) is not None and r[key] >= target]
    return min(ok, key=lambda r: r["candidates"]) if ok else None


# ---------------------------------------------------------------------------------------------
# exact ground truth


def top_start(nq: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty running top-K (scores, row indices) for ``nq`` queries, for :func:`merge_top`."""
    return np.full((nq, K), -np.inf, np.float32), np.zeros((nq, K), np.int64)


def merge_top(best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The running top-K after one chunk: ``scores`` (queries x rows) are of rows ``start``, ``start + 1``, ..."""
    bs, bi = best
    allsc = np.concatenate([bs, scores], axis=1)
    alli = np.concatenate([bi, np.arange(start, start + scores.shape[1])[None].repeat(len(scores), 0)], axis=1)
    top = np.argpartition(-allsc, K, axis=1)[:, :K]
    return np.take_along_axis(allsc, top, 1), np.take_along_axis(alli, top, 1)


def top_rows(best: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The row indices of a running top-K, best first."""
    bs, bi = best
    return np.take_along_axis(bi, np.argsort(-bs, axis=1), 1)


def exact_topk(data: np.ndarray, queries: np.ndarray, n: int) -> np.ndarray:
    """Row indices of the exact top-K of each query among the first ``n`` rows (chunked)."""
    best = top_start(len(queries))
    for s in range(0, n, 100_000):
        best = merge_top(best, queries @ np.asarray(data[s:min(n, s + 100_000)]).T, s)
    return top_rows(best)


def projected_bound(data, queries: np.ndarray, truth: np.ndarray, r: int, cands=(100, 200, 400, 1000)) -> dict:
    """recall@10 of *exact* search in the r-d projected space (projection fitted as the store fits it:
    50,000 random rows) followed by exact re-scoring of its top C: what the reduced store would reach
    with a perfect projected index. Separates the projection's loss from the projected HNSW's."""
    from explorer.core.vectorstore.reduced import FIT_SAMPLE, fit_projection

    n, top = len(data), max(cands)
    rows = np.sort(np.random.default_rng(0).choice(n, min(n, FIT_SAMPLE), replace=False))
    p = fit_projection(np.asarray(data[rows]), r)
    qp = queries @ p.T
    best = np.full((len(queries), top), -np.inf, np.float32)
    bi = np.zeros((len(queries), top), np.int64)
    for s in range(0, n, 100_000):
        sc = qp @ (np.asarray(data[s:s + 100_000]) @ p.T).T
        a = np.concatenate([best, sc], 1)
        ai = np.concatenate([bi, np.arange(s, s + sc.shape[1])[None].repeat(len(queries), 0)], 1)
        sel = np.argpartition(-a, top, 1)[:, :top]
        best, bi = np.take_along_axis(a, sel, 1), np.take_along_axis(ai, sel, 1)
    bi = np.take_along_axis(bi, np.argsort(-best, 1), 1)
    out = {"bare_top10": float(np.mean([len(set(bi[j, :K].tolist()) & set(truth[j].tolist())) / K for j in range(len(queries))]))}
    for c in cands:
        hits = 0
        for j, q in enumerate(queries):
            cand = np.sort(bi[j, :c])
            got = cand[np.argsort(-(np.asarray(data[cand]) @ q))[:K]]
            hits += len(set(got.tolist()) & set(truth[j].tolist()))
        out[f"rescored_top{c}"] = hits / (K * len(queries))
    return out


# ---------------------------------------------------------------------------------------------
# child processes


def _patch_threads(threads: int) -> None:
    """Insert with ``threads`` hnswlib threads in this (bench) process; the app uses one."""
    import hnswlib

    import explorer.core.index as index_mod

    class Index(hnswlib.Index):
        def add_items(self, data, ids=None, num_threads=-1, replace_deleted=False):
            return super().add_items(data, ids, num_threads=threads, replace_deleted=replace_deleted)

    class Shim:
        def __getattr__(self, item):
            return getattr(hnswlib, item)

    shim = Shim()
    shim.Index = Index
    index_mod.hnswlib = shim


def budget_min(spec: str, backend: str) -> float:
    """Minutes allowed for ``backend`` by ``--budget-min`` (``120`` or ``name=60,other=40``)."""
    if "=" not in spec:
        return float(spec)
    table = dict(part.split("=") for part in spec.split(","))
    return float(table.get(backend, "inf"))


def open_bench_store(work: Path, backend: str):
    from explorer.core.vectorstore import open_store

    return open_store(backend, work / backend, "image--bench", DIM, {"image": "bench"})


def child_build(args) -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"    [{args.backend} build] %(message)s")
    _patch_threads(args.threads)
    work = Path(args.work)
    data = np.load(work / "data.npy", mmap_mode="r")
    n = len(data)
    st = open_bench_store(work, args.backend)
    t = time.perf_counter()
    done, stop = 0, ""
    for s in range(0, n, CHUNK):
        e = min(n, s + CHUNK)
        st.upsert(np.arange(s + 1, e + 1, dtype=np.int64), np.asarray(data[s:e]))
        done = e
        el = time.perf_counter() - t
        log(f"  [{args.backend} build] {done:,}/{n:,} added in {el / 60:.1f} min ({done / el:.0f}/s; ETA "
            f"{(n - done) / (done / el) / 60:.0f} min); {mem_available_gib():.1f} GiB available")
        if done < n and el > budget_min(args.budget_min, args.backend) * 60:
            stop = f"stopped at {done:,}: build time passed the budget of {budget_min(args.budget_min, args.backend):.0f} min"
        elif done < n and mem_available_gib() < args.min_free_gib:
            stop = f"stopped at {done:,}: less than {args.min_free_gib:.1f} GiB of memory available"
        if stop:
            log(f"  [{args.backend} build] {stop}")
            break
    add_s = time.perf_counter() - t
    st.save()
    print(json.dumps({"build_s": time.perf_counter() - t, "add_s": add_s, "n_built": done, "stopped": stop}))


def query_recalls(st, q, truth, names) -> tuple[dict, list]:
    """``{"recall_<name>": recall@K}`` of store ``st`` for each query set (ids in ``truth`` are
    0-based rows, the store's are rows + 1), and the seconds each search took."""
    recalls, times = {}, []
    for name in names:
        hits = 0
        for v, tr in zip(q[name], truth[name]):
            t = time.perf_counter()
            got = st.search(v, K)[0]
            times.append(time.perf_counter() - t)
            hits += len(set(got.tolist()) & set((tr + 1).tolist()))
        recalls[f"recall_{name}"] = hits / (K * len(truth[name]))
    return recalls, times


def child_measure(args) -> None:
    work = Path(args.work)
    q = np.load(work / "queries.npz")
    truth = np.load(work / f"truth-{args.n_built}.npz")
    before = rss_tree()
    st = open_bench_store(work, args.backend)
    t = time.perf_counter()
    reason = st.load()
    load_s = time.perf_counter() - t
    if reason:
        raise SystemExit(f"load failed: {reason}")
    after_load = rss_tree()
    out = {"load_s": load_s, "n": len(st)}
    names = [name for name in ("real", "generated", "val") if name in q.files]
    recalls, times = query_recalls(st, q, truth, names)
    out.update(recalls)
    after_q = rss_tree()
    if args.backend.startswith("hnswlib-pca"):
        # how recall depends on the candidates re-scored (each with the store's own beam, CANDIDATE_EF x candidates)
        import explorer.core.vectorstore.reduced as reduced

        shipped = reduced.MIN_CANDIDATES
        out["shipped_candidates"], out["candidate_ef"] = shipped, reduced.CANDIDATE_EF
        out["grid"] = []
        for cand in GRID:
            reduced.MIN_CANDIDATES = cand
            row = {"candidates": cand, "ef": max(st.ef, reduced.CANDIDATE_EF * cand)}
            recalls, ts = query_recalls(st, q, truth, names)
            row.update(recalls)
            row["ms_per_query"] = 1000 * float(np.median(ts))
            out["grid"].append(row)
            log(f"  [{args.backend} grid] {cand} candidates, ef {row['ef']}: recall@10 "
                + ", ".join(f"{name} {row['recall_' + name]:.4f}" for name in names) + f"; {row['ms_per_query']:.2f} ms/query")
        reduced.MIN_CANDIDATES = shipped
        if "val" in names:
            pick = select_candidates(out["grid"])
            out["selected"] = pick
            log(f"  [{args.backend} selection] " + (
                f"fewest candidates with validation recall@10 >= {TARGET}: {pick['candidates']} (test real "
                f"{pick['recall_real']:.4f}, generated {pick['recall_generated']:.4f}, {pick['ms_per_query']:.2f} ms/query)"
                if pick else f"no grid row reaches validation recall@10 {TARGET}"))
    out.update({"ms_per_query": 1000 * float(np.median(times)), "ms_p90": 1000 * float(np.percentile(times, 90)),
                "before": before, "after_load": after_load, "after_queries": after_q,
                "disk_bytes": sum(f.stat().st_size for f in (work / args.backend).rglob("*") if f.is_file())})
    print(json.dumps(out))


def run_child(role: str, work: Path, backend: str, args, extra: list[str] = ()) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1" if role == "measure" else str(args.threads))
    cmd = [sys.executable, __file__, "--child", role, "--work", str(work), "--backend", backend,
           "--threads", str(args.threads), "--budget-min", str(args.budget_min), "--min-free-gib", str(args.min_free_gib), *extra]
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)  # stderr (progress) passes through
    if p.returncode:
        raise RuntimeError(f"{role} {backend} failed with exit code {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--backends", default="hnswlib-pca256,hnswlib,milvus")
    ap.add_argument("--real", default="/tmp/m-fm,/tmp/m-ic", help="indexed libraries whose image vectors seed the generator")
    ap.add_argument("--val", default="", help="indexed libraries of *other* real images (e.g. /tmp/m-val): validation "
                    "queries, on which the candidate count is selected (rule: GRID, TARGET)")
    ap.add_argument("--keep-stores", action="store_true", help="keep each backend's built store in the work folder "
                    "(with --keep-work: to load it again, e.g. with another version of the code)")
    ap.add_argument("--components", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2, help="hnswlib build threads per backend")
    ap.add_argument("--parallel", type=int, default=1, help="backends measured at the same time (each in its own processes)")
    ap.add_argument("--budget-min", default="120", help="build time limit in minutes: one number for every backend, "
                    "or per backend: hnswlib-pca256=60,hnswlib=60,milvus=40")
    ap.add_argument("--min-free-gib", type=float, default=2.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", help="where the work folder goes (needs ~3x 4.8 GiB free at 1M)")
    ap.add_argument("--keep-work", metavar="DIR", help="work folder kept after the run; generated vectors and exact "
                    "top-10 found there (same n, seed, generator) are reused, e.g. to rerun one backend")
    ap.add_argument("--json")
    ap.add_argument("--child", choices=("build", "measure"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    ap.add_argument("--n-built", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "build":
        return child_build(args)
    if args.child == "measure":
        return child_measure(args)

    results: dict = {"n": args.n, "args": vars(args), "backends": []}

    def dump():
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=float))

    real = real_vectors(args.real.split(","))
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(real))
    q_real, fit = real[perm[:args.queries]], real[perm[args.queries:]]
    q_val = real_vectors(args.val.split(",")) if args.val else None
    if q_val is not None:
        # the validation images must be other images than those seeding the generator and the test queries
        closest = float((q_val @ real.T).max())
        log(f"validation queries: {len(q_val)} real vectors; highest cosine to any generator/test vector {closest:.4f}")
        if closest > 0.9999:
            raise SystemExit("a validation vector duplicates a vector of --real: use other images")
        results["val_closest_cos"] = closest
    t = time.perf_counter()
    gen = FittedMixture(fit, args.components, args.seed)
    log(f"generator fitted on {len(fit)} real vectors in {time.perf_counter() - t:.0f} s: PCA span {gen.basis.shape[0]} "
        f"directions, {args.components}-component diagonal GMM, power-law slope {gen.slope:.2f}, "
        f"extrapolated tail {100 * gen.tail_fraction:.1f}% of the variance")
    # realism check at the real set's size
    syn_small = gen.sample(len(fit), np.random.default_rng(args.seed + 10))
    syn_q = gen.sample(args.queries, np.random.default_rng(args.seed + 11))
    check = {"n": len(fit), "real": neighbourhood_stats(fit), "generated": neighbourhood_stats(syn_small),
             "pca256_recall_real": projected_recall(fit, q_real), "pca256_recall_generated": projected_recall(syn_small, syn_q)}
    results["realism"] = check
    log(f"realism check at n={len(fit)} (real | generated): " + ", ".join(
        f"{k} {check['real'][k]:.3f} | {check['generated'][k]:.3f}" for k in check["real"])
        + f"; bare 256-d projection recall@10 {check['pca256_recall_real']:.3f} | {check['pca256_recall_generated']:.3f}")
    dump()

    work = Path(args.keep_work) if args.keep_work else Path(tempfile.mkdtemp(prefix="scale-million-", dir=args.tmp))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder {work}; {mem_available_gib():.1f} GiB available")
    # the generated vectors depend only on these: a kept work folder with the same stamp is reused
    stamp = {"n": args.n, "seed": args.seed, "components": args.components, "queries": args.queries, "real": args.real,
             "generator": GENERATOR_VERSION}
    try:
        t = time.perf_counter()
        reuse = (work / "stamp.json").exists() and json.loads((work / "stamp.json").read_text()) == stamp
        if reuse:
            data = np.load(work / "data.npy", mmap_mode="r")
            q_gen = np.load(work / "queries.npz")["generated"]
            log(f"{args.n:,} vectors of the same generator and seed reused from {work}")
        else:
            (work / "stamp.json").unlink(missing_ok=True)
            data = np.lib.format.open_memmap(work / "data.npy", "w+", np.float32, (args.n, DIM))
            grng = np.random.default_rng(args.seed + 1)
            for s in range(0, args.n, CHUNK):
                data[s:s + CHUNK] = gen.sample(min(CHUNK, args.n - s), grng)
                if (s // CHUNK) % 4 == 3:
                    log(f"generated {min(args.n, s + CHUNK):,}/{args.n:,}")
            data.flush()
            q_gen = gen.sample(args.queries, np.random.default_rng(args.seed + 2))
            for f in work.glob("truth-*.npz"):
                f.unlink()
            (work / "stamp.json").write_text(json.dumps(stamp))
            log(f"{args.n:,} vectors generated in {time.perf_counter() - t:.0f} s ({data.nbytes / 2 ** 30:.2f} GiB)")
        queries = {"real": q_real, "generated": q_gen, **({"val": q_val} if q_val is not None else {})}
        np.savez(work / "queries.npz", **queries)
        truths: dict[int, float] = {}
        truth_lock, results_lock = threading.Lock(), threading.Lock()

        def truth_for(n: int) -> None:
            with truth_lock:
                if n in truths:
                    return
                path = work / f"truth-{n}.npz"
                if reuse and path.exists():  # reused only for the very same queries
                    old = np.load(path)
                    if all(f"q_{name}" in old.files and np.array_equal(old[f"q_{name}"], qs) for name, qs in queries.items()):
                        truths[n] = float("nan")
                        log(f"exact top-{K} over {n:,} vectors reused")
                        return
                t = time.perf_counter()
                tr = {name: exact_topk(data, qs, n) for name, qs in queries.items()}
                np.savez(path, **tr, **{f"q_{name}": qs for name, qs in queries.items()})
                nq = sum(len(qs) for qs in queries.values())
                truths[n] = 1000 * (time.perf_counter() - t) / nq
                log(f"exact top-{K} over {n:,} vectors for {nq} queries: {truths[n]:.1f} ms/query (batched)")

        truth_for(args.n)
        # one query at a time, as a user would run it without an index
        t = time.perf_counter()
        for v in q_real[:5]:
            sc = np.concatenate([np.asarray(data[a:a + 100_000]) @ v for a in range(0, args.n, 100_000)])
            np.argpartition(-sc, K)[:K]
        results["exact_single_ms"] = 1000 * (time.perf_counter() - t) / 5
        log(f"exact single query (numpy, data from page cache): {results['exact_single_ms']:.0f} ms")

        for b in args.backends.split(","):
            if b.startswith("hnswlib-pca"):
                t = time.perf_counter()
                tr = np.load(work / f"truth-{args.n}.npz")
                bound = {name: projected_bound(data, qs, tr[name], int(b[len("hnswlib-pca"):]))
                         for name, qs in queries.items()}
                results.setdefault("projected_bound", {})[b] = bound
                log(f"{b}: exact search in the projected space + exact re-scoring (no HNSW), recall@10 " + " | ".join(bound) + ": "
                    + ", ".join(f"{k} " + " | ".join(f"{bound[name][k]:.4f}" for name in bound) for k in bound["real"])
                    + f" ({time.perf_counter() - t:.0f} s)")

        def one_backend(b: str) -> None:
            log(f"{b}: building {args.n:,} ...")
            try:
                built = run_child("build", work, b, args)
                nb = built["n_built"]
                truth_for(nb)
                log(f"{b}: built {nb:,} in {built['build_s'] / 60:.1f} min; measuring in a fresh process ...")
                m = run_child("measure", work, b, args, ["--n-built", str(nb)])
            except RuntimeError as e:
                log(f"{b}: FAILED: {e}")
                with results_lock:
                    results["backends"].append({"backend": b, "failed": str(e)})
                    dump()
                return
            finally:
                if not args.keep_stores:
                    shutil.rmtree(work / b, ignore_errors=True)
            d = {k: m["after_queries"].get(k, 0) - m["before"].get(k, 0) for k in ("VmRSS", "RssAnon", "RssFile")}
            dl = {k: m["after_load"].get(k, 0) - m["before"].get(k, 0) for k in ("VmRSS", "RssAnon", "RssFile")}
            row = {"backend": b, **built, **m, "rss_load_mib": dl, "rss_mib": d}
            with results_lock:
                results["backends"].append(row)
                dump()
            log(f"{b} at {nb:,}: resident after load +{dl['VmRSS']:.0f} MiB (anon {dl['RssAnon']:.0f}); after queries "
                f"+{d['VmRSS']:.0f} MiB (anon {d['RssAnon']:.0f} + file {d['RssFile']:.0f}); recall@10 "
                + ", ".join(f"{name} {m['recall_' + name]:.4f}" for name in queries) + f"; {m['ms_per_query']:.2f} ms/query; "
                f"disk {m['disk_bytes'] / 2 ** 30:.2f} GiB")

        # --parallel backends at once (each in its own child processes), in the order given
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            list(pool.map(one_backend, args.backends.split(",")))
        order = {b: j for j, b in enumerate(args.backends.split(","))}
        results["backends"].sort(key=lambda r: order[r["backend"]])
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    names = list(queries)
    head = {"real": "real (test) q.", "generated": "generated q.", "val": "real validation q."}
    print(f"\n{args.n:,} generated 1280-d vectors (fitted on {len(fit)} real ones); {args.queries} real (test) + "
          f"{args.queries} generated held-out queries" + (f" + {len(q_val)} real validation queries (other images)" if q_val is not None else "")
          + f"; exact single query {results['exact_single_ms']:.0f} ms\n")
    print("| backend | vectors | build | resident after load: anon MiB | after queries: anon + file MiB | on disk | "
          + " | ".join(f"recall@10 {head[name]}" for name in names) + " | ms/query (p90) |")
    print("|---|---|---|---|---|---|" + "---|" * len(names) + "---|")
    for r in results["backends"]:
        if "failed" in r:
            print(f"| {r['backend']} | failed |" + " |" * (5 + len(names)))
            continue
        print(f"| {r['backend']} | {r['n_built']:,}{' (stopped)' if r['stopped'] else ''} | {r['build_s'] / 60:.0f} min | "
              f"{r['rss_load_mib']['RssAnon']:.0f} | {r['rss_mib']['RssAnon']:.0f} + {r['rss_mib']['RssFile']:.0f} | "
              f"{r['disk_bytes'] / 2 ** 30:.2f} GiB | " + " | ".join(f"{r['recall_' + name]:.4f}" for name in names)
              + f" | {r['ms_per_query']:.2f} ({r['ms_p90']:.2f}) |")
        if r["stopped"]:
            print(f"  {r['backend']}: {r['stopped']}")
        for w in r.get("grid", []):
            print(f"  {r['backend']}, {w['candidates']} candidates re-scored, projected ef {w['ef']}: recall@10 "
                  + ", ".join(f"{name} {w['recall_' + name]:.4f}" for name in names) + f"; {w['ms_per_query']:.2f} ms/query")
        if "selected" in r:
            w = r["selected"]
            print(f"  {r['backend']}, selected on validation (fewest candidates of {list(GRID)} with recall@10 >= {TARGET}): "
                  + (f"{w['candidates']} -> test (real) {w['recall_real']:.4f}, generated {w['recall_generated']:.4f}, "
                     f"validation {w['recall_val']:.4f}; {w['ms_per_query']:.2f} ms/query" if w else "none reaches it"))
        bound = results.get("projected_bound", {}).get(r["backend"])
        if bound:
            print(f"  {r['backend']}, exact projected search + re-scoring (no HNSW), recall@10 " + " | ".join(names) + ": "
                  + ", ".join(f"{k} " + " | ".join(f"{bound[name][k]:.4f}" for name in names) for k in bound["real"]))
    dump()


if __name__ == "__main__":
    main()
