"""Label-naming user captions for the Fashion-MNIST dev set (the learned-fusion experiment's "user captions" row).

Fashion-MNIST has no human captions. To measure learned fusion with *informative* user
captions on it, as on the icon set (whose captions are the icons' names), each image gets a
product-title-like caption that names its class in one of several hand-written wordings
(``CLASS_WORDS``; synonyms and short descriptions, written once, never tuned on results). The
wording is chosen by the image's position in its sorted class folder (``i mod n``), so the file
is deterministic. These captions are invented for the experiment and say so wherever they are
reported; they are not data.

    python -m explorer.core.learned.fmnist GALLERY captions.json
    explorer index GALLERY --captions captions.json

The gallery comes from ``bench/devsets.py fmnist OUT`` (``explorer.core.samples.make_fashion_mnist``:
one folder per class, file names without words).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import ExplorerError
from ..samples import FASHION_MNIST_LABELS

#: class folder -> wordings that name the class (varied words, some sharing words across classes)
CLASS_WORDS: dict[str, tuple[str, ...]] = {
    "t-shirt": ("t-shirt", "short sleeve tee", "casual cotton top", "basic crew neck tee", "tank top for summer"),
    "trouser": ("trousers", "pair of pants", "slim fit jeans", "long legwear", "chino pants for men"),
    "pullover": ("pullover", "knitted sweater", "warm jumper", "long sleeve sweatshirt", "wool knitwear"),
    "dress": ("dress", "summer frock", "evening gown", "sleeveless midi dress", "women's party dress"),
    "coat": ("coat", "winter jacket", "padded outerwear", "long overcoat", "zip-up parka"),
    "sandal": ("sandals", "open-toe summer shoes", "strappy flip flops", "beach sandal", "flat slides"),
    "shirt": ("shirt", "button-down blouse", "collared office shirt", "flannel shirt", "long sleeve blouse"),
    "sneaker": ("sneakers", "running shoes", "low-top trainers", "canvas sport shoe", "athletic footwear"),
    "bag": ("bag", "leather handbag", "shoulder purse", "tote for shopping", "backpack"),
    "ankle-boot": ("ankle boots", "short leather boots", "chelsea boot", "heeled bootie", "winter boot for women"),
}
assert set(CLASS_WORDS) == set(FASHION_MNIST_LABELS)


def label_captions(gallery: str | os.PathLike) -> dict[str, str]:
    """``{absolute image path: caption}`` for a Fashion-MNIST gallery with one folder per class.

    Raises ``ExplorerError`` when the folder holds none of the class folders.
    """
    root = Path(gallery).resolve()
    out: dict[str, str] = {}
    for label, words in CLASS_WORDS.items():
        d = root / label
        if not d.is_dir():
            continue
        for i, p in enumerate(sorted(x for x in d.iterdir() if x.suffix.lower() == ".png")):
            out[str(p)] = words[i % len(words)]
    if not out:
        raise ExplorerError(f"{root} holds no Fashion-MNIST class folders ({', '.join(FASHION_MNIST_LABELS)}); "
                            "build one with `python bench/devsets.py fmnist OUT`")
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m explorer.core.learned.fmnist GALLERY captions.json", file=sys.stderr)
        return 2
    try:
        caps = label_captions(args[0])
    except ExplorerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args[1]).write_text(json.dumps(caps, indent=1, ensure_ascii=False), encoding="utf-8")
    print(f"{args[1]}: {len(caps)} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
