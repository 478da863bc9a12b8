"""Feed ground truth into a library: its captions become trusted captions and its boxes
become detections (source ``ground-truth``), e.g. from a COCO file.

Ground-truth captions rank below a user's own edit and above everything generated; ground-
truth boxes are kept when the detector runs again (the pipeline only replaces its own).
"""

from __future__ import annotations

from .captions.sources import GROUND_TRUTH
from .catalog import path_key
from .edits import set_captions
from .evaluation.groundtruth import GroundTruth

GT_SOURCE = GROUND_TRUTH


def import_ground_truth(library, gt: GroundTruth, captions: bool = True, boxes: bool = True) -> dict:
    """Returns counts: images matched, captions set, boxes written, images not in the library."""
    with library.writing("importing ground truth"):
        return _import(library, gt, captions, boxes)


def _import(library, gt: GroundTruth, captions: bool, boxes: bool) -> dict:
    wanted = set(gt.captions) | set(gt.boxes)
    keys = {p: path_key(p) for p in wanted}  # the one path normalisation (catalog.path_key)
    known = library.catalog.image_statuses(keys.values())
    matched = {p: known[k][0] for p, k in keys.items() if known.get(k, (None, ""))[1] == "ok"}
    n_caps = n_boxes = 0
    if captions and gt.captions:
        n_caps = set_captions(library, [(matched[p], " / ".join(t for t in texts if t)) for p, texts in gt.captions.items() if p in matched],
                              GT_SOURCE, GT_SOURCE)
    if boxes and gt.boxes:
        n_boxes = library.store.replace_detections(GT_SOURCE, {matched[p]: items for p, items in gt.boxes.items() if p in matched})
    return {"matched": len(matched), "captions": n_caps, "boxes": n_boxes, "not_in_library": len(wanted) - len(matched)}
