"""The setting registry: one record per target-side setting, read by everything else.

A :class:`Setting` says what a setting is (its label in the book, what trains, whether it takes
a source prompt, whether only the head trains), how it is trained (optimiser, the grid its own
learning rate is chosen from, weight decay; the paper's search grid) and how its prompt side is
built (``build``). Run configs, the profiles' grids, model files, the protocol, the data-scarcity
runs and the notebooks read these records; adding a setting is one record here plus its model
code (a :class:`~cmpt.transfer.PromptSource`).

The recipe (the default and smoke profiles; the paper profile searches ``paper_grid``):

* every setting trains until it fits its training set, with the same schedule (warm-up over the
  first fifth, then cosine, evaluated at every step), batch and optimiser (Adam), from a
  zero-initialised head (initial loss ln C): a setting that backpropagates through the backbone
  for ``Profile.target_epochs``, a head-only one (on cached features, far cheaper per step) for
  ``Profile.head_epochs``; the books' convergence tables show whether each run fitted;
* every setting chooses one rate, once, on validation accuracy at the first seed, from a grid of
  two (``rates``; :mod:`cmpt.calibration`): a head-only setting its head's rate; a setting that
  trains more than the head (a prompt, a projector, attention queries) the rate of that part,
  while its head trains in its own learning-rate group at ``Profile.head_lr`` (the largest head
  rate at which prompt runs did not rise above their initial loss).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from cmpt.backbones.vision import PromptedViT
from cmpt.errors import InputError, check_names
from cmpt.prompts import check_width
from cmpt.transfer import (AttentionPrompt, FixedPrompt, LearnedPrompt, NoPrompt, ProjectedPrompt, PromptSource,
                           random_reference_prompt)

__all__ = ["HEAD_ONLY", "MAIN_SETTINGS", "REGISTRY", "SAME_WIDTH_SETTINGS", "SETTINGS", "SOURCE_SETTINGS", "BuildInputs", "Setting",
           "accepts_width", "get_setting", "make_prompt_source", "paper_search", "register"]


@dataclass(frozen=True)
class BuildInputs:
    """What a setting's builder may use to make its prompt side."""

    backbone: PromptedViT
    length: int
    source_prompt: torch.Tensor | None = None
    concentrated: int | None = None
    scaled: bool = False
    query_init: str = "unit_logits"
    reference_norm: float = 1.0
    seed: int = 0
    #: embedding-layer tokens (CLS first) of the images the run trains on (SPT's k-means variant)
    train_tokens: torch.Tensor | None = None
    #: patch-embedding tokens before the position embedding of those images (SPT's own construction)
    train_patches: torch.Tensor | None = None

    @property
    def patch(self) -> int:
        return int(self.backbone.vit.patch_embed.patch_size[0])

    def need_source(self, setting: str) -> torch.Tensor:
        if self.source_prompt is None:
            raise InputError(f"setting {setting!r} needs a source prompt")
        return self.source_prompt


@dataclass(frozen=True)
class Setting:
    """One target-side setting."""

    name: str
    label: str  # how the book names it
    prompt: str  # where its prompt comes from, in words
    trains: str  # which parameters train, in words
    build: Callable[[BuildInputs], PromptSource] = field(repr=False)
    takes_source: bool = False  # one run per source prompt
    head_only: bool = False  # only the head trains (on cached features)
    same_width: bool = False  # inserts the source prompt as it is: its width must be the backbone's
    saves: str | None = "prompt"  # the prompt tensor its model file holds ("deep_prompts", or None)
    #: base learning rates (scaled by batch/256) its own rate is chosen from on validation: the head's
    #: for a head-only setting, else the rate of what it trains besides the head
    rates: tuple[float, ...] = ()
    weight_decay: float = 0.0
    #: the paper profile's grid: (optimiser, base learning rates, weight decays)
    paper_grid: tuple[str, tuple[float, ...], tuple[float, ...]] | None = None
    #: needs the target's own training tokens to start (SPT)
    needs_train_tokens: bool = False
    #: the setting this one is a named variant of (run on request, not in the default grids)
    variant_of: str | None = None

    def __post_init__(self) -> None:
        if not self.rates:
            raise InputError(f"setting {self.name!r} needs a grid of rates to choose its own rate from")


