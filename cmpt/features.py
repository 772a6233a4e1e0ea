"""Cached backbone computations.

The backbone is frozen and there is no augmentation, so two things can be computed once:

- the embedding-layer tokens (patch projection + CLS + position embedding), which no prompt
  changes — every prompt-training run starts from them instead of pixels;
- for head-only settings (linear probing, frozen transfer, the random reference) the final
  CLS features themselves: training a head on them is the same model as training it behind
  the backbone, at a fraction of the cost (a test checks the equality).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from cmpt.backbones.vision import PromptedViT

__all__ = ["cls_features", "embed_tokens"]


@torch.no_grad()
def embed_tokens(backbone: PromptedViT, images: torch.Tensor, batch_size: int = 128,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Embedding-layer output ``[N, 1 + patches, D]`` for every image (on CPU)."""
    backbone.to(device)
    chunks = [backbone.embed(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else images.new_zeros(0)


@torch.no_grad()
def cls_features(backbone: PromptedViT, tokens: torch.Tensor, prompt: torch.Tensor | None = None,
                 batch_size: int = 128, device: torch.device | str = "cpu", desc: str | None = None) -> torch.Tensor:
    """Final-norm CLS features ``[N, D]`` from embedded ``tokens``, with an optional fixed prompt."""
    backbone.to(device)
    prompt = None if prompt is None else prompt.to(device)
    starts = range(0, len(tokens), batch_size)
    out = [backbone(None, prompt=prompt, tokens=tokens[i:i + batch_size].to(device)).cpu()  # type: ignore[arg-type]
           for i in tqdm(starts, desc=desc, leave=False, disable=desc is None)]
    return torch.cat(out)
