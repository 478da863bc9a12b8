"""What each caption source says about one image, and which caption is used (``explorer caption IMAGE``).

For an image in the library it reports the rows indexing stored (with their weight); for any
other file it reads every source now, exactly as the indexer would.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ExplorerError
from ..models.base import Caption
from . import metadata_caption, name_captions, read_sidecar
from .sources import FILENAME, FOLDER, GENERATED, METADATA, OCR, SIDECAR, SOURCES, compose


def _entry(src, enabled: bool, cap, details=()) -> dict:
    return {"source": src.name, "label": src.label, "kind": src.kind, "enabled": enabled,
            "text": cap.text if cap is not None else None, "model_id": cap.model_id if cap is not None else None,
            "details": list(details)}


def explain_image(image: str | os.PathLike, settings, library=None, run_models: bool = True) -> dict:
    """A JSON-able report: every source's text (or None), the active caption and its weight."""
    from .. import fusion

    path = os.path.realpath(os.path.expanduser(os.fspath(image)))
    if not os.path.isfile(path):
        raise ExplorerError(f"no such image file: {image}")
    enabled = set(settings.caption_sources)
    notes: list[str] = []
    if library is not None:
        row = library.catalog.image_state(path)
        if row is not None and row.status == "ok":
            rows = library.catalog.captions_by_source([row.image_id]).get(row.image_id, {})
            active = compose(rows)
            weight = fusion.caption_weight(active.source, active.confidence, row.caption_agreement) if active else 0.0
            return {"path": path, "in_library": True, "image_id": row.image_id,
                    "sources": [_entry(src, not src.switchable or src.name in enabled, rows.get(src.name)) for src in SOURCES],
                    "active": _active(active, weight), "notes": notes}
    found: dict[str, Caption] = {}
    details: dict[str, list[str]] = {}
    side = read_sidecar(Path(path))
    if side:
        found[SIDECAR] = side
    cap, md = metadata_caption(path)
    if cap:
        found[METADATA] = cap
    details[METADATA] = [f"{fld} from {where}: {text}" for fld, where, text in md.parts]
    notes.extend(md.problems)
    found.update(name_captions(path, {FILENAME, FOLDER}))
    if run_models:
        from ..imageio import load_image
        from ..models.registry import ModelLoader

        loaded = load_image(path)
        loader = library.loader if library is not None else ModelLoader(settings)
        dets = loader.get("detector").detect([loaded.image])[0]
        found[GENERATED] = loader.get("captioner").caption([loaded.image], [dets])[0]
        if OCR in enabled:
            from .ocr import OcrReader

            o = OcrReader().read(loaded.image)
            if o.text:
                found[OCR] = o
    used = {k: v for k, v in found.items() if k not in {s.name for s in SOURCES if s.switchable} or k in enabled}
    active = compose(used)
    weight = fusion.source_trust(active.source) if active is not None else None
    return {"path": path, "in_library": False, "image_id": None,
            "sources": [_entry(src, not src.switchable or src.name in enabled, found.get(src.name), details.get(src.name, ()))
                        for src in SOURCES],
            "active": _active(active, weight), "notes": notes}


def _active(active, weight) -> dict | None:
    if active is None:
        return None
    return {"text": active.text, "source": active.source, "parts": [list(p) for p in active.parts],
            "weight": round(weight, 4) if weight is not None else "agreement-based (computed against a library)"}
