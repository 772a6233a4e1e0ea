"""The target-side settings: where the vision backbone's prompt comes from.

The settings themselves (which of these modules each uses, what trains, its recipe) are records
of :mod:`cmpt.settings`. Every setting is a :class:`PromptSource` — a module whose ``forward()`` returns the prompt
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

__all__ = [
    "HEAD_INITS",
    "QUERY_INITS",
    "AttentionPrompt",
    "FixedPrompt",
    "LearnedPrompt",
    "NoPrompt",
    "ProjectedPrompt",
    "PromptSource",
    "PromptedClassifier",
    "make_head",
    "random_reference_prompt",
    "vpt_init_",
]

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


QUERY_INITS = ("unit_logits", "randn")


class AttentionPrompt(PromptSource):
    """Attention transfer: ``l_s`` learnable queries attend over the source prompt.

    ``A = softmax(Q K^T [/ sqrt(d)])`` with ``K = W_k P_s`` and ``V = W_v P_s``; the ``l_s``
    outputs ``A V`` are concatenated with a trainable target prompt of ``length - l_s``
    tokens, so the total length is unchanged. The paper's code omits the 1/sqrt(d) scale,
    hence ``scaled=False`` by default.

    ``query_init`` (:data:`QUERY_INITS`): ``"randn"`` is the original code's N(0, 1) queries,
    whose logits are so large that the softmax starts saturated (each query on one source token,
    entropy 0, and almost no gradient); ``"unit_logits"`` (the default) draws the same N(0, 1)
    queries and rescales them once so the initial logits ``Q K^T`` (times the scale) have standard
    deviation 1: attention then starts neither saturated nor uniform.
    """

    def __init__(self, source_prompt: torch.Tensor, width: int, length: int, concentrated: int, patch_size: int,
                 scaled: bool = False, query_init: str = "unit_logits") -> None:
        super().__init__()
        if not 0 < concentrated <= length:
            raise InputError(f"concentrated length l_s must be in 1..{length}, got {concentrated}")
        check_names("query initialisation", query_init, QUERY_INITS)
        self.register_buffer("source_prompt", source_prompt.detach().clone().float())
        self.queries = nn.Parameter(torch.randn(concentrated, width))
        self.key = nn.Linear(source_prompt.shape[-1], width)
        self.value = nn.Linear(source_prompt.shape[-1], width)
        self.target = nn.Parameter(vpt_init_(torch.empty(length - concentrated, width), patch_size))
        self.scale = 1.0 / math.sqrt(width) if scaled else 1.0
        if query_init == "unit_logits":
            with torch.no_grad():
                spread = (self.queries @ self.key(self.source_prompt).T * self.scale).std()
                self.queries.div_(spread.clamp_min(1e-8))

    def entropy(self) -> float:
        """Mean entropy (nats) of the queries' attention over the source tokens; 0 is saturated, ln L uniform."""
        with torch.no_grad():
            weights = self.attention()
            return float(-(weights * weights.clamp_min(1e-12).log()).sum(-1).mean())

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


HEAD_INITS = ("zero", "default")


def make_head(width: int, num_classes: int, init: str = "zero") -> nn.Linear:
    """The linear head: ``"zero"`` starts every class at logit 0 (initial loss ln C, so the first
    steps follow the data, not a random head's confident mistakes); ``"default"`` is torch's
    Kaiming-uniform initialisation (CMPT's code)."""
    check_names("head initialisation", init, HEAD_INITS)
    head = nn.Linear(width, num_classes)
    if init == "zero":
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    return head


class PromptedClassifier(nn.Module):
    """Frozen backbone + prompt source + linear head. Inputs are images or embedded tokens."""

    def __init__(self, backbone: PromptedViT, prompt_source: PromptSource, num_classes: int,
                 head_init: str = "zero") -> None:
        super().__init__()
        self.backbone = backbone
        self.prompt_source = prompt_source
        self.head = make_head(backbone.width, num_classes, head_init)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        """CLS features; ``inputs`` are images ``[B,3,H,W]`` or :meth:`PromptedViT.embed` tokens."""
        kwargs = self.prompt_source()
        if inputs.dim() == 3:
            return self.backbone(None, tokens=inputs, **kwargs)  # type: ignore[arg-type]
        return self.backbone(inputs, **kwargs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs))
