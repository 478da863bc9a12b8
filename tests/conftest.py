"""Shared fixtures. Real offline default models are loaded once per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory, monkeypatch):
    """Never read or write the user's real config or default library."""
    home = tmp_path_factory.getbasetemp() / "home"
    monkeypatch.setenv("EXPLORER_CONFIG", str(home / "config.json"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.delenv("EXPLORER_LIBRARY", raising=False)


@pytest.fixture(scope="session")
def skimage_dir() -> Path:
    from explorer.core.samples import skimage_data_dir

    return skimage_data_dir()


@pytest.fixture(scope="session")
def open_photos(skimage_dir):
    """``open_photos(names, mode=None)``: the named scikit-image photos that exist, loaded in memory
    (converted to ``mode`` when given)."""
    from PIL import Image

    def load(names, mode: str | None = None) -> list:
        out = []
        for n in names:
            if (skimage_dir / n).is_file():
                with Image.open(skimage_dir / n) as im:
                    out.append(im.convert(mode) if mode else im.copy())
        return out

    return load


@pytest.fixture(scope="session")
def sample_gallery(tmp_path_factory) -> Path:
    """The labelled sample gallery made from scikit-image photos (read-only for tests: copy before changing)."""
    from explorer.core.samples import make_sample_gallery

    return make_sample_gallery(tmp_path_factory.mktemp("gallery") / "sample")


@pytest.fixture(scope="session")
def default_settings():
    from explorer.core.config import Settings

    return Settings()


@pytest.fixture(scope="session")
def loader(default_settings):
    """One ModelLoader with the real offline default models, shared by every test."""
    from explorer.core.models.registry import ModelLoader

    return ModelLoader(default_settings)


@pytest.fixture(scope="session")
def indexed_sample(tmp_path_factory, sample_gallery, loader):
    """A library with the sample gallery indexed once per session (read-only for tests)."""
    from explorer.core.library import Library
    from explorer.core.pipeline import Indexer

    lib_dir = tmp_path_factory.mktemp("libs") / "sample-lib"
    lib = Library(lib_dir, loader.settings.__class__(library=str(lib_dir)), loader=loader)
    summary = Indexer(lib).run([sample_gallery])
    assert summary.ok, summary.failures
    return lib


@pytest.fixture
def gallery_copy(tmp_path, sample_gallery) -> Path:
    dst = tmp_path / "gallery"
    shutil.copytree(sample_gallery, dst)
    return dst


@pytest.fixture
def library_copy(tmp_path, indexed_sample, loader):
    """A private, writable copy of the session's indexed sample library (that one is read-only)."""
    from dataclasses import replace

    from explorer.core.library import Library

    dst = tmp_path / "lib"
    # without the derived gallery cache: a search on the session library may have written one,
    # and tests of the cache expect a copy to start from the database alone
    shutil.copytree(indexed_sample.dir, dst, ignore=shutil.ignore_patterns("cache"))
    lib = Library(dst, replace(loader.settings, library=str(dst)), loader=loader)
    yield lib
    lib.close()
