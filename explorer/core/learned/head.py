"""The learned fusion head and its training losses.

The head maps frozen features of one image to a D = 256 L2-normalised retrieval embedding.

``attention`` (default): tokens ``[global, box_1..box_B, caption]``, each projected to width
256 (``Linear`` + ``LayerNorm`` + a type embedding; box tokens add a projection of their
geometry and detector score, the caption token its fusion weight), one pre-norm
Transformer-encoder layer (4 heads, feed-forward 512, GELU) with padding masks for missing
boxes, and the output of the global token -> ``LayerNorm`` -> ``Linear`` -> L2 norm. With a
single layer only the global token's output is used, and it does not depend on the other
tokens' outputs, so ``EncoderLayer`` computes the layer for that query row only (keys and
values from every token): the same function as ``nn.TransformerEncoderLayer(norm_first=True)``
restricted to that row, at a fraction of the cost.

``mlp``: ``[global, mean of box tokens, caption token]`` concatenated -> 2-layer MLP.

The *image-side* embedding is the same head with the caption token masked: it is what the
image-caption InfoNCE term aligns with a caption projection (``caption_head``), so the visual
path learns what captions say without seeing the caption.

Losses (``FusionLoss``), each switchable for the ablation:

* ArcFace (additive angular margin, s = 30, m = 0.3) on ground-truth labels of the fused embedding;
* ``lambda_nce`` x symmetric InfoNCE (temperature 0.07) between the image-side embedding and
  the caption projection; images with identical captions are all positives of each other;
* ``lambda_box`` x cross-entropy of a linear classifier on the box tokens (the projected
  tokens the global token attends over) against their detected labels, keeping the box
  tokens about their objects.

Only the head (not the ArcFace class centres or the box classifier, whose sizes depend on the
training labels) is saved and needed at inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .features import BOX_DIM, GEOM_DIM, MAX_BOXES

ARCHS = ("attention", "mlp")


@dataclass(frozen=True)
class HeadConfig:
    """Everything needed to rebuild the head and to check it fits a library."""

    image_model_id: str
    image_dim: int
    text_model_id: str
    text_dim: int
    #: ``None`` when the head was trained without box features.
    box_feature_id: str | None = None
    box_dim: int = BOX_DIM
    geom_dim: int = GEOM_DIM
    max_boxes: int = MAX_BOXES
    use_caption: bool = True
    arch: str = "attention"
    d_model: int = 256
    n_heads: int = 4
    ff_dim: int = 512
    n_layers: int = 1
    dropout: float = 0.1
    out_dim: int = 256
    #: add a linear projection of the global image vector to the output (initialised by PCA)
    skip: bool = True
    version: int = 1

    @property
    def use_boxes(self) -> bool:
        return self.box_feature_id is not None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown head config keys {sorted(unknown)}")
        return cls(**d)


class Tokens(NamedTuple):
    tok: torch.Tensor  # (n, T, d)
    pad: torch.Tensor  # (n, T) bool, True = ignore
    nb: int  # box slots in use
    image: torch.Tensor  # (n, image_dim), for the skip projection


class EncoderLayer(nn.Module):
    """A pre-norm Transformer-encoder layer evaluated for the first ``n_query`` tokens only.

    ``y = x_q + MHA(LN1(x)_q, LN1(x), LN1(x)); y = y + FF(LN2(y))``, exactly
    ``nn.TransformerEncoderLayer(norm_first=True)`` on those rows (dropout aside).
    """

    def __init__(self, d: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.self_attn = nn.MultiheadAttention(d, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.linear1 = nn.Linear(d, ff_dim)
        self.linear2 = nn.Linear(ff_dim, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, pad, n_query: int = 1):
        h = self.norm1(x)
        a = self.self_attn(h[:, :n_query], h, h, key_padding_mask=pad, need_weights=False)[0]
        y = x[:, :n_query] + self.dropout(a)
        return y + self.dropout(self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(y))))))


class FusionHead(nn.Module):
    def __init__(self, cfg: HeadConfig):
        super().__init__()
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown head architecture '{cfg.arch}'; choose {', '.join(ARCHS)}")
        self.cfg = cfg
        d = cfg.d_model
        self.img_proj = nn.Linear(cfg.image_dim, d)
        self.img_norm = nn.LayerNorm(d)
        self.cap_proj = nn.Linear(cfg.text_dim, d)
        self.cap_weight = nn.Linear(1, d)
        self.cap_norm = nn.LayerNorm(d)
        if cfg.use_boxes:
            self.box_proj = nn.Linear(cfg.box_dim, d)
            self.box_geom = nn.Linear(cfg.geom_dim, d)
            self.box_norm = nn.LayerNorm(d)
        self.type_emb = nn.Parameter(torch.zeros(3, d))
        nn.init.normal_(self.type_emb, std=0.02)
        if cfg.arch == "attention":
            if cfg.n_layers != 1:
                raise ValueError("the attention head has exactly one encoder layer")
            self.encoder = EncoderLayer(d, cfg.n_heads, cfg.ff_dim, cfg.dropout)
            self.out_norm = nn.LayerNorm(d)
            self.out = nn.Linear(d, cfg.out_dim)
        else:
            self.mlp = nn.Sequential(nn.Linear(3 * d, 2 * d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(2 * d, cfg.out_dim))
        if cfg.skip:
            self.skip = nn.Linear(cfg.image_dim, cfg.out_dim)
            last = self.out if cfg.arch == "attention" else self.mlp[-1]
            nn.init.zeros_(last.weight)  # start as the skip projection alone; the fusion path grows from zero
            nn.init.zeros_(last.bias)
        # the caption side of the image-caption alignment term
        self.caption_head = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(), nn.Linear(d, cfg.out_dim))

    # -- tokens ---------------------------------------------------------------------------
    def tokens(self, image, caption, weight, boxes=None, box_mask=None, geom=None) -> "Tokens":
        """The token sequence [global, boxes..., caption] with its padding mask (True = ignore)."""
        n = image.shape[0]
        g = self.img_norm(self.img_proj(image)) + self.type_emb[0]
        c = self.cap_norm(self.cap_proj(caption) + self.cap_weight(weight.reshape(n, 1))) + self.type_emb[2]
        parts, pads = [g[:, None]], [torch.zeros(n, 1, dtype=torch.bool, device=image.device)]
        nb = 0
        if self.cfg.use_boxes and boxes is not None and boxes.shape[1] > 0:
            # real boxes come first in each row (as FeatureSet stores them): keep only as many
            # slots as the fullest row needs, and project only the real boxes
            nb = min(int(box_mask.sum(1).max()), self.cfg.max_boxes)
        if nb:
            bm = box_mask[:, :nb]
            real = self.box_norm(self.box_proj(boxes[:, :nb][bm]) + self.box_geom(geom[:, :nb][bm])) + self.type_emb[1]
            b = torch.zeros(n, nb, real.shape[-1], dtype=real.dtype, device=real.device)
            b[bm] = real
            parts.append(b)
            pads.append(~bm)
        parts.append(c[:, None])
        cap_pad = torch.full((n, 1), not self.cfg.use_caption, dtype=torch.bool, device=image.device)
        pads.append(cap_pad)
        return Tokens(torch.cat(parts, 1), torch.cat(pads, 1), nb, image)

    def encode(self, t: "Tokens", caption_on: bool = True):
        """``(embedding (n, out), box tokens (n, nb, d))``."""
        tok, pad, nb = t.tok, t.pad.clone(), t.nb
        if not caption_on:
            pad[:, -1] = True
        box_out = tok[:, 1 : 1 + nb]
        if self.cfg.arch == "attention":
            h = self.encoder(tok, pad, 1)
            emb = self.out(self.out_norm(h[:, 0]))
        else:
            keep = (~pad).float()
            if nb:
                bm = keep[:, 1 : 1 + nb, None]
                box_mean = (tok[:, 1 : 1 + nb] * bm).sum(1) / bm.sum(1).clamp(min=1.0)
            else:
                box_mean = torch.zeros_like(tok[:, 0])
            cap = tok[:, -1] * keep[:, -1:]
            emb = self.mlp(torch.cat([tok[:, 0], box_mean, cap], 1))
        if self.cfg.skip:
            emb = emb + self.skip(t.image)
        return F.normalize(emb, dim=-1), box_out

    @torch.no_grad()
    def init_skip(self, image_vectors) -> None:
        """Set the skip projection to centred PCA of these (training) image vectors: the untrained
        head then ranks like the image-only mode (PCA to 256-d keeps its mAP within about 0.01)."""
        x = torch.as_tensor(image_vectors, dtype=torch.float32)
        mu = x.mean(0)
        q = min(self.cfg.out_dim, x.shape[0] - 1, x.shape[1])
        _, _, v = torch.linalg.svd(x - mu, full_matrices=False)
        w = torch.zeros(self.cfg.out_dim, x.shape[1])
        w[:q] = v[:q]
        self.skip.weight.copy_(w)
        self.skip.bias.copy_(-(w @ mu))

    def forward(self, image, caption, weight, boxes=None, box_mask=None, geom=None, caption_on: bool = True):
        return self.encode(self.tokens(image, caption, weight, boxes, box_mask, geom), caption_on)[0]

    def embed_caption(self, caption):
        return F.normalize(self.caption_head(caption), dim=-1)


# ---------------------------------------------------------------------------------------
# losses


@dataclass(frozen=True)
class LossConfig:
    arcface: bool = True
    lambda_nce: float = 0.5
    lambda_box: float = 0.2
    arc_s: float = 30.0
    arc_m: float = 0.3
    temperature: float = 0.07

    def to_dict(self) -> dict:
        return asdict(self)


class ArcFace(nn.Module):
    """Additive angular margin softmax (Deng et al. 2019)."""

    def __init__(self, dim: int, n_classes: int, s: float = 30.0, m: float = 0.3):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m
        self.cos_m, self.sin_m = math.cos(m), math.sin(m)
        self.th = math.cos(math.pi - m)
        self.mm = math.sin(math.pi - m) * m

    def forward(self, emb, labels):
        cos = (emb @ F.normalize(self.weight, dim=-1).T).clamp(-1 + 1e-7, 1 - 1e-7)
        sin = torch.sqrt(1.0 - cos * cos)
        phi = cos * self.cos_m - sin * self.sin_m
        phi = torch.where(cos > self.th, phi, cos - self.mm)  # keep the target logit monotone in theta
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return F.cross_entropy(torch.where(onehot, phi, cos) * self.s, labels)


def info_nce(a, b, temperature: float, positives=None):
    """Symmetric InfoNCE between row-aligned unit vectors; ``positives`` (n, n) bool adds extra positives."""
    logits = a @ b.T / temperature
    n = a.shape[0]
    if positives is None:
        target = torch.arange(n, device=a.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    pos = positives.float() + torch.eye(n, device=a.device)
    pos = (pos > 0).float()
    t = pos / pos.sum(1, keepdim=True)
    return 0.5 * (-(t * F.log_softmax(logits, 1)).sum(1).mean() - (t * F.log_softmax(logits.T, 1)).sum(1).mean())


class FusionLoss(nn.Module):
    """The training objective around a ``FusionHead`` (class centres and box classifier live here)."""

    def __init__(self, head: FusionHead, n_classes: int, n_box_labels: int, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.head = head
        self.arcface = ArcFace(head.cfg.out_dim, n_classes, cfg.arc_s, cfg.arc_m) if cfg.arcface else None
        self.use_box = cfg.lambda_box > 0 and head.cfg.use_boxes and n_box_labels > 0
        self.box_cls = nn.Linear(head.cfg.d_model, n_box_labels) if self.use_box else None

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        h = self.head
        t = h.tokens(batch["image"], batch["caption"], batch["weight"], batch.get("boxes"), batch.get("box_mask"), batch.get("geom"))
        emb, box_out = h.encode(t, caption_on=True)
        nb = t.nb
        parts: dict[str, torch.Tensor] = {}
        if self.arcface is not None:
            parts["arcface"] = self.arcface(emb, batch["label"])
        if self.cfg.lambda_nce > 0:
            img_side = emb if not h.cfg.use_caption else h.encode(t, caption_on=False)[0]
            cap = h.embed_caption(batch["caption"])
            same = (batch["caption"] @ batch["caption"].T) > 0.9999
            parts["nce"] = self.cfg.lambda_nce * info_nce(img_side, cap, self.cfg.temperature, same)
        if self.use_box and nb:
            lab = batch["box_label"][:, :nb]
            valid = lab >= 0
            if bool(valid.any()):
                parts["box"] = self.cfg.lambda_box * F.cross_entropy(self.box_cls(box_out[valid]), lab[valid])
        if not parts:
            raise ValueError("no loss term is switched on")
        total = sum(parts.values())
        return total, {k: float(v.detach()) for k, v in parts.items()}
