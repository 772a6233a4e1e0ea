"""The target-side settings: where the vision backbone's prompt comes from.

Every setting is a :class:`PromptSource` — a module whose ``forward()`` returns the prompt
arguments for :class:`~cmpt.backbones.vision.PromptedViT` — plus the same linear head on
the final-norm CLS feature (:class:`PromptedClassifier`). Which parameters train is decided
here, by construction:

============== =========================================== ==================================
setting        prompt                                      trainable
============== =========================================== ==================================
``linear``     none                                        head
``vpt``        fresh prompt (xavier-uniform, VPT's bound)  prompt, head
``vpt_deep``   a fresh prompt before every block           prompts, head
``spt``        prototypes of the target's patch tokens     prompt, head
               (SPT; built in :mod:`cmpt.spt`)
``frozen``     the source prompt as is                     head
``random``     a frozen Gaussian prompt whose tokens have     head
               the source bank's mean norm (reference)
``random_xavier`` a frozen prompt drawn like VPT's            head
               initialisation (the CMPT code's reference)
``projection`` ``Linear(d_src, d_tgt)`` token-wise         projector, head
``attention``  l_s queries over the source prompt,         queries, W_k, W_v, target prompt,
               concatenated with a target prompt           head
============== =========================================== ==================================
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cmpt.backbones.vision import PromptedViT
from cmpt.errors import InputError, check_names
from cmpt.prompts import check_width

__all__ = [
    "HEAD_ONLY",
    "SAME_WIDTH_SETTINGS",
    "SETTINGS",
    "SOURCE_SETTINGS",
    "accepts_width",
    "AttentionPrompt",
    "FixedPrompt",
    "LearnedPrompt",
    "NoPrompt",
    "ProjectedPrompt",
    "PromptSource",
    "PromptedClassifier",
    "make_prompt_source",
    "random_reference_prompt",
]

SETTINGS = ("linear", "vpt", "vpt_deep", "spt", "frozen", "random", "random_xavier", "projection", "attention")
#: settings that train only the head (on cached features)
HEAD_ONLY = ("linear", "frozen", "random", "random_xavier")
#: settings that start from a source prompt (one run per source)
SOURCE_SETTINGS = ("frozen", "projection", "attention")
#: settings that insert the source prompt as it is, so its width must be the backbone's
SAME_WIDTH_SETTINGS = ("frozen",)


class PromptSource(nn.Module):
    """Produces the keyword arguments (``prompt=`` or ``deep_prompts=``) for the backbone."""

    def forward(self) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError


class NoPrompt(PromptSource):
    def forward(self) -> dict[str, torch.Tensor]:
        return {}


def vpt_init_(tensor: torch.Tensor, patch_size: int) -> torch.Tensor:
    """VPT's initialisation: uniform with bound sqrt(6 / (3 * p * p + d))."""
    bound = math.sqrt(6.0 / float(3 * patch_size * patch_size + tensor.shape[-1]))
    return nn.init.uniform_(tensor, -bound, bound)


class LearnedPrompt(PromptSource):
    """A fresh, trainable prompt (VPT); ``depth`` > 0 makes it deep (one per block)."""

    def __init__(self, length: int, width: int, patch_size: int, depth: int = 0) -> None:
        super().__init__()
        shape = (depth, length, width) if depth else (length, width)
        self.prompt = nn.Parameter(vpt_init_(torch.empty(shape), patch_size))
        self.deep = bool(depth)

    def forward(self) -> dict[str, torch.Tensor]:
        return {"deep_prompts": self.prompt} if self.deep else {"prompt": self.prompt}


