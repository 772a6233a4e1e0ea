"""The image version: a labelled digit among distractor digits on a 2 x 2 grid of tiles.

Images are built from scikit-learn's bundled ``load_digits`` (1,797 grey 8 x 8 digits, no
download). Each digit sits in a 10 x 10 tile (1-pixel margin); four tiles make a 20 x 20 image.
The label is the class of the *relevant* digit; the three other tiles hold distractors. The
digit images are split once into a train pool and a test pool, so test images show digits no
training image contains.

``A``  the relevant digit at a random tile, marked by a 1-pixel frame in its margin
       (the *context* cue); distractors: random digits of any class. 10 classes.
``B``  the relevant digit always at the top-left tile, no frame; distractors: any class.
       The cue is the position. 10 classes.
``C``  the relevant digit (classes 0-4) at a random tile, no frame; distractors from the
       disjoint classes 5-9. The cue is the content itself. 5 classes.

The backbone is a tiny timm ``VisionTransformer`` (patch 10, so one token per tile; width 32,
depth 2, 2 heads, CLS token) *pre-trained from scratch here* on canvases of four random digits,
each tile token classifying its own digit (no frames, no notion of relevance). It is then

* **prompt-tuned**: frozen; a prompt ``q`` (one query vector) attends over its four final tile
  tokens ``X`` and a linear head reads the result, ``f(X) = U^T X^T softmax(X q) + b`` — the
  prompt-attention model of :mod:`cmpt.theory.models` on real features, with ``W = I``;
  only ``q, U, b`` learn;
* **linearly probed** on the mean of the four tile tokens (uniform averaging, q = 0), for reference;
* **fine-tuned**: every backbone parameter plus a new linear head on the CLS token.

What we report for each: test accuracy and attention mass on the relevant tile (prompt: its
softmax weights; fine-tuned: the last block's CLS-to-tile attention, averaged over heads and
renormalised over the four tiles; uniform: 1/4).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cmpt.backbones.vision import record_attention

__all__ = ["CONSTRUCTIONS", "TILE", "DigitPools", "TileSet", "digit_pools", "make_tiles", "tiny_tile_vit",
           "pretrain_backbone", "backbone_tile_accuracy", "tile_tokens", "PromptAttentionHead", "train_head",
           "fine_tune",
           "fine_tuned_tile_attention", "run_tiles", "METHOD_SLUGS", "tile_means"]

#: short names of the three adaptation methods, for record keys
METHOD_SLUGS = {"prompt-tuning": "prompt", "linear probe (uniform averaging)": "uniform", "fine-tuning": "finetune"}

TILE = 10  # pixels per tile side (8 x 8 digit + 1-pixel margin)
GRID = 2  # tiles per side
CONSTRUCTIONS = {
    "A": "random tile, framed; distractors any class",
    "B": "fixed top-left tile; distractors any class",
    "C": "random tile, classes 0-4; distractors 5-9",
}


@dataclass
class DigitPools:
    """Digit images in [0, 1] (``[N, 8, 8]``) and labels, split into train and test pools."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@dataclass
class TileSet:
    """Composite images ``[n, 1, 20, 20]`` (normalised to [-1, 1]), labels and relevant tiles."""

    images: torch.Tensor
    labels: torch.Tensor
    relevant_tile: torch.Tensor  # index 0..3, row-major (0 = top-left)
    n_classes: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def digit_pools(seed: int = 0, test_fraction: float = 0.3) -> DigitPools:
    """``sklearn.datasets.load_digits`` split into disjoint train / test pools."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = int(len(labels) * (1 - test_fraction))
    tr, te = order[:cut], order[cut:]
    return DigitPools(images[tr], labels[tr], images[te], labels[te])


def _draw(labels: torch.Tensor, classes: range, count: int, gen: torch.Generator) -> torch.Tensor:
    """Indices of ``count`` random pool digits whose class is in ``classes``."""
    allowed = torch.nonzero((labels >= classes.start) & (labels < classes.stop)).squeeze(1)
    return allowed[torch.randint(len(allowed), (count,), generator=gen)]


def _compose(digits: torch.Tensor, frame_tile: torch.Tensor | None = None) -> torch.Tensor:
    """``[n, 4, 8, 8]`` digits -> ``[n, 1, 20, 20]`` images in [-1, 1], optionally one framed tile."""
    n = digits.shape[0]
    tiles = torch.zeros(n, GRID * GRID, TILE, TILE)
    tiles[:, :, 1:9, 1:9] = digits
    if frame_tile is not None:
        framed = tiles[torch.arange(n), frame_tile]
        framed[:, 0, :] = framed[:, -1, :] = framed[:, :, 0] = framed[:, :, -1] = 1.0
        tiles[torch.arange(n), frame_tile] = framed
    grid = tiles.view(n, GRID, GRID, TILE, TILE).permute(0, 1, 3, 2, 4).reshape(n, 1, GRID * TILE, GRID * TILE)
    return grid * 2.0 - 1.0


def make_tiles(construction: str, n: int, images: torch.Tensor, labels: torch.Tensor, seed: int) -> TileSet:
    """``n`` composite images of ``construction`` (``A``, ``B`` or ``C``) from one digit pool."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"unknown construction {construction!r}; valid: {', '.join(CONSTRUCTIONS)}")
    gen = torch.Generator().manual_seed(seed)
    if construction == "C":
        relevant_classes, distractor_classes = range(0, 5), range(5, 10)
    else:
        relevant_classes = distractor_classes = range(10)
    rel = _draw(labels, relevant_classes, n, gen)
    dis = _draw(labels, distractor_classes, n * 3, gen).view(n, 3)
    tile = torch.zeros(n, dtype=torch.long) if construction == "B" else torch.randint(4, (n,), generator=gen)
    # slot order: put the relevant digit at `tile`, distractors fill the other three slots in order
    slots = torch.zeros(n, 4, dtype=torch.long)
    others = torch.stack([torch.tensor([j for j in range(4) if j != t]) for t in tile.tolist()])
    slots[torch.arange(n), tile] = rel
    slots.scatter_(1, others, dis)
    composite = _compose(images[slots], frame_tile=tile if construction == "A" else None)
    n_classes = len(relevant_classes)
    return TileSet(composite, labels[rel] - relevant_classes.start, tile, n_classes)


