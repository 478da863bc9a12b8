"""The library database: SQLite through the SQLAlchemy 2.x ORM, in WAL mode.

The database is the source of truth. It holds file metadata, captions, detections and the
raw embedding vectors (so hnswlib indices are only caches that can be rebuilt without
re-running any model). Every change for an image commits in one transaction together with
its vectors, so a process killed at any instant leaves each image either fully indexed or
not at all. ``Vector.seq`` is a library-wide increasing counter: an index file records the
highest ``seq`` it contains, which is how a stale index finds exactly what it is missing.
"""

from __future__ import annotations

import os
import time
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
    event,
    func,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

SCHEMA_VERSION = 1

#: Caption sources, most trusted first. The active caption of an image is the most trusted one.
CAPTION_PRIORITY = ("user-edited", "sidecar", "captions-file", "ground-truth", "generated")


def caption_rank(source: str) -> int:
    """Lower is more trusted; unknown sources rank last."""
    return CAPTION_PRIORITY.index(source) if source in CAPTION_PRIORITY else len(CAPTION_PRIORITY)


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

    def active_caption(self) -> "CaptionRow | None":
        return min(self.captions, key=lambda c: caption_rank(c.source), default=None)


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


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Store:
    """Opens (creating if needed) the library database at ``DIR/library.sqlite``."""

    FILENAME = "library.sqlite"

    def __init__(self, library_dir: str | os.PathLike):
        self.dir = Path(library_dir).expanduser()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / self.FILENAME
        self.engine = create_engine(f"sqlite:///{self.path}", future=True)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._add_missing_columns()
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        with self.Session.begin() as s:
            if s.get(Meta, "schema_version") is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                s.add(Meta(key="created", value=datetime.now(timezone.utc).isoformat()))

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
        """The next vector sequence number (call inside the transaction that writes the vector)."""
        cur = s.scalar(select(func.max(VectorRow.seq)))
        return (cur or 0) + 1

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

    def close(self) -> None:
        self.engine.dispose()