def _spt(inputs: BuildInputs, method: str) -> PromptSource:
    from cmpt.spt import SelfPrompt  # spt builds on transfer's PromptSource, like the builders here

    if method == "sample":
        if inputs.train_patches is None:
            raise InputError("setting 'spt' needs the patch-embedding tokens of the target's training images")
        return SelfPrompt.from_tokens(inputs.train_patches, inputs.length, "sample", seed=inputs.seed)
    if inputs.train_tokens is None:
        raise InputError("setting 'spt_kmeans' needs the target's embedded training tokens")
    return SelfPrompt.from_tokens(inputs.train_tokens[:, 1:], inputs.length, "kmeans", seed=inputs.seed)


def _xavier_draw(inputs: BuildInputs, gen: torch.Generator) -> torch.Tensor:
    """A prompt drawn uniformly within VPT's initialisation bound (the CMPT code's random reference)."""
    bound = math.sqrt(6.0 / float(3 * inputs.patch * inputs.patch + inputs.backbone.width))
    return (torch.rand(inputs.length, inputs.backbone.width, generator=gen) * 2 - 1) * bound


def _frozen(inputs: BuildInputs) -> PromptSource:
    prompt = inputs.need_source("frozen")
    check_width(prompt, inputs.backbone.width, inputs.backbone.name)
    return FixedPrompt(prompt)


_VPT_LRS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)
_SGD_GRID = ("sgd", _VPT_LRS, _DECAYS)
#: head rates of the head-only settings (the others train their head at ``Profile.head_lr``)
_HEAD_RATES = (0.05, 0.2)
#: body rates of the settings that train a prompt directly (Adam, base lr before the batch/256 scale)
_PROMPT_RATES = (0.3, 1.0)
#: body rates of the settings that train a map of the source prompt (projector, attention)
_MAP_RATES = (0.02, 0.1)

REGISTRY: dict[str, Setting] = {s.name: s for s in (
    Setting("linear", "linear probing", "none", "head", lambda i: NoPrompt(), head_only=True, saves=None,
            rates=_HEAD_RATES, paper_grid=_SGD_GRID),
    Setting("vpt", "VPT", "a fresh prompt (xavier-uniform, VPT's bound)", "prompt, head",
            lambda i: LearnedPrompt(i.length, i.backbone.width, i.patch), rates=_PROMPT_RATES, paper_grid=_SGD_GRID),
    Setting("vpt_deep", "VPT-deep", "a fresh prompt before every block", "prompts, head",
            lambda i: LearnedPrompt(i.length, i.backbone.width, i.patch, depth=i.backbone.depth),
            saves="deep_prompts", rates=_PROMPT_RATES, paper_grid=_SGD_GRID),
    Setting("spt", "SPT", "patch-embedding tokens of the target's training images, sampled (SPT's own shallow "
            "construction: before the position embedding)", "prompt, head", lambda i: _spt(i, "sample"),
            rates=_PROMPT_RATES, paper_grid=_SGD_GRID, needs_train_tokens=True),
    Setting("spt_kmeans", "SPT (k-means)", "k-means centres of the target's embedded training patch tokens "
            "(after the position embedding)", "prompt, head", lambda i: _spt(i, "kmeans"),
            rates=_PROMPT_RATES, paper_grid=_SGD_GRID, needs_train_tokens=True, variant_of="spt"),
    Setting("frozen", "frozen transfer", "the source prompt as it is", "head", _frozen, takes_source=True,
            head_only=True, same_width=True, rates=_HEAD_RATES, paper_grid=_SGD_GRID),
    Setting("random", "random prompt", "a frozen Gaussian prompt whose tokens have the source bank's mean norm",
            "head", lambda i: FixedPrompt(random_reference_prompt(i.length, i.backbone.width, i.reference_norm,
                                                                  i.seed)),
            head_only=True, rates=_HEAD_RATES, paper_grid=_SGD_GRID),
    Setting("random_xavier", "random prompt (VPT init)", "a frozen prompt drawn like VPT's initialisation",
            "head", lambda i: FixedPrompt(_xavier_draw(i, torch.Generator().manual_seed(i.seed))),
            head_only=True, rates=_HEAD_RATES, paper_grid=_SGD_GRID),
    Setting("projection", "projection transfer", "Linear(d_src, d_tgt) applied token-wise to the source prompt",
            "projector, head", lambda i: ProjectedPrompt(i.need_source("projection"), i.backbone.width),
            takes_source=True, rates=_MAP_RATES, weight_decay=0.001, paper_grid=("adam", (0.02,), (1e-3,))),
    Setting("attention", "attention transfer", "l_s queries over the source prompt, with a target prompt",
            "queries, W_k, W_v, target prompt, head",
            lambda i: AttentionPrompt(i.need_source("attention"), i.backbone.width, i.length,
                                      i.concentrated or i.length, i.patch, scaled=i.scaled, query_init=i.query_init),
            takes_source=True, rates=_MAP_RATES,
            paper_grid=("adam", (1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0005), _DECAYS)),
)}

