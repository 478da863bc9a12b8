"""Indexing on Ray Data, with the same library format and results as the local indexer.

The driver (this process) does what needs the database; the cluster does what needs pixels
and models:

1. **plan** (driver): scan and plan exactly as :class:`explorer.core.pipeline.Indexer` does; every
   file to (re)process becomes a row whose *key* hashes the file (path, size, mtime), what must be
   recomputed, its caption context (stored captions, person-written captions read from files,
   file/folder name words, the enabled sources) and the model ids; rows are cut into shards of
   ``shard_size``;
2. **decode** (Ray tasks): hash and decode with ``Indexer.decode`` (the one safe decoder);
3. **models** (``map_batches`` over stateful actor pools, one per role — detector, captioner,
   image encoder, text encoder — each loading its model once; ``concurrency`` per role; GPU roles
   ask for ``gpus_per_actor`` when the cluster has GPUs): a batch that fails is retried image by
   image, and a failure is recorded against that image only. The captioner actor also reads text
   (OCR) when that source is on; the text actor embeds the caption chosen by the pipeline's own
   ``caption_to_embed`` (``captions.sources.compose``), so both engines embed the same text;
4. **shards** (driver): results stream back in order; each completed shard is written to
   ``LIBRARY/ray-shards/shard-<hash>.parquet`` (temp file + rename) and then **ingested** in one
   transaction by ``Indexer._commit`` — the local indexer's commit, so rows, captions, detections and
   vectors are stored exactly as the local indexer stores them; the shard file is then deleted.

**Resuming.** A killed job leaves each shard either ingested (its images are in the database, so
the next plan does not list them) or not. A rerun plans again; rows whose key matches a row of a
shard file still on disk are ingested from that file without recomputing, everything else is
computed again. Shard files left with no matching row (ingested just before a kill, or from files
that changed since) are deleted. Nothing is ingested twice: ingest goes through the current plan,
which knows each file's image id.

**Bad files** are recorded with their reason exactly as by the local indexer and never stop a run.

**Writer lock.** ``run`` holds the library's writer lock from start to end, as ``Indexer.run``
does (``LibraryBusy`` for a second writer, unless ``wait``); only the lock holder saves the
indices. A run that ends in an error is recorded as ``failed`` after saving what was ingested.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from ..captions import CaptionsFile
from ..captions.sources import GENERATED, OCR
from ..config import Settings
from ..errors import ExplorerError
from ..models.base import Caption, Detection
from ..models.registry import CAPTIONER, DETECTOR, IMAGE_ENCODER, TEXT_ENCODER
from ..pipeline import Decoded, Indexer, IndexSummary, Progress, Work, caption_to_embed, display, resolve_roots, scan

#: the model roles (explorer.core.models.registry) in the order the pipeline runs them
ROLES = (DETECTOR, CAPTIONER, IMAGE_ENCODER, TEXT_ENCODER)
#: roles whose backends run torch and so benefit from a GPU (the default detector runs in OpenCV)
GPU_ROLES = (CAPTIONER, IMAGE_ENCODER, TEXT_ENCODER)
SHARD_DIR = "ray-shards"


@dataclass
class RayOptions:
    """How the job uses the cluster. ``concurrency``: actors per role (default 1 each). When the
    cluster has fewer CPUs than the actors and decode tasks ask for together, every request is
    scaled down in proportion, so that all actor pools can start (a small local Ray)."""

    address: str | None = None
    shard_size: int = 64
    batch_size: int = 16
    concurrency: dict[str, int] = field(default_factory=dict)
    cpus_per_actor: float = 1.0
    cpus_per_decode: float = 1.0
    gpus_per_actor: float = 0.25
    #: ``ray.init`` keywords when this indexer starts a local Ray (ignored with ``address``)
    init_kwargs: dict = field(default_factory=dict)


@dataclass
class RayStats:
    shards_computed: int = 0
    shards_reused: int = 0
    rows_computed: int = 0
    rows_reused: int = 0
    stale_files_removed: int = 0


# ---------------------------------------------------------------------------------------------
# cluster side: plain functions and actor classes (pickled to the workers)


def _err(what: str, e: Exception) -> str:
    return f"{what} failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _guarded(fn, items: list, what: str) -> tuple[list, dict[int, str]]:
    """``fn(items)``; if the batch fails, item by item. Returns (results or None, {position: error})."""
    try:
        return list(fn(items)), {}
    except Exception:  # noqa: BLE001 - one bad image must not fail the batch
        out, errors = [], {}
        for j, x in enumerate(items):
            try:
                out.append(fn([x])[0])
            except Exception as e:  # noqa: BLE001
                errors[j] = _err(what, e)
                out.append(None)
        return out, errors


def decode_batch(batch: dict) -> dict:
    """Hash and decode each row's file (Ray task)."""
    n = len(batch["path"])
    out = {k: np.empty(n, object) for k in ("error", "digest", "pix")}
    full = np.zeros(n, bool)
    width, height, pw, ph = (np.zeros(n, np.int64) for _ in range(4))
    for j in range(n):
        w = Work(bytes(batch["path"][j]), None, None, full=bool(batch["full"][j]),
                 verify_hash=str(batch["verify_hash"][j]) if batch["verify"][j] else None,
                 detect=bool(batch["detect"][j]), caption=bool(batch["caption"][j]), image=bool(batch["image"][j]))
        d = Indexer.decode(w)
        full[j] = w.full
        out["error"][j] = d.error or ""
        out["digest"][j] = d.digest or ""
        out["pix"][j] = b""
        if d.loaded is not None and d.error is None:
            im = d.loaded.image.convert("RGB")
            width[j], height[j] = d.loaded.width, d.loaded.height
            pw[j], ph[j] = im.width, im.height
            out["pix"][j] = im.tobytes()
    return {**batch, **out, "full": full, "width": width, "height": height, "pw": pw, "ph": ph}


