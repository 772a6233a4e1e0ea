"""Backbone computations that no training run changes, cached or streamed.

The backbone is frozen and there is no augmentation, so two things can be computed once:

- the embedding-layer tokens (patch projection + CLS + position embedding), which no prompt
  changes — every prompt-training run starts from them instead of pixels;
- for head-only settings (linear probing, frozen transfer, the random reference) the final
  CLS features themselves: training a head on them is the same model as training it behind
  the backbone, at a fraction of the cost (a test checks the equality).

When a split is too large to keep, the same computations run batch by batch instead:
:func:`token_stream` and :func:`feature_stream` wrap a DataLoader of image batches (or token
batches) into a DataLoader of token / feature batches, computed on the device in fp32 under
``no_grad`` exactly as the cached versions are, so a streamed split gives the numbers a cached
one would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from cmpt.backbones.vision import PromptedViT

__all__ = ["BackboneStream", "cls_features", "embed_batches", "embed_tokens", "feature_stream", "token_stream"]


@torch.no_grad()
def embed_tokens(backbone: PromptedViT, images: torch.Tensor, batch_size: int = 128,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Embedding-layer output ``[N, 1 + patches, D]`` for every image (on CPU)."""
    backbone.to(device)
    chunks = [backbone.embed(images[i:i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) if chunks else images.new_zeros(0)


@torch.no_grad()
def embed_batches(backbone: PromptedViT, batches: Iterable[tuple[Tensor, Tensor]], n: int,
                  device: torch.device | str = "cpu", desc: str | None = None) -> Tensor:
    """Embedding-layer tokens of ``n`` images arriving in ``(images, labels)`` batches, on CPU.

    The output ``[n, 1 + patches, D]`` is allocated once and filled batch by batch, so the
    pixels of the whole split never exist at the same time.
    """
    device = torch.device(device)
    backbone.to(device)
    out = torch.empty((n, 1 + backbone.num_patches, backbone.width), dtype=torch.float32)
    start = 0
    with torch.autocast(device.type, enabled=False):
        for images, _ in tqdm(batches, desc=desc, leave=False, disable=desc is None):
            out[start:start + len(images)] = backbone.embed(images.to(device, non_blocking=True)).float().cpu()
            start += len(images)
    if start != n:
        raise ValueError(f"expected {n} images from the batches, got {start}")
    return out


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


class BackboneStream(IterableDataset):
    """The ``(inputs, labels)`` batches of a DataLoader, with ``fn`` applied to the inputs on ``device``.

    ``fn`` runs without autograd and without autocast (fp32, as the cached computations), even
    when the consumer iterates inside an autocast region; its outputs stay on ``device``.
    """

    def __init__(self, batches: DataLoader, fn: Callable[[Tensor], Tensor], device: torch.device | str) -> None:
        super().__init__()
        self.batches, self.fn, self.device = batches, fn, torch.device(device)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for inputs, labels in self.batches:
            # the grad / autocast switches are thread state: set them only around the computation,
            # never across a yield, or the consumer's own forward would run under them
            with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
                out = self.fn(inputs.to(self.device, non_blocking=True))
            yield out, labels


def _stream(batches: DataLoader, fn: Callable[[Tensor], Tensor], device: torch.device | str) -> DataLoader:
    # the loader's own generator: iterating never draws from torch's global random state
    return DataLoader(BackboneStream(batches, fn, device), batch_size=None, generator=torch.Generator().manual_seed(0))


def token_stream(backbone: PromptedViT, batches: DataLoader, device: torch.device | str) -> DataLoader:
    """Image batches -> embedding-layer token batches ``[B, 1 + patches, D]`` on ``device``."""
    backbone.to(device)
    return _stream(batches, backbone.embed, device)


def feature_stream(backbone: PromptedViT, batches: DataLoader, prompt: Tensor | None,
                   device: torch.device | str) -> DataLoader:
    """Image or token batches -> final-norm CLS feature batches ``[B, D]`` behind a fixed ``prompt``."""
    backbone.to(device)
    prompt = None if prompt is None else prompt.detach().to(device)

    def features(x: Tensor) -> Tensor:
        if x.dim() == 3:  # embedded tokens
            return backbone(None, prompt=prompt, tokens=x)  # type: ignore[arg-type]
        return backbone(x, prompt=prompt)

    return _stream(batches, features, device)
