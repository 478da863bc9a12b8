"""Caption sources: photo metadata, file names, provenance, source settings, and search using
the library's stored captions exactly as evaluation does (issue 11)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from sqlalchemy import select

from explorer.core import fusion
from explorer.core.captions import name_words, parse_sources, read_metadata
from explorer.core.captions.sources import CAPTION_PRIORITY, NAME_TRUST, USER_SOURCES, compose
from explorer.core.config import Settings
from explorer.core.errors import ExplorerError
from explorer.core.models.base import Caption

pyexiv2 = pytest.importorskip("pyexiv2")

XMP_EMPTY = ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
             '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"></rdf:RDF></x:xmpmeta><?xpacket end="w"?>')
LANG = 'lang="x-default"'


# ---------------------------------------------------------------------------------------
# the one list of sources


def test_one_list_of_sources_is_what_store_and_fusion_use():
    from explorer.core import store

    assert store.CAPTION_PRIORITY is CAPTION_PRIORITY
    assert fusion.USER_SOURCES is USER_SOURCES
    assert "metadata" in USER_SOURCES and "filename" not in USER_SOURCES and "ocr" not in USER_SOURCES
    assert fusion.caption_weight("metadata", 0.1, 0.0) == 1.0
    # names a person typed: a fixed trust below 1, whatever the agreement; machine text: agreement
    assert 0.5 < NAME_TRUST < 1.0 and NAME_TRUST ** 2 == pytest.approx(0.5)
    assert fusion.caption_weight("filename", 1.0, 0.0) == fusion.caption_weight("folder", 0.2, 0.9) == pytest.approx(NAME_TRUST)
    assert fusion.caption_weight("generated", 1.0, 0.3) == pytest.approx(0.3)
    assert fusion.caption_weight("generated", 0.0, 0.3) == pytest.approx(0.15)
    assert fusion.caption_weight("ocr", 1.0, 0.0) == 0.0


def test_compose_user_wins_then_names_then_machine_parts_join():
    gen = Caption("a photo of a dress", "generated", "structured-v1", 0.4)
    name = Caption("red summer dress", "filename", "filename-v1", 1.0)
    folder = Caption("holiday", "folder", "filename-v1", 1.0)
    ocr = Caption("SUMMER SALE", "ocr", "rapidocr", 0.9)
    # names a person typed lead on their own: generated text would dilute them in one sentence
    c = compose({"generated": gen, "filename": name, "ocr": ocr})
    assert (c.text, c.source, c.parts) == ("red summer dress", "filename", (("filename", "red summer dress"),))
    c = compose([folder, gen, name])
    assert c.text == "red summer dress; holiday" and c.source == "filename" and c.confidence == 1.0
    assert c.parts == (("filename", "red summer dress"), ("folder", "holiday"))
    # without names, the machine text joins, labelled by its first part
    c = compose({"ocr": ocr, "generated": gen})
    assert c.text == "a photo of a dress; SUMMER SALE" and c.source == "generated"
    assert c.parts == (("generated", "a photo of a dress"), ("ocr", "SUMMER SALE")) and c.confidence == 0.9
    meta = Caption("Red dress on a beach", "metadata", "metadata-v1", 1.0)
    c = compose({"generated": gen, "filename": name, "metadata": meta})
    assert (c.text, c.source) == ("Red dress on a beach", "metadata")
    side = Caption("my own words", "sidecar", "user", 1.0)
    assert compose([meta, side, gen]).source == "sidecar"
    assert compose({"filename": name}).source == "filename"
    assert compose({}) is None and compose({"ocr": Caption("", "ocr", "x", 0.0)}) is None


def test_sources_text_names_every_part():
    from explorer.core.captions.sources import sources_text

    assert sources_text("generated", (("generated", "a photo"), ("ocr", "SALE"))) == "generated + ocr"
    assert sources_text("filename", ("filename", "folder")) == "filename + folder"
    assert sources_text("metadata") == "metadata" and sources_text(None) == ""


def test_parse_sources():
    assert parse_sources("metadata, ocr") == ("metadata", "ocr")
    assert parse_sources("none") == () and parse_sources("") == ()
    assert parse_sources("all") == ("metadata", "filename", "folder", "ocr")
    with pytest.raises(ExplorerError, match="unknown caption source"):
        parse_sources("metadata,exif")


def test_settings_carry_caption_sources(monkeypatch, tmp_path):
    assert Settings().caption_sources == ("metadata", "filename")
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"caption_sources": ["ocr", "metadata"]}))
    monkeypatch.setenv("EXPLORER_CONFIG", str(cfg))
    assert Settings.load().caption_sources == ("metadata", "ocr")
    assert Settings.load({"caption_sources": "none"}).caption_sources == ()
    with pytest.raises(ExplorerError):
        Settings.load({"caption_sources": "bogus"})


# ---------------------------------------------------------------------------------------
# file names


@pytest.mark.parametrize("name, words", [
    ("red_summer_dress.jpg", "red summer dress"),
    ("address-book-new.png", "address book new"),
    ("RedDress.JPG", "red dress"),
    ("IMG_1234.JPG", None),
    ("DSC01234.jpg", None),
    ("DSCN0042.JPG", None),
    ("P1010123.JPG", None),
    ("PXL_20240101_123456789.jpg", None),
    ("Screenshot 2024-01-02 at 10.11.12.png", None),
    ("WhatsApp Image 2024-01-02 at 10.11.12.jpeg", None),
    ("IMG-20240101-WA0001.jpg", None),
    ("3f2a9c0d8e7b6a5f4e3d2c1b0a998877.jpg", None),
    ("550e8400-e29b-41d4-a716-446655440000.png", None),
    ("12345.jpg", None),
    ("x.jpg", None),
])
def test_file_name_words(name, words):
    assert name_words(name) == words


# ---------------------------------------------------------------------------------------
# metadata written by a real metadata library (exiv2, as digiKam and darktable use)


def _photo(skimage_dir, dst: Path, src="chelsea.png", fmt=None) -> Path:
    with Image.open(skimage_dir / src) as im:
        im.convert("RGB").resize((160, 120)).save(dst, format=fmt)
    return dst


def _exiv2(path: Path, xmp=None, iptc=None, exif=None) -> None:
    im = pyexiv2.Image(str(path))
    try:
        if xmp:
            im.modify_xmp(xmp)
        if iptc:
            im.modify_iptc(iptc)
        if exif:
            im.modify_exif(exif)
    finally:
        im.close()


def make_metadata_gallery(root: Path, skimage_dir) -> dict[str, str | None]:
    """Copies of sample photos with real metadata; returns file name -> expected metadata caption."""
    root.mkdir(parents=True)
    want: dict[str, str | None] = {}
    p = _photo(skimage_dir, root / "xmp.jpg", "coffee.png")
    _exiv2(p, xmp={"Xmp.dc.title": {LANG: "Morning espresso"}, "Xmp.dc.description": {LANG: "A cup of coffee on a saucer"},
                   "Xmp.dc.subject": ["coffee", "cup"], "Xmp.lr.hierarchicalSubject": ["Food|Drinks|espresso"]})
    want["xmp.jpg"] = "Morning espresso; A cup of coffee on a saucer; coffee, cup, espresso"
    p = _photo(skimage_dir, root / "iptc.jpg", "astronaut.png")
    _exiv2(p, iptc={"Iptc.Application2.Headline": "Astronaut portrait", "Iptc.Application2.Caption": "An astronaut in a white suit",
                    "Iptc.Application2.Keywords": ["space", "nasa"]})
    want["iptc.jpg"] = "Astronaut portrait; An astronaut in a white suit; space, nasa"
    p = _photo(skimage_dir, root / "exif.jpg", "rocket.jpg")
    _exiv2(p, exif={"Exif.Image.ImageDescription": "A rocket on the launch pad", "Exif.Image.XPTitle": "Launch day",
                    "Exif.Image.XPKeywords": "rocket;launch", "Exif.Photo.UserComment": "charset=Unicode Lift-off at dawn"})
    want["exif.jpg"] = "Launch day; A rocket on the launch pad; Lift-off at dawn; rocket, launch"
    p = root / "pngtext.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Title", "Ginger cat")
    info.add_itxt("Description", "Chelsea the cat, looking left")
    info.add_text("Comment", "Created with GIMP")
    with Image.open(skimage_dir / "chelsea.png") as im:
        im.convert("RGB").resize((160, 120)).save(p, pnginfo=info)
    want["pngtext.png"] = "Ginger cat; Chelsea the cat, looking left"
    p = _photo(skimage_dir, root / "sidecar.jpg", "motorcycle_left.png")
    side = root / "sidecar.jpg.xmp"  # darktable's naming
    side.write_text(XMP_EMPTY)
    _exiv2(side, xmp={"Xmp.dc.title": {LANG: "Red motorbike"}, "Xmp.dc.subject": ["darktable|format|jpg", "motorbike"]})
    want["sidecar.jpg"] = "Red motorbike; motorbike"
    p = _photo(skimage_dir, root / "olympus.jpg", "coins.png")
    _exiv2(p, exif={"Exif.Image.ImageDescription": "OLYMPUS DIGITAL CAMERA", "Exif.Image.Make": "OLYMPUS IMAGING CORP.",
                    "Exif.Image.Model": "E-M10"})
    want["olympus.jpg"] = None
    p = _photo(skimage_dir, root / "sony.jpg", "brick.png")
    _exiv2(p, exif={"Exif.Image.ImageDescription": "SONY DSC", "Exif.Image.XPComment": "   "},
           xmp={"Xmp.dc.title": {LANG: "  "}})
    want["sony.jpg"] = None
    _photo(skimage_dir, root / "red_summer_dress.jpg", "astronaut.png")
    want["red_summer_dress.jpg"] = None
    _photo(skimage_dir, root / "IMG_1234.JPG", "camera.png")
    want["IMG_1234.JPG"] = None
    return want


@pytest.fixture(scope="module")
def metadata_gallery(tmp_path_factory, skimage_dir):
    root = tmp_path_factory.mktemp("meta") / "g"
    return root, make_metadata_gallery(root, skimage_dir)


def test_metadata_reader_reads_what_exiv2_wrote(metadata_gallery):
    root, want = metadata_gallery
    for name, text in want.items():
        md = read_metadata(root / name)
        assert md.text == text, (name, md.parts, md.problems)
        assert not md.problems, (name, md.problems)
    md = read_metadata(root / "sidecar.jpg")
    assert {w for _, w, _ in md.parts} == {"xmp-sidecar dc:title", "xmp-sidecar dc:subject"}
    assert {w for _, w, _ in read_metadata(root / "exif.jpg").parts} == {
        "exif ImageDescription", "exif XPTitle", "exif XPKeywords", "exif UserComment"}


# ---------------------------------------------------------------------------------------
# bad metadata: recorded or ignored, never fatal, never loads external entities

BOMB = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">' + "".join(
    f'<!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">' for i in range(1, 10)) +
    ']><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>')


def make_bad_gallery(root: Path, skimage_dir, secret: Path) -> None:
    root.mkdir(parents=True)
    p = _photo(skimage_dir, root / "truncated_xmp.jpg", "coffee.png")
    p.with_name(p.name + ".xmp").write_text(XMP_EMPTY[:120])
    p = _photo(skimage_dir, root / "bomb.jpg", "coins.png")
    p.with_name(p.name + ".xmp").write_text(BOMB)
    with Image.open(skimage_dir / "brick.png") as im:
        im.convert("RGB").save(root / "embedded_bomb.jpg", xmp=BOMB.encode())
    p = _photo(skimage_dir, root / "external.jpg", "camera.png")
    p.with_suffix(".xmp").write_text(
        f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY ext SYSTEM "file://{secret}">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>&ext;</dc:title></rdf:Description></rdf:RDF></x:xmpmeta>')
    p = _photo(skimage_dir, root / "huge_keywords.jpg", "rocket.jpg")
    items = "".join(f"<rdf:li>keyword{i:07d} </rdf:li>" for i in range(400_000))  # ~10 MB
    p.with_name(p.name + ".xmp").write_text(XMP_EMPTY.replace("</rdf:RDF>", '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/">'
                                                              f"<dc:subject><rdf:Bag>{items}</rdf:Bag></dc:subject></rdf:Description></rdf:RDF>"))
    p = _photo(skimage_dir, root / "many_keywords.jpg", "chelsea.png")
    side = p.with_name(p.name + ".xmp")
    side.write_text(XMP_EMPTY)
    _exiv2(side, xmp={"Xmp.dc.subject": [f"tag{i}" for i in range(500)]})
    p = _photo(skimage_dir, root / "encodings.jpg", "astronaut.png")
    _exiv2(p, exif={"Exif.Image.XPTitle": "café", "Exif.Photo.UserComment": "charset=Ascii caf\u00e9 ol\u00e9"},
           iptc={"Iptc.Application2.Caption": "Köln"})
    # raw bytes that are not valid UTF-8 in EXIF ImageDescription (Pillow writes what it is given)
    with Image.open(p) as im:
        exif = im.getexif()
        exif[270] = "Stra\udcdfe"  # a lone surrogate: the writer falls back to bytes
        try:
            im.save(root / "latin1_desc.jpg", exif=exif)
        except Exception:  # noqa: BLE001 - the writer refusing it is fine too
            im.save(root / "latin1_desc.jpg")


def test_bad_metadata_is_recorded_or_ignored(tmp_path, skimage_dir):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    root = tmp_path / "bad"
    make_bad_gallery(root, skimage_dir, secret)
    for name in ("truncated_xmp.jpg", "bomb.jpg", "embedded_bomb.jpg", "external.jpg", "huge_keywords.jpg"):
        md = read_metadata(root / name)
        assert md.problems, name
        assert md.text is None or "lol" not in md.text
        assert "TOP-SECRET" not in (md.text or "")
    assert "over the" in read_metadata(root / "huge_keywords.jpg").problems[0]
    assert "refused" in read_metadata(root / "bomb.jpg").problems[0]
    md = read_metadata(root / "many_keywords.jpg")
    assert md.text.count(",") == 63 and "only the first 64" in md.problems[0]
    md = read_metadata(root / "encodings.jpg")
    assert "café" in md.text and "Köln" in md.text
    read_metadata(root / "latin1_desc.jpg")  # does not raise


@pytest.mark.slow
def test_bad_metadata_never_stops_an_indexing_run(tmp_path, skimage_dir, loader):
    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer

    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    make_bad_gallery(tmp_path / "bad", skimage_dir, secret)
    lib = Library(tmp_path / "lib", Settings(library=str(tmp_path / "lib")), loader=loader)
    summary = Indexer(lib).run([tmp_path / "bad"])
    assert summary.ok and summary.indexed == 8, summary.failures
    reasons = " ".join(n.reason for n in summary.notes)
    for what in ("refused", "not well-formed", "over the", "only the first 64"):
        assert what in reasons
    from explorer.core.store import CaptionRow

    with lib.store.session() as s:
        texts = [c.text for c in s.scalars(select(CaptionRow))]
    assert not any("TOP-SECRET" in t or "lollol" in t for t in texts)
    lib.close()


# ---------------------------------------------------------------------------------------
# indexing: every source stored with its provenance; switching sources re-embeds captions only


def _rows(lib):
    from explorer.core.store import CaptionRow, ImageRow

    with lib.store.session() as s:
        out = {}
        for r in s.scalars(select(ImageRow)):
            out[os.path.basename(r.path)] = (r.id, {c.source: c.text for c in s.scalars(select(CaptionRow).where(CaptionRow.image_id == r.id))})
        return out


def _vec_seqs(lib, kind, model_id):
    from explorer.core.store import VectorRow

    with lib.store.session() as s:
        return {v.image_id: v.seq for v in s.scalars(select(VectorRow).where(VectorRow.kind == kind, VectorRow.model_id == model_id))}


@pytest.fixture(scope="module")
def metadata_library(tmp_path_factory, metadata_gallery, loader):
    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer

    d = tmp_path_factory.mktemp("metalib") / "lib"
    lib = Library(d, Settings(library=str(d)), loader=loader)
    summary = Indexer(lib).run([metadata_gallery[0]])
    assert summary.ok, summary.failures
    return lib


@pytest.mark.slow
def test_index_stores_each_source_with_provenance(metadata_library, metadata_gallery):
    from explorer.core.edits import active_caption

    lib = metadata_library
    _, want = metadata_gallery
    rows = _rows(lib)
    for name, text in want.items():
        iid, caps = rows[name]
        assert caps.get("metadata") == text, (name, caps)
        active = active_caption(lib, iid)
        if text:  # a person's metadata is the user caption, weight 1
            assert (active.source, active.text) == ("metadata", text)
            assert fusion.caption_weight(active.source, active.confidence, 0.0) == 1.0
            assert "generated" not in caps  # no captioner needed
        else:
            assert "generated" in caps  # stored, shown in the detail view; the name words lead when there are any
            assert active.source == ("filename" if "filename" in caps else "generated")
    assert rows["red_summer_dress.jpg"][1]["filename"] == "red summer dress"
    active = active_caption(lib, rows["red_summer_dress.jpg"][0])
    assert active.text == "red summer dress" and active.parts == (("filename", "red summer dress"),)
    assert fusion.caption_weight(active.source, active.confidence, 0.0) == pytest.approx(NAME_TRUST)
    assert active_caption(lib, rows["IMG_1234.JPG"][0]).source == "generated"
    assert "filename" not in rows["IMG_1234.JPG"][1]
    assert rows["olympus.jpg"][1]["filename"] == "olympus"  # the name is a word; the EXIF boilerplate is not
    # the caption vector is the embedding of the active caption
    tx = lib.text_model
    from explorer.core.store import VectorRow

    with lib.store.session() as s:
        v = s.scalar(select(VectorRow).where(VectorRow.image_id == rows["red_summer_dress.jpg"][0], VectorRow.kind == "caption"))
        np.testing.assert_allclose(v.array(), tx.embed_texts([active.text])[0], atol=1e-5)


@pytest.mark.slow
def test_changing_sources_reembeds_captions_only(tmp_path, metadata_gallery, loader):
    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer

    gal = tmp_path / "g"
    shutil.copytree(metadata_gallery[0], gal)
    d = tmp_path / "lib"
    lib = Library(d, Settings(library=str(d)), loader=loader)
    assert Indexer(lib).run([gal]).ok
    img_before = _vec_seqs(lib, "image", lib.image_model.model_id)
    cap_before = _vec_seqs(lib, "caption", lib.text_model.model_id)
    rows = _rows(lib)
    lib.close()

    lib = Library(d, Settings(library=str(d), caption_sources=()), loader=loader)
    s = Indexer(lib).run([gal])
    assert s.ok
    after = _rows(lib)
    assert after["xmp.jpg"][1].keys() == {"generated"}  # metadata off: the captioner now speaks
    assert "filename" not in after["red_summer_dress.jpg"][1]
    assert _vec_seqs(lib, "image", lib.image_model.model_id) == img_before  # no image re-embedded
    cap_after = _vec_seqs(lib, "caption", lib.text_model.model_id)
    changed = {n for n, (i, _) in rows.items() if cap_after[i] != cap_before[i]}
    assert changed == {n for n in rows if n not in ("IMG_1234.JPG",)} - {"sony.jpg"} or "IMG_1234.JPG" not in changed
    assert "IMG_1234.JPG" not in changed and "red_summer_dress.jpg" in changed and "xmp.jpg" in changed
    # and nothing more to do on the next run
    s = Indexer(lib).run([gal])
    assert s.indexed == 0 and s.unchanged == len(rows)
    lib.close()


@pytest.mark.slow
def test_a_new_caption_rule_reembeds_captions_only(metadata_library, metadata_gallery):
    """A library indexed under an older rule for the active caption (``COMPOSE_RULE``) gets its
    captions re-embedded, not its images, on the next indexing run, and then nothing more."""
    from explorer.core.captions.sources import COMPOSE_RULE
    from explorer.core.pipeline import Indexer

    lib = metadata_library
    assert lib.store.get_meta("caption_rule") == COMPOSE_RULE
    img = _vec_seqs(lib, "image", lib.image_model.model_id)
    cap = _vec_seqs(lib, "caption", lib.text_model.model_id)
    lib.store.set_meta("caption_rule", "joined-v1")  # as written before the rule changed
    s = Indexer(lib).run([metadata_gallery[0]])
    assert s.ok and s.indexed == len(cap)
    assert _vec_seqs(lib, "image", lib.image_model.model_id) == img
    after = _vec_seqs(lib, "caption", lib.text_model.model_id)
    assert after.keys() == cap.keys() and all(after[i] != cap[i] for i in cap)
    assert lib.store.get_meta("caption_rule") == COMPOSE_RULE
    s = Indexer(lib).run([metadata_gallery[0]])
    assert s.indexed == 0 and s.unchanged == len(cap)


# ---------------------------------------------------------------------------------------
# search uses what the library holds, exactly as evaluation does


@pytest.mark.slow
def test_search_of_a_library_image_equals_evaluation(metadata_library, metadata_gallery, tmp_path):
    from explorer.core.evaluate import _fused_matrices
    from explorer.core.search import QuerySpec, Searcher

    lib = metadata_library
    root, _ = metadata_gallery
    rows = _rows(lib)
    searcher = Searcher(lib)
    gal = lib.gallery_vectors()
    pos = {int(i): j for j, i in enumerate(gal.ids.tolist())}
    alpha = 0.5
    Q, G = _fused_matrices(gal, gal, alpha, gal.weights)
    copy = tmp_path / "elsewhere.jpg"
    shutil.copy(root / "xmp.jpg", copy)  # dropped from outside the library: matched by content
    for query, name in ((root / "xmp.jpg", "xmp.jpg"), (root / "red_summer_dress.jpg", "red_summer_dress.jpg"), (copy, "xmp.jpg")):
        iid = rows[name][0]
        res = searcher.search(QuerySpec(image=str(query)), modes=("image", "fused"), k=len(rows), alpha=alpha)
        pq = res.query
        assert pq.library_id == iid
        assert pq.caption_weight == pytest.approx(float(gal.weights[pos[iid]]))
        hits = res.modes["fused"].hits
        assert iid not in {h.image_id for h in hits} and len(hits) == len(rows) - 1  # left out of its own results
        want = Q[pos[iid]] @ G.T
        for h in hits:
            assert h.score == pytest.approx(float(want[pos[h.image_id]]), abs=1e-5)
    # a metadata caption is a user caption: weight 1, so fusion differs from image-only
    res = searcher.search(QuerySpec(image=str(root / "xmp.jpg")), modes=("image", "fused"), k=5, alpha=alpha)
    assert res.query.caption.source == "metadata" and res.query.caption_weight == 1.0
    assert [h.score for h in res.modes["image"].hits] != [h.score for h in res.modes["fused"].hits]


@pytest.mark.slow
def test_composed_and_object_queries_of_a_library_image_use_its_stored_caption(metadata_library, metadata_gallery):
    """As plain image queries do: the stored active caption (not a freshly generated one) is what
    the modifier edits, and what an object query's caption side uses, with its stored weight."""
    from explorer.core.search import QuerySpec, Searcher

    lib = metadata_library
    root, want = metadata_gallery
    rows = _rows(lib)
    iid = rows["xmp.jpg"][0]
    gal = lib.gallery_vectors([iid])
    searcher = Searcher(lib)
    res = searcher.search(QuerySpec(image=str(root / "xmp.jpg"), modifier="in the evening"), modes=("fused",), k=len(rows))
    pq = res.query
    assert pq.caption.source == "metadata" and pq.library_id == iid
    assert pq.target_text == "in the evening; " + want["xmp.jpg"]
    assert iid not in {h.image_id for h in res.modes["fused"].hits}
    res = searcher.search(QuerySpec(image=str(root / "xmp.jpg"), box=(10, 10, 120, 90)), modes=("image", "fused"), k=len(rows))
    pq = res.query
    assert pq.spec.kind == "object" and pq.caption.source == "metadata" and pq.library_id == iid
    assert pq.caption_weight == 1.0 and np.allclose(pq.caption_vec, gal.caption[0])
    assert not np.allclose(pq.image_vec, gal.image[0])  # the image side is the crop's
    assert all(iid not in {h.image_id for h in r.hits} for r in res.modes.values())
    # a name-led caption keeps its stored weight too
    iid = rows["red_summer_dress.jpg"][0]
    res = searcher.search(QuerySpec(image=str(root / "red_summer_dress.jpg"), box=(10, 10, 120, 90)), modes=("fused",), k=3)
    assert (res.query.caption.text, res.query.library_id) == ("red summer dress", iid)
    assert res.query.caption_weight == pytest.approx(NAME_TRUST)


