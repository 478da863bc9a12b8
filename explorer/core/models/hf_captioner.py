"""Hugging Face image-to-text captioners (BLIP, GIT, VisionEncoderDecoder), loaded only from local files.

The argument of ``hf:`` is a Hugging Face repo id (``Salesforce/blip-image-captioning-base``)
or a folder: an absolute path, a folder under ``models/`` (by repo id, ``org--name`` or
``name``), or a snapshot in the local Hugging Face cache. Nothing is downloaded.

Captions are generated greedily (``max_new_tokens`` 30). ``confidence`` is the mean probability
the model gave to each token it generated (end-of-text included), so a caption the model was
unsure about carries a low weight in caption fusion.

The helpers at the top (``resolve_model_dir``, ``probe_model_dir``, ``short_error``) are shared
with :mod:`explorer.core.models.hf_detector`.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..config import Settings
from ..captions.sources import GENERATED
from ..errors import ModelUnavailable
from .base import Caption, Captioner, Detection
from .weights import find_hf_model, force_offline, missing_hint

MAX_NEW_TOKENS = 30
SUPPORTED_CAPTIONERS = ("blip", "git", "vision-encoder-decoder")
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


# --------------------------------------------------------------------------- shared helpers


def _is_path_like(ref: str) -> bool:
    p = Path(ref).expanduser()
    return p.is_absolute() or ref.startswith((".", "~")) or ref.count("/") > 1 or "\\" in ref


def _missing(ref: str, what: str) -> str:
    """The one-line 'what to put where' for a model that is not on disk."""
    if not ref:
        return f"name a {what}: a Hugging Face repo id or a folder (e.g. hf:Salesforce/blip-image-captioning-base)"
    if _is_path_like(ref) or not (_REPO_ID.match(ref) or "/" not in ref):
        target = Path(ref).expanduser()
        return (
            f"no {what} at {target}: put config.json, the weights (*.safetensors or *.bin) and the processor "
            f"files there (e.g. `huggingface-cli download REPO_ID --local-dir {target}` on a machine with network)"
        )
    return f"{what} '{ref}' is not on disk: " + missing_hint(ref)


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def resolve_model_dir(argument: str, what: str) -> Path:
    """The local folder of a Hugging Face model, or ModelUnavailable saying what to put where."""
    force_offline()
    ref = argument.strip()
    folder = find_hf_model(ref) if ref else None
    if folder is None:
        raise ModelUnavailable(_missing(ref, what))
    if not folder.is_dir():
        raise ModelUnavailable(f"{folder} is a file; point at the folder holding config.json and the weights of the {what}")
    if not (folder / "config.json").is_file():
        raise ModelUnavailable(f"{folder} has no config.json; put the {what}'s config.json, weights and processor files there")
    if not _has_weights(folder):
        raise ModelUnavailable(f"{folder} has no weights (*.safetensors or *.bin) for the {what}; put them next to its config.json")
    return folder


def probe_model_dir(argument: str, what: str):
    """Availability of a local Hugging Face model, without loading it."""
    from .registry import Availability

    try:
        folder = resolve_model_dir(argument, what)
    except ModelUnavailable as e:
        return Availability(False, "", str(e))
    return Availability(True, str(folder))


def short_error(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception, for one-line user messages."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    first = first[:limit] + ("..." if len(first) > limit else "")
    return f"{err.__class__.__name__}: {first}" if first else err.__class__.__name__


def model_type_of(folder: Path) -> str:
    import json

    try:
        return str(json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    return [im if im.mode == "RGB" else im.convert("RGB") for im in images]


# --------------------------------------------------------------------------- captioner


class HFCaptioner(Captioner):
    def __init__(self, name: str, folder: Path, device):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        self.model_id = f"hf:{name}"
        self.weights_path = str(folder)
        self.device = device
        self.model_type = model_type_of(folder)
        if self.model_type not in SUPPORTED_CAPTIONERS:
            raise ModelUnavailable(
                f"{folder} holds a '{self.model_type or 'unknown'}' model; the hf captioner supports "
                f"{', '.join(SUPPORTED_CAPTIONERS)} image-captioning models"
            )
        try:
            processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
            self.image_processor = getattr(processor, "image_processor", processor)
            self.tokenizer = getattr(processor, "tokenizer", None) or AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
            if not callable(self.image_processor) or not hasattr(self.tokenizer, "batch_decode"):
                raise ValueError("the folder's processor has no image processor and tokenizer")
            model = AutoModelForImageTextToText.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
        except ModelUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 - any broken folder is the same user problem
            raise ModelUnavailable(f"cannot load the captioner in {folder}: {short_error(e)}") from None
        self.model = model.eval().to(device)
        self.eos_ids = self._eos_ids()
        self.batch_size = 16 if device.type == "cuda" else 8
        self._lock = threading.Lock()

    def _eos_ids(self) -> set[int]:
        if self.model_type == "blip":  # BLIP's generate stops on the text config's [SEP]
            ids = [getattr(self.model.config.text_config, "sep_token_id", None)]
        else:
            eos = self.model.generation_config.eos_token_id
            ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
        return {int(i) for i in ids if i is not None}

    def _generate_kwargs(self) -> dict:
        kwargs = dict(
            max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
            output_scores=True, output_logits=True, return_dict_in_generate=True,
        )
        if self.model_type != "blip" and self.model.generation_config.pad_token_id is None and self.eos_ids:
            kwargs["pad_token_id"] = min(self.eos_ids)
        return kwargs

    def caption(self, images: Sequence[Image.Image], detections: Sequence[Sequence[Detection]] | None = None) -> list[Caption]:
        import torch

        captions: list[Caption] = []
        if len(images) == 0:
            return captions
        with self._lock, torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = rgb(images[i:i + self.batch_size])
                pixel_values = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                out = self.model.generate(pixel_values=pixel_values, **self._generate_kwargs())
                captions.extend(self._decode(out))
        return captions

    def _decode(self, out) -> list[Caption]:
        import torch

        steps = out.logits if getattr(out, "logits", None) else out.scores
        n_new = len(steps)
        new_tokens = out.sequences[:, out.sequences.shape[1] - n_new:]  # drops BOS / any prompt (GIT)
        if n_new:
            logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in steps], dim=1)  # (b, t, vocab)
            token_lp = logprobs.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)  # (b, t)
        else:
            token_lp = torch.zeros(new_tokens.shape, dtype=torch.float32)
        result = []
        for row, lp in zip(new_tokens.tolist(), token_lp.tolist()):
            keep = []
            for tok in row:
                keep.append(tok)
                if tok in self.eos_ids:
                    break
            probs = np.exp(np.asarray(lp[:len(keep)], dtype=np.float64))
            text = self.tokenizer.decode([t for t in keep if t not in self.eos_ids], skip_special_tokens=True)
            text = " ".join(text.split())
            confidence = float(np.clip(probs.mean(), 0.0, 1.0)) if len(probs) and text else 0.0
            result.append(Caption(text=text, source=GENERATED, model_id=self.model_id, confidence=confidence))
        return result


def load_captioner(argument: str, loader) -> HFCaptioner:
    from .device import configure_cpu_threads, pick_device

    folder = resolve_model_dir(argument, "captioning model")
    configure_cpu_threads()
    return HFCaptioner(argument.strip(), folder, pick_device(loader.settings.device))


def probe(argument: str, settings: Settings):
    return probe_model_dir(argument, "captioning model")
