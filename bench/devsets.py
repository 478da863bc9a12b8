"""Development data sets, built from registry packages (never committed).

Two real, labelled, visible sets that every figure in the README is tuned and measured on:

- ``fmnist``: Fashion-MNIST test images from Debian's ``dataset-fashion-mnist`` (MIT), one
  folder per class (``explorer.core.samples.make_fashion_mnist``). No human captions.
- ``adwaita``: icons of the installed Adwaita theme (``/usr/share/icons/Adwaita/96x96``, context
  folders except ``apps``), ``--n`` evenly picked, scaled to 128 px and composited on white like the
  oxygen set: *other* images for validation queries (``bench/scale_million.py --val``).
- ``icons``: Debian's ``oxygen-icon-theme`` (LGPL), 128 px PNGs composited on white. Label = the
  freedesktop context folder (actions, apps, categories, devices, emotes, mimetypes, places,
  status); the file keeps the icon's name (``document-save-as.png``), and ``captions.json``
  beside the folders maps each file to the name's words ("document save as"): human-written,
  partly informative titles, like a product catalogue. The ``emblems`` context (2 icons) is left
  out. ``--max-per-label`` caps the large contexts (mimetypes has 353 icons) deterministically
  (sorted names, evenly spaced).

The theme package is fetched with ``apt-get download`` (no root needed) into
``bench/out/cache`` once and unpacked there with ``dpkg -x``.

Usage::

    python bench/devsets.py icons bench/out/icons [--max-per-label 120]
    python bench/devsets.py fmnist bench/out/fmnist [--per-class 100]
    python bench/devsets.py fmnist /tmp/val-src/fmnist --per-class 20 --offset 200   # not in /tmp/m-fm
    python bench/devsets.py adwaita /tmp/val-src/adwaita --n 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "out" / "cache"
ICON_PACKAGE = "oxygen-icon-theme"
ICON_CONTEXTS = ("actions", "apps", "categories", "devices", "emotes", "mimetypes", "places", "status")


def icon_theme_dir(cache: Path = CACHE, package: str = ICON_PACKAGE) -> Path:
    """The unpacked ``base/128x128`` folder of the oxygen theme, fetching the .deb once."""
    unpacked = cache / package
    base = unpacked / "usr/share/icons/oxygen/base/128x128"
    if base.is_dir():
        return base
    cache.mkdir(parents=True, exist_ok=True)
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        r = subprocess.run(["apt-get", "download", package], cwd=cache, capture_output=True, text=True)
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"cannot download {package} with apt-get ({r.stderr.strip().splitlines()[-1:]}); try 'apt-get update' first")
    subprocess.run(["dpkg", "-x", str(debs[-1]), str(unpacked)], check=True)
    if not base.is_dir():
        raise SystemExit(f"{package} has no {base.relative_to(unpacked)}")
    return base


def _evenly(items: list, n: int | None) -> list:
    if n is None or len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def make_icons(out: str | Path, max_per_label: int | None = None, cache: Path = CACHE) -> Path:
    """Write ``out/<context>/<icon-name>.png`` (RGB on white) and ``out/captions.json`` (idempotent)."""
    base = icon_theme_dir(cache)
    out = Path(out)
    captions: dict[str, str] = {}
    for context in ICON_CONTEXTS:
        src = base / context
        if not src.is_dir():
            continue
        names = _evenly(sorted(p.name for p in src.glob("*.png")), max_per_label)
        d = out / context
        d.mkdir(parents=True, exist_ok=True)
        for name in names:
            target = d / name
            if not target.exists():
                with Image.open(src / name) as im:
                    rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                Image.alpha_composite(bg, rgba).convert("RGB").save(target)
            captions[str(target.resolve())] = " ".join(Path(name).stem.replace("_", "-").split("-")).strip()
    (out / "captions.json").write_text(json.dumps(captions, indent=1, sort_keys=True))
    return out


def make_adwaita(out: str | Path, n: int = 200, theme: Path = Path("/usr/share/icons/Adwaita/96x96")) -> Path:
    """Write ``n`` Adwaita icons (evenly over the sorted files) as ``out/<context>/<name>.png``, 128 px on white."""
    files = sorted(p for p in theme.glob("*/*.png") if p.parent.name != "apps")
    if not files:
        raise SystemExit(f"no Adwaita icons in {theme}: apt-get install adwaita-icon-theme")
    out = Path(out)
    for src in _evenly(files, n):
        d = out / src.parent.name
        d.mkdir(parents=True, exist_ok=True)
        target = d / src.name
        if not target.exists():
            with Image.open(src) as im:
                rgba = im.convert("RGBA").resize((128, 128), Image.BICUBIC)
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            Image.alpha_composite(bg, rgba).convert("RGB").save(target)
    return out


def make_fmnist(out: str | Path, per_class: int = 100, offset: int = 0) -> Path:
    from explorer.core.samples import make_fashion_mnist

    return make_fashion_mnist(out, per_class=per_class, offset=offset)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="set", required=True)
    a = sub.add_parser("icons", help="the oxygen icon set (label = context, caption = icon name)")
    a.add_argument("out")
    a.add_argument("--max-per-label", type=int, default=None)
    b = sub.add_parser("fmnist", help="Fashion-MNIST test images, one folder per class")
    b.add_argument("out")
    b.add_argument("--per-class", type=int, default=100)
    b.add_argument("--offset", type=int, default=0)
    c = sub.add_parser("adwaita", help="installed Adwaita icons (other images, for validation queries)")
    c.add_argument("out")
    c.add_argument("--n", type=int, default=200)
    args = ap.parse_args(argv)
    if args.set == "icons":
        out = make_icons(args.out, args.max_per_label)
    elif args.set == "adwaita":
        out = make_adwaita(args.out, args.n)
    else:
        out = make_fmnist(args.out, args.per_class, args.offset)
    n = sum(1 for _ in Path(out).rglob("*.png"))
    print(f"{out}: {n} images")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
