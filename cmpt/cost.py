"""What runs cost, in FLOPs, from their configs: the projection of a grid onto a GPU.

Per image, a ViT forward over ``T`` tokens costs, per block and token, ``(8 + 4 r) D^2`` for
its linear layers and ``4 T D`` for attention (:func:`vit_image_flops`); a training step adds
the backward to the input (the weights are frozen, so no weight gradients). A run's cost follows
from its config: head-only settings pass every image through the backbone once (their features
are cached); prompt settings train ``epochs`` epochs over the training images, validate every
epoch (search and single runs) and evaluate the test split once (single and final runs, never
search runs). Shapes come from the backbone registries (``VISION_SHAPES``, ``TEXT_SHAPES``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from cmpt.backbones.text import TEXT_SHAPES
from cmpt.backbones.vision_zoo import VISION_SHAPES, split_location
from cmpt.errors import check_names
from cmpt.profiles import Profile
from cmpt.run_config import SourceConfig, TargetConfig

__all__ = ["ASSUMED_GPU", "GpuRate", "grid_cost", "run_flops", "source_flops", "vit_image_flops"]


@dataclass(frozen=True)
class GpuRate:
    """A GPU's sustained FLOP/s for prompt tuning: a measurement, or a peak times an assumed share."""

    name: str
    flops_per_s: float
    basis: str  # how the rate was obtained, said next to every projection


#: NVIDIA's A100 datasheet: 312 TFLOP/s dense BF16; the share a prompt-tuning step reaches is assumed
ASSUMED_GPU = GpuRate("NVIDIA A100 (SXM, 80 GB)", 312e12 * 0.4,
                      "assumed, not measured: 40% of the A100's 312 TFLOP/s dense BF16 peak")


def vit_image_flops(width: int, depth: int, tokens: int, mlp_ratio: float = 4.0, train: bool = True) -> float:
    """FLOPs per image of a transformer forward over ``tokens`` tokens, plus the backward to its input if ``train``.

    Per block and token: qkv ``6 D^2``, projection ``2 D^2``, MLP ``4 r D^2``; attention
    scores and mixing ``4 T D``. The backward to the input (frozen weights: no weight
    gradients) costs one more forward for the matmuls and two for attention.
    """
    linear = (8.0 + 4.0 * mlp_ratio) * width ** 2 * tokens
    attention = 4.0 * tokens ** 2 * width
    forward = depth * (linear + attention)
    return forward + (depth * (linear + 2.0 * attention) if train else 0.0)


def _vision_shape(name: str) -> tuple[int, int, int, float]:
    base, _ = split_location(name)
    check_names("vision backbone", base, VISION_SHAPES)
    return VISION_SHAPES[base]


def run_flops(config: TargetConfig, test_images: int | None = None) -> float:
    """FLOPs of one target run; ``test_images`` replaces the config's test size (e.g. a VTAB split's)."""
    width, depth, patch, ratio = _vision_shape(config.vision_backbone)
    prompt = 0 if config.setting == "linear" else config.length
    tokens = prompt + 1 + (config.image_size // patch) ** 2
    step, forward = (vit_image_flops(width, depth, tokens, ratio, train=t) for t in (True, False))
    n_train, n_val, n_test = config.sizes
    n_test = n_test if test_images is None else test_images
    if config.train_subset is not None:  # k-shot or a fraction: at most the train split
        n_train = min(n_train, int(config.train_subset.get("k", 0)) or n_train)
    tested = 0 if config.stage == "search" else n_test
    if config.head_only:
        return (n_train + n_val + tested) * forward
    if config.train_split == "trainval":
        return config.epochs * (n_train + n_val) * step + tested * forward
    return config.epochs * (n_train * step + n_val * forward) + tested * forward


def source_flops(config: SourceConfig, max_tokens: int | None = None) -> float:
    """FLOPs of tuning one source prompt (every sentence padded to ``max_tokens``, default the config's)."""
    base, _ = split_location(config.text_backbone)
    check_names("text backbone", base, TEXT_SHAPES)
    width, depth, ratio = TEXT_SHAPES[base]
    tokens = config.length + (max_tokens or config.max_length)
    step, forward = (vit_image_flops(width, depth, tokens, ratio, train=t) for t in (True, False))
    n_train, n_val, n_test = config.sizes
    return config.epochs * (n_train * step + n_val * forward) + n_test * forward


def grid_cost(profile: Profile, configs: Iterable[TargetConfig], rate: GpuRate = ASSUMED_GPU,
              test_images: int | None = None, sources: Iterable[SourceConfig] = ()) -> pd.DataFrame:
    """Per setting (and ``source prompt``): runs, PFLOP and projected GPU hours at ``rate``."""
    rows = [{"setting": c.setting, "stage": c.stage or "single", "flops": run_flops(c, test_images)}
            for c in configs]
    rows += [{"setting": "source prompt", "stage": "single", "flops": source_flops(s)} for s in sources]
    table = pd.DataFrame(rows, columns=["setting", "stage", "flops"])
    out = table.groupby("setting", sort=False).agg(runs=("flops", "size"), flops=("flops", "sum"))
    out["PFLOP"] = out.pop("flops") / 1e15
    out["GPU hours"] = out["PFLOP"] * 1e15 / rate.flops_per_s / 3600
    return out
