"""Measuring and learning against ground truth: ``explorer eval`` (mAP, P@k, R@k per mode, α sweep,
re-ranking, per-query comparison, PR plots), ``explorer import-gt`` (ground-truth captions and
boxes into the library) and ``explorer train-fusion`` (a learned fusion head, with its k-fold check)."""

from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import ExplorerError
from ..core.modes import ALL, BASE, LEARNED, with_head
from .common import add_library_and_model_options, open_library, percent_progress


def cmd_eval(args) -> int:
    from ..core.evaluate import run_evaluation

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    lib = open_library(args, must_exist=True)
    head = None
    if args.head:
        from ..core.learned.io import load_head

        head = load_head(args.head, lib)
        modes = with_head(modes)

    exclude = None
    if args.exclude_duplicates is not None:
        from ..core.duplicates import find_duplicates

        dups = find_duplicates(lib, threshold=args.exclude_duplicates)
        exclude = dups.exclusions()
        print(f"duplicates: {len(dups.groups)} groups at cosine >= {dups.threshold:.3f}, {len(exclude)} images excluded", file=sys.stderr)
    report = run_evaluation(lib, args.gt, modes=modes, alpha=args.alpha, rerank=args.rerank, alpha_sweep=args.alpha_sweep,
                            progress=percent_progress(args.quiet), learned_head=head, exclude_ids=exclude)
    for w in report.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("\n".join(report.summary_lines()))
    if args.per_query is not None:
        from ..core.per_query import compare_queries, default_pair

        pair = tuple(args.compare.split(",")) if args.compare else default_pair(m.mode for m in report.results)
        if pair is None or len(pair) != 2:
            raise ExplorerError("--per-query needs two evaluated modes (e.g. --modes image,fused, or --compare image,fused)")
        cmp = compare_queries(report, pair[0], pair[1], lib.store.active_captions())
        print(cmp.summary_line())
        if args.per_query:
            print(f"per-query: {cmp.write_csv(args.per_query)}")
        else:
            for r in cmp.sorted_rows("diff"):
                print(f"{r.diff:+.4f}  AP {r.ap_a:.3f} -> {r.ap_b:.3f}  first relevant {r.first_a} -> {r.first_b}  "
                      f"w {r.weight:.2f}  {r.path}")
    for path in args.plot or []:
        for written in report.write_plot(path):
            print(f"plot: {written}")
    if args.out:
        written = report.write_metrics(args.out)
        for w in written if isinstance(written, list) else [written]:
            print(f"metrics: {w}")
    return 0


def cmd_import_gt(args) -> int:
    from ..core.evaluation import load_ground_truth
    from ..core.gt_import import import_ground_truth

    lib = open_library(args, must_exist=True)
    gt = load_ground_truth(args.gt)
    counts = import_ground_truth(lib, gt, captions=not args.no_captions, boxes=not args.no_boxes)
    print(f"{counts['matched']} images matched: {counts['captions']} captions and {counts['boxes']} boxes imported as ground truth"
          + (f"; {counts['not_in_library']} annotated images are not in the library" if counts["not_in_library"] else ""))
    return 0


def cmd_train_fusion(args) -> int:
    from ..core.learned import train_fusion

    lib = open_library(args, must_exist=True)

    def progress(p):
        if not args.quiet:
            bits = [p.phase]
            if p.epoch:
                bits.append(f"epoch {p.epoch}/{p.epochs}")
            if p.total:
                bits.append(f"{p.done}/{p.total}")
            if p.loss is not None:
                bits.append(f"loss {p.loss:.4f}")
            if p.val_map is not None:
                bits.append(f"val mAP {p.val_map:.4f}")
            if p.message:
                bits.append(p.message)
            print("  ".join(bits), file=sys.stderr)

    split = {} if args.val_split is None else {"val_split": args.val_split}
    report = train_fusion(
        lib, args.gt, args.out, epochs=args.epochs, seed=args.seed, arcface=not args.no_arcface, **split,
        lambda_nce=args.lambda_nce, lambda_box=args.lambda_box, lambda_fused=args.lambda_fused,
        use_boxes=False if args.no_boxes else "auto", use_caption=not args.no_caption_token, arch=args.arch,
        patience=args.patience, threads=args.threads, progress=progress,
    )
    print("\n".join(report.lines()))
    out = report.to_dict()
    if args.folds:
        from ..core.learned.experiment import run_kfold

        if args.folds < 2:
            raise ExplorerError(f"--folds needs at least 2 (or 0 to skip the k-fold check), got {args.folds}")
        kf = run_kfold(
            lib, args.gt, folds=args.folds, closed_set=args.closed_set, seed=args.seed, epochs=args.epochs, **split,
            patience=args.patience, use_boxes=False if args.no_boxes else "auto", threads=args.threads, n_boot=2000,
            head_kw={"use_caption": not args.no_caption_token, "arch": args.arch},
            loss_kw={"arcface": not args.no_arcface, "lambda_nce": args.lambda_nce, "lambda_box": args.lambda_box,
                     "lambda_fused": args.lambda_fused},
            log=None if args.quiet else (lambda m: print(m, file=sys.stderr)))
        print()
        print("\n".join(kf.table()))
        out["kfold"] = kf.to_dict()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