def _image(batch: dict, j: int):
    from PIL import Image

    return Image.frombytes("RGB", (int(batch["pw"][j]), int(batch["ph"][j])), bytes(batch["pix"][j]))


def _ok(batch: dict, j: int) -> bool:
    return not batch["error"][j] and not batch["model_error"][j]


class _Role:
    role = ""

    def __init__(self, settings: Settings):
        from ..models.registry import ModelLoader

        self.model = ModelLoader(settings).get(self.role)


class DetectorActor(_Role):
    role = "detector"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        dets = np.array(["[]"] * n, object)
        store = np.zeros(n, bool)
        model_error = np.array([""] * n, object)
        want = [j for j in range(n) if not batch["error"][j] and batch["pix"][j]
                and (batch["full"][j] or batch["detect"][j] or (batch["caption"][j] and not batch["has_user"][j]))]
        res, errs = _guarded(self.model.detect, [_image(batch, j) for j in want], "detector")
        for p, (j, r) in enumerate(zip(want, res)):
            if p in errs:
                model_error[j] = errs[p]
            elif r is not None:
                dets[j] = json.dumps([[d.label, float(d.score), *map(float, d.box)] for d in r])
                store[j] = bool(batch["full"][j] or batch["detect"][j])
        return {**batch, "dets": dets, "store_dets": store, "model_error": model_error}


def _captions(batch: dict, j: int) -> dict:
    """The caption context the driver planned for row ``j`` (see ``RayIndexer._rows``)."""
    return json.loads(str(batch["captions"][j]))


def _caption_dict(d: dict) -> dict[str, Caption]:
    return {src: Caption(text, src, model_id, float(conf)) for src, (text, model_id, conf) in d.items()}


