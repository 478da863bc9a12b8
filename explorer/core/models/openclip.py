"""open_clip image + text encoder sharing one embedding space, loaded only from local files.

Argument forms (after ``open_clip:``):

``ARCH@PRETRAINED_TAG``
    e.g. ``ViT-B-32@laion2b_s34b_b79k``. The checkpoint is looked up, never downloaded, in
    ``models/ARCH/TAG/`` (any checkpoint file, ``open_clip_model.safetensors`` /
    ``open_clip_pytorch_model.bin`` preferred), ``models/ARCH/TAG.{safetensors,bin,pt,pth}``,
    ``models/<hf-repo>/`` (the tag's Hugging Face repo, ``org--name`` or ``name``), the local
    Hugging Face cache, and the ``~/.cache/clip`` folder open_clip uses for URL downloads.
``ARCH@PATH``
    PATH is a checkpoint file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``...), absolute or
    relative to ``models/`` (or to the working folder).
``ARCH``
    ``models/ARCH/`` holds exactly the checkpoint to use (or an ``open_clip_config.json``, below).
``DIR`` or ``hf-hub:ORG/REPO`` or ``ORG/REPO``
    a folder holding ``open_clip_config.json`` and the weights (the layout of open_clip models
    on the Hugging Face hub), given as a path, a folder under ``models/`` or a repo id in the
    local Hugging Face cache.

A custom architecture is a JSON model config: ``models/ARCH.json``, or ``ARCH`` itself a path
ending in ``.json`` (the architecture is then named after the file). It is registered with
``open_clip.add_model_config`` before the model is built.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..config import Settings
from ..errors import ModelUnavailable
from .base import ImageEncoder, TextEncoder, l2_normalise
from .weights import find_hf_model, force_offline, missing_hint, models_dir

CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")
PREFERRED_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)
CONFIG_NAME = "open_clip_config.json"
USAGE = "use open_clip:ARCH@PRETRAINED_TAG, open_clip:ARCH@path/to/checkpoint or open_clip:path/to/folder-with-open_clip_config.json"


# --------------------------------------------------------------------------- resolution


@dataclass
class _Plan:
    """What to build, decided from local files only."""

    arch: str  # open_clip model name, or "local-dir:/path"
    model_id: str
    checkpoint: Path | None = None
    tag_cfg: dict = field(default_factory=dict)
    model_cfg: dict | None = None  # the architecture config, for the tokenizer and HF text towers
    local_dir: Path | None = None
    missing: str = ""  # non-empty: the one-line hint of what to put where


def _as_path(text: str) -> Path | None:
    """``text`` as an existing file or folder: absolute, under ``models/``, or under the working folder."""
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [models_dir() / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c
    return None


def _looks_like_path(text: str) -> bool:
    return "/" in text or os.sep in text or text.startswith((".", "~")) or text.lower().endswith(CHECKPOINT_SUFFIXES)


def _checkpoint_in(folder: Path) -> Path | None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(CHECKPOINT_SUFFIXES))
    for name in PREFERRED_NAMES:
        for p in files:
            if p.name == name:
                return p
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return (safetensors or files or [None])[0]


def _custom_config(arch: str) -> tuple[str, Path | None]:
    """(architecture name, config file) for a custom JSON architecture, else (arch, None)."""
    if arch.lower().endswith(".json"):
        p = _as_path(arch)
        if p is None or not p.is_file():
            raise ModelUnavailable(f"open_clip model config {arch} not found (absolute, or relative to {models_dir()})")
        return p.stem, p
    p = models_dir() / f"{arch}.json"
    return arch, (p if p.is_file() else None)


_config_lock = threading.Lock()


def _register_config(path: Path) -> None:
    """Validate a flat open_clip model config and register it (later registrations win)."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelUnavailable(f"open_clip model config {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelUnavailable(f"open_clip model config {path} needs the keys embed_dim, vision_cfg and text_cfg")
    import open_clip

    with _config_lock:
        open_clip.add_model_config(path)


def _hf_cached_file(repo_id: str, filename: str) -> Path | None:
    force_offline()
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - a broken cache is the same as no cache
        return None
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def _tag_checkpoint(arch: str, tag: str, tag_cfg: dict) -> tuple[Path | None, str]:
    """Find a pretrained tag's checkpoint locally; (path, '') or (None, hint)."""
    base = models_dir()
    folder = base / arch / tag
    if folder.is_dir():
        found = _checkpoint_in(folder)
        if found:
            return found, ""
    for suffix in CHECKPOINT_SUFFIXES:
        p = base / arch / f"{tag}{suffix}"
        if p.is_file():
            return p, ""

    hf_hub = tag_cfg.get("hf_hub", "")
    url = tag_cfg.get("url", "")
    filename = "open_clip_pytorch_model.bin"
    if hf_hub:
        repo_id, fname = os.path.split(hf_hub)  # 'org/repo/' -> default file name, 'org/repo/file' -> file
        filename = fname or filename
        names = [filename]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        for name in (repo_id, repo_id.replace("/", "--"), repo_id.split("/")[-1]):
            d = base / name
            for n in names:
                if (d / n).is_file():
                    return d / n, ""
        for n in names:
            cached = _hf_cached_file(repo_id, n)
            if cached:
                return cached, ""
    if tag_cfg.get("file") and Path(tag_cfg["file"]).is_file():
        return Path(tag_cfg["file"]), ""
    if url:
        p = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        if p.is_file():
            return p, ""
        if not hf_hub:
            filename = os.path.basename(url)

    source = f" (from the Hugging Face repo {os.path.split(hf_hub)[0]})" if hf_hub else (f" (from {url})" if url else "")
    hint = (
        f"put {filename}{source} for {arch} {tag} at {base / arch / tag}/ "
        f"or pass open_clip:{arch}@path/to/file"
    )
    return None, hint


def _tag_list(arch: str, limit: int = 6) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    return ", ".join(tags[:limit]) + (f" and {len(tags) - limit} more" if len(tags) > limit else "")


def _resolve(argument: str) -> _Plan:
    arg = argument.strip()
    if not arg:
        raise ModelUnavailable(f"open_clip needs a model: {USAGE}")
    import open_clip

    arch, sep, rest = arg.partition("@")
    arch, rest = arch.strip(), rest.strip()
    if sep and not rest:
        raise ModelUnavailable(f"open_clip:{arg} names no tag or checkpoint after '@'; {USAGE}")

    if not sep:
        return _resolve_folder_form(arg)

    arch, config_file = _custom_config(arch)
    if config_file is not None:
        _register_config(config_file)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ModelUnavailable(
            f"unknown open_clip architecture '{arch}'; use a built-in name (e.g. ViT-B-32) "
            f"or put a model config {arch}.json in {models_dir()}/"
        )

    tag_cfg = open_clip.get_pretrained_cfg(arch, rest) if not _looks_like_path(rest) else {}
    if tag_cfg:
        tag = rest.lower().replace("-", "_")
        ckpt, hint = _tag_checkpoint(arch, tag, tag_cfg)
        return _Plan(arch, f"open_clip:{arch}@{tag}", ckpt, tag_cfg, model_cfg, missing=hint)

    path = _as_path(rest)
    if path is not None and path.is_dir():
        found = _checkpoint_in(path)
        if found is None:
            return _Plan(arch, f"open_clip:{arch}@{path.name}", None, {}, model_cfg,
                         missing=f"no checkpoint file (*.safetensors, *.bin, *.pt, *.pth) in {path}/ for open_clip {arch}")
        path = found
    if path is None:
        where = Path(rest).expanduser()
        where = where if where.is_absolute() else models_dir() / where
        if _looks_like_path(rest):
            hint = f"open_clip checkpoint {where} not found: put the {arch} checkpoint file there or pass open_clip:{arch}@/absolute/path/to/file"
        else:
            tags = _tag_list(arch) or "none"
            hint = (
                f"'{rest}' is neither a pretrained tag of open_clip {arch} (known: {tags}) nor a checkpoint file "
                f"(looked for {where}); pass open_clip:{arch}@TAG or open_clip:{arch}@path/to/file"
            )
        return _Plan(arch, f"open_clip:{arch}@{Path(rest).name}", None, {}, model_cfg, missing=hint)
    return _Plan(arch, f"open_clip:{arch}@{path.name}", path, {}, model_cfg)


def _resolve_folder_form(arg: str) -> _Plan:
    import open_clip

    ref = arg[len("hf-hub:"):] if arg.startswith("hf-hub:") else arg
    folder = _as_path(ref)
    if folder is None and "/" in ref and not ref.startswith((".", "/", "~")):
        folder = find_hf_model(ref)
    if folder is not None and folder.is_dir() and (folder / CONFIG_NAME).is_file():
        try:
            cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            model_cfg = cfg["model_cfg"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelUnavailable(f"{folder / CONFIG_NAME} is not a valid open_clip config ({e.__class__.__name__}: {e})") from None
        ckpt = _checkpoint_in(folder)
        missing = "" if ckpt else f"no weights (open_clip_model.safetensors or open_clip_pytorch_model.bin) in {folder}/"
        return _Plan(f"local-dir:{folder}", f"open_clip:{ref}", ckpt, {}, model_cfg, local_dir=folder, missing=missing)

    # ARCH alone: models/ARCH/ holds the checkpoint.
    arch, config_file = _custom_config(ref) if not _looks_like_path(ref) or ref.endswith(".json") else (ref, None)
    if config_file is not None:
        _register_config(config_file)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is not None:
        folder = models_dir() / arch
        ckpt = _checkpoint_in(folder) if folder.is_dir() else None
        if ckpt is not None:
            return _Plan(arch, f"open_clip:{arch}@{ckpt.name}", ckpt, {}, model_cfg)
        tags = _tag_list(arch)
        hint = f"open_clip:{arch} needs a checkpoint: pass open_clip:{arch}@TAG" + (f" (tags: {tags})" if tags else "")
        hint += f" or open_clip:{arch}@path/to/file, or put the checkpoint in {folder}/"
        return _Plan(arch, f"open_clip:{arch}", None, {}, model_cfg, missing=hint)
    if "/" in ref and not ref.startswith((".", "/", "~")):
        target = models_dir() / ref.replace("/", "--")
        hint = (f"open_clip model '{ref}' is not on disk: put {CONFIG_NAME} and open_clip_model.safetensors "
                f"of '{ref}' in {target}/ or have it in the local Hugging Face cache")
        return _Plan(f"local-dir:{target}", f"open_clip:{ref}", None, missing=hint)
    raise ModelUnavailable(f"open_clip:{arg} is not a known architecture or a folder with {CONFIG_NAME}; {USAGE}")


# --------------------------------------------------------------------------- probe


def probe(argument: str, settings: Settings):
    from .registry import Availability

    try:
        plan = _resolve(argument)
    except ModelUnavailable as e:
        return Availability(False, "", str(e))
    except ImportError as e:
        return Availability(False, "", f"python package missing ({e.name}); reinstall with the README's set-up command")
    if plan.missing or plan.checkpoint is None:
        return Availability(False, "", plan.missing or f"no checkpoint for open_clip:{argument}")
    return Availability(True, str(plan.checkpoint))


# --------------------------------------------------------------------------- loading


_SIZE_RE = re.compile(
    r"size mismatch for ([\w.\-]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)
_KEYS_RE = re.compile(r'(Missing|Unexpected) key\(s\) in state_dict: ((?:"[^"]*"(?:, )?)+)')


class _QuietRootWarnings(logging.Filter):
    """Hide open_clip's "initialized randomly" warning while we build a model only to compare shapes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _checkpoint_shapes(path: Path, arch: str) -> dict[str, tuple]:
    """Names and shapes of the tensors in a checkpoint, read cheaply (safetensors header / mmap)."""
    if path.suffix == ".npz":
        return {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        import torch

        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as e:  # noqa: BLE001 - anything unreadable is the same user problem
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
        if "torchscript" in str(e).lower():
            raise ModelUnavailable(
                f"open_clip checkpoint {path} is a TorchScript archive, which is not loaded; use the "
                f"open_clip_pytorch_model.bin / open_clip_model.safetensors of the same weights instead"
            ) from None
        raise ModelUnavailable(
            f"open_clip checkpoint {path} does not match architecture {arch}: "
            f"not a PyTorch or safetensors checkpoint ({e.__class__.__name__}: {first})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ModelUnavailable(
            f"open_clip checkpoint {path} does not match architecture {arch}: it holds no state dict of weights"
        )
    shapes = {str(k).removeprefix("module."): tuple(getattr(v, "shape", ())) for k, v in obj.items()}
    del obj
    return shapes


def _compare_shapes(model_shapes: dict[str, tuple], file_shapes: dict[str, tuple], arch: str) -> str:
    common = [k for k in model_shapes if k in file_shapes]
    if not common:
        a, b = next(iter(file_shapes), "?"), next(iter(model_shapes), "?")
        return f"none of its {len(file_shapes)} weights belong to {arch} (file has e.g. {a}, {arch} expects e.g. {b})"
    for k in common:
        if tuple(model_shapes[k]) != tuple(file_shapes[k]):
            n = sum(tuple(model_shapes[c]) != tuple(file_shapes[c]) for c in common)
            more = f" (and {n - 1} more)" if n > 1 else ""
            return f"{k} has shape {list(file_shapes[k])} in the file but {list(model_shapes[k])} in {arch}{more}"
    missing = [k for k in model_shapes if k not in file_shapes]
    if missing:
        return f"{len(missing)} weights of {arch} are missing from the file, e.g. {missing[0]}"
    return ""


def _mismatch_reason(err: BaseException) -> str:
    """One short phrase out of a (possibly huge) loading error."""
    msg = str(err)
    if "Error(s) in loading state_dict" in msg:
        parts = []
        sizes = _SIZE_RE.findall(msg)
        if sizes:
            name, got, want = sizes[0]
            more = f" (and {len(sizes) - 1} more)" if len(sizes) > 1 else ""
            parts.append(f"{name} has shape [{got}] in the file but [{want}] in the model{more}")
        for kind, keys in _KEYS_RE.findall(msg):
            names = re.findall(r'"([^"]*)"', keys)
            parts.append(f"{len(names)} {kind.lower()} weights, e.g. {names[0]}")
        return "; ".join(parts) or msg.splitlines()[0][:200]
    first = (msg.strip().splitlines() or [""])[0][:200]
    return f"{err.__class__.__name__}: {first}" if first else err.__class__.__name__


def _text_cfg_override(model_cfg: dict | None) -> dict:
    """Point a Hugging Face text tower at its local copy (config only; weights come from the checkpoint)."""
    if not model_cfg:
        return {}
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    name = text_cfg.get("hf_model_name")
    if not name:
        return {}
    local = find_hf_model(name)
    if local is None:
        raise ModelUnavailable("open_clip text tower needs its transformers config: " + missing_hint(name, "config.json and the tokenizer files"))
    text_cfg["hf_model_name"] = str(local)
    text_cfg["hf_model_pretrained"] = False
    return {"text_cfg": text_cfg}


def _make_tokenizer(plan: _Plan):
    import open_clip
    from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer, SimpleTokenizer

    text_cfg = (plan.model_cfg or {}).get("text_cfg", {})
    context_length = text_cfg.get("context_length", DEFAULT_CONTEXT_LENGTH)
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    hf_name = text_cfg.get("hf_tokenizer_name", "")
    if hf_name:
        source = plan.local_dir if plan.local_dir is not None and (plan.local_dir / "tokenizer_config.json").is_file() else find_hf_model(hf_name)
        if source is None:
            raise ModelUnavailable(f"open_clip {plan.arch} needs the tokenizer '{hf_name}': " + missing_hint(hf_name, "tokenizer.json / tokenizer_config.json"))
        try:
            return HFTokenizer(str(source), context_length=context_length, tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
        except Exception as e:  # noqa: BLE001
            raise ModelUnavailable(f"cannot load tokenizer '{hf_name}' from {source}: {str(e).splitlines()[0][:200]}") from None
    if plan.local_dir is None and "siglip" in plan.arch.lower():
        # open_clip would fetch a sentencepiece vocab over HTTP for these; refuse instead.
        raise ModelUnavailable(f"open_clip {plan.arch} needs text_cfg.hf_tokenizer_name pointing at a local tokenizer")
    # The CLIP BPE vocabulary ships inside the open_clip package: no network needed.
    if plan.local_dir is None and open_clip.get_model_config(plan.arch) is not None:
        return open_clip.get_tokenizer(plan.arch, context_length=context_length)
    return SimpleTokenizer(context_length=context_length, **kwargs)


class OpenClipModel(ImageEncoder, TextEncoder):
    """One open_clip model serving the image and the text role in a shared space."""

    def __init__(self, model, preprocess, tokenizer, device, model_id: str, weights_path: str):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.model_id = model_id
        self.weights_path = weights_path
        self.shared_space_id = model_id
        self.dim = int(_embed_dim(model))
        self.batch_size = 64 if device.type == "cuda" else 32
        self._lock = threading.Lock()

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = [im if im.mode == "RGB" else im.convert("RGB") for im in images[i:i + self.batch_size]]
                x = torch.stack([self.preprocess(im) for im in batch]).to(self.device)
                out.append(self.model.encode_image(x).float().cpu().numpy())
        return l2_normalise(np.concatenate(out, axis=0))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer([str(t) for t in texts[i:i + self.batch_size]]).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2_normalise(np.concatenate(out, axis=0))


def _embed_dim(model) -> int:
    proj = getattr(model, "text_projection", None)
    for cand in (getattr(model, "embed_dim", None), getattr(getattr(model, "visual", None), "output_dim", None)):
        if isinstance(cand, int) and cand > 0:
            return cand
    if proj is not None and hasattr(proj, "shape"):
        return int(proj.shape[-1])
    raise ModelUnavailable("cannot tell the embedding size of this open_clip model")


def _describe_with_empty_model(plan: _Plan, kwargs: dict, file_shapes: dict[str, tuple]) -> str:
    """Build the architecture without weights and say which tensor differs (only on the error path)."""
    import open_clip

    quiet = _QuietRootWarnings()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        empty = open_clip.create_model(plan.arch, load_weights=False, device="cpu",
                                       pretrained_image=False, pretrained_text=False, **kwargs)
        model_shapes = {k: tuple(v.shape) for k, v in empty.state_dict().items()}
        del empty
    except Exception:  # noqa: BLE001 - fall back to the original error text
        return ""
    finally:
        root.removeFilter(quiet)
    return _compare_shapes(model_shapes, file_shapes, plan.arch)


def load_open_clip(argument: str, loader) -> OpenClipModel:
    force_offline()
    plan = _resolve(argument)
    if plan.missing or plan.checkpoint is None:
        raise ModelUnavailable(plan.missing or f"no checkpoint for open_clip:{argument}")

    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    from .device import configure_cpu_threads, pick_device

    configure_cpu_threads()
    device = pick_device(loader.settings.device)
    tokenizer = _make_tokenizer(plan)  # before the weights: a missing tokenizer is the cheaper failure

    model_cfg = plan.model_cfg or {}
    kwargs: dict = {}
    if plan.local_dir is None:
        kwargs.update(_text_cfg_override(model_cfg))
        if plan.tag_cfg:
            kwargs["force_preprocess_cfg"] = merge_preprocess_dict({}, plan.tag_cfg)
            if plan.tag_cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
                kwargs["force_quick_gelu"] = True
    file_shapes = _checkpoint_shapes(plan.checkpoint, plan.arch)  # cheap; fails fast on a non-checkpoint
    try:
        if plan.local_dir is not None:
            model = open_clip.create_model(plan.arch, device="cpu", pretrained_image=False, pretrained_text=False, **kwargs)
        else:
            model = open_clip.create_model(
                plan.arch, pretrained=str(plan.checkpoint), device="cpu",
                pretrained_image=False, pretrained_text=False, require_pretrained=True, **kwargs,
            )
    except ModelUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - every failure here is "this file is not that model"
        reason = ""
        if file_shapes and "Error(s) in loading state_dict" not in str(e):
            reason = _describe_with_empty_model(plan, kwargs, file_shapes)
        raise ModelUnavailable(
            f"open_clip checkpoint {plan.checkpoint} does not match architecture {plan.arch}: {reason or _mismatch_reason(e)}"
        ) from None
    model.eval().to(device)
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    return OpenClipModel(model, preprocess, tokenizer, device, plan.model_id, str(plan.checkpoint))