def add_train_fusion(sub) -> None:
    s = sub.add_parser("train-fusion", help="train a learned fusion head on a labelled gallery (frozen backbones, cached features)")
    add_library_and_model_options(s)
    s.add_argument("--gt", required=True, metavar="SPEC", help="labelled ground truth, e.g. folders:DIR")
    s.add_argument("--out", required=True, metavar="FILE.safetensors", help="where to save the head, e.g. models/fusion-shop.safetensors")
    s.add_argument("--epochs", type=int, default=30)
    s.add_argument("--val-split", type=float, default=None, help="fraction of labels each inner fold of the selection holds out for validation "
                   "(open-set; default 1/3 = 3 inner folds, every label validated once; 0 = no validation)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-arcface", action="store_true", help="ablation: switch off the ArcFace term")
    s.add_argument("--lambda-nce", type=float, default=0.5, help="weight of the image-caption InfoNCE term (0 = off)")
    s.add_argument("--lambda-box", type=float, default=0.2, help="weight of the box-label term (0 = off)")
    s.add_argument("--lambda-fused", type=float, default=1.0,
                   help="weight of the supervised contrastive term on the full (α-fused + gated residual) score (0 = off)")
    s.add_argument("--folds", type=int, default=5,
                   help="after training, check the recipe by K-fold over labels (open-set) and print the table (0 = skip)")
    s.add_argument("--closed-set", action="store_true",
                   help="k-fold over images instead: same labels, new images (a labelled catalogue queried with new photos)")
    s.add_argument("--no-boxes", action="store_true", help="no box tokens")
    s.add_argument("--no-caption-token", action="store_true", help="no caption token")
    s.add_argument("--arch", choices=["attention", "mlp"], default="attention")
    s.add_argument("--patience", type=int, default=6, help="early stopping patience (epochs)")
    s.add_argument("--threads", type=int, help="torch threads (1 is fastest on a busy 2-core machine)")
    s.add_argument("--json", metavar="FILE", help="write the training report as JSON")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train_fusion)


def add_import_gt(sub) -> None:
    s = sub.add_parser("import-gt", help="use ground-truth captions and boxes (e.g. COCO) in the library")
    add_library_and_model_options(s)
    s.add_argument("--gt", required=True, metavar="SPEC", help="coco:FILE (or any ground-truth spec with captions/boxes)")
    s.add_argument("--no-captions", action="store_true")
    s.add_argument("--no-boxes", action="store_true")
    s.set_defaults(func=cmd_import_gt)


def add_eval(sub) -> None:
    from ..core.duplicates import DEFAULT_THRESHOLD as DUP_THRESHOLD

    s = sub.add_parser("eval", help="evaluate image-only vs caption-fused retrieval against ground truth",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Ground truth forms: folders:DIR (one label per sub-folder), csv:FILE (image,label or "
                                   "query,relevant[,ignore]), coco:FILE, deepfashion2:DIR.\n"
                                   "Example: explorer eval --gt folders:photos --modes image,fused,caption --alpha-sweep "
                                   "--plot pr.svg --plot pr.png --out metrics.json")
    add_library_and_model_options(s)
    s.add_argument("--gt", required=True, metavar="SPEC", help="folders:DIR | csv:FILE | coco:FILE | deepfashion2:DIR")
    s.add_argument("--modes", default=",".join(BASE), help=f"comma list of {', '.join(ALL)}")
    s.add_argument("--alpha", type=float, help="fusion weight (default: the library's)")
    s.add_argument("--rerank", default="none", metavar="METHODS",
                   help="none, aqe, superglobal, kreciprocal, both (none and aqe) or a comma list: evaluate each")
    s.add_argument("--alpha-sweep", action="store_true", help="also report fused mAP for alpha = 0, 0.1, ..., 1")
    s.add_argument("--head", metavar="FILE", help=f"a trained fusion head (adds the '{LEARNED}' mode)")
    s.add_argument("--plot", action="append", metavar="FILE", help="write the PR plot (.png, .svg or .pdf); repeatable")
    s.add_argument("--out", metavar="FILE", help="write metrics (.json, or .csv plus _per_query.csv)")
    s.add_argument("--per-query", nargs="?", const="", metavar="CSV",
                   help="where captions help or hurt: one row per query (AP of two modes, first relevant ranks, caption weight); "
                        "printed, or written to CSV")
    s.add_argument("--compare", metavar="A,B", help="the two modes --per-query compares (default image,fused)")
    s.add_argument("--exclude-duplicates", nargs="?", const=DUP_THRESHOLD, type=float, metavar="T",
                   help=f"leave out all but one image of each duplicate group (near-duplicate cosine >= T, default {DUP_THRESHOLD})")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_eval)