#: the built-in settings (code that decides by a setting's kind reads its record, so registered ones count too)
SETTINGS: tuple[str, ...] = tuple(REGISTRY)
#: the settings of the default grids (no named variants)
MAIN_SETTINGS: tuple[str, ...] = tuple(s.name for s in REGISTRY.values() if s.variant_of is None)
HEAD_ONLY: tuple[str, ...] = tuple(s.name for s in REGISTRY.values() if s.head_only)
SOURCE_SETTINGS: tuple[str, ...] = tuple(s.name for s in REGISTRY.values() if s.takes_source)
SAME_WIDTH_SETTINGS: tuple[str, ...] = tuple(s.name for s in REGISTRY.values() if s.same_width)


def register(setting: Setting) -> Setting:
    """Add ``setting`` to the registry: run configs, runs, model files and the recipe read it from there."""
    if setting.name in REGISTRY:
        raise InputError(f"setting {setting.name!r} is registered already")
    REGISTRY[setting.name] = setting
    return setting


def get_setting(name: str) -> Setting:
    """The record of setting ``name``; an unknown name is an error listing the valid ones."""
    check_names("setting", name, REGISTRY)
    return REGISTRY[name]


def paper_search() -> tuple[tuple[str, str, tuple[float, ...], tuple[float, ...]], ...]:
    """The paper profile's grids, ``(setting, optimiser, lrs, decays)`` for every setting that has one."""
    return tuple((s.name, *s.paper_grid) for s in REGISTRY.values() if s.paper_grid is not None)


def accepts_width(setting: str, source_width: int, target_width: int) -> bool:
    """Whether ``setting`` can carry a source prompt of ``source_width`` into a backbone of ``target_width``."""
    return not get_setting(setting).same_width or source_width == target_width


def make_prompt_source(setting: str, backbone: PromptedViT, length: int, source_prompt: torch.Tensor | None = None,
                       concentrated: int | None = None, scaled: bool = False, reference_norm: float = 1.0,
                       seed: int = 0, **more: Any) -> PromptSource:
    """Build the prompt side of ``setting`` for ``backbone`` (``more``: other :class:`BuildInputs` fields)."""
    record = get_setting(setting)
    return record.build(BuildInputs(backbone, length, source_prompt, concentrated, scaled,
                                    reference_norm=reference_norm, seed=seed, **more))
