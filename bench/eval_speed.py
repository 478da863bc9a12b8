"""How fast is the evaluation compared with the matrix product that makes the scores?

    python bench/eval_speed.py [--n 20000 --dim 1000 --labels 100 --chunk 1024]

Random unit vectors in ``--labels`` classes (a class centre plus noise, so the metrics are
not trivial), leave-one-out over all ``--n`` images. Prints the time of one exact float32
product ``(n x dim) @ (dim x n)`` into a preallocated output (timed before and after, averaged),
the time of the full chunked evaluation (mAP, P@k, R@k, PR curves; it computes that same
product chunk by chunk), their ratio, and the peak memory of the evaluation. The evaluation should be dominated by the product (ratio well under 3).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.core.evaluation.metrics import LabelRelevance, evaluate_embeddings  # noqa: E402


def make_data(n: int, dim: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)
    centres = rng.standard_normal((n_labels, dim)).astype(np.float32)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    vecs *= 3.0
    vecs += centres[labels]
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs, labels


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=1000)
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    vecs, labels = make_data(args.n, args.dim, args.labels, args.seed)
    relevance = LabelRelevance.leave_one_out(labels)
    print(f"n={args.n} dim={args.dim} labels={args.labels} chunk={args.chunk}")

    def product() -> tuple[float, float]:
        gallery = vecs.copy()  # a distinct array: numpy computes X @ X.T with SYRK (half the work)
        out = np.empty((args.n, args.n), np.float32)
        out.fill(0.0)  # touch the pages outside the timing
        w0, c0 = time.perf_counter(), time.process_time()
        np.matmul(vecs, gallery.T, out=out)
        return time.perf_counter() - w0, time.process_time() - c0

    # The product is timed before and after the evaluation: on a shared machine the load
    # can change between the two measurements.
    mm_before = product()
    peak_reset = reset_peak_rss()
    w0, c0 = time.perf_counter(), time.process_time()
    m = evaluate_embeddings(vecs, vecs, relevance, mode="image", chunk=args.chunk)
    t_eval, c_eval = time.perf_counter() - w0, time.process_time() - c0
    rss_eval = peak_rss_mib()
    mm_after = product()
    t_mm = (mm_before[0] + mm_after[0]) / 2
    c_mm = (mm_before[1] + mm_after[1]) / 2

    p = " ".join(f"P@{k}={v:.3f}" for k, v in m.precision_at_k.items())
    r = " ".join(f"R@{k}={v:.3f}" for k, v in m.recall_at_k.items())
    print(f"mAP={m.map_text}  {p}  {r}  queries={m.n_queries} without relevant={m.n_queries_without_relevant}")
    what = "during the evaluation" if peak_reset else "so far (includes the first reference product)"
    print(f"peak RSS {what}: {rss_eval:.0f} MiB (of which the vectors: {vecs.nbytes / 2**20:.0f} MiB)")
    print(
        f"single float32 product {args.n}x{args.dim} @ {args.dim}x{args.n}: {t_mm:.2f} s wall "
        f"(before {mm_before[0]:.2f}, after {mm_after[0]:.2f}), {c_mm:.2f} s CPU"
    )
    print(f"full evaluation (mAP, P@k, R@k, PR curves): {t_eval:.2f} s wall, {c_eval:.2f} s CPU")
    print(f"ratio evaluation / product: {t_eval / t_mm:.2f} wall, {c_eval / c_mm:.2f} CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
