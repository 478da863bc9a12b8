"""How long the window's GUI thread stalls while 500 images index in the background, twice.

The scenario is the one ``tests/test_ui_responsiveness.py`` drives (500 different 64x64 crops
of the sample photos, the real ``MainWindow`` offscreen, threads tuned as ``run_app`` does,
indexing started from the window, a 10 ms QTimer heartbeat on the GUI thread). That test
asserts behaviour only (the event loop keeps turning); this script runs it and prints the
figures it measured: max, p99 and median heartbeat gap (target: max <= 100 ms) and images/s,
with the machine's load average, which they depend on, and where the GUI thread's time went in
its long gaps (running its own code, waiting in the run queue for a core, or blocked on the GIL
or a lock; from Linux schedstat).

``--runs 2`` (the default) indexes a second, different folder of as many images in the same
window right after the first: with the worker process, run 1 pays for starting the window's
long-lived indexing process and loading its models, run 2 reuses them (the first-batch latency
of each run says what that is worth). ``--n`` sets the images per folder (500; small for a smoke
check).

``--busy N`` adds N busy-loop processes for the duration (a stated, repeatable load on top of
whatever else runs; each in its own session, as another program would be); ``--modes
process,thread`` runs the scenario once per indexing mode of the window (``EXPLORER_INDEX_MODE``:
the window's low-priority worker process, the default, or a thread of the window's process),
alternating, so both see the same load; a table per run and mode closes the output::

    python bench/ui_stall.py
    python bench/ui_stall.py --busy 2 --modes thread,process,process,thread
    python bench/ui_stall.py --n 40 --modes process,thread        # smoke check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _spin() -> None:  # pragma: no cover - a load generator
    """Busy loop in its own session: like another program (on Linux its own scheduling group)."""
    try:
        os.setsid()
    except OSError:
        pass
    while True:
        pass


def run_once(mode: str | None, n: int, runs: int) -> tuple[int, list[str], list[dict], str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               EXPLORER_STALL_N=str(n), EXPLORER_STALL_RUNS=str(runs))
    if mode:
        env["EXPLORER_INDEX_MODE"] = mode
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_ui_responsiveness.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("run ")]
    figures = [json.loads(ln.split(":", 1)[1]) for ln in r.stdout.splitlines() if ln.startswith("figures: ")]
    return r.returncode, lines, figures, r.stdout[-3000:] + "\n" + r.stderr[-2000:]


def table(rows: list[tuple[str, str, dict]]) -> str:
    """One line per (run of the bench, mode, indexing run in the window)."""
    head = ("| bench run (load) | mode | window run | first batch | max gap | p99 | gaps > 50 ms (total: waiting for a core / "
            "blocked) | img/s | peak RSS (window / indexing process) |")
    out = [head, "|" + "---|" * 9]
    for label, mode, f in rows:
        st = f.get("stalls")
        gaps = "n/a" if st is None else (f"{st['count']}" if not st["count"] else
                                         f"{st['count']} ({st['total']:.2f} s: {st['waiting']:.2f} s / {st['blocked']:.2f} s)")
        rss = f"{f['window_rss_mb'] / 1024:.2f} GB" + (f" / {f['worker_rss_mb'] / 1024:.2f} GB" if f.get("worker_rss_mb") else "")
        out.append(f"| {label} | {mode} | {f['run']} | {f['first_batch_s']:.1f} s | {f['max_ms']:.0f} ms | {f['p99_ms']:.1f} ms | "
                   f"{gaps} | {f['img_s']:.1f} | {rss} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes to run meanwhile (default 0)")
    ap.add_argument("--modes", default="", help="comma-separated indexing modes to run in turn (process, thread); "
                                                "default: the window's default, once")
    ap.add_argument("--n", type=int, default=500, help="images per indexed folder (default 500)")
    ap.add_argument("--runs", type=int, default=2, choices=(1, 2, 3), help="folders indexed one after the other in the same "
                                                                       "window (default 2)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] or [None]
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    rc = 0
    rows: list[tuple[str, str, dict]] = []
    try:
        for k, mode in enumerate(modes, 1):
            load = os.getloadavg()[0]
            code, lines, figures, tail = run_once(mode, args.n, args.runs)
            if code != 0 or not figures:
                print(tail)
                rc = 1
                continue
            end = os.getloadavg()[0]
            print(f"[{mode or 'default'}] busy loops {args.busy}; {args.n} images x {args.runs} runs; "
                  f"load average at start {load:.1f}, at end {end:.1f}")
            for ln in lines:
                print("  " + ln + ("  (target: max gap <= 100 ms)" if ": indexed " in ln else ""))
            rows += [(f"{k} ({load:.0f} → {end:.0f})", mode or "default", f) for f in figures]
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    if rows:
        print()
        print(table(rows))
    return rc


if __name__ == "__main__":
    sys.exit(main())
