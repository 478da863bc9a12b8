"""The learned fusion head and its training losses.

**The head starts as the library's α-fused mode and learns a residual on top.** For one image
with image vector ``img``, caption vector ``cap`` and caption weight ``w`` the head gives a
*query* vector and a *gallery* vector::

    query   = [ (1 + s_1) Q_1 , ... , (1 + s_K) Q_K , gate * r ]        gallery = [ G_1 , ... , G_K , r ]
    score   = sum_k (1 + s_k) Q_k . G_k  +  gate * (r_q . r_g)

``(Q_base, G_base) = ([Q_1..Q_K], [G_1..G_K])`` is the exact α-fused pair of
``explorer.core.evaluate`` (``fused_pair`` below reuses that one home of the formula:
``(1 - b) cos_image + b cos_caption`` with ``b = α w_q w_i``, caption weights included); its
K = 3 blocks are the terms ``cos_image``, ``α w_q w_i cos_caption`` and ``-α w_q w_i
cos_image``. The block scales ``s_k`` re-weigh those terms (together they can move the
effective α and how much the caption weights count: a few numbers that carry over to labels
never seen in training); ``r`` is a learned, L2-normalised embedding of the image's tokens.
``s`` and the scalar ``gate`` start at **zero**, so the untrained head ranks exactly like the
α-fused mode, and training departs from it only as far as validation on held-out labels
justifies (``train.fit``). ``base`` in the
config switches the start point for the ablation: ``alpha-fused`` (default), ``image`` (the
image vectors alone, the earlier design's start) or ``none`` (the residual alone, no gate).

The residual ``r`` (``attention``, default): tokens ``[global, box_1..box_B, caption]``, each
projected to width 256 (``Linear`` + ``LayerNorm`` + a type embedding; box tokens add a
projection of their geometry and detector score, the caption token its fusion weight), one
pre-norm Transformer-encoder layer (4 heads, feed-forward 512, GELU) with padding masks for
missing boxes, and the output of the global token -> ``LayerNorm`` -> ``Linear`` -> L2 norm.
With a single layer only the global token's output is used, so ``EncoderLayer`` computes the
layer for that query row only (keys and values from every token): the same function as
``nn.TransformerEncoderLayer(norm_first=True)`` restricted to that row. ``mlp``: ``[global,
mean of box tokens, caption token]`` concatenated -> 2-layer MLP. While training, each box
token and the caption token is dropped with probability ``token_dropout`` (regularisation
for few labels: the residual must not lean on one input).

Losses (``FusionLoss``), each switchable for the ablation:

* ``lambda_fused`` x supervised contrastive loss (temperature 0.05) on the **full score**
  ``Q_base . G_base + gate r.r`` of every pair in the batch (same label = positive, the pair
  of an image with itself left out, as in leave-one-out retrieval): the only term that moves
  the gate, so it learns how much of the residual to add to α-fusion;
* ArcFace (additive angular margin, s = 30, m = 0.3) of ``r`` on the ground-truth labels;
* ``lambda_nce`` x symmetric InfoNCE (temperature 0.07) between the image-side ``r`` (the
  caption token masked) and a caption projection; identical captions are all positives;
* ``lambda_box`` x cross-entropy of a linear classifier on the box tokens against their
  detected labels, keeping the box tokens about their objects.

Only the head (not the ArcFace class centres or the box classifier, whose sizes depend on the
training labels) is saved and needed at inference.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import BOX_DIM, GEOM_DIM, MAX_BOXES

ARCHS = ("attention", "mlp")
#: start points of the head (see the module docstring); "alpha-fused" is the default
BASES = ("alpha-fused", "image", "none")
DEFAULT_ALPHA = 0.5  # the library's default (``fusion.DEFAULT_ALPHA``); set from the library when training


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
    #: what the score starts from: the α-fused pair ("alpha-fused"), the image vectors ("image") or nothing ("none")
    base: str = "alpha-fused"
    #: the α of the α-fused base (the library's α when the head was trained)
    alpha: float = DEFAULT_ALPHA
    #: probability of dropping each box token and the caption token while training
    token_dropout: float = 0.1
    version: int = 2

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
    image: torch.Tensor  # (n, image_dim)


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
        if cfg.base not in BASES:
            raise ValueError(f"unknown head base '{cfg.base}'; choose {', '.join(BASES)}")
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {cfg.alpha}")
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
        # how much of the residual is added to the base score, and the re-weighting of the base's
        # terms; all zero = exactly the base (α-fused) mode
        self.gate = nn.Parameter(torch.zeros(()))
        self.block_scale = nn.Parameter(torch.zeros(len(self.base_blocks)))
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
        """``(residual embedding r (n, out), box tokens (n, nb, d))``."""
        tok, pad, nb = t.tok, t.pad.clone(), t.nb
        if not caption_on:
            pad[:, -1] = True
        if self.training and self.cfg.token_dropout > 0 and pad.shape[1] > 1:
            drop = torch.rand(pad.shape, device=pad.device) < self.cfg.token_dropout
            drop[:, 0] = False  # the global token always stays
            pad = pad | drop
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
        return F.normalize(emb, dim=-1), box_out

    def forward(self, image, caption, weight, boxes=None, box_mask=None, geom=None, caption_on: bool = True):
        return self.encode(self.tokens(image, caption, weight, boxes, box_mask, geom), caption_on)[0]

    def embed_caption(self, caption):
        return F.normalize(self.caption_head(caption), dim=-1)

    # -- the full query / gallery vectors ---------------------------------------------------
    def base_pair(self, image, caption, weight, query_weight=None):
        """``(Q_base, G_base)`` numpy float32 of the head's start point (see ``fused_pair``)."""
        return base_pair(self.cfg, image, caption, weight, query_weight)

    @property
    def base_blocks(self) -> tuple[int, ...]:
        """Widths of the base pair's blocks (the terms the block scales re-weigh)."""
        c = self.cfg
        return {"alpha-fused": (c.image_dim, c.text_dim, c.image_dim), "image": (c.image_dim,), "none": ()}[c.base]

    def compose(self, base_q, base_g, r):
        """Full ``(query, gallery)`` vectors (numpy) from the base pair and the residual ``r``."""
        if isinstance(r, torch.Tensor):
            r = r.detach().cpu().numpy()
        r = np.asarray(r, np.float32)
        if self.cfg.base == "none":
            return r, r
        g = float(self.gate.detach())
        scales = (1.0 + self.block_scale.detach().cpu().numpy()).astype(np.float32)
        q = np.array(base_q, np.float32, copy=True)
        start = 0
        for k, width in enumerate(self.base_blocks):
            if scales[k] != 1.0:
                q[:, start : start + width] *= scales[k]
            start += width
        return (np.concatenate([q, g * r], 1).astype(np.float32, copy=False),
                np.concatenate([base_g, r], 1).astype(np.float32, copy=False))

    def base_block_scores(self, base_q, base_g):
        """``(K, n, m)`` torch tensor: the score of each base block between query rows and gallery rows."""
        out, start = [], 0
        for width in self.base_blocks:
            out.append(base_q[:, start : start + width] @ base_g[:, start : start + width].T)
            start += width
        return torch.stack(out)

    @property
    def vector_dim(self) -> int:
        c = self.cfg
        return {"alpha-fused": 2 * c.image_dim + c.text_dim, "image": c.image_dim, "none": 0}[c.base] + c.out_dim


