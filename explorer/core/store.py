"""The library database: SQLite through the SQLAlchemy 2.x ORM, in WAL mode.

The database is the source of truth. It holds file metadata, captions, detections and the
raw embedding vectors (so hnswlib indices are only caches that can be rebuilt without
re-running any model). Every change for an image commits in one transaction together with
its vectors, so a process killed at any instant leaves each image either fully indexed or
not at all. ``Vector.seq`` is a library-wide increasing counter: an index file records the
highest ``seq`` it contains, which is how a stale index finds exactly what it is missing.

**Never reused**: image ids and vector sequence numbers come from counters in the ``meta``
table (``image_id_high``, ``seq_high``) that only grow, also when the rows with the highest
values are deleted. (SQLite's own rowids restart from ``max(id) + 1``, which once handed a
deleted image's id, and its index entries, to a new image.) A library made before the
counters existed gets them on open and a new ``library_id``, which makes every index built
before rebuild once from the stored vectors.

**A persistent gallery generation** (``gallery_generation``): SQLite triggers on every insert,
update and delete of ``images``, ``captions``, ``detections`` and ``vectors`` replace the value of
``gallery_generation`` in meta with ``<count + 1>.<16 random hex digits>``, in the same
transaction as the change, whichever process or connection (or older version of this program)
writes. Two reads that return the same value saw the same rows of those tables (a restored backup
that was then changed gets a new random part, so it never repeats a value it had). The on-disk
gallery cache (``gallery_cache``) is keyed by it. A library made before the triggers gets them
(and a fresh value) when it is next opened writable.

A database file that is empty or not SQLite is refused as corrupt (never silently replaced by
a new library). A database on read-only media is opened read-only (``immutable``).

**Only the catalog and the store speak SQL**: every write anywhere in the app is a named method
here (one per statement or per transaction that must stay one), reads are ``catalog.Catalog``'s.

Long because: it is the one home of the schema, the never-reused counters and every write
statement; splitting it would scatter the SQL this rule keeps in one place.
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from .errors import LibraryCorrupt

SCHEMA_VERSION = 2  # 2: never-reused id and seq counters in meta
#: meta key of the persistent gallery generation, and the tables whose changes move it
GENERATION_KEY = "gallery_generation"
GENERATION_TABLES = ("images", "captions", "detections", "vectors")
_GENERATION_BUMP = (f"UPDATE meta SET value = (CAST(value AS INTEGER) + 1) || '.' || lower(hex(randomblob(8))) "
                    f"WHERE key = '{GENERATION_KEY}'")
SQLITE_MAGIC = b"SQLite format 3\x00"

# Caption sources, most trusted first, and how they combine: one home in captions.sources.
from .captions.sources import CAPTION_PRIORITY, GROUND_TRUTH, caption_rank, compose  # noqa: E402,F401


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: The real path as OS bytes: file names need not be valid UTF-8.
    path_key: Mapped[bytes] = mapped_column(LargeBinary, unique=True, index=True)
    #: The path for display (undecodable bytes replaced).
    path: Mapped[str] = mapped_column(Text)
    folder: Mapped[str] = mapped_column(Text, index=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    mtime_ns: Mapped[int] = mapped_column(Integer, default=0)
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    width: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: ``ok`` or ``error``.
    status: Mapped[str] = mapped_column(String(16), default="ok", index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    indexed_at: Mapped[float] = mapped_column(Float, default=time.time)
    #: Neighbourhood agreement of the active caption with the image (see fusion.caption_weight).
    caption_agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The detector whose output is stored (also when it found nothing).
    detector_model: Mapped[str | None] = mapped_column(String(200), nullable=True)

    captions: Mapped[list["CaptionRow"]] = relationship(back_populates="image", cascade="all, delete-orphan")
    detections: Mapped[list["DetectionRow"]] = relationship(back_populates="image", cascade="all, delete-orphan")
    vectors: Mapped[list["VectorRow"]] = relationship(back_populates="image", cascade="all, delete-orphan")

    @property
    def fs_path(self) -> str:
        return os.fsdecode(self.path_key)

    def active_caption(self):
        """The caption that is embedded and fused (``captions.sources.compose``), or None."""
        return compose(self.captions)


class CaptionRow(Base):
    __tablename__ = "captions"
    __table_args__ = (Index("ix_caption_image_source", "image_id", "source", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[str] = mapped_column(String(200))
    confidence: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[float] = mapped_column(Float, default=time.time)

    image: Mapped[ImageRow] = relationship(back_populates="captions")


class DetectionRow(Base):
    __tablename__ = "detections"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(100))
    score: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)

    image: Mapped[ImageRow] = relationship(back_populates="detections")

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


class VectorRow(Base):
    """A raw embedding. ``kind`` is ``image`` (image encoder), ``caption`` (text encoder on the
    active caption) or ``boxes`` (box-pooled features, for learned fusion)."""

    __tablename__ = "vectors"
    __table_args__ = (Index("ix_vector_key", "image_id", "kind", "model_id", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str] = mapped_column(String(200), index=True)
    dim: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    seq: Mapped[int] = mapped_column(Integer, index=True)

    image: Mapped[ImageRow] = relationship(back_populates="vectors")

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=np.float32).reshape(-1, self.dim) if self.kind == "boxes" else np.frombuffer(self.data, dtype=np.float32)


class ModelRow(Base):
    __tablename__ = "models"

    model_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int | None] = mapped_column(Integer, nullable=True)
    weights: Mapped[str | None] = mapped_column(Text, nullable=True)
    first_used: Mapped[float] = mapped_column(Float, default=time.time)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started: Mapped[float] = mapped_column(Float, default=time.time)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)
    folders: Mapped[str] = mapped_column(Text, default="")
    settings: Mapped[str] = mapped_column(Text, default="{}")
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done, cancelled, crashed
    n_indexed: Mapped[int] = mapped_column(Integer, default=0)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    n_removed: Mapped[int] = mapped_column(Integer, default=0)


class BoxMetaRow(Base):
    """Labels, scores and normalised boxes belonging to one cached ``boxes`` vector (learned fusion's
    box features, ``learned.features``); the table is created on first use."""

    __tablename__ = "learned_boxes"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    feature_id: Mapped[str] = mapped_column(String(240), primary_key=True)
    #: ``seq`` of the image vector when the features were computed (changes on re-indexing).
    image_seq: Mapped[int] = mapped_column(Integer)
    detector_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    n: Mapped[int] = mapped_column(Integer)
    labels: Mapped[str] = mapped_column(Text, default="[]")
    scores: Mapped[str] = mapped_column(Text, default="[]")
    boxes: Mapped[str] = mapped_column(Text, default="[]")
    created_at: Mapped[float] = mapped_column(Float, default=0.0)


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


@dataclass
class IndexedImage:
    """What one indexing batch writes for one file (``Store.write_index_batch``), as plain values.

    ``error`` set: the image is recorded as failed and its vectors dropped (nothing else is written).
    ``detections`` not None: the boxes of ``detector_model`` replace every stored box except the
    ground truth's. ``captions`` are upserted by source; ``drop_sources`` are deleted afterwards.
    """

    image_id: int | None
    path_key: bytes
    path: str
    folder: str
    size: int
    mtime_ns: int
    error: str | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    detector_model: str | None = None
    #: ``(label, score, (x1, y1, x2, y2))`` in original pixels
    detections: list[tuple[str, float, tuple[float, float, float, float]]] | None = None
    #: ``(source, text, model_id, confidence)``
    captions: list[tuple[str, str, str, float]] = field(default_factory=list)
    drop_sources: list[str] = field(default_factory=list)
    #: ``(kind, model_id, float32 vector)``
    vectors: list[tuple[str, str, np.ndarray]] = field(default_factory=list)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON", "busy_timeout=30000"):
        try:
            cur.execute(f"PRAGMA {pragma}")
        except sqlite3.OperationalError:
            pass  # a read-only (immutable) database keeps its journal mode
    cur.close()


def _bump(conn, key: str, floor_sql: str) -> int:
    """Advance the counter ``key`` in meta to ``max(counter, floor) + 1`` and return it (inside a flush)."""
    cur = conn.execute(text("SELECT value FROM meta WHERE key = :k"), {"k": key}).scalar()
    floor = conn.execute(text(floor_sql)).scalar() or 0
    new = max(int(cur or 0), int(floor)) + 1
    conn.execute(text("INSERT OR REPLACE INTO meta (key, value) VALUES (:k, :v)"), {"k": key, "v": str(new)})
    return new


@event.listens_for(Session, "before_flush")
def _assign_never_reused_ids(session, _ctx, _instances) -> None:
    """New images get ids from the ``image_id_high`` counter, never a deleted image's id."""
    new = [o for o in session.new if isinstance(o, ImageRow) and o.id is None]
    if not new:
        return
    conn = session.connection()
    for row in new:
        row.id = _bump(conn, "image_id_high", "SELECT max(id) FROM images")


