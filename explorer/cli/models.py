"""``explorer models``: the model roles, the backend chosen for each, where its weights were found
or what is missing; ``explorer models fetch SPEC`` downloads a real model (only on request)."""

from __future__ import annotations

import json
import sys
import time

from ..core.errors import ExplorerError
from .common import EXIT_FAILURES, EXIT_OK, add_model_options, settings_from


def cmd_fetch(args) -> int:
    from ..core.models.fetch import fetch_model

    if not args.spec:
        raise ExplorerError("usage: explorer models fetch SPEC (e.g. hf:Salesforce/blip-image-captioning-base)")
    tty = sys.stderr.isatty()
    state = {"last": 0.0, "file": None}

    def progress(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if name == state["file"] and now - state["last"] < (0.2 if tty else 5) and done < total:
            return
        state["last"], state["file"] = now, name
        frac = done / total if total else 1.0
        bar = "#" * int(frac * 30) + "." * (30 - int(frac * 30))
        line = f"[{bar}] {done / 1e6:8.1f} / {total / 1e6:.1f} MB  {name[-40:]}"
        sys.stderr.write(("\r" + line) if tty else (line + "\n"))
        sys.stderr.flush()

    res = fetch_model(args.spec, dest=args.dest, endpoint=args.endpoint, revision=args.revision,
                      progress=None if args.quiet else progress)
    if not args.quiet and tty:
        sys.stderr.write("\n")
    print(f"{res.repo}@{res.revision[:12]}: {len(res.files)} files in {res.folder} "
          f"({res.downloaded_bytes / 1e6:.1f} MB downloaded, {len(res.already_there)} already there"
          + (f", resumed {len(res.resumed)}" if res.resumed else "") + "); checksums verified")
    print(f"use it with: {res.use_hint(args.spec)}")
    return EXIT_OK


def cmd_models(args) -> int:
    from ..core.models.registry import ROLES, entries, entry_for, probe

    if getattr(args, "action", None) == "fetch":
        return cmd_fetch(args)

    settings = settings_from(args)
    rows = []
    all_ready = True
    for role in ROLES:
        spec = settings.spec(role)
        try:
            entry = entry_for(role, spec)
            av = probe(role, settings)
        except ExplorerError as e:
            rows.append({"role": role, "backend": spec, "ready": False, "where": "", "missing": str(e)})
            all_ready = False
            continue
        rows.append({"role": role, "backend": spec, "summary": entry.summary, "ready": av.ready, "where": av.where, "missing": av.hint})
        all_ready &= av.ready
    from ..core.models import engines, quantize

    try:
        engine = {"setting": settings.engine, "encoders": engines.resolve(settings.engine),
                  "detector": engines.resolve_detector(settings.engine), "cache": str(engines.cache_dir()),
                  "precision": quantize.check_precision(settings.engine_precision)}
        if engine["precision"] == "int8":
            quantize.require_int8(engine["detector"], "the detector")
    except ExplorerError as e:
        engine = {"setting": settings.engine, "precision": settings.engine_precision, "error": str(e)}
        all_ready = False
    if args.json:
        print(json.dumps({"roles": rows, "ready": all_ready, "engine": engine, "available": [e.__dict__ for e in entries()]}, indent=2, default=list))
        return EXIT_OK if all_ready else EXIT_FAILURES
    if "error" in engine:
        print(f"engine     {engine['setting']:<28} MISSING\n{'':<10} to fix: {engine['error']}")
    else:
        print(f"engine     {engine['setting']:<28} encoders: {engine['encoders']}, SSD detector: {engine['detector']}, "
              f"precision {engine['precision']}; exports cached in {engine['cache']}")
    for r in rows:
        state = "ready" if r["ready"] else "MISSING"
        print(f"{r['role']:<10} {r['backend']:<28} {state}")
        if r.get("summary"):
            print(f"{'':<10} {r['summary']}")
        if r["ready"]:
            print(f"{'':<10} weights: {r['where']}")
        else:
            print(f"{'':<10} to fix: {r['missing']}")
    print("\nother backends:")
    for e in entries():
        if e.name not in {r["backend"].split(':')[0] for r in rows} and "classifier" not in e.roles:
            print(f"  {e.name:<14} ({', '.join(e.roles)}) {e.summary}")
    print("\nall roles ready" if all_ready else "\nsome roles are missing weights (see 'to fix')")
    return EXIT_OK if all_ready else EXIT_FAILURES


def add_models(sub) -> None:
    s = sub.add_parser("models", help="list model roles, chosen backends, where weights were found, what is missing")
    add_model_options(s)
    s.add_argument("--json", action="store_true")
    s.add_argument("action", nargs="?", choices=["fetch"], help="fetch: download a real model into models/ (only on request)")
    s.add_argument("spec", nargs="?", metavar="SPEC", help="what to fetch: hf:ORG/NAME, hf-detr:..., hf-owlvit:..., open_clip:ORG/NAME")
    s.add_argument("--endpoint", metavar="URL", help="model hub URL (default $HF_ENDPOINT or the Hugging Face hub)")
    s.add_argument("--revision", default="main", help="branch, tag or commit to fetch (default main)")
    s.add_argument("--dest", metavar="DIR", help="folder to put the files in (default models/ORG--NAME)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_models)
