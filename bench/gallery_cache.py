"""The on-disk gallery cache (``explorer.core.gallery_cache``): one-shot ``explorer search`` and
``Searcher.open()`` with and without it, and resident memory with memory-mapped vs loaded vectors.

For each ``--sizes`` gallery size, in one run, this script

1. writes the synthetic library of ``bench/query_latency.py`` straight into the database
   (clustered 1280-d image vectors, real MiniLM caption vectors, structured captions and
   detections; ``write_library``) and builds its three hnswlib indices (``build_indices``);
2. **one-shot CLI**: runs ``explorer search --image coffee.png --library L --k 10 --json``
   (``explorer.cli.main``, as ``python -m explorer.cli`` runs it) as a fresh process, ``--rounds``
   times the pair *first call* (no cache: the gallery is read from SQL and the cache written)
   then *second call* (the cache is opened), and reports each call's wall time (process start to
   exit) and peak resident memory (its own VmHWM at exit: ``ru_maxrss`` of a child would include
   the parent's resident memory at fork time);
3. **``Searcher.open()``** in fresh worker processes (all models loaded before it, so they are
   not counted): without the cache (``gallery_cache=False``: read from SQL into memory), building
   it (no cache there yet) and opening it (cache hit); its time, then 20 (``--queries``) image
   queries through ``Searcher.search``, and VmRSS / RssAnon / RssFile after opening and after the
   queries: memory-mapped vectors (cache hit) against vectors loaded into memory (no cache);
4. the cache's size on disk per image: vectors, weights, metadata columns and look-ups;
5. the price of mapping: ms to gather a candidate pool's vectors (566 random rows) held in memory,
   mapped and touched before, mapped on first touch from the page cache, and on first touch right
   after the writer evicted the files (disk reads) — ``--gather-only`` runs just this, without a
   library or models.

The load average (``os.getloadavg``) is printed at the start and at the end.

    .venv/bin/python bench/gallery_cache.py --sizes 20000
    nice -n 10 .venv/bin/python bench/gallery_cache.py --sizes 100000 --json /tmp/gcache.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import query_latency as ql  # noqa: E402  (the synthetic library and its indices)

VECTOR_ARRAYS = ("image", "caption")


def status_mib() -> dict:
    """VmRSS, RssAnon and RssFile of this process, MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def loadavg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def build_library(n: int, args, loader, bank, offset: np.ndarray, work: Path) -> Path:
    from explorer.core.config import Settings
    from explorer.core.library import Library

    rng = np.random.default_rng(args.seed + n)
    mix = ql.Mixture(1280, max(ql.N_CATEGORIES, n // 100), offset, seed=args.seed + 1)
    img, clusters, cats = mix.sample(n, rng)
    n_proto = min(len(bank.texts), max(500, n // 30))
    proto = bank.assign(clusters, mix.cluster_cat, n_proto, rng)
    lib_dir = work / f"lib-{n}"
    writer = Library(lib_dir, Settings(library=str(lib_dir)), loader=loader)
    try:
        model_ids = {r: loader.get(r).model_id for r in ("image", "text", "captioner", "detector")}
        t = ql.write_library(writer, img, proto, bank, cats, rng, model_ids)
        ql.log(f"  {n:,} images written in {ql.fmt_s(t)}")
        built = ql.build_indices(writer, args.threads)
        built.clear()
    finally:
        writer.store.close()
        del writer
        gc.collect()
    return lib_dir


def clear_cache(lib_dir: Path) -> None:
    for p in (lib_dir / "cache").glob("gallery-*"):
        shutil.rmtree(p)


def child_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_child(cmd: list[str]) -> str:
    """Run ``cmd``; its standard output."""
    r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r.stdout


#: ``explorer search`` as ``python -m explorer.cli`` runs it (``cli.main``), then this process's peak
#: resident memory (VmHWM: of this process alone; a child's ``ru_maxrss`` would include the
#: parent's resident memory at fork time)
CLI_PEAK = ("import sys; from pathlib import Path; from explorer import cli; rc = cli.main(sys.argv[1:]); "
            "hwm = [l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM:')][0]; "
            "print('PEAK', int(hwm.split()[1]), file=sys.stderr); sys.exit(rc)")


def cli_call(lib_dir: Path, query: str) -> dict:
    """One ``explorer search`` in a fresh process: wall time (start to exit) and peak RSS."""
    cmd = [sys.executable, "-c", CLI_PEAK, "search", "--image", query, "--library", str(lib_dir), "--k", "10", "--json"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=child_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(f"explorer search failed ({r.returncode}): {r.stderr[-2000:]}")
    peak_kib = int(next(x for x in r.stderr.splitlines() if x.startswith("PEAK ")).split()[1])
    res = json.loads(r.stdout)
    top = [h["image_id"] for h in res["modes"]["fused"]["hits"]]
    return {"wall_s": wall, "peak_rss_mib": peak_kib / 1024, "top_fused": top}


def open_worker(spec: dict) -> int:
    """In a fresh process: load the models, open a Searcher (with or without the cache), run queries."""
    from explorer.core.config import Settings
    from explorer.core.library import Library
    from explorer.core.models.registry import ModelLoader
    from explorer.core.search import QuerySpec, Searcher

    settings = Settings(library=spec["lib"])
    loader = ModelLoader(settings)
    for role in ("detector", "captioner", "image", "text"):
        loader.get(role)
    lib = Library(spec["lib"], settings, loader=loader)
    gc.collect()
    m0 = status_mib()
    t0 = time.perf_counter()
    searcher = Searcher(lib, gallery_cache=spec["cache"]).open()
    open_s = time.perf_counter() - t0
    g = searcher.gallery()
    m1 = status_mib()
    tops, walls = [], []
    for _ in range(spec["queries"]):
        t = time.perf_counter()
        res = searcher.search(QuerySpec(image=spec["query"]), k=10)
        walls.append(time.perf_counter() - t)
        tops.append([h.image_id for h in res.modes["fused"].hits])
    m2 = status_mib()
    print("RESULT " + json.dumps({"open_s": open_s, "source": g.source, "mapped": g.mapped, "timings": g.timings,
                                  "n": len(g), "before": m0, "opened": m1, "after_queries": m2,
                                  "query_median_s": float(np.median(walls)) if walls else None,
                                  "same_top": all(t == tops[0] for t in tops), "top_fused": tops[0] if tops else None}))
    return 0


def worker_call(lib_dir: Path, cache: bool, query: str, queries: int) -> dict:
    spec = json.dumps({"lib": str(lib_dir), "cache": cache, "query": query, "queries": queries})
    stdout = run_child([sys.executable, str(Path(__file__).resolve()), "--worker", spec])
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def cache_sizes(lib_dir: Path, n: int) -> dict:
    (d,) = list((lib_dir / "cache").glob("gallery-*"))
    sizes = {p.stem: p.stat().st_size for p in d.glob("*.npy")}
    vec = sum(v for k, v in sizes.items() if k in VECTOR_ARRAYS)
    rest = sum(v for k, v in sizes.items() if k not in VECTOR_ARRAYS)
    meta = {k: v for k, v in sizes.items() if k not in VECTOR_ARRAYS}
    return {"dir": d.name, "vectors_bytes": vec, "other_bytes": rest, "vectors_per_image": vec / n, "other_per_image": rest / n,
            "largest_other": sorted(((k, v / n) for k, v in meta.items()), key=lambda kv: -kv[1])[:6]}


def measure(n: int, lib_dir: Path, args, query: str) -> dict:
    out: dict = {"n": n, "cli": []}
    ql.log(f"=== {n:,}: one-shot explorer search, first call (builds the cache) vs second (opens it), {args.rounds} rounds ===")
    for r in range(args.rounds):
        clear_cache(lib_dir)
        first = cli_call(lib_dir, query)
        assert list((lib_dir / "cache").glob("gallery-*")), "the first call wrote no cache"
        second = cli_call(lib_dir, query)
        assert first["top_fused"] == second["top_fused"], (first["top_fused"], second["top_fused"])
        out["cli"].append({"first": first, "second": second})
        ql.log(f"  round {r + 1}: first call {first['wall_s']:.1f} s, peak RSS {first['peak_rss_mib']:.0f} MiB; "
               f"second call {second['wall_s']:.1f} s, peak RSS {second['peak_rss_mib']:.0f} MiB; same top 10; load {loadavg()}")
    out["cache"] = cache_sizes(lib_dir, n)
    c = out["cache"]
    ql.log(f"  cache on disk: vectors {c['vectors_per_image']:.0f} B/image, the rest (weights, metadata, look-ups) "
           f"{c['other_per_image']:.0f} B/image; largest: " + ", ".join(f"{k} {v:.0f}" for k, v in c["largest_other"]))
    ql.log(f"=== {n:,}: Searcher.open() and VmRSS after {args.queries} queries, fresh processes ===")
    runs = {}
    runs["no cache (SQL, in memory)"] = worker_call(lib_dir, False, query, args.queries)
    clear_cache(lib_dir)
    runs["cache build (SQL, written, mapped)"] = worker_call(lib_dir, True, query, args.queries)
    runs["cache hit (mapped)"] = worker_call(lib_dir, True, query, args.queries)
    tops = {k: v["top_fused"] for k, v in runs.items()}
    assert len({json.dumps(t) for t in tops.values()}) == 1, tops
    for name, w in runs.items():
        d_open = w["opened"]["VmRSS"] - w["before"]["VmRSS"]
        ql.log(f"  {name}: open {w['open_s']:.2f} s (gallery from {w['source']}, timings "
               + ", ".join(f"{k} {v:.2f} s" for k, v in w["timings"].items())
               + f"); VmRSS +{d_open:.0f} MiB at open; after {args.queries} queries VmRSS {w['after_queries']['VmRSS']:.0f} MiB "
               f"(RssAnon {w['after_queries']['RssAnon']:.0f}, RssFile {w['after_queries']['RssFile']:.0f}), "
               f"+{w['after_queries']['VmRSS'] - w['before']['VmRSS']:.0f} MiB over the models; query median {w['query_median_s'] * 1000:.0f} ms")
    out["open"] = runs
    out["gather"] = gather_study(n, lib_dir.parent)
    return out


def gather_study(n: int, work: Path, pools: int = 10, pool: int = 566) -> dict:
    """ms to gather both vectors (1280-d + 384-d float32) of ``pool`` random rows of an ``n``-row
    cache written by ``gallery_cache.write``: held in memory; mapped, first touch right after the
    write (the writer evicted the files: disk reads); mapped, the same rows again; mapped, first
    touch with the files in the page cache."""
    from explorer.core import gallery_cache

    rng = np.random.default_rng(0)
    arrays = {"image": rng.standard_normal((n, 1280), dtype=np.float32), "caption": rng.standard_normal((n, 384), dtype=np.float32)}
    root, key = work / "gather", {"dtype": "float32", "study": n}
    gallery_cache.write(root, key, arrays)
    mapped = gallery_cache.read(root, key)

    def gather(a: dict, rows) -> float:
        t = time.perf_counter()
        np.asarray(a["image"][rows])
        np.asarray(a["caption"][rows])
        return (time.perf_counter() - t) * 1000

    out = {"in memory": [], "mapped, first touch after the write (disk)": [], "mapped, touched before": [],
           "mapped, first touch from the page cache": []}
    for i in range(pools):
        rows = np.sort(rng.choice(n, pool, replace=False))
        out["in memory"].append(gather(arrays, rows))
        out["mapped, first touch after the write (disk)"].append(gather(mapped, rows))
        out["mapped, touched before"].append(gather(mapped, rows))
    d = gallery_cache.cache_dir(root, key)
    for name in ("image", "caption"):
        (d / f"{name}.npy").read_bytes()  # into the page cache
    fresh = gallery_cache.read(root, key)
    for i in range(pools):
        out["mapped, first touch from the page cache"].append(gather(fresh, np.sort(rng.choice(n, pool, replace=False))))
    shutil.rmtree(root, ignore_errors=True)
    res = {k: {"median_ms": float(np.median(v)), "max_ms": float(np.max(v))} for k, v in out.items()}
    ql.log(f"  gathering {pool} random rows' vectors of {n:,}: " + "; ".join(f"{k} {v['median_ms']:.2f} ms (max {v['max_ms']:.2f})"
                                                                          for k, v in res.items()))
    return res


def markdown(results: dict) -> str:
    lines = []
    for s in results["sizes"]:
        n = s["n"]
        lines.append(f"\n**{n:,} images** (load average {results['load_start']} at the start, {results['load_end']} at the end)\n")
        lines.append("| one-shot `explorer search` | wall | peak RSS |")
        lines.append("|---|---|---|")
        for i, r in enumerate(s["cli"]):
            lines.append(f"| round {i + 1}, first call (SQL read + cache written) | {r['first']['wall_s']:.1f} s | {r['first']['peak_rss_mib']:.0f} MiB |")
            lines.append(f"| round {i + 1}, second call (cache opened) | {r['second']['wall_s']:.1f} s | {r['second']['peak_rss_mib']:.0f} MiB |")
        lines.append("")
        lines.append(f"| `Searcher.open()`, fresh process | open | VmRSS at open | after {results['queries']} queries: VmRSS over the models (RssAnon / RssFile total) |")
        lines.append("|---|---|---|---|")
        for name, w in s["open"].items():
            lines.append(f"| {name} | {w['open_s']:.2f} s | +{w['opened']['VmRSS'] - w['before']['VmRSS']:.0f} MiB | "
                         f"+{w['after_queries']['VmRSS'] - w['before']['VmRSS']:.0f} MiB ({w['after_queries']['RssAnon']:.0f} / "
                         f"{w['after_queries']['RssFile']:.0f} MiB) |")
        c = s["cache"]
        if "gather" in s:
            lines.append("\n| gathering a pool's vectors (566 random rows) | median | max |\n|---|---|---|")
            lines.extend(f"| {k} | {v['median_ms']:.2f} ms | {v['max_ms']:.2f} ms |" for k, v in s["gather"].items())
        lines.append(f"\ncache on disk: vectors {c['vectors_per_image']:.0f} B/image, weights + metadata + look-ups "
                     f"{c['other_per_image']:.0f} B/image")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000", help="gallery sizes, comma-separated (default 20000)")
    ap.add_argument("--rounds", type=int, default=2, help="first/second CLI call pairs (default 2)")
    ap.add_argument("--queries", type=int, default=20, help="queries per Searcher before VmRSS is read (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="hnsw build threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tmp", type=Path, help="where the temporary libraries go")
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument("--gather-only", action="store_true", help="only the pool-gathering micro-measure (no library, no models)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return open_worker(json.loads(args.worker))
    if args.gather_only:
        ql.log(f"load average {loadavg()}")
        with tempfile.TemporaryDirectory(prefix="gallery-cache-", dir=args.tmp) as work:
            for n in (int(x) for x in args.sizes.split(",") if x.strip()):
                gather_study(n, Path(work))
        ql.log(f"load average {loadavg()}")
        return 0
    from explorer.core.config import Settings
    from explorer.core.imageio import load_image
    from explorer.core.models.registry import ModelLoader
    from explorer.core.samples import skimage_data_dir

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results: dict = {"sizes": [], "load_start": loadavg(), "cpus": len(os.sched_getaffinity(0)), "queries": args.queries}
    ql.log(f"sizes {sizes}; {results['cpus']} CPUs; load average {results['load_start']}")
    work = Path(tempfile.mkdtemp(prefix="gallery-cache-", dir=args.tmp))
    try:
        loader = ModelLoader(Settings())
        src = skimage_data_dir()
        query = str(src / ql.QUERY_PHOTO)
        photos = [load_image(src / p).image for p in ql.SKIMAGE_PHOTOS if (src / p).is_file()]
        offset = np.asarray(loader.get("image").embed_images(photos), np.float32).mean(0)
        bank = ql.CaptionBank(loader, min(3000, max(500, max(sizes) // 30)), args.seed)
        for n in sizes:
            ql.log(f"=== {n:,}: writing the synthetic library ===")
            lib_dir = build_library(n, args, loader, bank, offset, work)
            try:
                results["sizes"].append(measure(n, lib_dir, args, query))
            finally:
                shutil.rmtree(lib_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["load_end"] = loadavg()
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