@event.listens_for(Session, "after_flush")
def _record_seq_high(session, _ctx) -> None:
    """Keep ``seq_high`` >= every seq written, so a deleted vector's seq is never handed out again."""
    if not any(isinstance(o, VectorRow) for o in list(session.new) + list(session.dirty)):
        return
    conn = session.connection()
    top = conn.execute(text("SELECT max(seq) FROM vectors")).scalar() or 0
    cur = conn.execute(text("SELECT value FROM meta WHERE key = 'seq_high'")).scalar()
    if cur is None or int(cur) < int(top):
        conn.execute(text("INSERT OR REPLACE INTO meta (key, value) VALUES ('seq_high', :v)"), {"v": str(top)})


class Store:
    """Opens (creating if needed) the library database at ``DIR/library.sqlite``.

    ``read_only`` is True when the file or its folder cannot be written (read-only media, an
    immutable file): the database is then opened read-only and nothing is migrated on disk.
    """

    FILENAME = "library.sqlite"

    def __init__(self, library_dir: str | os.PathLike):
        self.dir = Path(library_dir).expanduser()
        self.path = self.dir / self.FILENAME
        exists = self.path.exists()
        if not exists:
            self.dir.mkdir(parents=True, exist_ok=True)
        else:
            self._refuse_foreign_file()
        self.read_only = exists and not (os.access(self.path, os.W_OK) and os.access(self.dir, os.W_OK | os.X_OK))
        if self.read_only:
            uri = "file:" + str(self.path.resolve()) + "?immutable=1"
            self.engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False), future=True)
        else:
            self.engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self._legacy_library_id = None
        if self.read_only:
            self._check_readable()
            return
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        with self.Session.begin() as s:
            if s.get(Meta, "schema_version") is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                s.add(Meta(key="created", value=datetime.now(timezone.utc).isoformat()))
            self._migrate_counters(s)
        self._ensure_generation_triggers()

    def _ensure_generation_triggers(self) -> None:
        """Create the triggers that move ``gallery_generation`` (once; a no-op when they exist)."""
        names = {f"gallery_generation_{t}_{op.lower()}": (t, op) for t in GENERATION_TABLES for op in ("INSERT", "UPDATE", "DELETE")}
        with self.engine.begin() as conn:
            have = {r[0] for r in conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))}
            if set(names) <= have and conn.execute(text("SELECT 1 FROM meta WHERE key = :k"), {"k": GENERATION_KEY}).first():
                return
            conn.execute(text("INSERT OR IGNORE INTO meta (key, value) VALUES (:k, :v)"),
                         {"k": GENERATION_KEY, "v": "0." + uuid.uuid4().hex[:16]})
            for name, (table, op) in names.items():
                if name not in have:
                    conn.execute(text(f'CREATE TRIGGER "{name}" AFTER {op} ON "{table}" BEGIN {_GENERATION_BUMP}; END'))

    def gallery_generation(self) -> str | None:
        """The persistent gallery generation (module docstring); None where the library has none
        (a read-only library made before the triggers)."""
        return self.get_meta(GENERATION_KEY)

    def _refuse_foreign_file(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise LibraryCorrupt(f"cannot read {self.path}: {e.strerror or e}") from None
        if not head:
            raise LibraryCorrupt(f"{self.path} is empty (0 bytes): the library database is lost, not new; restore it "
                                 "from a backup, or move the library folder away to start a new library")
        if head != SQLITE_MAGIC:
            raise LibraryCorrupt(f"{self.path} is not an SQLite database (damaged or overwritten); restore it from a backup, "
                                 "or move the library folder away to start a new library")

    def _check_readable(self) -> None:
        from sqlalchemy import inspect

        try:
            have = set(inspect(self.engine).get_table_names())
        except Exception as e:  # noqa: BLE001 - any driver error here means an unreadable database
            raise LibraryCorrupt(f"cannot read {self.path}: {str(e).splitlines()[0]}") from None
        if not {"images", "vectors", "meta"} <= have:
            raise LibraryCorrupt(f"{self.path} is not a library database of Retrieval Explorer (tables missing)")
        with self.session() as s:
            if s.get(Meta, "library_id") is None:  # a library from before the counters: rebuild indices in memory
                self._legacy_library_id = "legacy-" + uuid.uuid4().hex

    def _migrate_counters(self, s: Session) -> None:
        """Give a library its never-reused counters (and a new identity, so its old indices rebuild once)."""
        if s.get(Meta, "library_id") is not None:
            return
        top_id = s.scalar(select(func.max(ImageRow.id))) or 0
        top_seq = s.scalar(select(func.max(VectorRow.seq))) or 0
        for key, value in (("image_id_high", top_id), ("seq_high", top_seq)):
            row = s.get(Meta, key)
            if row is None or int(row.value) < value:
                s.merge(Meta(key=key, value=str(value)))
        s.merge(Meta(key="library_id", value=uuid.uuid4().hex))
        s.merge(Meta(key="schema_version", value=str(SCHEMA_VERSION)))

    @property
    def library_id(self) -> str:
        """This library's identity: index files built for another library (or before the counters) are rebuilt."""
        return self._legacy_library_id or self.get_meta("library_id") or "unknown"

    def integrity_check(self, full: bool = False) -> list[str]:
        """SQLite's ``quick_check`` (or the slower ``integrity_check``): an empty list means healthy."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            with self.engine.connect() as conn:
                rows = [r[0] for r in conn.execute(text(f"PRAGMA {pragma}"))]
        except Exception as e:  # noqa: BLE001 - "database disk image is malformed" and friends
            return [str(e).splitlines()[0]]
        return [] if rows == ["ok"] else rows

    def _add_missing_columns(self) -> None:
        """A light migration: columns added to the ORM after a library was created are added as NULL."""
        from sqlalchemy import inspect, text

        insp = inspect(self.engine)
        with self.engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                have = {c["name"] for c in insp.get_columns(table.name)}
                for col in table.columns:
                    if col.name not in have and col.nullable:
                        conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{col.name}" {col.type.compile(self.engine.dialect)}'))

    def session(self) -> Session:
        return self.Session()

    def next_seq(self, s: Session) -> int:
        """The next vector sequence number (call inside the transaction that writes the vector).

        Never one used before: ``seq_high`` in meta remembers the highest seq ever written (it
        is advanced at every flush that writes vectors), also after those vectors are deleted."""
        cur = s.scalar(select(func.max(VectorRow.seq))) or 0
        row = s.get(Meta, "seq_high")
        return max(int(cur), int(row.value) if row else 0) + 1

    def seq_high(self) -> int:
        """The highest vector seq ever written to this library."""
        with self.session() as s:
            cur = s.scalar(select(func.max(VectorRow.seq))) or 0
            row = s.get(Meta, "seq_high")
            return max(int(cur), int(row.value) if row else 0)

    def count_images(self, status: str | None = "ok") -> int:
        with self.session() as s:
            q = select(func.count(ImageRow.id))
            if status:
                q = q.where(ImageRow.status == status)
            return int(s.scalar(q) or 0)

    def load_vectors(self, kind: str, model_id: str, image_ids: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, matrix) of all vectors of one kind and model, ordered by image id."""
        with self.session() as s:
            q = select(VectorRow.image_id, VectorRow.dim, VectorRow.data).join(ImageRow).where(
                VectorRow.kind == kind, VectorRow.model_id == model_id, ImageRow.status == "ok")
            if image_ids is not None and len(image_ids) <= 20000:
                q = q.where(VectorRow.image_id.in_([int(i) for i in image_ids]))
            rows = s.execute(q.order_by(VectorRow.image_id)).all()
        if image_ids is not None and len(image_ids) > 20000:
            wanted = set(int(i) for i in image_ids)
            rows = [r for r in rows if r[0] in wanted]
        rows = valid_vector_rows(rows)[0]
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        mat = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), rows[0][1])
        return ids, mat

    def set_meta(self, key: str, value: str) -> None:
        with self.Session.begin() as s:
            s.merge(Meta(key=key, value=value))

    def get_meta(self, key: str) -> str | None:
        with self.session() as s:
            row = s.get(Meta, key)
            return row.value if row else None

    # -- read-only catalog queries for the gallery-wide views (duplicates, embedding map) ----
    def image_catalog(self) -> list[tuple[int, str, str, str | None]]:
        """(id, path, folder, content_hash) of every indexed (status ok) image, ordered by id."""
        with self.session() as s:
            q = select(ImageRow.id, ImageRow.path, ImageRow.folder, ImageRow.content_hash).where(ImageRow.status == "ok")
            return [tuple(r) for r in s.execute(q.order_by(ImageRow.id)).all()]

    def active_captions(self) -> dict[int, tuple[str, str]]:
        """image id -> (source, text) of its active (most trusted) caption, for every image that has one."""
        best: dict[int, tuple[int, str, str]] = {}
        with self.session() as s:
            for iid, source, text in s.execute(select(CaptionRow.image_id, CaptionRow.source, CaptionRow.text)):
                r = caption_rank(source)
                if iid not in best or r < best[iid][0]:
                    best[iid] = (r, source, text)
        return {i: (v[1], v[2]) for i, v in best.items()}

    def gallery_stamp(self) -> str:
        """A string that changes whenever indexed images, their vectors, captions or caption agreement change."""
        with self.session() as s:
            n, hi = s.execute(select(func.count(ImageRow.id), func.max(ImageRow.id)).where(ImageRow.status == "ok")).one()
            seq = s.scalar(select(func.max(VectorRow.seq)))
            cap = s.execute(select(func.count(CaptionRow.id), func.max(CaptionRow.id))).one()
            agr = s.get(Meta, "agreement_version")
        return f"{n}-{hi}-{seq}-{cap[0]}-{cap[1]}-{agr.value if agr else 0}"

    # -- learned fusion's box-feature cache ----------------------------------------------------
    def ensure_box_table(self) -> None:
        """Create the ``learned_boxes`` table if this database lacks it."""
        BoxMetaRow.__table__.create(self.engine, checkfirst=True)

    def write_box_features(self, feature_id: str, entries) -> None:
        """Store box features in one transaction. ``entries``: ``(image_id, image_seq, detector_model,
        data, dim, n, labels_json, scores_json, boxes_json, created_at)``; images deleted meanwhile are skipped."""
        with self.Session.begin() as s:
            seq = self.next_seq(s)
            for image_id, image_seq, detector, data, dim, n, labels, scores, boxes, created_at in entries:
                if s.get(ImageRow, image_id) is None:
                    continue  # deleted meanwhile
                row = s.scalar(select(VectorRow).where(VectorRow.image_id == image_id, VectorRow.kind == "boxes", VectorRow.model_id == feature_id))
                if row is None:
                    s.add(VectorRow(image_id=image_id, kind="boxes", model_id=feature_id, dim=dim, data=data, seq=seq))
                else:
                    row.data, row.dim, row.seq = data, dim, seq
                seq += 1
                s.merge(BoxMetaRow(image_id=image_id, feature_id=feature_id, image_seq=image_seq, detector_model=detector, n=n,
                                   labels=labels, scores=scores, boxes=boxes, created_at=created_at))

    # -- indexing runs (the writer lock is held by the caller) -------------------------------
    def record_models(self, models) -> None:
        """Remember each ``(model_id, role, dim, weights)`` not seen before in ``models``."""
        with self.Session.begin() as s:
            for model_id, role, dim, weights in models:
                if s.get(ModelRow, model_id) is None:
                    s.add(ModelRow(model_id=model_id, role=role, dim=dim, weights=weights))

    def mark_running_runs(self, status: str) -> None:
        """Give every run row still ``running`` the ``status`` (its process is gone)."""
        with self.Session.begin() as s:
            s.execute(update(RunRow).where(RunRow.status == "running").values(status=status))

    def start_run(self, folders: str, settings: str) -> int:
        """Record a new indexing run (``folders`` and ``settings`` as JSON); a run still marked
        ``running`` was killed and becomes ``crashed`` in the same transaction. Returns the run id."""
        with self.Session.begin() as s:
            s.execute(update(RunRow).where(RunRow.status == "running").values(status="crashed"))
            run = RunRow(folders=folders, settings=settings)
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, n_indexed: int, n_skipped: int, n_failed: int, n_removed: int) -> None:
        """Record the end of run ``run_id``: its status and counts."""
        with self.Session.begin() as s:
            run = s.get(RunRow, run_id)
            run.finished = time.time()
            run.status = status
            run.n_indexed, run.n_skipped = n_indexed, n_skipped
            run.n_failed, run.n_removed = n_failed, n_removed

    def delete_images(self, ids) -> None:
        """Delete images with everything stored for them (captions, detections, vectors, cached box features)."""
        with self.Session.begin() as s:
            for iid in ids:
                row = s.get(ImageRow, int(iid))
                if row is not None:
                    s.delete(row)

    def write_index_batch(self, items: list[IndexedImage]) -> None:
        """Write one indexing batch in one transaction: each image's row, boxes, captions and vectors
        together (a kill leaves every image fully written or untouched). New vectors get fresh seqs.
        A row created here has no boxes, captions or vectors yet (they cascade with their image), so
        nothing is looked up or deleted for it (no query per child, no autoflush between them)."""
        with self.Session.begin() as s:
            seq = self.next_seq(s)
            for it in items:
                row = s.get(ImageRow, it.image_id) if it.image_id is not None else None
                new = row is None
                if new:
                    row = ImageRow(path_key=it.path_key, path=it.path, folder=it.folder)
                    s.add(row)
                row.size, row.mtime_ns = it.size, it.mtime_ns
                row.indexed_at = time.time()
                if it.error:
                    row.status, row.error = "error", it.error
                    s.flush()
                    s.execute(delete(VectorRow).where(VectorRow.image_id == row.id))
                    continue
                row.status, row.error = "ok", None
                if it.content_hash:
                    row.content_hash = it.content_hash
                if it.width is not None:
                    row.width, row.height = it.width, it.height
                s.flush()
                if it.detections is not None:
                    if not new:
                        s.execute(delete(DetectionRow).where(DetectionRow.image_id == row.id, DetectionRow.model_id != GROUND_TRUTH))
                    for label, score, (x1, y1, x2, y2) in it.detections:
                        s.add(DetectionRow(image_id=row.id, model_id=it.detector_model, label=label, score=score, x1=x1, y1=y1, x2=x2, y2=y2))
                    row.detector_model = it.detector_model
                for source, text_, model_id, confidence in it.captions:
                    existing = None if new else s.scalar(select(CaptionRow).where(CaptionRow.image_id == row.id, CaptionRow.source == source))
                    if existing is None:
                        s.add(CaptionRow(image_id=row.id, source=source, text=text_, model_id=model_id, confidence=confidence))
                    else:
                        existing.text, existing.model_id, existing.confidence = text_, model_id, confidence
                if not new:
                    s.execute(delete(CaptionRow).where(CaptionRow.image_id == row.id, CaptionRow.source.in_(it.drop_sources)))
                for kind, model_id, vec in it.vectors:
                    v = np.ascontiguousarray(vec, np.float32)
                    existing = None if new else s.scalar(select(VectorRow).where(
                        VectorRow.image_id == row.id, VectorRow.kind == kind, VectorRow.model_id == model_id))
                    if existing is None:
                        s.add(VectorRow(image_id=row.id, kind=kind, model_id=model_id, dim=v.size, data=v.tobytes(), seq=seq))
                    else:
                        existing.data, existing.dim, existing.seq = v.tobytes(), v.size, seq
                    seq += 1

    # -- edits and imports (the writer lock is held by the caller) ----------------------------
    def write_captions(self, source: str, model_id: str, text_model_id: str, items) -> int:
        """Set (or, with empty text, delete) the ``source`` caption of each ``(image_id, text, vector)``
        and store its caption vector of ``text_model_id`` (None: the image has no caption left, the
        vector is dropped), all in one transaction. Returns how many caption vectors were written."""
        done = 0
        with self.Session.begin() as s:
            seq = self.next_seq(s)
            for image_id, text_, vec in items:
                existing = s.scalar(select(CaptionRow).where(CaptionRow.image_id == image_id, CaptionRow.source == source))
                if text_:
                    if existing is None:
                        s.add(CaptionRow(image_id=image_id, source=source, text=text_, model_id=model_id, confidence=1.0))
                    else:
                        existing.text, existing.model_id, existing.confidence = text_, model_id, 1.0
                elif existing is not None:
                    s.delete(existing)
                cur = s.scalar(select(VectorRow).where(VectorRow.image_id == image_id, VectorRow.kind == "caption",
                                                       VectorRow.model_id == text_model_id))
                if vec is None:
                    if cur is not None:
                        s.execute(delete(VectorRow).where(VectorRow.id == cur.id))
                    continue
                v = np.ascontiguousarray(vec, np.float32)
                if cur is None:
                    s.add(VectorRow(image_id=image_id, kind="caption", model_id=text_model_id, dim=v.size, data=v.tobytes(), seq=seq))
                else:
                    cur.data, cur.dim, cur.seq = v.tobytes(), v.size, seq
                seq += 1
                done += 1
        return done

    def replace_detections(self, model_id: str, boxes) -> int:
        """Replace the boxes of ``model_id`` of each image in ``boxes`` (``{image_id: [(label, (x1, y1,
        x2, y2))]}``, score 1.0) in one transaction; returns how many boxes were written."""
        n = 0
        with self.Session.begin() as s:
            for iid, items in boxes.items():
                s.execute(delete(DetectionRow).where(DetectionRow.image_id == iid, DetectionRow.model_id == model_id))
                for label, (x1, y1, x2, y2) in items:
                    s.add(DetectionRow(image_id=iid, model_id=model_id, label=label, score=1.0, x1=x1, y1=y1, x2=x2, y2=y2))
                    n += 1
        return n

    def write_agreement(self, ids, agreement, stamp: str) -> None:
        """Store every image's caption agreement with its ``stamp`` and bump ``agreement_version``, in one
        transaction (the fused index depends on the version, so it rebuilds once, also after a crash)."""
        with self.Session.begin() as s:
            s.execute(update(ImageRow), [{"id": int(i), "caption_agreement": float(a)} for i, a in zip(ids, agreement)])
            ver = int(s.get(Meta, "agreement_version").value) + 1 if s.get(Meta, "agreement_version") else 1
            s.merge(Meta(key="agreement_version", value=str(ver)))
            s.merge(Meta(key="agreement_stamp", value=stamp))

    def close(self) -> None:
        self.engine.dispose()