@pytest.mark.slow
def test_window_query_of_a_library_image_uses_its_stored_caption(qtbot, tmp_path, metadata_gallery, loader):
    """In the window, a library image dropped as the query uses its stored caption and weight and
    is left out of its own results; the query bar and the result cards name every source of a
    composed caption (file name + folder words here)."""
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QSettings

    from explorer.core.evaluate import _fused_matrices
    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer
    from explorer.ui.main_window import MainWindow

    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    QUERY_TIMEOUT = 60_000

    def run_drop(qtbot, win, path):  # what the file manager does (as in test_ui)
        zone = win.search_page.drop_zone
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        pos = QPointF(zone.width() / 2, zone.height() / 2)
        with qtbot.waitSignal(win.search_page.queryFinished, timeout=QUERY_TIMEOUT):
            zone.dragEnterEvent(QDragEnterEvent(pos.toPoint(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                                Qt.KeyboardModifier.NoModifier))
            zone.dropEvent(QDropEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier))

    gal = tmp_path / "summer holiday"
    shutil.copytree(metadata_gallery[0], gal)
    d = tmp_path / "lib"
    lib = Library(d, Settings(library=str(d), caption_sources=("metadata", "filename", "folder")), loader=loader)
    assert Indexer(lib).run([gal]).ok
    rows = _rows(lib)
    vecs = lib.gallery_vectors()
    pos = {int(i): j for j, i in enumerate(vecs.ids.tolist())}
    Q, G = _fused_matrices(vecs, vecs, lib.fused_index_alpha, vecs.weights)
    win = MainWindow(lib.settings, library=lib, qsettings=QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat), gallery=str(gal))
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: win.ctx.warm, timeout=QUERY_TIMEOUT)
    page = win.search_page
    for name, source, weight in (("xmp.jpg", "metadata", 1.0), ("red_summer_dress.jpg", "filename + folder", NAME_TRUST)):
        iid = rows[name][0]
        run_drop(qtbot, win, gal / name)
        pq = page.prepared
        assert pq.library_id == iid and pq.caption_weight == pytest.approx(weight)
        assert page.caption_edit.text() == pq.caption.text
        assert page.caption_source.text() == f"{source} · weight {weight:.2f}"
        fused = page.results.columns["fused"]
        assert name not in [os.path.basename(p) for p in fused.names()]
        assert name not in [os.path.basename(p) for p in page.results.columns["image"].names()]
        want = Q[pos[iid]] @ G.T  # the evaluation's fused scores for this query
        for h in fused.model.hits:
            assert h.score == pytest.approx(float(want[pos[h.image_id]]), abs=1e-5)
    assert pq.caption.text == "red summer dress; summer holiday"
    named = [h for h in fused.model.hits if h.caption_source == "filename"]
    assert named and all(h.caption_sources == ("filename", "folder") for h in named)
    win.close()
    lib.close()


