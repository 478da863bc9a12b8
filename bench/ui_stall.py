"""How long the window's GUI thread stalls while 500 images index in the background.

The scenario is the one ``tests/test_ui_responsiveness.py`` drives (500 different 64x64 crops
of the sample photos, the real ``MainWindow`` offscreen, threads tuned as ``run_app`` does,
indexing started from the window, a 10 ms QTimer heartbeat on the GUI thread). That test
asserts behaviour only (the event loop keeps turning); this script runs it and prints the
figures it measured: max, p99 and median heartbeat gap (target: max <= 100 ms) and images/s,
with the machine's load average, which they depend on, and where the GUI thread's time went in
its long gaps (running its own code, waiting in the run queue for a core, or blocked on the GIL
or a lock; from Linux schedstat).

``--busy N`` adds N busy-loop processes for the duration (a stated, repeatable load on top of
whatever else runs; each in its own session, as another program would be); ``--modes process,thread`` runs the scenario once per indexing mode of the
window (``EXPLORER_INDEX_MODE``: a worker process, the default, or a thread of the window's
process), alternating, so both see the same load::

    python bench/ui_stall.py
    python bench/ui_stall.py --busy 2 --modes thread,process,process,thread
"""

from __future__ import annotations

import argparse
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


def run_once(mode: str | None) -> tuple[int, list[str], str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if mode:
        env["EXPLORER_INDEX_MODE"] = mode
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_ui_responsiveness.py"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("indexed ", "stalls: ", "peak RSS: "))]
    return r.returncode, lines, r.stdout[-3000:] + "\n" + r.stderr[-2000:]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes to run meanwhile (default 0)")
    ap.add_argument("--modes", default="", help="comma-separated indexing modes to run in turn (process, thread); "
                                                "default: the window's default, once")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] or [None]
    spinners = [mp.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    rc = 0
    try:
        for mode in modes:
            load = os.getloadavg()[0]
            code, lines, tail = run_once(mode)
            if code != 0 or not lines:
                print(tail)
                rc = 1
                continue
            print(f"[{mode or 'default'}] busy loops {args.busy}; load average at start {load:.1f}, at end {os.getloadavg()[0]:.1f}")
            for ln in lines:
                print("  " + ln + ("  (target: max gap <= 100 ms)" if ln.startswith("indexed ") else ""))
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    return rc


if __name__ == "__main__":
    sys.exit(main())