def tiny_tile_vit(seed: int = 0) -> nn.Module:
    """The tiny ViT: 20 x 20 grey input, patch 10 (one token per tile), width 32, depth 2, CLS."""
    from timm.models.vision_transformer import VisionTransformer

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return VisionTransformer(img_size=GRID * TILE, patch_size=TILE, in_chans=1, embed_dim=32, depth=2,
                                 num_heads=2, mlp_ratio=2.0, num_classes=0)


def pretrain_backbone(pools: DigitPools, n_canvases: int, epochs: int, seed: int = 0,
                      batch_size: int = 128, lr: float = 3e-3) -> tuple[nn.Module, nn.Module]:
    """Pre-train :func:`tiny_tile_vit` on four-digit canvases: each tile token names its digit.

    AdamW (0.9, 0.999), weight decay 0.1, batch 128, lr 3e-3 with linear warm-up and cosine decay
    (the paper's from-scratch recipe, scaled down). Returns the backbone and its per-tile head,
    both in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(pools.train_labels), (n_canvases, 4), generator=gen)
    images, targets = _compose(pools.train_images[idx]), pools.train_labels[idx]
    vit = tiny_tile_vit(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = nn.Linear(vit.embed_dim, 10)
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.1)
    steps = max(1, epochs * ((n_canvases + batch_size - 1) // batch_size))
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + np.cos(np.pi * (s - warm) / max(1, steps - warm))))
    vit.train()
    for _ in range(epochs):
        for batch in torch.randperm(n_canvases, generator=gen).split(batch_size):
            tokens = vit.forward_features(images[batch])[:, vit.num_prefix_tokens:]
            loss = F.cross_entropy(head(tokens).reshape(-1, 10), targets[batch].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return vit.eval(), head.eval()


@torch.no_grad()
def backbone_tile_accuracy(vit: nn.Module, head: nn.Module, pools: DigitPools, n: int = 500, seed: int = 0) -> float:
    """Per-tile digit accuracy of the pre-trained backbone on four-digit canvases from the test pool."""
    idx = torch.randint(len(pools.test_labels), (n, 4), generator=torch.Generator().manual_seed(seed))
    logits = head(tile_tokens(vit, _compose(pools.test_images[idx])))
    return (logits.argmax(-1) == pools.test_labels[idx]).float().mean().item()


@torch.no_grad()
def tile_tokens(vit: nn.Module, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Frozen final-norm tile tokens ``[n, 4, D]`` (CLS dropped)."""
    vit.eval()
    out = [vit.forward_features(chunk)[:, vit.num_prefix_tokens:] for chunk in images.split(batch_size)]
    return torch.cat(out)