class CaptionerActor(_Role):
    """The captioner, and the OCR source when it is on (as the local indexer: only for images
    without a person-written caption, that are new or were not read yet)."""

    role = "captioner"

    def _ocr(self, batch: dict, model_error) -> tuple:
        n = len(batch["path"])
        text, model = np.array([""] * n, object), np.array([""] * n, object)
        conf, has = np.zeros(n, np.float64), np.zeros(n, bool)
        want = [j for j in range(n) if _ok(batch, j) and batch["pix"][j] and batch["ocr"][j]]
        if want:
            if getattr(self, "_ocr_reader", None) is None:
                from ..captions.ocr import OcrReader

                self._ocr_reader = OcrReader()
            reader = self._ocr_reader
            res, errs = _guarded(lambda ims: [reader.read(im) for im in ims], [_image(batch, j) for j in want], "ocr")
            for p, (j, c) in enumerate(zip(want, res)):
                if p in errs:
                    model_error[j] = errs[p]
                elif c is not None:
                    text[j], model[j], conf[j], has[j] = c.text, c.model_id, float(c.confidence), True
        return {"ocr_text": text, "ocr_model": model, "ocr_conf": conf, "has_ocr": has}

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        cap_text, cap_model = np.array([""] * n, object), np.array([""] * n, object)
        cap_conf, has_cap = np.zeros(n, np.float64), np.zeros(n, bool)
        model_error = batch["model_error"].copy()
        ocr = self._ocr(batch, model_error)
        want = [j for j in range(n) if _ok(batch, j) and batch["pix"][j] and not batch["has_user"][j]
                and (batch["full"][j] or batch["caption"][j])]
        images = [_image(batch, j) for j in want]
        det_lists = [[Detection(x[0], x[1], tuple(x[2:])) for x in json.loads(batch["dets"][j])] for j in want]
        errs: dict[int, str] = {}
        if want:
            try:
                res = self.model.caption(images, det_lists)
            except Exception:  # noqa: BLE001 - as the local indexer: retry without detections, one by one
                res, errs = _guarded(lambda ims: self.model.caption(ims, None), images, "captioner")
            for p, (j, c) in enumerate(zip(want, res)):
                if p in errs:
                    model_error[j] = errs[p]
                elif c is not None:
                    cap_text[j], cap_model[j], cap_conf[j], has_cap[j] = c.text, c.model_id, float(c.confidence), True
        return {**batch, "cap_text": cap_text, "cap_model": cap_model, "cap_conf": cap_conf, "has_cap": has_cap,
                **ocr, "model_error": model_error}


class ImageEncoderActor(_Role):
    role = "image"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        vec = np.array([b""] * n, object)
        model_error = batch["model_error"].copy()
        want = [j for j in range(n) if _ok(batch, j) and batch["pix"][j] and (batch["full"][j] or batch["image"][j])]
        res, errs = _guarded(lambda ims: list(self.model.embed_images(ims)), [_image(batch, j) for j in want], "image encoder")
        for p, (j, v) in enumerate(zip(want, res)):
            if p in errs:
                model_error[j] = errs[p]
            elif v is not None:
                vec[j] = np.ascontiguousarray(v, np.float32).tobytes()
        out = {k: v for k, v in batch.items() if k != "pix"}  # pixels are not needed any more
        return {**out, "img_vec": vec, "model_error": model_error}


class TextEncoderActor(_Role):
    role = "text"

    def __call__(self, batch: dict) -> dict:
        n = len(batch["path"])
        vec = np.array([b""] * n, object)
        model_error = batch["model_error"].copy()
        texts: dict[int, str] = {}
        for j in range(n):
            if not _ok(batch, j):
                continue
            # the pipeline's own rule (compose of stored and this run's captions), on the planned context
            c = _captions(batch, j)
            w = Work(bytes(batch["path"][j]), None, None, full=bool(batch["full"][j]), text=bool(batch["text"][j]),
                     user_captions=_caption_dict(c["users"]), extras=_caption_dict(c["extras"]))
            gen = Caption(str(batch["cap_text"][j]), GENERATED, str(batch["cap_model"][j]), float(batch["cap_conf"][j])) \
                if batch["has_cap"][j] else None
            ocr = Caption(str(batch["ocr_text"][j]), OCR, str(batch["ocr_model"][j]), float(batch["ocr_conf"][j])) \
                if batch["has_ocr"][j] else None
            active = caption_to_embed(w, _caption_dict(c["stored"]), gen, ocr, c["sources"])
            if active is not None:
                texts[j] = active.text
        keys = list(texts)
        res, errs = _guarded(lambda ts: list(self.model.embed_texts(ts)), [texts[j] for j in keys], "text encoder")
        for p, (j, v) in enumerate(zip(keys, res)):
            if p in errs:
                model_error[j] = errs[p]
            elif v is not None:
                vec[j] = np.ascontiguousarray(v, np.float32).tobytes()
        return {**batch, "txt_vec": vec, "model_error": model_error}


