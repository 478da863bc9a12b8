"""Retrieval: image, text, object and composed queries in image-only, caption-fused and
caption-only modes, with optional reranking (``explorer.core.rerank``: alpha-QE,
SuperGlobal-style, k-reciprocal; the same code and scores as evaluation).

A query is *prepared* once (decode, detect, caption, embed: the expensive part). Ranking
is then pure numpy over a candidate pool gathered from the ANN indices, so changing alpha
or k re-ranks live without re-encoding (the GUI's slider relies on this).

**Nothing per query asks the database.** The searcher keeps the gallery in memory
(``explorer.core.gallery_arrays``: image and caption vectors, caption weights, paths, captions
and detections as numpy arrays, reloaded when the library's change counter moves), so
candidates are re-scored by fancy indexing, result metadata comes from the same arrays, and a
dropped library image is recognised by its path key or content hash without SQL.

**Nothing is written into its arguments.** ``use_library_captions`` returns a new
``PreparedQuery``; ``candidate_pool`` returns a pool whose ``query`` is the prepared query
completed with its caption weight and learned vector (``dataclasses.replace``), and ranking
uses that one.

Composed queries (image + a sentence that modifies it):

- **shared image-text space** (open_clip): training-free weighted fusion. The image query
  vector becomes ``normalise((1 - lam) * img + lam * text(modifier))`` and the caption side
  uses the edited caption below. ``lam`` is ``modifier_weight`` (default 0.5).
- **separate spaces** (offline default): caption editing, as in vision-by-language composed
  retrieval. The query's caption and the modifier are combined into a *target description*
  (``edit_caption``), which is embedded and fused with the image embedding with weight
  ``lam`` instead of ``alpha * w``. Image-only mode cannot see the modifier and says so.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from . import fusion
from . import rerank as rr
from .blas import single_threaded
from .errors import BadImage, BadQuery
from .imageio import load_image
from .library import Library
from .models.base import Caption, Detection, l2_normalise
from .captions.sources import GENERATED, METADATA, USER_EDITED, compose
from .modes import ALL as ALL_MODES
from .modes import BASE, CAPTION, FUSED, IMAGE, LEARNED
from .gallery_arrays import GalleryArrays, GalleryArraysHolder, row_scores

#: the modes a search runs by default (a head adds LEARNED); the names live in explorer.core.modes
MODES = BASE
DEFAULT_K = 10
#: How many candidates each index contributes before exact re-scoring.
POOL_MIN = 200
MODIFIER_WEIGHT = 0.5
COLOURS = ("black", "white", "grey", "gray", "red", "orange", "yellow", "green", "teal", "blue", "purple", "pink", "brown", "beige", "navy")


@dataclass
class QuerySpec:
    """What the user asked. ``image`` may be a path anywhere on disk; ``box`` crops it (an object query)."""

    image: str | None = None
    text: str | None = None
    modifier: str | None = None
    box: tuple[float, float, float, float] | None = None
    caption: str | None = None  # the user's edit of the query caption

    @property
    def kind(self) -> str:
        if self.image and self.modifier:
            return "composed"
        if self.image:
            return "object" if self.box else "image"
        return "text"


@dataclass
class PreparedQuery:
    spec: QuerySpec
    image_vec: np.ndarray | None
    caption: Caption | None  # the query's caption (image queries) or the text itself
    caption_vec: np.ndarray | None
    caption_weight: float
    target_text: str | None = None  # composed queries: the edited caption that was embedded
    detections: list[Detection] = field(default_factory=list)
    size: tuple[int, int] | None = None
    self_path: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    #: the query's learned-fusion embedding, when the searcher has a head
    learned_vec: np.ndarray | None = None
    #: the decoded (possibly cropped) query image and its raw detections, for box features
    work_image: object = None
    work_detections: list[Detection] = field(default_factory=list)
    #: the library image this query is (same path, or same content): its stored vectors, active
    #: caption and weight are used, exactly as evaluation does, and it is left out of its results
    library_id: int | None = None


@dataclass
class Hit:
    rank: int
    image_id: int
    path: str
    score: float
    caption: str = ""
    caption_source: str = ""
    detections: list[dict] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    other_ranks: dict[str, int | None] = field(default_factory=dict)
    #: the source of every part of a composed caption (``caption_source`` is the first one's)
    caption_sources: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {
            "rank": self.rank, "image_id": self.image_id, "path": self.path, "score": round(float(self.score), 6),
            "caption": self.caption, "caption_source": self.caption_source, "caption_sources": list(self.caption_sources),
            "detections": self.detections,
            "width": self.width, "height": self.height, "other_ranks": self.other_ranks,
        }


@dataclass
class ModeResult:
    mode: str
    hits: list[Hit]
    rerank: str = "none"
    note: str | None = None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "rerank": self.rerank, "note": self.note, "hits": [h.to_dict() for h in self.hits]}


@dataclass
class SearchResult:
    query: PreparedQuery
    modes: dict[str, ModeResult]
    comparisons: dict[str, dict]
    alpha: float
    k: int
    timings: dict[str, float]

    def to_dict(self) -> dict:
        q = self.query
        return {
            "schema": "retrieval-explorer/search/v1",
            "query": {
                "kind": q.spec.kind, "image": q.spec.image, "box": list(q.spec.box) if q.spec.box else None,
                "text": q.spec.text, "modifier": q.spec.modifier,
                "caption": q.caption.text if q.caption else None, "caption_source": q.caption.source if q.caption else None,
                "caption_weight": round(q.caption_weight, 4), "target_text": q.target_text,
                "detections": [d.to_dict() for d in q.detections],
            },
            "alpha": self.alpha, "k": self.k,
            "modes": {m: r.to_dict() for m, r in self.modes.items()},
            "comparisons": self.comparisons,
            "timings_ms": {k: round(v * 1000, 2) for k, v in self.timings.items()},
        }


def edit_caption(caption: str, modifier: str) -> str:
    """Combine a caption and a modifier into a target description.

    Colour words in the modifier replace the caption's colours; the modifier is then stated
    as the main clause so that the text encoder weighs it, e.g.
    ("a photo of a dress; colours: blue", "the same dress in red") ->
    "the same dress in red; a photo of a dress; colours: red".
    """
    modifier = modifier.strip()
    mod_colours = [c for c in COLOURS if re.search(rf"\b{c}\b", modifier, re.I)]
    base = caption.strip()
    if mod_colours:
        if re.search(r"colours?:", base):
            base = re.sub(r"colours?:[^;]*", "colours: " + ", ".join(mod_colours), base)
        else:
            base = re.sub(rf"\b({'|'.join(COLOURS)})\b", mod_colours[0], base, flags=re.I)
    return f"{modifier}; {base}" if base else modifier


class Searcher:
    """Runs queries against one library. Thread-safe for reads; models are shared with indexing."""

    def __init__(self, library: Library, head=None, vector_dtype: str | None = None, gallery_cache: bool = True):
        """Stores what it is given. ``head``: an optional trained fusion head (``explorer.core.learned``),
        adding mode ``learned``. ``vector_dtype``: how the in-memory gallery keeps its vectors
        (``float32``, exact; ``float16``, half the memory, see ``gallery_arrays``; default: the
        library's setting ``search_vectors``). ``gallery_cache``: open the gallery from the library's
        on-disk cache when valid and write it there after a read (``gallery_cache``). ``open()``
        (or ``open_searcher``) does the work; a searcher used unopened opens itself on its first
        query."""
        self.lib = library
        self.head = head
        self.vector_dtype = vector_dtype or library.settings.search_vectors
        self._gallery = GalleryArraysHolder(library, self.vector_dtype, gallery_cache)
        self.repairs: list[str] = []
        self.learned_ids = self.learned_vecs = None
        self._learned_row: dict[int, int] = {}
        self.opened = False

    def open(self) -> "Searcher":
        """Check the library (load the indices, make them agree with the database; repairs in
        ``self.repairs``), read the gallery into memory (``gallery_arrays``) and, with a head,
        embed the gallery with it. Raises ``BadQuery`` on an empty library. Returns ``self``. The
        in-memory gallery follows later changes by itself; call ``open`` again after the library
        changed (indexing, caption edits) to see the new images in the learned mode."""
        library, head = self.lib, self.head
        if library.store.count_images() == 0:
            raise BadQuery(f"the library at {library.dir} has no indexed images: run `explorer index FOLDER --library {library.dir}` first")
        # load the indices and make them agree with the database, in memory: searching never writes
        self.repairs = library.check(save=False).lines()
        self._gallery.current()
        self.learned_ids = self.learned_vecs = None
        if head is not None:
            from .learned import embed_gallery

            ids, vecs = embed_gallery(head, library)
            learned_ids, learned_vecs = np.asarray(ids, np.int64), np.asarray(vecs, np.float32)
            self._learned_row = {int(i): r for r, i in enumerate(learned_ids.tolist())}
            self.learned_ids, self.learned_vecs = learned_ids, learned_vecs
        self.opened = True
        return self

    def gallery(self) -> GalleryArrays:
        """The gallery in memory, current: reloaded first if the library changed since it was read."""
        if not self.opened:
            self.open()
        return self._gallery.current()

    def close(self) -> None:
        """Release the connection the in-memory gallery watches the database with."""
        self._gallery.close()

    # -- preparing ------------------------------------------------------------------------------
    def prepare(self, spec: QuerySpec) -> PreparedQuery:
        t: dict[str, float] = {}
        ld = self.lib.loader
        text_enc = ld.get("text")
        if spec.image is None:
            text = (spec.text or "").strip()
            if not text:
                raise BadQuery("empty query: give an image, a text, or an image with a modifier")
            t0 = time.perf_counter()
            tv = text_enc.embed_texts([text])[0]
            t["encode"] = time.perf_counter() - t0
            img_vec = None
            if self.lib.shared_space:
                img_vec = tv  # text searches the image index directly in a shared space
            return PreparedQuery(spec, img_vec, Caption(text, "query-text", text_enc.model_id, 1.0), tv, 1.0, timings=t)

        path = Path(spec.image).expanduser()
        t0 = time.perf_counter()
        try:
            loaded = load_image(path)
        except BadImage as e:
            raise BadQuery(f"cannot use {path} as a query: {e}") from None
        image = loaded.image
        if spec.box is not None:
            x1, y1, x2, y2 = (v / loaded.scale for v in spec.box)
            x1, y1 = max(0, int(x1)), max(0, int(y1))
            x2, y2 = min(image.width, int(round(x2))), min(image.height, int(round(y2)))
            if x2 - x1 < 4 or y2 - y1 < 4:
                raise BadQuery(f"the box {spec.box} is empty or outside the image")
            image = image.crop((x1, y1, x2, y2))
        t["decode"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        dets = ld.get("detector").detect([image])[0]
        t["detect"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        # a library image (same path or content) starts from its stored active caption: plain,
        # composed and object queries alike (no captioner run)
        match = library_match(self.gallery(), str(path)) if not (spec.caption and spec.caption.strip()) else None
        if spec.caption and spec.caption.strip():
            cap = Caption(spec.caption.strip(), USER_EDITED, "user", 1.0)
        elif match is not None and match.caption is not None:
            cap = match.caption
        else:
            cap = ld.get("captioner").caption([image], [dets])[0]
        t["caption"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        img_vec = self.lib.project_image(ld.get("image").embed_images([image])[0])  # whitened like the gallery
        target = None
        cap_text = cap.text
        if spec.modifier and spec.modifier.strip():
            target = edit_caption(cap.text, spec.modifier)
            cap_text = target
            if self.lib.shared_space:
                mv = text_enc.embed_texts([spec.modifier.strip()])[0]
                img_vec = l2_normalise((1 - MODIFIER_WEIGHT) * img_vec + MODIFIER_WEIGHT * mv)
        cap_vec = text_enc.embed_texts([cap_text])[0]
        t["encode"] = time.perf_counter() - t0
        scale = loaded.scale if spec.box is None else 1.0
        dets_orig = [Detection(d.label, d.score, tuple(v * scale for v in d.box)) for d in dets]
        pq = PreparedQuery(
            spec, img_vec, cap, cap_vec, 0.0, target, dets_orig, (loaded.width, loaded.height), str(path.resolve()), t,
            work_image=image, work_detections=dets,
        )
        if spec.kind == "image" and not (spec.caption and spec.caption.strip()):
            t0 = time.perf_counter()
            pq = use_library_captions(self.lib, pq, self.gallery(), match, looked_up=True)
            t["caption_sources"] = time.perf_counter() - t0  # library match, metadata and name captions, re-embedding
        elif match is not None and cap is match.caption:  # composed and object queries of a library image
            if target is None:  # object query: the stored caption's vector and weight, as in evaluation
                pq = replace(pq, library_id=match.image_id, caption_vec=match.caption_vec.copy(), caption_weight=match.weight)
            else:
                pq = replace(pq, library_id=match.image_id)
        return pq

    # -- candidates and ranking ------------------------------------------------------------------
    def candidate_pool(self, pq: PreparedQuery, k: int) -> "CandidatePool":
        """Gather candidates from every index, then their exact cosines for every mode, from the
        in-memory gallery. ``pq`` is not changed: the pool's ``query`` is ``pq`` with the caption
        weight of an outside image (its agreement with this library) and the learned vector."""
        return self._candidate_pool(self.gallery(), pq, k)  # a (re)load of the gallery keeps every BLAS thread

    @single_threaded  # small products: one BLAS thread never waits for a second (core.blas)
    def _candidate_pool(self, gal: GalleryArrays, pq: PreparedQuery, k: int) -> "CandidatePool":
        t0 = time.perf_counter()
        pool_k = max(POOL_MIN, 4 * k)
        ids: set[int] = set()
        img_idx, cap_idx, fused_idx = self.lib.index(IMAGE), self.lib.index(CAPTION), self.lib.index(FUSED)
        if pq.image_vec is not None:
            ids.update(img_idx.candidates(pq.image_vec, pool_k).tolist())
        if pq.caption_vec is not None:
            ids.update(cap_idx.candidates(pq.caption_vec, pool_k).tolist())
        if pq.image_vec is not None and pq.caption_vec is not None:
            ids.update(fused_idx.candidates(fusion.fuse_query(pq.image_vec, pq.caption_vec, self.lib.fused_index_alpha, self.lib.shared_space), pool_k).tolist())
        self_id = gal.image_id(pq.self_path) if pq.self_path else None
        if pq.image_vec is not None and pq.caption is not None and pq.spec.image is not None and pq.library_id is None:
            agreement = self.lib.query_agreement(pq.image_vec, pq.caption_vec, set() if self_id is None else {self_id})
            pq = replace(pq, caption_weight=fusion.caption_weight(pq.caption.source, pq.caption.confidence, agreement))
        if self.head is not None and pq.work_image is not None:
            from .learned import embed_query, query_box_features

            bf = query_box_features(self.lib, pq.work_image, pq.work_detections) if self.head.cfg.use_boxes else None
            w = 1.0 if pq.target_text is not None else pq.caption_weight
            pq = replace(pq, learned_vec=np.asarray(embed_query(self.head, pq.image_vec, pq.caption_vec, bf, w), np.float32))
            sims = self.learned_vecs @ pq.learned_vec
            top = np.argpartition(-sims, min(pool_k, len(sims) - 1))[:pool_k] if len(sims) else []
            ids.update(self.learned_ids[top].tolist())
        t_ann = time.perf_counter() - t0
        t0 = time.perf_counter()
        id_arr = np.array(sorted(i for i in ids if i >= 0), np.int64)
        rows = gal.rows(id_arr)
        keep = rows >= 0  # an id the index has but the gallery (read under the current stamp) has not
        id_arr, rows = id_arr[keep], rows[keep]
        gi, gc = gal.vectors(rows)
        weights = gal.weights[rows]
        cos_img = row_scores(gi, pq.image_vec) if pq.image_vec is not None else None
        cos_cap = row_scores(gc, pq.caption_vec) if pq.caption_vec is not None else None
        excluded = (id_arr == self_id) | (id_arr == pq.library_id) if (self_id is not None or pq.library_id is not None) \
            else np.zeros(len(id_arr), bool)
        t_rescore = time.perf_counter() - t0
        return CandidatePool(id_arr, gi, gc, cos_img, cos_cap, weights, rows, gal, excluded, pq,
                             {"ann": t_ann, "rescore": t_rescore})

    def rank(self, pq: PreparedQuery, pool: "CandidatePool", mode: str, k: int, alpha: float, rerank: str = "none") -> ModeResult:
        """Rank the pool for one mode. Cheap: no model runs here, nothing is read from the database.
        The pool's own query (``pq`` completed by ``candidate_pool``) is the one ranked."""
        pq = pool.query
        note = None
        if mode == IMAGE:
            if pool.cos_img is None:
                note = "image-only mode needs an image query or a shared image-text space (open_clip); showing caption matches"
                scores = pool.cos_cap
            else:
                scores = pool.cos_img
                if pq.spec.modifier and not self.lib.shared_space:
                    note = "image-only mode ignores the modifier with separate image and text encoders"
        elif mode == CAPTION:
            scores = pool.cos_cap
        elif mode == FUSED:
            if pool.cos_img is None:
                scores = pool.cos_cap
                note = "text query with separate encoders: fused equals caption-only"
            elif pq.target_text is not None:
                scores = fusion.fused_scores(pool.cos_img, pool.cos_cap, MODIFIER_WEIGHT, 1.0, np.ones_like(pool.weights))
            else:
                scores = fusion.fused_scores(pool.cos_img, pool.cos_cap, alpha, pq.caption_weight, pool.weights)
        elif mode == LEARNED:
            if self.head is None:
                raise BadQuery("mode 'learned' needs a trained fusion head (--head models/fusion-NAME.safetensors)")
            if pq.learned_vec is None:
                raise BadQuery("mode 'learned' needs an image query")
            rows = [self._learned_row.get(int(i)) for i in pool.ids.tolist()]
            scores = np.array([self.learned_vecs[r] @ pq.learned_vec if r is not None else -np.inf for r in rows], np.float32)
        else:
            raise BadQuery(f"unknown mode '{mode}'; choose from {', '.join(ALL_MODES)}")
        scores = np.asarray(scores, np.float32).copy()
        scores[pool.excluded] = -np.inf  # the query itself
        if rerank not in rr.METHODS:
            raise BadQuery(f"unknown rerank '{rerank}'; choose from {', '.join(rr.METHODS)}")
        if rerank != "none" and len(scores):
            scores = self._rerank(pq, pool, mode, scores, alpha, rerank)
        order = np.lexsort((pool.ids, -scores))[: min(k, int(np.isfinite(scores).sum()))]
        hits = [pool.hit(r, int(j), float(scores[j])) for r, j in enumerate(order, 1)]
        return ModeResult(mode, hits, rerank, note)

    def mode_vectors(self, pq: PreparedQuery, pool: "CandidatePool", mode: str, alpha: float):
        """The mode as ``(scorer, query rows, gallery rows)`` for ``explorer.core.rerank`` (the pool's query)."""
        pq = pool.query
        if mode == LEARNED:
            rows = [self._learned_row.get(int(i)) for i in pool.ids.tolist()]
            gl = np.zeros((len(rows), self.learned_vecs.shape[1]), np.float32)
            for j, r in enumerate(rows):
                if r is not None:
                    gl[j] = self.learned_vecs[r]
            return rr.Scorer("dot", "learned"), rr.Vectors({"learned": pq.learned_vec[None, :]}), rr.Vectors({"learned": gl})
        q = {"caption": pq.caption_vec[None, :]} if pq.caption_vec is not None else {}
        g = {"caption": pool.gc}
        if pq.image_vec is not None:
            q["image"], g["image"] = pq.image_vec[None, :], pool.gi
        if mode == CAPTION or pool.cos_img is None:
            return rr.Scorer("dot", "caption"), rr.Vectors(q), rr.Vectors(g)
        if mode == IMAGE:
            return rr.Scorer("dot", "image"), rr.Vectors(q), rr.Vectors(g)
        if pq.target_text is not None:
            return (rr.Scorer("fused", alpha=MODIFIER_WEIGHT), rr.Vectors(q, np.ones(1, np.float32)),
                    rr.Vectors(g, np.ones(len(pool.ids), np.float32)))
        return (rr.Scorer("fused", alpha=alpha), rr.Vectors(q, np.array([pq.caption_weight], np.float32)),
                rr.Vectors(g, pool.weights.astype(np.float32)))

    def _rerank(self, pq, pool, mode, scores, alpha, method) -> np.ndarray:
        """Rerank the pool with ``explorer.core.rerank`` (the evaluation's code and first-pass scores)."""
        scorer, q, g = self.mode_vectors(pq, pool, mode, alpha)
        g.ids = pool.ids
        base = scorer(q, g)
        base[:, ~np.isfinite(scores)] = -np.inf  # the query itself, items without a learned vector
        return rr.rerank(method, scorer, q, g, base)[0]

    def search(self, spec: QuerySpec, modes=MODES, k: int = DEFAULT_K, alpha: float | None = None, rerank: str = "none") -> SearchResult:
        if k <= 0:
            raise BadQuery("k must be a positive number")
        alpha = self.lib.fused_index_alpha if alpha is None else float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise BadQuery(f"alpha must be in [0, 1], got {alpha}")
        pool = self.candidate_pool(self.prepare(spec), k)
        return self.rank_all(pool.query, pool, modes, k, alpha, rerank)

    @single_threaded  # runs on the window's GUI thread: no waiting for a second BLAS thread (core.blas)
    def rank_all(self, pq: PreparedQuery, pool: "CandidatePool", modes, k: int, alpha: float, rerank: str = "none") -> SearchResult:
        """Rank every mode; the result's ``query`` is the pool's (with its caption weight)."""
        pq = pool.query
        t0 = time.perf_counter()
        results = {m: self.rank(pq, pool, m, k, alpha, rerank) for m in modes}
        t_rank = time.perf_counter() - t0
        comparisons = annotate_rank_changes(results, k)
        timings = {**pq.timings, **pool.timings, "rank": t_rank}
        return SearchResult(pq, results, comparisons, alpha, k, timings)


def open_searcher(library: Library, head=None) -> Searcher:
    """A searcher on ``library``, opened (checked, and the gallery embedded with ``head``)."""
    return Searcher(library, head=head).open()


@dataclass
class LibraryMatch:
    """A query image that is a library image: its id, stored vectors, active caption and weight."""

    image_id: int
    image_vec: np.ndarray
    caption_vec: np.ndarray
    caption: Caption | None
    weight: float


def library_match(gallery: GalleryArrays, image: str) -> LibraryMatch | None:
    """The library image a query image is (same real path, else same content hash, e.g. a copy
    dropped from elsewhere), with what evaluation uses of it: the in-memory ``gallery``, which
    equals ``Library.gallery_vectors`` (no SQL)."""
    import os

    from .pipeline import content_hash

    real = os.path.realpath(image)
    iid = gallery.image_id(real)
    if iid is None:
        try:
            digest = content_hash(os.fsencode(real))
        except OSError:
            digest = None
        iid = gallery.id_by_hash.get(digest) if digest else None
    row = int(gallery.rows([iid])[0]) if iid is not None else -1
    if row < 0:
        return None
    gi, gc = gallery.vectors(np.array([row]))
    return LibraryMatch(int(iid), gi[0], gc[0], gallery.meta.captions[row], float(gallery.weights[row]))


def use_library_captions(lib: Library, pq: PreparedQuery, gallery: GalleryArrays, match: LibraryMatch | None = None,
                         looked_up: bool = False) -> PreparedQuery:
    """Make an image query use what the library holds, as evaluation does; returns a new query.

    A query that *is* a library image (``library_match``) takes that image's stored image and
    caption vectors, its active caption and its caption weight, and is left out of its own
    results (``library_id``). Any other image gets the caption sources that need no model
    (embedded metadata, file and folder names, as enabled in the settings) combined with its
    generated caption as indexing would (``captions.sources.compose``); its weight is computed
    against the library later (a fixed trust for person-written text and names). Called by
    ``Searcher.prepare`` for plain image queries, with the match it already looked up
    (``looked_up``; None then means none). ``pq`` is not changed.
    """
    import os

    from .captions import metadata_caption, name_captions

    real = os.path.realpath(pq.spec.image)
    match = match if looked_up else library_match(gallery, real)
    if match is not None:
        return replace(pq, image_vec=match.image_vec, caption_vec=match.caption_vec, caption=match.caption,
                       caption_weight=match.weight, library_id=match.image_id)
    sources = set(lib.settings.caption_sources)
    found = {GENERATED: pq.caption} if pq.caption is not None else {}
    if METADATA in sources:
        cap, _ = metadata_caption(real)
        if cap is not None:
            found[METADATA] = cap
    found.update(name_captions(real, sources))
    composed = compose(found)
    if composed is not None and composed.text != (pq.caption.text if pq.caption else None):
        return replace(pq, caption=composed, caption_vec=lib.loader.get("text").embed_texts([composed.text])[0])
    return pq


@dataclass
class CandidatePool:
    """A query's candidates with everything ranking needs (no database behind it)."""

    ids: np.ndarray
    gi: np.ndarray
    gc: np.ndarray
    cos_img: np.ndarray | None
    cos_cap: np.ndarray | None
    weights: np.ndarray
    #: each candidate's row in ``gallery``
    rows: np.ndarray
    gallery: GalleryArrays
    #: candidates that are the query itself (same path, or its library image)
    excluded: np.ndarray
    #: the prepared query, completed with its caption weight and learned vector
    query: PreparedQuery
    timings: dict[str, float]

    def hit(self, rank: int, j: int, score: float) -> Hit:
        """Candidate ``j`` as a result, with its metadata from the in-memory gallery."""
        m, r = self.gallery.meta, int(self.rows[j])
        c = m.captions[r]
        w, h = int(m.width[r]), int(m.height[r])
        dets = [{"label": label, "score": round(sc, 4), "box": [round(v, 1) for v in box]} for label, sc, box in m.detections(r)]
        return Hit(rank, int(self.ids[j]), m.paths[r], score, c.text if c is not None else "", c.source if c is not None else "",
                   dets, None if w < 0 else w, None if h < 0 else h,
                   caption_sources=tuple(src for src, _ in getattr(c, "parts", ()) or ()))


def annotate_rank_changes(results: dict[str, ModeResult], k: int) -> dict[str, dict]:
    """Fill each hit's rank in the other modes; return overlap@k and rank correlation per pair."""
    ranks = {m: {h.image_id: h.rank for h in r.hits} for m, r in results.items()}
    for m, r in results.items():
        for h in r.hits:
            h.other_ranks = {o: ranks[o].get(h.image_id) for o in results if o != m}
    comps = {}
    names = list(results)
    for a_i, a in enumerate(names):
        for b in names[a_i + 1:]:
            comps[f"{a}_vs_{b}"] = compare_rankings([h.image_id for h in results[a].hits], [h.image_id for h in results[b].hits], k)
    return comps


def compare_rankings(a: list[int], b: list[int], k: int) -> dict:
    """overlap@k, and Spearman's rho over the union (an item missing from a list gets rank k+1)."""
    sa, sb = set(a[:k]), set(b[:k])
    overlap = len(sa & sb) / k if k else 0.0
    union = sorted(sa | sb)
    if len(union) < 2:
        return {"overlap_at_k": round(overlap, 4), "spearman": None, "common": len(sa & sb)}
    ra = {x: i + 1 for i, x in enumerate(a[:k])}
    rb = {x: i + 1 for i, x in enumerate(b[:k])}
    xa = np.array([ra.get(x, k + 1) for x in union], float)
    xb = np.array([rb.get(x, k + 1) for x in union], float)
    if xa.std() == 0 or xb.std() == 0:
        rho = 1.0 if np.array_equal(xa, xb) else 0.0
    else:
        rho = float(np.corrcoef(xa, xb)[0, 1])
    return {"overlap_at_k": round(overlap, 4), "spearman": round(rho, 4), "common": len(sa & sb)}