class PromptAttentionHead(nn.Module):
    """``f(X) = U^T X^T softmax(X q) + b`` over frozen tokens; ``uniform=True`` fixes ``q = 0``."""

    def __init__(self, width: int, n_classes: int, uniform: bool = False) -> None:
        super().__init__()
        self.uniform = uniform
        self.prompt = nn.Parameter(torch.zeros(width), requires_grad=not uniform)
        self.head = nn.Linear(width, n_classes)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """Softmax weights over the tokens, ``[n, T]``."""
        return (tokens @ self.prompt).softmax(dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pooled = torch.einsum("nt,ntd->nd", self.attention(tokens), tokens)
        return self.head(pooled)


def train_head(tokens: torch.Tensor, labels: torch.Tensor, n_classes: int, uniform: bool = False,
               steps: int = 300, lr: float = 0.05, seed: int = 0) -> PromptAttentionHead:
    """Full-batch Adam on cross-entropy for a :class:`PromptAttentionHead` (prompt + head only)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = PromptAttentionHead(tokens.shape[-1], n_classes, uniform=uniform)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss = F.cross_entropy(model(tokens), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


class _FineTuned(nn.Module):
    def __init__(self, vit: nn.Module, n_classes: int) -> None:
        super().__init__()
        self.vit = vit
        self.head = nn.Linear(vit.embed_dim, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit.forward_features(images)[:, 0])


def fine_tune(vit: nn.Module, train: TileSet, epochs: int, seed: int = 0, lr: float = 1e-3,
              batch_size: int = 64) -> nn.Module:
    """A copy of ``vit`` with every parameter trainable plus a CLS head; AdamW, constant lr."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _FineTuned(copy.deepcopy(vit), train.n_classes)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(train.images[batch]), train.labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def fine_tuned_tile_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Last block's CLS-to-tile attention ``[n, 4]``, head-averaged, renormalised over tiles."""
    with record_attention(model.vit) as maps:
        model(images)
    cls_to_tiles = maps[-1][:, :, 0, model.vit.num_prefix_tokens:].mean(dim=1)
    return cls_to_tiles / cls_to_tiles.sum(-1, keepdim=True)


def _relevant_mass(weights: torch.Tensor, tile: torch.Tensor) -> float:
    return weights[torch.arange(len(tile)), tile].mean().item()


def run_tiles(constructions: tuple[str, ...], n_train: tuple[int, ...], n_test: int, seeds: tuple[int, ...],
              pretrain_canvases: int = 4000, pretrain_epochs: int = 8, head_steps: int = 300,
              finetune_epochs: int = 30, pool_seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    """Prompt-tuning vs linear probe vs fine-tuning on every construction, size and seed.

    One backbone is pre-trained (seed ``pool_seed``) and shared; the seeds vary the composite
    images and the adaptation. Returns one row per (construction, method, n_train, seed) with
    ``accuracy`` and ``relevant_tile_mass``, and facts about the pre-trained backbone (its
    per-tile test accuracy).
    """
    pools = digit_pools(pool_seed)
    vit, tile_head = pretrain_backbone(pools, pretrain_canvases, pretrain_epochs, seed=pool_seed)
    for p in vit.parameters():
        p.requires_grad_(False)
    facts = {"backbone_tile_accuracy": backbone_tile_accuracy(vit, tile_head, pools, seed=pool_seed + 1)}
    rows = []
    for construction in constructions:
        for seed in seeds:
            test = make_tiles(construction, n_test, pools.test_images, pools.test_labels, seed=20_000 + seed)
            test_tokens = tile_tokens(vit, test.images)
            for n in n_train:
                train = make_tiles(construction, n, pools.train_images, pools.train_labels, seed=seed * 1000 + n)
                train_tokens = tile_tokens(vit, train.images)
                for method, uniform in (("prompt-tuning", False), ("linear probe (uniform averaging)", True)):
                    head = train_head(train_tokens, train.labels, train.n_classes, uniform=uniform,
                                      steps=head_steps, seed=seed)
                    with torch.no_grad():
                        acc = (head(test_tokens).argmax(-1) == test.labels).float().mean().item()
                        mass = _relevant_mass(head.attention(test_tokens), test.relevant_tile)
                    rows.append(dict(construction=construction, method=method, n_train=n, seed=seed,
                                     accuracy=acc, relevant_tile_mass=mass))
                tuned = fine_tune(vit, train, finetune_epochs, seed=seed)
                with torch.no_grad():
                    acc = (tuned(test.images).argmax(-1) == test.labels).float().mean().item()
                mass = _relevant_mass(fine_tuned_tile_attention(tuned, test.images), test.relevant_tile)
                rows.append(dict(construction=construction, method="fine-tuning", n_train=n, seed=seed,
                                 accuracy=acc, relevant_tile_mass=mass))
    return pd.DataFrame(rows), facts


def tile_means(runs: pd.DataFrame, value: str, n_train: int | None = None) -> pd.DataFrame:
    """Mean of ``value`` over seeds: rows (construction, n_train), one column per method.

    With ``n_train``, only that training-set size (rows: construction).
    """
    if n_train is not None:
        runs = runs[runs.n_train == n_train]
        return runs.groupby(["construction", "method"])[value].mean().unstack("method")
    return runs.groupby(["construction", "n_train", "method"])[value].mean().unstack("method")
