"""Offline default captioner: a deterministic caption composed from what the models see.

No captioning model ships in any package registry, so the default caption is *structured*:
it states the detected objects (with counts, rough position and size), the ImageNet labels
the classifier is confident about, and the dominant colours. Template::

    a photo of <objects>; top labels: <label>, <label>; colours: <colour>, <colour>

- ``<objects>``: detections grouped by label, largest group first, e.g. "two people and a
  large dog on the left". Position (left / centre / right, top / bottom) is given for the
  main object when a label occurs once; "large" when its box covers over 40% of the image,
  "small" under 5%. With no detection above threshold, the phrase is "an image" (or the
  top ImageNet label when that one is above ``LABEL_MIN``).
- ``top labels``: up to three ImageNet classes with probability >= ``LABEL_MIN``.
- ``colours``: up to three named colours covering >= ``COLOUR_MIN_SHARE`` of the pixels.

``Caption.confidence`` is the evidence behind the text: 1 - (1 - best detection score) *
(1 - summed label probability), so a caption built on nothing sure gets a low weight in fusion.
"""

from __future__ import annotations

import colorsys
from collections import Counter
from typing import Sequence

import numpy as np
from PIL import Image

from ..captions.sources import GENERATED
from .base import Caption, Captioner, Detection
from .registry import Availability

MODEL_ID = "structured-v1"
LABEL_MIN = 0.15
COLOUR_MIN_SHARE = 0.15
NUMBERS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine"}
IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "knife": "knives", "skis": "skis", "scissors": "scissors", "sheep": "sheep"}


def probe(argument: str, settings) -> Availability:
    from . import effnet, ssd

    for sub in (effnet.probe("", settings), ssd.probe("", settings)):
        if not sub.ready:
            return sub
    return Availability(True, "built in (uses the detector and the EfficientNet ImageNet classifier)")


def plural(label: str) -> str:
    if label in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[label]
    if label.endswith(("s", "sh", "ch", "x", "z")):
        return label + "es"
    return label + "s"


def article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


def position_phrase(box, w: int, h: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / max(w, 1), (box[1] + box[3]) / 2 / max(h, 1)
    horiz = "on the left" if cx < 0.36 else "on the right" if cx > 0.64 else ""
    vert = "at the top" if cy < 0.3 else "at the bottom" if cy > 0.7 else ""
    if horiz and vert:
        return f"{vert} {horiz.replace('on the ', '')}"
    return horiz or vert or "in the centre"


def size_word(box, w: int, h: int) -> str:
    frac = (box[2] - box[0]) * (box[3] - box[1]) / max(1, w * h)
    return "large " if frac > 0.4 else "small " if frac < 0.05 else ""


def objects_phrase(dets: Sequence[Detection], w: int, h: int) -> str:
    if not dets:
        return ""
    groups: dict[str, list[Detection]] = {}
    for d in sorted(dets, key=lambda d: -d.score):
        groups.setdefault(d.label, []).append(d)
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), -kv[1][0].score))
    parts = []
    for i, (label, ds) in enumerate(ordered[:4]):
        if len(ds) == 1:
            phrase = article(size_word(ds[0].box, w, h) + label)
            if i == 0:
                phrase += " " + position_phrase(ds[0].box, w, h)
        else:
            phrase = f"{NUMBERS.get(len(ds), 'many')} {plural(label)}"
        parts.append(phrase)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def colour_name(r: float, g: float, b: float) -> str:
    hue, sat, val = colorsys.rgb_to_hsv(r, g, b)
    hue *= 360
    if val < 0.2:
        return "black"
    if sat < 0.18:
        return "white" if val > 0.8 else "grey"
    if (hue < 40 or hue >= 345) and val < 0.6:
        return "brown"
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (195, "teal"), (255, "blue"), (290, "purple"), (345, "pink")):
        if hue < limit:
            return name
    return "red"


def dominant_colours(image: Image.Image, k: int = 3) -> list[str]:
    small = np.asarray(image.convert("RGB").resize((32, 32), Image.Resampling.BOX), dtype=np.float32) / 255.0
    counts = Counter(colour_name(*px) for px in small.reshape(-1, 3))
    total = sum(counts.values())
    return [name for name, c in counts.most_common(k) if c / total >= COLOUR_MIN_SHARE]


def compose(dets: Sequence[Detection], labels, colours: Sequence[str], w: int, h: int) -> tuple[str, float]:
    """The caption text and its confidence, from already computed evidence."""
    sure_labels = [c for c in labels if c.score >= LABEL_MIN][:3]
    subject = objects_phrase(dets, w, h) or (article(sure_labels[0].label) if sure_labels else "an image")
    text = f"a photo of {subject}"
    if sure_labels:
        text += "; top labels: " + ", ".join(c.label for c in sure_labels)
    if colours:
        text += "; colours: " + ", ".join(colours)
    best_det = max((d.score for d in dets), default=0.0)
    label_mass = min(1.0, sum(c.score for c in sure_labels))
    confidence = 1.0 - (1.0 - best_det) * (1.0 - label_mass)
    return text, float(np.clip(confidence, 0.0, 1.0))


class StructuredCaptioner(Captioner):
    model_id = MODEL_ID

    def __init__(self, loader):
        self.loader = loader
        self.classifier = loader.get("classifier", "effnet-classifier")
        self.weights_path = "built in"

    def caption(self, images, detections=None) -> list[Caption]:
        if detections is None:
            detections = self.loader.get("detector").detect(images)
        labels = self.classifier.top_labels(images, k=5)
        out = []
        for im, dets, labs in zip(images, detections, labels):
            text, conf = compose(dets, labs, dominant_colours(im), im.width, im.height)
            out.append(Caption(text, GENERATED, MODEL_ID, conf))
        return out


def load_captioner(argument: str, loader) -> StructuredCaptioner:
    return StructuredCaptioner(loader)
