"""How long does one epoch of learned-fusion training take on cached features?

    python bench/train_fusion.py [--n 10000 --val 2000 --epochs 2 --arch attention --batch 128]

Synthetic features of the real shapes (1280-d image vector, 384-d caption vector, up to 8
boxes of 1280-d RoI features with geometry and labels; ``--labels`` classes), so it times
exactly what ``train_fusion`` does after the features are cached: the α-fused base pair of
the training images (once), the full loss (supervised contrastive on the α-fused + gated
residual score, ArcFace, InfoNCE with its second, caption-masked pass, box CE), backward,
AdamW, and the validation mAP after each epoch (validation queries against validation and
training images, with the head's 3,200-d query and gallery vectors). Prints seconds per epoch (training, validation) and the machine's
load, since other processes on the two cores change the figure. Target: well under a
minute per epoch for 10k images on this CPU.

``--inner-folds K`` times what ``train_fusion`` runs instead: the selection by ``K`` inner
folds over the labels (``fit_cv``; ``K`` heads in lockstep, each on (K-1)/K of the images,
validating on the rest against its training images), per pooled epoch, then the refit of the
kept head on all images, if validation justified one. ``--val`` is unused then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer.core.learned.features import BOX_DIM, GEOM_DIM, MAX_BOXES, FeatureSet  # noqa: E402


def synthetic(n: int, n_labels: int, seed: int) -> tuple[FeatureSet, list[str]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_labels, n)

    def unit(shape, centres=None):
        x = rng.standard_normal(shape, dtype=np.float32)
        if centres is not None:
            x += 2.0 * centres
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    img = unit((n, 1280), rng.standard_normal((n_labels, 1280), dtype=np.float32)[labels] / np.sqrt(1280) * 8)
    cap = unit((n, 384), rng.standard_normal((n_labels, 384), dtype=np.float32)[labels] / np.sqrt(384) * 8)
    nbox = rng.integers(0, MAX_BOXES + 1, n)
    mask = np.arange(MAX_BOXES)[None, :] < nbox[:, None]
    boxes = unit((n, MAX_BOXES, BOX_DIM)) * mask[..., None]
    geom = rng.random((n, MAX_BOXES, GEOM_DIM), dtype=np.float32) * mask[..., None]
    vocab = [f"obj{i}" for i in range(20)]
    box_labels = [[vocab[j] for j in rng.integers(0, 20, k)] for k in nbox.tolist()]
    fs = FeatureSet(np.arange(n, dtype=np.int64), img, cap, rng.random(n, dtype=np.float32), boxes.astype(np.float32), mask,
                    geom, box_labels)
    return fs, [f"c{v}" for v in labels.tolist()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="training images")
    ap.add_argument("--val", type=int, default=2000, help="validation images (0: no validation)")
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--arch", default="attention", choices=("attention", "mlp"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads while fitting (default: as configured)")
    ap.add_argument("--inner-folds", type=int, default=0, help="time fit_cv with K inner folds over the labels (train_fusion's path)")
    args = ap.parse_args(argv)

    import torch

    from explorer.core.learned.head import HeadConfig, LossConfig
    from explorer.core.learned.train import fit, fit_cv
    from explorer.core.models.device import configure_cpu_threads

    configure_cpu_threads()
    t0 = time.perf_counter()
    train, tl = synthetic(args.n, args.labels, 0)
    val, vl = synthetic(args.val, args.labels, 1) if args.val else (None, None)
    t_data = time.perf_counter() - t0
    cfg = HeadConfig("effnet-lite0-gem3@imagenet1k", 1280, "minilm", 384, box_feature_id="bench/roi-v1", arch=args.arch)
    t0 = time.perf_counter()
    if args.inner_folds:
        res = fit_cv(train, tl, cfg, LossConfig(), args.inner_folds, epochs=args.epochs, batch_size=args.batch, patience=0, seed=0,
                     threads=args.threads)
        args.val = 0
    else:
        res = fit(train, tl, val, vl, cfg, LossConfig(), epochs=args.epochs, batch_size=args.batch, patience=0, seed=0,
                  threads=args.threads)
    total = time.perf_counter() - t0
    per_epoch = [e.seconds for e in res.history]
    load = os.getloadavg()
    print(f"synthetic features: {args.n} train + {args.val} val images, {args.labels} labels, up to {MAX_BOXES} boxes ({t_data:.1f} s to make)")
    print(f"head: {args.arch}, batch {args.batch}, torch threads {args.threads or torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    what = f"{args.inner_folds} inner-fold heads in lockstep, pooled validation" if args.inner_folds else "train + validation"
    for e in res.history:
        print(f"epoch {e.epoch}: {e.seconds:.1f} s ({what}), loss {e.loss:.3f}, val mAP {e.val_map if e.val_map is not None else float('nan'):.3f}")
    print(f"time per epoch for {args.n} images: {np.mean(per_epoch):.1f} s (mean of {len(per_epoch)}; {total:.1f} s total)")
    if args.inner_folds:
        refit = total - sum(per_epoch)
        print(f"kept epoch {res.best_epoch} (0 = the α-fused start, no refit); selection + refit {total:.1f} s, of which refit and "
              f"set-up {refit:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