def database_error_line(e: BaseException) -> str | None:
    """The first line of the database driver's message when ``e`` is a database error, else None."""
    from sqlalchemy.exc import DBAPIError

    if not isinstance(e, DBAPIError):
        return None
    return str(e.orig).splitlines()[0] if e.orig is not None else str(e).splitlines()[0]


def valid_vector_rows(rows, dim: int | None = None) -> tuple[list, dict[int, str]]:
    """Split ``(image_id, dim, data, ...)`` rows into the usable ones and ``{image_id: reason}``.

    A vector is refused when its byte length does not match its dimension, its dimension is not
    the expected one (``dim``, else the most common), or it holds NaN or infinity: what a damaged
    database page looks like. Refused vectors never reach an index or a score."""
    if not rows:
        return [], {}
    if dim is None:
        dims = [r[1] for r in rows]
        dim = max(set(dims), key=dims.count)
    good, bad = [], {}
    for r in rows:
        if r[1] != dim or len(r[2]) != 4 * dim:
            bad[int(r[0])] = f"wrong length ({len(r[2]) // 4} values, expected {dim})"
        elif not np.isfinite(np.frombuffer(r[2], np.float32)).all():
            bad[int(r[0])] = "NaN or infinite values"
        else:
            good.append(r)
    return good, bad
