"""Ground-truth formats: parsing small fixtures, relevance rules, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from explorer.core.errors import BadGroundTruth, ExplorerError
from explorer.core.evaluation import GroundTruth, GTItem, evaluate_scores, load_ground_truth


def img(path: Path, color=(200, 30, 30), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower(), "PNG")
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def bad(spec) -> str:
    with pytest.raises(BadGroundTruth) as ei:
        load_ground_truth(spec)
    msg = str(ei.value)
    assert "\n" not in msg
    assert isinstance(ei.value, ExplorerError)
    return msg


# -- folders ----------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path) -> Path:
    root = tmp_path / "pets"
    img(root / "cat" / "a.png")
    img(root / "cat" / "b.JPG")
    img(root / "dog" / "c.jpeg")
    img(root / "dog" / "deeper" / "d.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    img(root / "loose.png")  # unlabelled distractor
    return root


def test_folders_labels_and_leave_one_out(folders):
    gt = load_ground_truth(f"folders:{folders}")
    assert gt.name == "pets" and gt.kind == "labels"
    assert gt.labels() == ["cat", "dog"]
    by_name = {it.path.name: it for it in gt.items}
    assert set(by_name) == {"a.png", "b.JPG", "c.jpeg", "d.png", "loose.png"}
    assert by_name["d.png"].label == "dog" and by_name["loose.png"].label is None
    assert all(it.path.is_absolute() for it in gt.items)
    q, g = gt.queries(), gt.gallery()
    assert [p.name for p in q] == ["a.png", "b.JPG", "c.jpeg", "d.png"]
    assert len(g) == 5
    rel, ign = gt.relevance(q, g)
    names = [p.name for p in g]
    a, b, c, d, loose = (names.index(n) for n in ("a.png", "b.JPG", "c.jpeg", "d.png", "loose.png"))
    assert rel[0].tolist() == [j == b for j in range(5)]  # a: only b (itself ignored)
    assert rel[3, c] and not rel[3, d] and not rel[:, loose].any()
    assert ign[0, a] and ign[3, d] and ign.sum() == 4
    # Bare DIR is accepted and gives the same result.
    assert [it.path for it in load_ground_truth(str(folders)).items] == [it.path for it in gt.items]
    # The dense relevance and the block source give the same metrics.
    scores = np.random.default_rng(0).random((len(q), len(g)))
    m1 = evaluate_scores(scores, rel, ign)
    m2 = evaluate_scores(scores, gt.relevance_source(q, g))
    np.testing.assert_array_equal(m1.ap, m2.ap)


def test_folders_empty_class_folder_is_named(folders):
    (folders / "empty_class").mkdir()
    (folders / "empty_class" / "readme.txt").write_text("x")
    msg = bad(f"folders:{folders}")
    assert "empty_class" in msg and "no images" in msg


def test_folders_missing_or_without_classes(tmp_path):
    assert "not found" in bad(f"folders:{tmp_path / 'nope'}")
    img(tmp_path / "flat" / "x.png")
    assert "no class sub-folders" in bad(f"folders:{tmp_path / 'flat'}")


# -- CSV ---------------------------------------------------------------------------------


def test_csv_image_label(tmp_path):
    img(tmp_path / "imgs" / "1.png")
    img(tmp_path / "imgs" / "2.png")
    abs3 = img(tmp_path / "elsewhere" / "3.jpg")
    (tmp_path / "gt.csv").write_text(f"image,label\nimgs/1.png,red\n\nimgs/2.png,red\n{abs3},blue\n")
    gt = load_ground_truth(f"csv:{tmp_path / 'gt.csv'}")
    assert gt.name == "gt" and gt.kind == "labels"
    assert [(it.path.name, it.label) for it in gt.items] == [("1.png", "red"), ("2.png", "red"), ("3.jpg", "blue")]
    rel, ign = gt.relevance(gt.queries(), gt.gallery())
    np.testing.assert_array_equal(rel, [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(ign, np.eye(3, dtype=bool))


def test_csv_query_relevant_with_junk(tmp_path):
    for n in ("q1", "q2", "g1", "g2", "g3"):
        img(tmp_path / f"{n}.png")
    (tmp_path / "pairs.csv").write_text(
        "query,relevant,ignore\n"
        "q1.png,g1.png,\n"
        "q1.png,g2.png,0\n"
        "q1.png,g3.png,1\n"
        "q2.png,q1.png,\n"
    )
    gt = load_ground_truth(f"csv:{tmp_path / 'pairs.csv'}")
    assert gt.kind == "pairs"
    assert [p.name for p in gt.queries()] == ["q1.png", "q2.png"]
    roles = {it.path.name: it.role for it in gt.items}
    assert roles == {"q1.png": "both", "q2.png": "query", "g1.png": "gallery", "g2.png": "gallery", "g3.png": "gallery"}
    gallery = [tmp_path / f"{n}.png" for n in ("g1", "g2", "g3", "q1", "q2")]
    rel, ign = gt.relevance(gt.queries(), gallery)
    np.testing.assert_array_equal(rel, [[1, 1, 0, 0, 0], [0, 0, 0, 1, 0]])
    np.testing.assert_array_equal(ign, [[0, 0, 1, 1, 0], [0, 0, 0, 0, 1]])


def test_csv_two_column_pairs(tmp_path):
    img(tmp_path / "q.png")
    img(tmp_path / "r.png")
    (tmp_path / "p.csv").write_text("Query, Relevant\nq.png,r.png\n")
    gt = load_ground_truth(f"csv:{tmp_path / 'p.csv'}")
    assert gt.pairs == {(tmp_path / "q.png").resolve(): {(tmp_path / "r.png").resolve()}}


@pytest.mark.parametrize(
    "text, expect",
    [
        ("path,class\na.png,x\n", ":1:"),  # wrong header
        ("image,label\na.png,x\nmissing.png,y\n", ":3:"),  # unknown image file
        ("image,label\na.png\n", ":2:"),  # missing column
        ("image,label\na.png,x\na.png,\n", ":3:"),  # empty field
        ("image,label\na.png,x\na.png,y\n", ":3:"),  # conflicting label
        ("query,relevant,ignore\na.png,a.png,maybe\n", ":2:"),  # bad ignore flag
    ],
)
def test_csv_errors_name_the_line(tmp_path, text, expect):
    img(tmp_path / "a.png")
    (tmp_path / "bad.csv").write_text(text)
    msg = bad(f"csv:{tmp_path / 'bad.csv'}")
    assert f"bad.csv{expect}" in msg


def test_csv_error_details(tmp_path):
    img(tmp_path / "a.png")
    (tmp_path / "h.csv").write_text("path,class\na.png,x\n")
    assert "header must be" in bad(f"csv:{tmp_path / 'h.csv'}")
    (tmp_path / "m.csv").write_text("image,label\nmissing.png,y\n")
    assert "missing.png" in bad(f"csv:{tmp_path / 'm.csv'}")
    (tmp_path / "e.csv").write_text("image,label\na.png, \n")
    assert "empty 'label'" in bad(f"csv:{tmp_path / 'e.csv'}")
    assert "file not found" in bad(f"csv:{tmp_path / 'none.csv'}")


# -- COCO --------------------------------------------------------------------------------


def coco_doc() -> dict:
    return {
        "images": [
            {"id": 1, "file_name": "one.png"},
            {"id": 2, "file_name": "two.jpg"},
            {"id": 3, "file_name": "three.png"},
            {"id": 4, "file_name": "empty.png"},
        ],
        "categories": [{"id": 10, "name": "person"}, {"id": 11, "name": "dog"}],
        "annotations": [
            {"id": 100, "image_id": 1, "category_id": 10, "bbox": [0, 0, 2, 2]},
            {"id": 101, "image_id": 1, "category_id": 11, "bbox": [1, 1, 4, 3]},  # largest: dog
            {"id": 102, "image_id": 2, "category_id": 11, "bbox": [0, 0, 5, 5]},
            {"id": 103, "image_id": 3, "category_id": 10, "bbox": [2, 2, 3, 3]},
            {"id": 104, "image_id": 3, "caption": "a person standing"},
        ],
        "captions": [{"image_id": 2, "caption": "a brown dog"}],
    }


@pytest.fixture
def coco(tmp_path) -> Path:
    img(tmp_path / "one.png")
    img(tmp_path / "images" / "two.jpg")  # found through the images/ sibling folder
    img(tmp_path / "three.png")
    img(tmp_path / "empty.png")
    (tmp_path / "ann.json").write_text(json.dumps(coco_doc()))
    return tmp_path / "ann.json"


def test_coco_labels_boxes_captions(coco):
    gt = load_ground_truth(f"coco:{coco}")
    assert gt.name == "ann" and gt.kind == "labels"
    labels = {it.path.name: it.label for it in gt.items}
    assert labels == {"one.png": "dog", "two.jpg": "dog", "three.png": "person", "empty.png": None}
    paths = {it.path.name: it.path for it in gt.items}
    assert paths["two.jpg"].parent.name == "images"
    assert gt.boxes[paths["one.png"]] == [("person", (0.0, 0.0, 2.0, 2.0)), ("dog", (1.0, 1.0, 5.0, 4.0))]
    assert gt.captions[paths["two.jpg"]] == ["a brown dog"]
    assert gt.captions[paths["three.png"]] == ["a person standing"]
    assert [p.name for p in gt.queries()] == ["one.png", "two.jpg", "three.png"]
    rel, _ = gt.relevance(gt.queries(), gt.gallery())
    np.testing.assert_array_equal(rel, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert any("unlabelled" in w for w in gt.warnings)


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (lambda d: d["annotations"][1].update(category_id=99), "annotations[1]: unknown category_id 99"),
        (lambda d: d["annotations"][2].update(image_id=42), "annotations[2]: unknown image_id 42"),
        (lambda d: d["images"][2].update(file_name="gone.png"), "images[2]"),
        (lambda d: d["images"][1].pop("file_name"), "images[1]: missing 'file_name'"),
        (lambda d: d["annotations"][0].update(bbox=[0, 0, 1]), "annotations[0]: 'bbox'"),
        (lambda d: d["captions"][0].update(image_id=7), "captions[0]: unknown image_id 7"),
        (lambda d: d["annotations"][3].update(image_id=[3]), "annotations[3]: unknown image_id [3]"),
        (lambda d: d["images"][0].update(id={"x": 1}), "images[0]: 'id' must be"),
    ],
)
def test_coco_errors_name_the_entry(coco, mutate, expect):
    doc = coco_doc()
    mutate(doc)
    coco.write_text(json.dumps(doc))
    msg = bad(f"coco:{coco}")
    assert expect in msg
    if "gone.png" in json.dumps(doc):
        assert "gone.png" in msg


def test_coco_invalid_json(coco):
    coco.write_text('{"images": [\n  {"id": 1,}\n]}')
    assert "ann.json:2: not valid JSON" in bad(f"coco:{coco}")


# -- DeepFashion2 ------------------------------------------------------------------------


def df2_write(root: Path, stem: str, source: str, pair_id: int, styles: list[int]) -> None:
    img(root / "image" / f"{stem}.jpg")
    anno = {"source": source, "pair_id": pair_id}
    for i, s in enumerate(styles, 1):
        anno[f"item{i}"] = {"style": s, "category_name": "short sleeve top", "bounding_box": [0, 0, 4 + i, 4]}
    (root / "annos").mkdir(parents=True, exist_ok=True)
    (root / "annos" / f"{stem}.json").write_text(json.dumps(anno))


@pytest.fixture
def df2(tmp_path) -> Path:
    root = tmp_path / "df2"
    df2_write(root, "000001", "user", 1, [1])  # matches 000003 (style 1) and 000004 (styles 2, 1)
    df2_write(root, "000002", "user", 2, [0])  # style 0 never matches, even with 000005
    df2_write(root, "000003", "shop", 1, [1])
    df2_write(root, "000004", "shop", 1, [2, 1])
    df2_write(root, "000005", "shop", 2, [0])
    df2_write(root, "000006", "shop", 3, [1])  # same style, other pair: no match
    return root


def test_deepfashion2_rule(df2):
    gt = load_ground_truth(f"deepfashion2:{df2}")
    assert gt.kind == "deepfashion2"
    assert [p.name for p in gt.queries()] == ["000001.jpg", "000002.jpg"]
    assert [p.name for p in gt.gallery()] == ["000003.jpg", "000004.jpg", "000005.jpg", "000006.jpg"]
    rel, ign = gt.relevance(gt.queries(), gt.gallery())
    np.testing.assert_array_equal(rel, [[1, 1, 0, 0], [0, 0, 0, 0]])
    assert not ign.any()
    it = next(i for i in gt.items if i.path.name == "000004.jpg")
    assert it.pair_id == 1 and it.styles == (2, 1) and it.style == 2 and it.role == "gallery"
    assert gt.boxes[it.path][1] == ("short sleeve top", (0.0, 0.0, 6.0, 4.0))
    assert any("1 of 2 consumer images have no shop image" in w for w in gt.warnings)


def test_deepfashion2_errors(df2):
    (df2 / "annos" / "000003.json").write_text(json.dumps({"source": "store", "pair_id": 1}))
    msg = bad(f"deepfashion2:{df2}")
    assert "000003.json" in msg and "'source'" in msg
    (df2 / "annos" / "000003.json").unlink()
    assert "000003.json" in bad(f"deepfashion2:{df2}")
    assert "missing 'image' folder" in bad(f"deepfashion2:{df2 / 'annos'}")
    img(df2.parent / "only_images" / "image" / "1.jpg")
    assert "missing 'annos' folder" in bad(f"deepfashion2:{df2.parent / 'only_images'}")


# -- specs -------------------------------------------------------------------------------


def test_bad_specs(tmp_path):
    msg = bad(f"xml:{tmp_path}/gt.xml")
    assert "unknown ground-truth format 'xml:'" in msg and "folders:DIR" in msg and "coco:FILE" in msg
    assert "no path after 'csv:'" in bad("csv:")
    assert "expected" in bad("")
    assert "not found" in bad(str(tmp_path / "nothing-here"))
    (tmp_path / "x.csv").write_text("image,label\n")
    assert "needs a format prefix" in bad(str(tmp_path / "x.csv"))


def test_ground_truth_built_in_code():
    a, b, c = Path("/data/a.jpg"), Path("/data/b.jpg"), Path("/data/c.jpg")
    gt = GroundTruth("mini", [GTItem(a, "x"), GTItem(b, "x"), GTItem(c, None)], ignore={a: {b}})
    rel, ign = gt.relevance([a, b], [a, b, c])
    np.testing.assert_array_equal(rel, [[0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(ign, [[1, 1, 0], [0, 1, 0]])
    assert gt.describe().startswith("mini: 3 images, 1 labels, 2 queries")
