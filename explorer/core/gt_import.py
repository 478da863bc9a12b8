"""Feed ground truth into a library: its captions become trusted captions and its boxes
become detections (source ``ground-truth``), e.g. from a COCO file.

Ground-truth captions rank below a user's own edit and above everything generated; ground-
truth boxes are kept when the detector runs again (the pipeline only replaces its own).
"""

from __future__ import annotations

import os

from sqlalchemy import delete, select

from .captions.sources import GROUND_TRUTH
from .edits import set_captions
from .evaluation.groundtruth import GroundTruth
from .store import DetectionRow, ImageRow

GT_SOURCE = GROUND_TRUTH


def import_ground_truth(library, gt: GroundTruth, captions: bool = True, boxes: bool = True) -> dict:
    """Returns counts: images matched, captions set, boxes written, images not in the library."""
    with library.writing("importing ground truth"):
        return _import(library, gt, captions, boxes)


def _import(library, gt: GroundTruth, captions: bool, boxes: bool) -> dict:
    with library.store.session() as s:
        ids = {os.fsdecode(pk): iid for iid, pk in s.execute(select(ImageRow.id, ImageRow.path_key).where(ImageRow.status == "ok"))}
    wanted = set(gt.captions) | set(gt.boxes)
    matched = {p: ids[str(p)] for p in wanted if str(p) in ids}
    n_caps = n_boxes = 0
    if captions and gt.captions:
        n_caps = set_captions(library, [(matched[p], " / ".join(t for t in texts if t)) for p, texts in gt.captions.items() if p in matched],
                              GT_SOURCE, GT_SOURCE)
    if boxes and gt.boxes:
        with library.store.Session.begin() as s:
            for p, items in gt.boxes.items():
                if p not in matched:
                    continue
                iid = matched[p]
                s.execute(delete(DetectionRow).where(DetectionRow.image_id == iid, DetectionRow.model_id == GT_SOURCE))
                for label, (x1, y1, x2, y2) in items:
                    s.add(DetectionRow(image_id=iid, model_id=GT_SOURCE, label=label, score=1.0, x1=x1, y1=y1, x2=x2, y2=y2))
                    n_boxes += 1
    return {"matched": len(matched), "captions": n_caps, "boxes": n_boxes, "not_in_library": len(wanted) - len(matched)}
