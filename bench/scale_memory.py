"""Memory at scale: resident memory, recall@10 and ms/query of the vector-store backends, in one run.

For each gallery size, synthetic image vectors (the calibrated two-level mixture of
``bench/query_latency.py``, 1280-d, unit norm) are written to a temp folder with 200 held-out
queries and their exact top-10 (numpy, full vectors). Then, per backend:

1. a **build** subprocess adds every vector to the store and saves it (wall time);
2. a fresh **measure** subprocess opens the saved store and reports resident memory before and
   after ``load`` (VmRSS of the process *and its children*: Milvus Lite runs a server process), split
   into anonymous memory (``RssAnon``: heap, the index) and file-backed pages (``RssFile``: e.g. the
   reduced store's memory-mapped full vectors touched by re-scoring), then answers the queries
   (recall@10 against exact search on the full vectors, median ms/query, single thread) and
   reports memory again.

Backends: ``hnswlib`` (the default: 1280-d HNSW, M=16, ef_construction=200, ef=128),
``hnswlib-pca256`` (HNSW over uncentred-PCA 256-d projections + exact re-scoring of the top
100 from the full vectors on disk), ``milvus`` (embedded Milvus Lite, HNSW, same M / ef).

Projection: with two or more sizes measured, the resident memory per vector is fitted linearly
(``a + b·n``) per backend and extrapolated to 1M — clearly labelled as a projection; recall is not
extrapolated. ``--million`` measures 1M directly (long: the hnswlib full build alone took 32 min
on 2 cores; run it on a free machine).

    .venv/bin/python bench/scale_memory.py --sizes 20000 --backends hnswlib,hnswlib-pca256,milvus
    .venv/bin/python bench/scale_memory.py --sizes 20000,100000 --backends hnswlib-pca256
    .venv/bin/python bench/scale_memory.py --million --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DIM = 1280
QUERIES = 200
K = 10
MILLION = 1_000_000
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def _status(pid: int) -> dict:
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0]) / 1024  # MiB
    except OSError:
        pass
    return out


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            for c in open(f"/proc/{pid}/task/{tid}/children").read().split():
                out.extend(_tree(int(c)))
    except OSError:
        pass
    return out


def rss_tree() -> dict:
    """MiB of this process and all its descendants."""
    tot: dict[str, float] = {}
    for p in _tree(os.getpid()):
        for k, v in _status(p).items():
            tot[k] = tot.get(k, 0.0) + v
    return tot


# ---------------------------------------------------------------------------------------------
# subprocess roles


def child_build(args) -> None:
    from explorer.core.vectorstore import open_store

    data = np.load(Path(args.work) / "data.npy", mmap_mode="r")
    ids = np.arange(1, len(data) + 1, dtype=np.int64)
    st = open_store(args.backend, Path(args.work) / args.backend, "image--bench", DIM, {"image": "bench"})
    t = time.perf_counter()
    for s in range(0, len(data), 100_000):  # a library rebuild adds everything at once; chunks bound the copy
        st.upsert(ids[s:s + 100_000], np.asarray(data[s:s + 100_000]))
    st.save()
    print(json.dumps({"build_s": time.perf_counter() - t}))


def child_measure(args) -> None:
    from explorer.core.vectorstore import open_store

    w = Path(args.work)
    queries, truth = np.load(w / "queries.npy"), np.load(w / "truth.npy")
    before = rss_tree()
    st = open_store(args.backend, w / args.backend, "image--bench", DIM, {"image": "bench"})
    t = time.perf_counter()
    reason = st.load()
    load_s = time.perf_counter() - t
    assert reason is None, reason
    after_load = rss_tree()
    times, hits = [], 0
    for q, tr in zip(queries, truth):
        t = time.perf_counter()
        got = st.search(q, K)[0]
        times.append(time.perf_counter() - t)
        hits += len(set(got.tolist()) & set((tr + 1).tolist()))
    after_q = rss_tree()
    disk = sum(f.stat().st_size for f in (w / args.backend).rglob("*") if f.is_file())
    print(json.dumps({"load_s": load_s, "before": before, "after_load": after_load, "after_queries": after_q,
                      "recall": hits / (K * len(queries)), "ms_per_query": 1000 * float(np.median(times)),
                      "disk_bytes": disk, "n": len(st)}))


def run_child(role: str, work: Path, backend: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--child", role, "--work", str(work), "--backend", backend],
                       env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{role} {backend} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------


def make_data(n: int, work: Path, seed: int) -> dict:
    from query_latency import Mixture

    rng = np.random.default_rng(seed)
    mix = Mixture(DIM, max(10, n // 100), None, seed)
    data = mix.sample(n, rng)[0]
    queries = mix.sample(QUERIES, np.random.default_rng(seed + 1))[0]
    np.save(work / "data.npy", data)
    np.save(work / "queries.npy", queries)
    t = time.perf_counter()
    truth = np.empty((QUERIES, K), np.int64)
    for j, q in enumerate(queries):
        s = data @ q
        top = np.argpartition(-s, K)[:K]
        truth[j] = top[np.argsort(-s[top])]
    exact_ms = 1000 * (time.perf_counter() - t) / QUERIES
    np.save(work / "truth.npy", truth)
    return {"exact_ms_per_query": exact_ms, "raw_bytes": data.nbytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000")
    ap.add_argument("--backends", default="hnswlib,hnswlib-pca256,milvus")
    ap.add_argument("--million", action="store_true", help="measure 1,000,000 vectors (long; see the docstring)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--child", choices=("build", "measure"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--backend", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "build":
        return child_build(args)
    if args.child == "measure":
        return child_measure(args)
    sizes = [MILLION] if args.million else [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
            work = Path(tmp)
            log(f"{n:,} vectors: generating and computing exact top-{K} of {QUERIES} queries ...")
            base = make_data(n, work, args.seed)
            for b in backends:
                log(f"  {b}: building ...")
                built = run_child("build", work, b)
                log(f"  {b}: built in {built['build_s']:.1f} s; measuring in a fresh process ...")
                m = run_child("measure", work, b)
                d = {k: m["after_queries"].get(k, 0) - m["before"].get(k, 0) for k in ("VmRSS", "RssAnon", "RssFile")}
                dl = {k: m["after_load"].get(k, 0) - m["before"].get(k, 0) for k in ("VmRSS", "RssAnon", "RssFile")}
                row = {"n": n, "backend": b, **base, **built, **m, "rss_load_mib": dl, "rss_mib": d}
                results.append(row)
                log(f"  {b}: resident after queries +{d['VmRSS']:.0f} MiB (anon {d['RssAnon']:.0f}, file {d['RssFile']:.0f}); "
                    f"recall@10 {m['recall']:.3f}; {m['ms_per_query']:.2f} ms/query; disk {m['disk_bytes'] / 2**20:.0f} MiB")
    print("| vectors | backend | build | resident after load / after queries (MiB; anon + file) | on disk | recall@10 | ms/query | exact numpy ms/query |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']:,} | {r['backend']} | {r['build_s']:.0f} s | {r['rss_load_mib']['VmRSS']:.0f} / {r['rss_mib']['VmRSS']:.0f} "
              f"({r['rss_mib']['RssAnon']:.0f} + {r['rss_mib']['RssFile']:.0f}) | {r['disk_bytes'] / 2**20:.0f} MiB | "
              f"{r['recall']:.3f} | {r['ms_per_query']:.2f} | {r['exact_ms_per_query']:.1f} |")
    proj = {}
    for b in backends:
        # the index's own memory: anonymous pages after load. File-backed pages (the reduced store's
        # full vectors touched by re-scoring) are reclaimable page cache that grows with query
        # traffic (about 100 candidate rows x 5 KiB per query), not with the gallery; reported apart.
        pts = sorted((r["n"], r["rss_load_mib"]["RssAnon"]) for r in results if r["backend"] == b)
        if len(pts) >= 2:
            (n1, m1), (n2, m2) = pts[0], pts[-1]
            per = (m2 - m1) / (n2 - n1)
            proj[b] = {"kib_per_vector": per * 1024, "fixed_mib": m1 - per * n1,
                       "projected_1m_gib": (m1 + per * (MILLION - n1)) / 1024, "fit_sizes": [n1, n2]}
    if proj:
        print("\nPROJECTION to 1M (linear fit of the anonymous resident memory after load; NOT a 1M measurement):")
        for b, p in proj.items():
            print(f"  {b}: {p['kib_per_vector']:.2f} KiB per vector + {p['fixed_mib']:.0f} MiB fixed "
                  f"-> about {p['projected_1m_gib']:.2f} GiB at 1M (fit on {p['fit_sizes'][0]:,} and {p['fit_sizes'][1]:,})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "projection": proj}, indent=1))


if __name__ == "__main__":
    main()
