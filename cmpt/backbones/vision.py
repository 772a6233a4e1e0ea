"""A frozen timm Vision Transformer that accepts soft prompts.

Prompts enter after the position embedding and get no position embedding of their own.
Two layouts (see ``shared/docs/method.md``):

``before_cls``  ``[P; CLS; patches]`` — the CMPT paper's code; the CLS token sits at index ``L``.
``after_cls``   ``[CLS; P; patches]`` — VPT; the CLS token sits at index 0.

Reading the classifier from the wrong index (a prompt token) is a known bug in public
projects, so :meth:`PromptedViT.readout_index` is the only place that decides it.

Deep prompts (VPT-deep) are a ``[depth, L, D]`` tensor: slice ``i`` occupies the prompt
slots before block ``i`` (slice 0 is the inserted prompt).

Attention weights are taken from the backbone's own attention modules while the fused
kernel is switched off (:func:`record_attention`): nothing is re-implemented.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["LAYOUTS", "PromptedViT", "VisionPreprocess", "record_attention"]

LAYOUTS = ("before_cls", "after_cls")


@dataclass(frozen=True)
class VisionPreprocess:
    """How images must look when they reach the backbone."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


class PromptedViT(nn.Module):
    """Frozen timm ``VisionTransformer`` plus prompt insertion and a CLS read-out.

    The wrapped model is put in eval mode and every parameter is frozen: gradients can flow
    *through* it to prompts and projectors, never into it.
    """

    def __init__(self, vit: nn.Module, preprocess: VisionPreprocess, layout: str = "before_cls",
                 name: str = "vit") -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown prompt layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        if getattr(vit, "num_prefix_tokens", 1) != 1 or getattr(vit, "cls_token", None) is None:
            raise ValueError("PromptedViT needs a ViT with exactly one prefix token (CLS) and no register tokens")
        self.vit = vit
        self.preprocess = preprocess
        self.layout = layout
        self.name = name
        for p in self.vit.parameters():
            p.requires_grad_(False)
        self.vit.eval()

    def train(self, mode: bool = True) -> "PromptedViT":
        # The backbone stays in eval mode (no dropout, no drop-path) whatever the caller does.
        super().train(mode)
        self.vit.eval()
        return self

    @property
    def width(self) -> int:
        return int(self.vit.embed_dim)

    @property
    def depth(self) -> int:
        return len(self.vit.blocks)

    @property
    def num_patches(self) -> int:
        return int(self.vit.patch_embed.num_patches)

    def readout_index(self, prompt_length: int) -> int:
        """Position of the CLS token in the sequence fed to the blocks."""
        return prompt_length if self.layout == "before_cls" else 0

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embedding-layer output ``[B, 1 + N, D]``: patch projection + CLS + position embedding.

        This is the representation Algorithm 1 (modality gap) compares prompts against.
        """
        return self.vit._pos_embed(self.vit.patch_embed(images))

    def insert(self, tokens: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """Insert ``prompt`` (``[L, D]`` or ``[B, L, D]``) into embedded ``tokens`` ``[B, 1+N, D]``."""
        if prompt is None or prompt.shape[-2] == 0:
            return tokens
        prompt = self._check_prompt(prompt, tokens.shape[0]).to(tokens.dtype)
        if self.layout == "before_cls":
            return torch.cat([prompt, tokens], dim=1)
        return torch.cat([tokens[:, :1], prompt, tokens[:, 1:]], dim=1)

    def _check_prompt(self, prompt: torch.Tensor, batch: int) -> torch.Tensor:
        if prompt.shape[-1] != self.width:
            raise ValueError(
                f"prompt width {prompt.shape[-1]} does not fit vision backbone {self.name!r} "
                f"(width {self.width}); use projection or attention transfer to map it"
            )
        if prompt.dim() == 2:
            return prompt.unsqueeze(0).expand(batch, -1, -1)
        if prompt.dim() == 3 and prompt.shape[0] in (1, batch):
            return prompt.expand(batch, -1, -1)
        raise ValueError(f"prompt must be [L, D] or [B, L, D] with B={batch}, got {tuple(prompt.shape)}")

    def _prompt_slice(self, length: int) -> slice:
        start = 0 if self.layout == "before_cls" else 1
        return slice(start, start + length)

    def forward_tokens(self, images: torch.Tensor, prompt: torch.Tensor | None = None,
                       deep_prompts: torch.Tensor | None = None,
                       tokens: torch.Tensor | None = None) -> torch.Tensor:
        """All final-norm tokens ``[B, T, D]``.

        ``tokens`` may carry a precomputed :meth:`embed` output to skip the patch projection
        (the prompt does not change it).
        """
        x = self.embed(images) if tokens is None else tokens
        batch = x.shape[0]
        if deep_prompts is not None:
            if deep_prompts.dim() != 3 or deep_prompts.shape[0] != self.depth:
                raise ValueError(f"deep prompts must be [depth={self.depth}, L, D], got {tuple(deep_prompts.shape)}")
            if prompt is not None:
                raise ValueError("pass either prompt (shallow) or deep_prompts, not both")
            prompt = deep_prompts[0]
        x = self.insert(x, prompt)
        x = self.vit.norm_pre(x)
        for i, block in enumerate(self.vit.blocks):
            if deep_prompts is not None and i > 0:
                slots = self._prompt_slice(deep_prompts.shape[1])
                fresh = self._check_prompt(deep_prompts[i], batch).to(x.dtype)
                x = torch.cat([x[:, :slots.start], fresh, x[:, slots.stop:]], dim=1)
            x = block(x)
        return self.vit.norm(x)

    def forward(self, images: torch.Tensor, prompt: torch.Tensor | None = None,
                deep_prompts: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm CLS feature ``[B, D]`` (the input of a linear head)."""
        x = self.forward_tokens(images, prompt, deep_prompts, tokens)
        length = 0
        if deep_prompts is not None:
            length = deep_prompts.shape[1]
        elif prompt is not None:
            length = prompt.shape[-2]
        return x[:, self.readout_index(length)]


@contextlib.contextmanager
def record_attention(model: PromptedViT | nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each block's attention probabilities ``[B, heads, T, T]`` during forwards.

    The backbone's fused attention is switched off only inside the ``with`` block; a forward
    hook on each block's ``attn_drop`` reads the softmax output the block really used.
    """
    vit = model.vit if isinstance(model, PromptedViT) else model
    maps: list[torch.Tensor] = []
    handles = []
    saved = []
    for block in vit.blocks:
        attn = block.attn
        saved.append((attn, attn.fused_attn))
        attn.fused_attn = False
        handles.append(attn.attn_drop.register_forward_hook(lambda _m, inputs, _out: maps.append(inputs[0].detach())))
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for attn, fused in saved:
            attn.fused_attn = fused
