"""COCO ground truth feeds the library: captions become trusted captions, boxes become detections."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from sqlalchemy import select

from explorer.core.library import Library
from explorer.core.store import DetectionRow, ImageRow


def test_import_coco_captions_and_boxes_then_reindex_keeps_them(tmp_path, indexed_sample, sample_gallery, loader):
    lib_dir = tmp_path / "lib"
    shutil.copytree(indexed_sample.dir, lib_dir)
    coco = {
        "images": [{"id": 1, "file_name": str(sample_gallery / "cat" / "chelsea.jpg")},
                   {"id": 2, "file_name": str(sample_gallery / "coffee" / "coffee.jpg")}],
        "categories": [{"id": 17, "name": "cat"}, {"id": 47, "name": "cup"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 17, "bbox": [10, 20, 200, 150]},
                        {"id": 2, "image_id": 2, "category_id": 47, "bbox": [150, 20, 300, 200]},
                        {"id": 3, "image_id": 1, "caption": "an orange tabby cat looking at the camera"}],
    }
    f = tmp_path / "coco.json"
    f.write_text(json.dumps(coco))
    base = [sys.executable, "-m", "explorer"]
    r = subprocess.run(base + ["import-gt", "--library", str(lib_dir), "--gt", f"coco:{f}"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 images matched: 1 captions and 2 boxes" in r.stdout
    r = subprocess.run(base + ["caption", "--library", str(lib_dir), str(sample_gallery / "cat" / "chelsea.jpg")],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "an orange tabby cat looking at the camera  [ground-truth]"
    # a user's edit outranks ground truth; removing it falls back to ground truth
    r = subprocess.run(base + ["caption", "--library", str(lib_dir), str(sample_gallery / "cat" / "chelsea.jpg"), "my cat"],
                       capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "my cat  [user-edited]"
    lib = Library(lib_dir, loader.settings, loader=loader)
    with lib.store.session() as s:
        cid = s.scalar(select(ImageRow.id).where(ImageRow.path.like("%/coffee/coffee.jpg")))
        gt_boxes = list(s.scalars(select(DetectionRow).where(DetectionRow.image_id == cid, DetectionRow.model_id == "ground-truth")))
    assert [(b.label, b.box) for b in gt_boxes] == [("cup", (150.0, 20.0, 450.0, 220.0))]
    # running the detector again (here: as if the detector model changed) keeps the ground-truth boxes
    from explorer.core.pipeline import Indexer

    with lib.store.Session.begin() as s:
        s.get(ImageRow, cid).detector_model = "an-older-detector"
    summary = Indexer(lib).run([sample_gallery])  # reads the shared gallery, writes only the library copy
    assert summary.ok and summary.indexed == 1
    with lib.store.session() as s:
        dets = list(s.scalars(select(DetectionRow).where(DetectionRow.image_id == cid)))
        assert s.get(ImageRow, cid).detector_model != "an-older-detector"
    assert {d.model_id for d in dets} == {"ground-truth", loader.get("detector").model_id}