class FixedPrompt(PromptSource):
    """A prompt inserted unchanged (frozen transfer, random reference); nothing trains."""

    def __init__(self, prompt: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("prompt", prompt.detach().clone().float())

    def forward(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.prompt}


class ProjectedPrompt(PromptSource):
    """Projection transfer: one ``Linear(d_src, d_tgt)`` with bias, applied token-wise."""

    def __init__(self, source_prompt: torch.Tensor, width: int) -> None:
        super().__init__()
        self.register_buffer("source_prompt", source_prompt.detach().clone().float())
        self.proj = nn.Linear(source_prompt.shape[-1], width)

    def forward(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.proj(self.source_prompt)}


class AttentionPrompt(PromptSource):
    """Attention transfer: ``l_s`` learnable queries attend over the source prompt.

    ``A = softmax(Q K^T [/ sqrt(d)])`` with ``K = W_k P_s`` and ``V = W_v P_s``; the ``l_s``
    outputs ``A V`` are concatenated with a trainable target prompt of ``length - l_s``
    tokens, so the total length is unchanged. The paper's code omits the 1/sqrt(d) scale,
    hence ``scaled=False`` by default.
    """

    def __init__(self, source_prompt: torch.Tensor, width: int, length: int, concentrated: int, patch_size: int,
                 scaled: bool = False) -> None:
        super().__init__()
        if not 0 < concentrated <= length:
            raise InputError(f"concentrated length l_s must be in 1..{length}, got {concentrated}")
        self.register_buffer("source_prompt", source_prompt.detach().clone().float())
        self.queries = nn.Parameter(torch.randn(concentrated, width))
        self.key = nn.Linear(source_prompt.shape[-1], width)
        self.value = nn.Linear(source_prompt.shape[-1], width)
        self.target = nn.Parameter(vpt_init_(torch.empty(length - concentrated, width), patch_size))
        self.scale = 1.0 / math.sqrt(width) if scaled else 1.0

    def attention(self) -> torch.Tensor:
        """Query-to-source-token weights ``[l_s, L_src]`` (rows sum to 1)."""
        return torch.softmax(self.queries @ self.key(self.source_prompt).T * self.scale, dim=-1)

    def forward(self) -> dict[str, torch.Tensor]:
        mixed = self.attention() @ self.value(self.source_prompt)
        return {"prompt": torch.cat([mixed, self.target], dim=0)}


def random_reference_prompt(length: int, width: int, norm: float, seed: int) -> torch.Tensor:
    """A Gaussian prompt whose tokens have L2 norm ``norm`` (the frozen-transfer reference)."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(length, width, generator=gen)
    return tokens / tokens.norm(dim=1, keepdim=True) * norm


class PromptedClassifier(nn.Module):
    """Frozen backbone + prompt source + linear head. Inputs are images or embedded tokens."""

    def __init__(self, backbone: PromptedViT, prompt_source: PromptSource, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_source = prompt_source
        self.head = nn.Linear(backbone.width, num_classes)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """CLS features; ``inputs`` are images ``[B,3,H,W]`` or :meth:`PromptedViT.embed` tokens."""
        kwargs = self.prompt_source()
        if inputs.dim() == 3:
            return self.backbone(None, tokens=inputs, **kwargs)  # type: ignore[arg-type]
        return self.backbone(inputs, **kwargs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs))


def accepts_width(setting: str, source_width: int, target_width: int) -> bool:
    """Whether ``setting`` can carry a source prompt of ``source_width`` into a backbone of ``target_width``."""
    return setting not in SAME_WIDTH_SETTINGS or source_width == target_width


def make_prompt_source(setting: str, backbone: PromptedViT, length: int, source_prompt: torch.Tensor | None = None,
                       concentrated: int | None = None, scaled: bool = False,
                       reference_norm: float = 1.0, seed: int = 0) -> PromptSource:
    """Build the prompt side of ``setting`` for ``backbone``, from ``source_prompt`` where the setting uses one."""
    patch = int(backbone.vit.patch_embed.patch_size[0])
    check_names("setting", setting, SETTINGS)
    if setting == "linear":
        return NoPrompt()
    if setting in ("vpt", "vpt_deep"):
        return LearnedPrompt(length, backbone.width, patch, depth=backbone.depth if setting == "vpt_deep" else 0)
    if setting == "random":
        return FixedPrompt(random_reference_prompt(length, backbone.width, reference_norm, seed))
    if setting == "random_xavier":
        gen = torch.Generator().manual_seed(seed)
        bound = math.sqrt(6.0 / float(3 * patch * patch + backbone.width))
        return FixedPrompt((torch.rand(length, backbone.width, generator=gen) * 2 - 1) * bound)
    if setting == "spt":
        raise InputError("an spt prompt starts from the target's own training tokens: build it with "
                         "cmpt.spt.SelfPrompt.from_tokens (cmpt.runner.build_classifier does)")
    if source_prompt is None:
        raise InputError(f"setting {setting!r} needs a source prompt")
    if setting == "frozen":
        check_width(source_prompt, backbone.width, backbone.name)
        return FixedPrompt(source_prompt)
    if setting == "projection":
        return ProjectedPrompt(source_prompt, backbone.width)
    return AttentionPrompt(source_prompt, backbone.width, length, concentrated or length, patch, scaled=scaled)