ACTORS = {"detector": DetectorActor, "captioner": CaptionerActor, "image": ImageEncoderActor, "text": TextEncoderActor}
#: columns a shard file keeps (everything the commit needs)
SHARD_COLUMNS = ("key", "path", "error", "model_error", "digest", "full", "width", "height", "pw", "dets", "store_dets",
                 "has_cap", "cap_text", "cap_model", "cap_conf", "has_ocr", "ocr_text", "ocr_model", "ocr_conf",
                 "img_vec", "txt_vec")


# ---------------------------------------------------------------------------------------------
# driver side


class RayIndexer:
    """Index folders into a ``Library`` with the model work on Ray. ``run`` is blocking."""

    def __init__(self, library, captions_file: CaptionsFile | None = None, options: RayOptions | None = None):
        self.lib = library
        self.options = options or RayOptions()
        self.local = Indexer(library, captions_file=captions_file, batch_size=self.options.batch_size)
        self.shard_dir = Path(library.dir) / SHARD_DIR
        self.stats = RayStats()

    # -- planning rows ---------------------------------------------------------------------------
    def _rows(self, todo: list[Work]) -> list[dict]:
        detector, captioner, image_enc, text_enc = self.local._models()
        models = [detector.model_id, captioner.model_id, image_enc.model_id, text_enc.model_id]
        stored = self.local._stored_captions([w.image_id for w in todo if w.image_id is not None])
        sources = list(self.local.sources)
        ocr_on = OCR in self.local.sources

        def plain(caps: dict[str, Caption]) -> dict:
            return {src: [c.text, c.model_id, float(c.confidence)] for src, c in sorted(caps.items())}

        rows = []
        for w in todo:
            # what the text actor needs to apply the pipeline's caption rule (caption_to_embed)
            captions = json.dumps({"stored": plain(stored.get(w.image_id, {}) if w.image_id is not None else {}),
                                   "users": plain(w.user_captions), "extras": plain(w.extras), "sources": sources})
            row = {
                "path": w.path, "full": w.full, "verify": w.verify_hash is not None, "verify_hash": w.verify_hash or "",
                "detect": w.detect, "caption": w.caption, "image": w.image, "text": w.text,
                "has_user": w.user_caption is not None,
                # as the local indexer: OCR reads images without a person-written caption, new or not read yet
                "ocr": ocr_on and w.user_caption is None and (w.ocr or w.full),
                "captions": captions,
            }
            ident = [w.path.hex(), w.st.st_size, w.st.st_mtime_ns, models, {k: v for k, v in row.items() if k != "path"}]
            row["key"] = hashlib.blake2b(json.dumps(ident).encode(), digest_size=16).hexdigest()
            rows.append(row)
        return rows

    # -- shard files -------------------------------------------------------------------------------------
    def _existing_shards(self) -> dict[str, tuple[Path, dict]]:
        """key -> (shard file, result row) for every readable shard file on disk."""
        import pyarrow.parquet as pq

        found: dict[str, tuple[Path, dict]] = {}
        if not self.shard_dir.is_dir():
            return found
        for f in sorted(self.shard_dir.glob("shard-*.parquet")):
            try:
                for r in pq.read_table(f).to_pylist():
                    found[r["key"]] = (f, r)
            except Exception:  # noqa: BLE001 - a torn or foreign file is simply recomputed
                f.unlink(missing_ok=True)
        for f in self.shard_dir.glob("*.tmp"):
            f.unlink(missing_ok=True)
        return found

    def _write_shard(self, rows: list[dict]) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.blake2b("".join(r["key"] for r in rows).encode(), digest_size=12).hexdigest()
        path = self.shard_dir / f"shard-{name}.parquet"
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in SHARD_COLUMNS} for r in rows]), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def _ingest(self, rows: list[dict], work: dict[str, Work], summary: IndexSummary) -> None:
        """Commit one shard's results through the local indexer's commit (one transaction)."""
        detector, _, image_enc, text_enc = self.local._models()
        batch, errors, dets, caps, ocrs, img_vecs, txt_vecs = [], {}, {}, {}, {}, {}, {}
        for r in rows:
            w = work[r["key"]]
            if r["full"]:
                w.full = True
            d = Decoded(w, digest=r["digest"] or None, error=r["error"] or None)
            if not d.error and r["width"]:
                d.loaded = SimpleNamespace(width=int(r["width"]), height=int(r["height"]), scale=int(r["width"]) / max(1, int(r["pw"])))
            key = id(d)
            if r["model_error"]:
                errors[key] = r["model_error"]
            if r["store_dets"]:
                dets[key] = [Detection(x[0], x[1], tuple(x[2:])) for x in json.loads(r["dets"])]
            if r["has_cap"]:
                caps[key] = Caption(r["cap_text"], GENERATED, r["cap_model"], float(r["cap_conf"]))
            if r["has_ocr"]:
                ocrs[key] = Caption(r["ocr_text"], OCR, r["ocr_model"], float(r["ocr_conf"]))
            if r["img_vec"]:
                img_vecs[key] = np.frombuffer(r["img_vec"], np.float32)
            if r["txt_vec"]:
                txt_vecs[key] = np.frombuffer(r["txt_vec"], np.float32)
            batch.append(d)
        self.local._commit(batch, errors, dets, caps, img_vecs, {}, txt_vecs, summary,
                           detector.model_id, image_enc.model_id, text_enc.model_id, ocrs)

    # -- the Ray dataset ---------------------------------------------------------------------------------
    def _dataset(self, rows: list[dict]):
        import ray

        o = self.options
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # shards complete in plan order (same ids as the local indexer)
        res = ray.cluster_resources()
        gpus = res.get("GPU", 0) > 0
        conc = {role: max(1, int(o.concurrency.get(role, 1))) for role in ROLES}
        cpu_actor, cpu_decode = o.cpus_per_actor, o.cpus_per_decode
        need = cpu_actor * sum(conc.values()) + cpu_decode
        if need > res.get("CPU", need):
            # every actor must be placeable at once, or the pipeline waits forever: shrink the requests
            f = res["CPU"] / need
            cpu_actor, cpu_decode = cpu_actor * f, cpu_decode * f
        ds = ray.data.from_items(rows)
        ds = ds.map_batches(decode_batch, batch_size=o.batch_size, batch_format="numpy", num_cpus=cpu_decode)
        for role in ROLES:
            ds = ds.map_batches(
                ACTORS[role], fn_constructor_args=(self.lib.settings,), batch_size=o.batch_size, batch_format="numpy",
                concurrency=conc[role], num_cpus=cpu_actor,
                num_gpus=o.gpus_per_actor if gpus and role in GPU_ROLES else 0)
        return ds

    def _compute(self, rows: list[dict], ensure_ray: Callable[[], None]):
        """Result batches (dicts of columns) for ``rows``, in order: the Ray Data pipeline."""
        ensure_ray()
        yield from self._dataset(rows).iter_batches(batch_size=None, batch_format="numpy")

    # -- running ---------------------------------------------------------------------------------------------
    def run(self, folders: list, progress: Callable[[Progress], None] | None = None,
            cancel: threading.Event | None = None, wait: bool | float = False) -> IndexSummary:
        """Index ``folders`` holding the library's writer lock, as ``Indexer.run`` does (``LibraryBusy``
        if another process writes, unless ``wait``); only the lock holder saves the indices."""
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ExplorerError("--index-engine ray needs Ray: pip install 'retrieval-explorer[scale]'") from None
        with self.lib.writing("indexing", wait=wait):
            return self._run(folders, progress, cancel)

    def _run(self, folders, progress, cancel) -> IndexSummary:
        import ray

        t0 = time.monotonic()
        cancel = cancel or threading.Event()
        emit = progress or (lambda p: None)
        summary = IndexSummary()
        roots = resolve_roots(folders)
        started = False

        def ensure_ray() -> None:  # only when there is something to compute: a rerun with nothing to do needs no cluster
            nonlocal started
            if ray.is_initialized():
                return
            try:
                kw = {"include_dashboard": False, "log_to_driver": False}
                kw.update({} if self.options.address else self.options.init_kwargs)
                ray.init(address=self.options.address, **kw)
            except Exception as e:  # noqa: BLE001 - e.g. no cluster at that address
                raise ExplorerError(f"cannot start or reach Ray ({self.options.address or 'local'}): {str(e).splitlines()[0]}") from None
            started = True

        try:
            emit(Progress("loading models"))
            self.local._models()
            self.local._record_models()
            summary.repairs = self.lib.check().lines()
            emit(Progress("scanning", elapsed=time.monotonic() - t0))
            result = scan(roots, cancel)
            summary.scanned = len(result.files)
            summary.outside_links = len(result.outside_links)
            run_id = self.local._start_run(roots)
            todo = self.local.plan(result, roots, summary)
            rows = self._rows(todo)
            work = {r["key"]: w for r, w in zip(rows, todo)}
            prog = Progress("indexing", total=len(todo), skipped=summary.unchanged, failed=len(summary.failures))
            t_index = time.monotonic()
            failed = True
            try:
                existing = self._existing_shards()
                used_files: set[Path] = set()

                def ingested(n: int, last: bytes) -> None:
                    prog.done += n
                    prog.failed = len(summary.failures)
                    prog.elapsed = time.monotonic() - t_index
                    prog.current = display(last)
                    emit(prog)

                # 1. results already on disk from a killed run: ingest without recomputing
                reuse: dict[Path, list[dict]] = {}
                for r in rows:
                    if r["key"] in existing:
                        f, res = existing[r["key"]]
                        reuse.setdefault(f, []).append(res)
                for f, res in reuse.items():
                    if cancel.is_set():
                        break
                    self._ingest(res, work, summary)
                    used_files.add(f)
                    f.unlink(missing_ok=True)
                    self.stats.shards_reused += 1
                    self.stats.rows_reused += len(res)
                    ingested(len(res), work[res[-1]["key"]].path)
                # 2. shard files that matched nothing are stale (ingested before a kill, or outdated)
                for f in {f for f, _ in existing.values()} - used_files:
                    f.unlink(missing_ok=True)
                    self.stats.stale_files_removed += 1
                # 3. compute the rest on the cluster, shard by shard
                rest = [r for r in rows if r["key"] not in existing]
                shard_of = {r["key"]: i // self.options.shard_size for i, r in enumerate(rest)}
                sizes: dict[int, int] = {}
                for s in shard_of.values():
                    sizes[s] = sizes.get(s, 0) + 1
                buffers: dict[int, list[dict]] = {}
                if rest and not cancel.is_set():
                    for b in self._compute(rest, ensure_ray):
                        cols = list(b)
                        for j in range(len(b["key"])):
                            r = {c: _py(b[c][j]) for c in cols}
                            s = shard_of[r["key"]]
                            buffers.setdefault(s, []).append(r)
                            if len(buffers[s]) == sizes[s]:
                                done_rows = buffers.pop(s)
                                path = self._write_shard(done_rows)
                                emit(Progress("shard written", prog.done, prog.total, prog.failed, prog.skipped, prog.elapsed, str(path)))
                                self._ingest(done_rows, work, summary)
                                path.unlink(missing_ok=True)
                                self.stats.shards_computed += 1
                                self.stats.rows_computed += len(done_rows)
                                ingested(len(done_rows), work[done_rows[-1]["key"]].path)
                        if cancel.is_set():
                            break
                failed = False
            finally:
                self.local._end_run(run_id, summary, prog, emit, cancel.is_set(), t0, failed)
            emit(Progress("done", prog.done, prog.total, prog.failed, prog.skipped, prog.elapsed))
            return summary
        finally:
            if started:
                ray.shutdown()


def _py(x):
    """A numpy scalar or bytes-like value as a plain Python value (for Parquet and the commit)."""
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    return x