def fused_pair(image, caption, weight, alpha: float, query_weight=None):
    """The exact α-fused ``(Q, G)`` matrices of the library's fused mode (``fusion.fused_matrices``):
    ``Q[i] . G[j] = (1 - b) cos_image + b cos_caption`` with ``b = alpha * w_q[i] * w[j]``.
    ``query_weight`` defaults to the images' own caption weights (a gallery image as a query)."""
    from ..fusion import fused_matrices
    from ..library import GalleryVectors

    image = np.asarray(image, np.float32)
    caption = np.asarray(caption, np.float32)
    weight = np.asarray(weight, np.float32).reshape(-1)
    wq = weight if query_weight is None else np.asarray(query_weight, np.float32).reshape(-1)
    ids = np.arange(len(image))
    return fused_matrices(GalleryVectors(ids, image, caption, wq), GalleryVectors(ids, image, caption, weight), alpha, wq)


def base_pair(cfg: HeadConfig, image, caption, weight, query_weight=None):
    """``(Q_base, G_base)`` of a head's start point: α-fused, image-only, or empty (``base="none"``)."""
    image = np.asarray(image, np.float32)
    if cfg.base == "alpha-fused":
        return fused_pair(image, caption, weight, cfg.alpha, query_weight)
    if cfg.base == "image":
        return image, image
    z = np.zeros((len(image), 0), np.float32)
    return z, z


# ---------------------------------------------------------------------------------------
# losses


@dataclass(frozen=True)
class LossConfig:
    #: weight of the supervised contrastive term on the full (base + gated residual) score; 0 = off
    lambda_fused: float = 1.0
    fused_temperature: float = 0.05
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


def supcon(scores, labels, temperature: float):
    """Supervised contrastive loss on a square score matrix (rows: queries, columns: the same
    images as gallery): for each row, the mean over its positives (same label, not itself) of
    ``-log softmax`` over all other columns. Rows without a positive are skipped."""
    n = scores.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    logits = (scores / temperature).masked_fill(eye, float("-inf"))
    logp = F.log_softmax(logits, 1)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    has = pos.any(1)
    if not bool(has.any()):
        return scores.sum() * 0.0
    per = -(logp.masked_fill(~pos, 0.0).sum(1)[has] / pos.sum(1)[has])
    return per.mean()


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
        if self.cfg.lambda_fused > 0:
            resid = emb @ emb.T
            if h.cfg.base == "none":
                full = resid
            else:
                blocks = h.base_block_scores(batch["base_q"], batch["base_g"])
                full = ((1.0 + h.block_scale)[:, None, None] * blocks).sum(0) + h.gate * resid
            parts["fused"] = self.cfg.lambda_fused * supcon(full, batch["label"], self.cfg.fused_temperature)
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
