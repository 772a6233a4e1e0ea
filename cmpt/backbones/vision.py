"""A frozen timm Vision Transformer that accepts soft prompts.

Prompts enter after the position embedding and get no position embedding of their own.
Two layouts (the CMPT code's default, and VPT's):

``before_cls``  ``[P; CLS; patches]`` — the CMPT paper's code; the CLS token sits at index ``L``.
``after_cls``   ``[CLS; P; patches]`` — VPT; the CLS token sits at index 0.

Reading the classifier from the wrong index (a prompt token) is a known bug in public
projects, so :meth:`PromptedViT.readout_index` is the only place that decides it.

Deep prompts (VPT-deep) are a ``[depth, L, D]`` tensor: slice ``i`` occupies the prompt
slots before block ``i`` (slice 0 is the inserted prompt).

Attention weights are taken from the backbone's own attention modules while the fused
kernel is switched off (:func:`record_attention`): nothing is re-implemented.

Two speed-ups, each exact and each a switch (``tests/test_performance.py`` checks both
against a plain timm forward):

``sdpa``          PyTorch's fused scaled-dot-product attention in every block (timm's
                  ``fused_attn``; off = timm's explicit softmax path). ``None`` (the default)
                  chooses per forward: fused on CUDA, explicit on CPU, where the fused kernel's
                  backward was measured no faster in fp32 and made a bf16-autocast step about
                  1.4x slower at these sequence lengths (``cmpt bench --ideas``).
``cls_shortcut``  the CLS read-out needs only one row of the *last* block's output: keys and
                  values still come from every token, but the query, attention output,
                  projection and MLP are computed for the CLS row alone (:func:`cls_row_block`).
                  Only :meth:`PromptedViT.forward` uses it; :meth:`PromptedViT.forward_tokens`
                  always runs the full blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LAYOUTS", "PromptedViT", "VisionPreprocess", "cls_row_block", "record_attention",
           "supports_cls_shortcut"]

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
                 name: str = "vit", sdpa: bool | None = None, cls_shortcut: bool = True) -> None:
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
        self.cls_shortcut = cls_shortcut
        self.set_sdpa(sdpa)

    def set_sdpa(self, enabled: bool | None) -> None:
        """Fused attention kernel on (True) or off (False) in every block; None: fused on CUDA only."""
        self.sdpa = None if enabled is None else bool(enabled)

    def _choose_attention(self, x: torch.Tensor) -> None:
        fused = x.device.type == "cuda" if self.sdpa is None else self.sdpa
        for block in self.vit.blocks:
            attn = getattr(block, "attn", None)
            if getattr(attn, "fused_attn", fused) != fused:
                attn.fused_attn = fused

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

    def patch_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Patch projection only ``[B, N, D]``: no CLS and no position embedding (SPT's prompt source)."""
        tokens = self.vit.patch_embed(images)
        return tokens.flatten(1, 2) if tokens.dim() == 4 else tokens

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

    def prompt_slice(self, length: int) -> slice:
        """Where a prompt of ``length`` tokens sits in the block input (the layout decides)."""
        start = 0 if self.layout == "before_cls" else 1
        return slice(start, start + length)

    def _block_input(self, images: torch.Tensor | None, prompt: torch.Tensor | None,
                     deep_prompts: torch.Tensor | None, tokens: torch.Tensor | None) -> torch.Tensor:
        x = self.embed(images) if tokens is None else tokens
        if deep_prompts is not None:
            if deep_prompts.dim() != 3 or deep_prompts.shape[0] != self.depth:
                raise ValueError(f"deep prompts must be [depth={self.depth}, L, D], got {tuple(deep_prompts.shape)}")
            if prompt is not None:
                raise ValueError("pass either prompt (shallow) or deep_prompts, not both")
            prompt = deep_prompts[0]
        self._choose_attention(x)
        return self.vit.norm_pre(self.insert(x, prompt))

    def _refresh(self, x: torch.Tensor, deep_prompts: torch.Tensor | None, i: int) -> torch.Tensor:
        """Put deep prompt slice ``i`` into its slots before block ``i`` (nothing for shallow prompts)."""
        if deep_prompts is None or i == 0:
            return x
        slots = self.prompt_slice(deep_prompts.shape[1])
        fresh = self._check_prompt(deep_prompts[i], x.shape[0]).to(x.dtype)
        return torch.cat([x[:, :slots.start], fresh, x[:, slots.stop:]], dim=1)

    def forward_tokens(self, images: torch.Tensor, prompt: torch.Tensor | None = None,
                       deep_prompts: torch.Tensor | None = None,
                       tokens: torch.Tensor | None = None) -> torch.Tensor:
        """All final-norm tokens ``[B, T, D]``.

        ``tokens`` may carry a precomputed :meth:`embed` output to skip the patch projection
        (the prompt does not change it).
        """
        x = self._block_input(images, prompt, deep_prompts, tokens)
        for i, block in enumerate(self.vit.blocks):
            x = block(self._refresh(x, deep_prompts, i))
        return self.vit.norm(x)

    def forward(self, images: torch.Tensor, prompt: torch.Tensor | None = None,
                deep_prompts: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm CLS feature ``[B, D]`` (the input of a linear head)."""
        length = 0
        if deep_prompts is not None:
            length = deep_prompts.shape[1]
        elif prompt is not None:
            length = prompt.shape[-2]
        index = self.readout_index(length)
        if not (self.cls_shortcut and supports_cls_shortcut(self.vit)):
            return self.forward_tokens(images, prompt, deep_prompts, tokens)[:, index]
        x = self._block_input(images, prompt, deep_prompts, tokens)
        blocks = list(self.vit.blocks)
        for i, block in enumerate(blocks[:-1]):
            x = block(self._refresh(x, deep_prompts, i))
        x = self._refresh(x, deep_prompts, len(blocks) - 1)
        return self.vit.norm(cls_row_block(blocks[-1], x, index))


def supports_cls_shortcut(vit: nn.Module) -> bool:
    """Whether every block is a plain timm ``Block`` with timm ``Attention`` (what :func:`cls_row_block` mirrors)."""
    from timm.layers import Attention
    from timm.models.vision_transformer import Block

    blocks = list(getattr(vit, "blocks", []))
    return bool(blocks) and all(type(b) is Block and type(b.attn) is Attention for b in blocks)


def cls_row_block(block: nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
    """Row ``index`` of a timm ``Block``'s output ``[B, D]``, computing only what that row needs.

    Every row's key and value enter the attention; the query, attention output, projection,
    LayerScale and MLP are row-wise, so they run on the one row. Equals
    ``block(x)[:, index]`` up to float rounding (the block must be in eval mode: no dropout).
    """
    attn = block.attn
    batch, length, _ = x.shape
    heads, head_dim, dim = attn.num_heads, attn.head_dim, attn.attn_dim
    h = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    kv = F.linear(h, weight[dim:], None if bias is None else bias[dim:])
    k, v = kv.reshape(batch, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    row = h[:, index:index + 1]
    q = F.linear(row, weight[:dim], None if bias is None else bias[:dim]).reshape(batch, 1, heads, head_dim)
    q, k = attn.q_norm(q.transpose(1, 2)), attn.k_norm(k)
    if attn.fused_attn:
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        out = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    out = attn.norm(out.transpose(1, 2).reshape(batch, 1, dim))
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(row).sigmoid()
    y = x[:, index:index + 1] + block.drop_path1(block.ls1(attn.proj_drop(attn.proj(out))))
    y = y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
    return y[:, 0]


@contextlib.contextmanager
def record_attention(model: PromptedViT | nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each block's attention probabilities ``[B, heads, T, T]`` during forwards.

    The backbone's fused attention (and a :class:`PromptedViT`'s CLS shortcut, which skips the
    last block's full attention) is switched off only inside the ``with`` block; a forward
    hook on each block's ``attn_drop`` reads the softmax output the block really used.
    """
    vit = model.vit if isinstance(model, PromptedViT) else model
    switches = (model.cls_shortcut, model.sdpa) if isinstance(model, PromptedViT) else None
    if isinstance(model, PromptedViT):
        model.cls_shortcut, model.sdpa = False, False
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
        if isinstance(model, PromptedViT) and switches is not None:
            model.cls_shortcut, model.sdpa = switches
