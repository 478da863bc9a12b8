"""Where weights may come from: the project's ``models/`` folder or the local Hugging Face cache.

Nothing here downloads. Every lookup is local; a miss returns ``None`` and the caller raises
``ModelUnavailable`` with ``missing_hint`` so the user knows exactly what to put where.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def models_dir() -> Path:
    """``$EXPLORER_MODELS_DIR``, else ``models/`` in the project checkout, else ``./models``."""
    env = os.environ.get("EXPLORER_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    candidate = PROJECT_ROOT / "models"
    return candidate if candidate.is_dir() else Path.cwd() / "models"


def force_offline() -> None:
    """Make every Hugging Face library refuse the network, so a miss fails fast instead of hanging."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def local_dir_for(repo_id: str) -> Path | None:
    """A folder under ``models/`` holding a Hugging Face model, by any of its usual names."""
    base = models_dir()
    for name in (repo_id, repo_id.replace("/", "--"), repo_id.split("/")[-1]):
        p = base / name
        if p.is_dir() and any(p.iterdir()):
            return p
    return None


def hf_cache_dir_for(repo_id: str) -> Path | None:
    """The snapshot folder of ``repo_id`` in the local Hugging Face cache, if it is there."""
    force_offline()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def find_hf_model(repo_id_or_path: str) -> Path | None:
    """Resolve a model reference (an existing path, a folder in ``models/``, or the HF cache)."""
    p = Path(repo_id_or_path).expanduser()
    if p.exists():
        return p
    under_models = models_dir() / repo_id_or_path
    if under_models.exists():
        return under_models
    return local_dir_for(repo_id_or_path) or hf_cache_dir_for(repo_id_or_path)


def missing_hint(repo_id: str, files: str = "config.json, the weights (*.safetensors or *.bin) and the processor files") -> str:
    """The one-line guidance shown when a Hugging Face model is not on disk."""
    target = models_dir() / repo_id.replace("/", "--")
    return (
        f"put {files} of '{repo_id}' in {target}/ "
        f"(e.g. `huggingface-cli download {repo_id} --local-dir {target}` on a machine with network), "
        f"or have it in the local Hugging Face cache"
    )
