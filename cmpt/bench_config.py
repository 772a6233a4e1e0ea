"""The settings of ``cmpt bench`` (sizes and switches), apart from the code that measures.

:mod:`cmpt.bench` (the command) and :mod:`cmpt.perf` (the measuring) both read these; neither
imports the other's settings, so the two modules import one way only (bench -> perf). This
module stays light (no torch import) so that the ``cmpt`` command starts fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from cmpt.errors import InputError
from cmpt.profiles import Profile, get_profile

__all__ = ["FIGURES", "MEMORY_SETTINGS", "BenchConfig", "MemoryConfig"]

#: the five figure lines start with these
FIGURES = ("[1] prompt-tuning step", "[2] achieved FLOP/s", "[3] head-only", "[4] MMD table", "[5] training-step memory")


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and switches of one benchmark run (defaults: the default profile, under 5 minutes on 2 cores)."""

    profile: str = "default"
    backbone: str = "dinov2-s14"
    random_weights: bool = False  # a randomly initialised copy of the backbone (timing only; no download)
    image_size: int = 42
    prompt_length: int = 8
    layout: str = "before_cls"
    batch_size: int = 32
    num_classes: int = 10
    steps: int = 8  # timed steps per round
    rounds: int = 3  # rounds alternating reference and cmpt; the median round counts
    warmup: int = 2
    slow_cap: float = 4.0  # a variant this many times slower than the fastest is timed once, not in rounds
    # head-only settings (one target: linear, random and frozen from every source)
    n_train: int = 80
    n_val: int = 40
    n_test: int = 200
    head_epochs: int = 60
    sources: int = 4
    # MMD table
    mmd_targets: int = 7
    mmd_passes: int = 5
    # machine and switches
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0  # 0: leave torch's default
    sdpa: bool | None = None  # None: PromptedViT's choice (fused on CUDA, explicit on CPU)
    cls_shortcut: bool = True
    ideas: bool = False
    compile: bool = False
    seed: int = 0

    @classmethod
    def from_profile(cls, profile: str | Profile = "default", overrides: Mapping[str, Any] | None = None,
                     **values: Any) -> "BenchConfig":
        """Sizes from a profile: backbone, image size, prompt, batch, splits, head epochs, sources, targets.

        The test split is capped at 2000 images (the paper profile asks for all of them);
        ``values`` set any :class:`BenchConfig` field. The smoke profile also times fewer steps.
        """
        chosen = get_profile(profile, dict(overrides or {}))
        base = cls(profile=chosen.name, backbone=chosen.vision_backbone, image_size=chosen.image_size,
                   prompt_length=chosen.prompt_length, layout=chosen.prompt_layout, batch_size=chosen.batch_size,
                   n_train=chosen.n_train, n_val=chosen.n_val, n_test=min(chosen.n_test, 2000), head_epochs=chosen.head_epochs,
                   sources=len(chosen.text_tasks), mmd_targets=len(chosen.image_tasks), device=chosen.device)
        if chosen.name == "smoke":
            base = replace(base, steps=2, rounds=2, warmup=1, mmd_passes=2)
        return replace(base, **values)


#: target settings the memory measurement can run
MEMORY_SETTINGS = ("vpt", "linear")


@dataclass(frozen=True)
class MemoryConfig:
    """One ``cmpt bench --memory`` measurement: the same target run at several test-split sizes.

    Each size gets a VTAB-style export folder of generated ``image_size`` px images (train,
    val, and ``n_test`` test images) and one fresh process that runs ``setting`` for
    ``epochs`` on it; the process's peak resident memory is the figure. ``batch_size`` serves
    training and evaluation alike, and every size should hold at least one full batch: the
    activations of the largest batch are a fixed part of the peak. ``cache_mib`` is the
    target's memory budget for cached tokens and features (:data:`cmpt.target_data.DEFAULT_CACHE_BYTES`
    by default).
    """

    sizes: tuple[int, ...] = (1000, 30000)
    setting: str = "vpt"
    backbone: str = "tiny-vit"
    image_size: int = 224
    n_train: int = 800
    n_val: int = 200
    epochs: int = 1
    batch_size: int = 64
    prompt_length: int = 10
    cache_mib: int = 1024
    workers: int = 0
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    seed: int = 0
    task: str = "dsprites_loc"

    def __post_init__(self) -> None:
        if self.setting not in MEMORY_SETTINGS:
            raise InputError(f"memory setting must be one of {', '.join(MEMORY_SETTINGS)}, got {self.setting!r}")
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise InputError(f"memory sizes need at least two positive test-split sizes, got {self.sizes}")