@pytest.mark.slow
def test_cli_caption_prints_each_source(metadata_library, metadata_gallery, capsys):
    from explorer.cli import main

    root, _ = metadata_gallery
    rc = main(["caption", str(root / "red_summer_dress.jpg"), "--library", str(metadata_library.dir)])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip() == "red summer dress  [filename]"
    rc = main(["caption", str(root / "red_summer_dress.jpg"), "--library", str(metadata_library.dir), "--sources"])
    out = capsys.readouterr().out
    assert rc == 0 and "stored in the library" in out
    assert "filename      red summer dress" in out and f"active: filename (filename), weight {round(NAME_TRUST, 4)}" in out
    rc = main(["caption", str(root / "xmp.jpg"), "--library", str(metadata_library.dir / "none"), "--no-models", "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and not rep["in_library"]
    by = {s["source"]: s for s in rep["sources"]}
    assert by["metadata"]["text"].startswith("Morning espresso") and by["filename"]["text"] == "xmp"
    assert rep["active"]["source"] == "metadata" and rep["active"]["weight"] == 1.0


# ---------------------------------------------------------------------------------------
# text in the image (OCR): models ship in the wheel, nothing is downloaded


def _text_image(path: Path, text: str) -> Path:
    from PIL import ImageDraw, ImageFont

    im = Image.new("RGB", (420, 140), "white")
    ImageDraw.Draw(im).text((20, 40), text, fill="black", font=ImageFont.load_default(size=44))
    im.save(path, quality=95)
    return path


@pytest.mark.slow
def test_ocr_source_reads_text_without_network(tmp_path, loader, monkeypatch):
    pytest.importorskip("rapidocr_onnxruntime")
    import socket

    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer

    def no_network(*a, **k):
        raise AssertionError("the OCR tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    gal = tmp_path / "g"
    gal.mkdir()
    _text_image(gal / "IMG_0001.jpg", "SUMMER SALE")
    d = tmp_path / "lib"
    lib = Library(d, Settings(library=str(d), caption_sources=("ocr",)), loader=loader)
    assert Indexer(lib).run([gal]).ok
    (iid, caps), = _rows(lib).values()
    assert caps["ocr"] == "SUMMER SALE" and "filename" not in caps
    from explorer.core.edits import active_caption

    assert active_caption(lib, iid).parts[-1] == ("ocr", "SUMMER SALE")
    # switching OCR off drops its part and re-embeds the caption only
    lib.close()
    lib = Library(d, Settings(library=str(d), caption_sources=()), loader=loader)
    img = _vec_seqs(lib, "image", lib.image_model.model_id)
    s = Indexer(lib).run([gal])
    assert s.ok and s.indexed == 1 and "ocr" not in _rows(lib)["IMG_0001.jpg"][1]
    assert _vec_seqs(lib, "image", lib.image_model.model_id) == img
    lib.close()


# ---------------------------------------------------------------------------------------
# the UI says which source each part came from; Settings turns sources on and off


def test_detail_view_names_each_part_source():
    from explorer.ui.detail import source_text
    from explorer.ui.session import ImageInfo

    info = ImageInfo(1, "/g/red_summer_dress.jpg", 10, 10, "ok", None,
                     [("generated", "a photo of a dress", 0.42), ("filename", "red summer dress", 1.0)], [],
                     [("generated", "a photo of a dress"), ("filename", "red summer dress")])
    assert info.caption == "a photo of a dress; red summer dress"
    text = source_text(info)
    assert text.splitlines()[0] == "source: captioner + file name words, confidence 0.42"
    assert "  file name words: red summer dress" in text
    meta = ImageInfo(2, "/g/x.jpg", 10, 10, "ok", None,
                     [("metadata", "Morning espresso", 1.0), ("filename", "x y", 1.0)], [], [("metadata", "Morning espresso")])
    text = source_text(meta)
    assert text.startswith("source: photo metadata") and "also stored: file name words" in text


def test_settings_dialog_has_a_checkbox_per_switchable_source(qtbot):
    from explorer.ui.settings_dialog import SettingsDialog

    class Tasks:
        def start(self, *a, **k):
            return None

    class Notify:
        def error(self, msg):
            raise AssertionError(msg)

    class Ctx:
        tasks, notify = Tasks(), Notify()

    dlg = SettingsDialog(Ctx(), Settings())
    qtbot.addWidget(dlg)
    assert set(dlg.source_checks) == {"metadata", "filename", "folder", "ocr"}
    assert dlg.source_checks["metadata"].isChecked() and not dlg.source_checks["ocr"].isChecked()
    dlg.source_checks["ocr"].setChecked(True)
    dlg.source_checks["filename"].setChecked(False)
    assert dlg.current().caption_sources == ("metadata", "ocr")
