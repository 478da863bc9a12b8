"""Asking the library: ``explorer search`` (by image, text, object box, or image + modifier; every
mode side by side, optional re-ranking and learned head) and ``explorer caption`` (what every
caption source says about an image, or setting the user's own caption)."""

from __future__ import annotations

import argparse
import json
import os

from ..core.errors import BadQuery, ExplorerError
from ..core.modes import BASE, LEARNED
from .common import add_library_and_model_options, open_library, settings_from


def parse_box(text: str | None):
    if not text:
        return None
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise BadQuery(f"--box needs four numbers x1,y1,x2,y2 in pixels, got '{text}'") from None
    if len(vals) != 4:
        raise BadQuery(f"--box needs four numbers x1,y1,x2,y2 in pixels, got '{text}'")
    return vals


def cmd_search(args) -> int:
    from ..core.modes import with_head
    from ..core.search import MODES, QuerySpec, Searcher

    if not args.image and args.text is None:
        raise BadQuery("give --image PATH, --text \"...\", or --image PATH --modify \"...\"")
    if args.modify is not None and not args.image:
        raise BadQuery("--modify needs --image (a composed query modifies an image)")
    if args.image and args.text is not None:
        raise BadQuery("use --text alone for text queries, or --image with --modify for composed queries")
    modes = MODES if args.mode == "all" else tuple(m.strip() for m in args.mode.split(","))
    lib = open_library(args, must_exist=True)
    if args.alpha is not None:
        if not 0.0 <= args.alpha <= 1.0:
            raise BadQuery(f"--alpha must be in [0, 1], got {args.alpha}")
    head = None
    if args.head:
        from ..core.learned import load_head

        head = load_head(args.head, lib)
        if args.mode == "all":
            modes = with_head(MODES)
    searcher = Searcher(lib, head=head)
    spec = QuerySpec(image=args.image, text=args.text, modifier=args.modify, box=parse_box(args.box), caption=args.caption)
    res = searcher.search(spec, modes=modes, k=args.k, alpha=args.alpha, rerank=args.rerank)
    if args.json:
        print(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
        return 0
    q = res.query
    print(f"query: {spec.kind}" + (f"  caption: {q.caption.text!r} ({q.caption.source}, weight {q.caption_weight:.2f})" if q.caption else ""))
    if q.target_text:
        print(f"target description: {q.target_text!r}")
    if q.detections:
        print("query objects: " + ", ".join(f"{d.label} {d.score:.2f}" for d in q.detections))
    for mode, r in res.modes.items():
        print(f"\n== {mode}" + (f" (rerank: {r.rerank})" if r.rerank != "none" else "") + (f"  [{r.note}]" if r.note else ""))
        for h in r.hits:
            others = " ".join(f"{m}:{'-' if v is None else v}" for m, v in h.other_ranks.items())
            print(f"{h.rank:>3}. {h.score:.4f}  {h.path}  [{others}]")
            if args.captions:
                print(f"       {h.caption}")
    for name, c in res.comparisons.items():
        print(f"\n{name}: overlap@{args.k} {c['overlap_at_k']:.2f}, spearman {c['spearman']}")
    return 0


def cmd_caption(args) -> int:
    """Show what every caption source says about an image and which caption is used; with a
    text, set the user's own caption (the image must be in the library)."""
    from ..core.captions.explain import explain_image
    from ..core.catalog import Catalog
    from ..core.edits import active_caption, set_user_caption

    settings = settings_from(args)
    has_lib = os.path.isfile(os.path.join(os.path.expanduser(settings.library), "library.sqlite"))
    if args.text is not None or not os.path.isfile(args.image):
        lib = open_library(args, settings, must_exist=True)
        iid = Catalog(lib.store).image_id(args.image)
        if iid is None:
            raise ExplorerError(f"{args.image} is not in the library at {lib.dir}; index its folder first")
        if args.text is not None:
            set_user_caption(lib, iid, args.text)
        cap = active_caption(lib, iid)
        print(f"{cap.text}  [{cap.source}]" if cap else "(no caption)")
        return 0
    lib = open_library(args, settings) if has_lib else None
    try:
        report = explain_image(args.image, settings, library=lib, run_models=not args.no_models)
    finally:
        if lib is not None:
            lib.close()
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    a = report["active"]
    print(f"{a['text']}  [{' + '.join(p[0] for p in a['parts'])}]" if a else "(no caption)")
    if report["in_library"] and not args.sources:
        return 0
    where = "stored in the library" if report["in_library"] else "read now (not in the library)"
    print(f"{report['path']}: {where}")
    for part in report["sources"]:
        state = "" if part["enabled"] else "  (source off)"
        print(f"  {part['source']:<14}{part['text'] if part['text'] else '-'}{state}")
        for d in part["details"]:
            print(f"  {'':<16}{d}")
    if a:
        print(f"active: {a['source']} ({' + '.join(p[0] for p in a['parts'])}), weight {a['weight']}")
    for n in report["notes"]:
        print(f"  note: {n}")
    return 0


def add_caption(sub) -> None:
    s = sub.add_parser("caption", help="show an image's caption from every source and which is used, or set your own (\"\" removes your edit)")
    add_library_and_model_options(s)
    s.add_argument("image", metavar="PATH")
    s.add_argument("text", nargs="?", help="the new caption; \"\" removes your edit")
    s.add_argument("--no-models", action="store_true", help="for a file not in the library: only sources that need no model")
    s.add_argument("--sources", action="store_true", help="also print what every caption source says (always for files not in the library)")
    s.add_argument("--json", action="store_true", help="print every source's part as JSON")
    s.set_defaults(func=cmd_caption)


def add_search(sub) -> None:
    s = sub.add_parser("search", help="search the library by image, text, object box, or image + modifier",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Examples:\n  explorer search --image query.jpg --mode all --k 10\n"
                                   "  explorer search --text \"a cat\" --mode caption\n"
                                   "  explorer search --image dress.jpg --modify \"the same dress in red\"")
    add_library_and_model_options(s)
    s.add_argument("--image", metavar="PATH", help="query image (anywhere on disk)")
    s.add_argument("--text", metavar="TEXT", help="text query")
    s.add_argument("--modify", metavar="TEXT", help="with --image: a sentence that modifies it (composed query)")
    s.add_argument("--box", metavar="X1,Y1,X2,Y2", help="with --image: search with this object (pixel box)")
    s.add_argument("--caption", metavar="TEXT", help="with --image: your own caption for the query image")
    s.add_argument("--mode", default="all", help=f"{', '.join(BASE)}, a comma list, or all (default)")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--alpha", type=float, help="caption fusion weight in [0, 1] (default: the library's)")
    s.add_argument("--rerank", default="none", choices=["none", "aqe", "superglobal", "kreciprocal"],
                   help="aqe: alpha-query expansion; superglobal: neighbourhood refinement of the top 50; kreciprocal: k-reciprocal re-ranking")
    s.add_argument("--captions", action="store_true", help="print each hit's caption")
    s.add_argument("--head", metavar="FILE", help=f"a trained fusion head (adds mode '{LEARNED}')")
    s.add_argument("--json", action="store_true", help="stable JSON output (schema retrieval-explorer/search/v1)")
    s.set_defaults(func=cmd_search)
