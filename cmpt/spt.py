"""SPT: a visual prompt initialised from prototypes of the target's own patch tokens.

Self-Prompt Tuning (Wang et al., ICML 2024, "Revisiting the Power of Prompt for Visual
Tuning") starts the prompt from representative patch tokens of the downstream data instead
of random values, then trains it exactly like shallow VPT. We take the CMPT paper's "SPT"
baseline to be this method.

The tokens are the embedding-layer output of the frozen ViT (patch projection plus position
embedding, :meth:`~cmpt.backbones.vision.PromptedViT.embed`) with the CLS token (index 0)
dropped: the same space the prompt is inserted into. Take them from the *training* images
only (the training subset, where there is one), so the initial prompt never sees a test image.

Prototype methods (:func:`prototypes`):

``kmeans``  centres of k-means with ``length`` clusters (scikit-learn, fixed ``random_state``)
            on at most ``max_tokens`` tokens drawn with a seeded generator, so time and
            memory stay bounded whatever the dataset size;
``mean``    the tokens shuffled by a seeded permutation, cut into ``length`` near-equal
            groups, each averaged. With many tokens per group the averages come close to the
            overall mean token, so the prompt tokens are nearly alike: the crudest prototype;
``sample``  ``length`` distinct tokens drawn at random (seeded).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from cmpt.backbones.vision import PromptedViT
from cmpt.errors import InputError, check_names
from cmpt.transfer import PromptSource

__all__ = ["METHODS", "SelfPrompt", "embedded_patches", "prototypes"]

METHODS = ("kmeans", "mean", "sample")


def _flat_tokens(tokens: Tensor) -> Tensor:
    """``[N, P, D]`` or ``[M, D]`` as a float32 CPU ``[M, D]``."""
    if not isinstance(tokens, Tensor):
        raise InputError(f"patch tokens must be a tensor, got {type(tokens).__name__}")
    if tokens.dim() == 3:
        tokens = tokens.reshape(-1, tokens.shape[-1])
    elif tokens.dim() != 2:
        raise InputError(f"patch tokens must be [N, P, D] or [M, D], got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise InputError(f"no patch tokens to build prototypes from (shape {tuple(tokens.shape)})")
    tokens = tokens.detach().to("cpu", torch.float32)
    if not torch.isfinite(tokens).all():
        raise InputError("patch tokens contain NaN or infinite values")
    return tokens


def prototypes(patch_tokens: Tensor, length: int, method: str = "kmeans", seed: int = 0,
               max_tokens: int = 20000, n_init: int = 4) -> Tensor:
    """``length`` prototype tokens ``[length, D]`` (float32, CPU) of ``patch_tokens``.

    ``patch_tokens`` is ``[N, P, D]`` (images x patches, CLS already dropped) or ``[M, D]``.
    Deterministic for a given ``seed``. ``max_tokens`` caps the tokens k-means sees (and
    ``n_init`` sets its restarts); ``mean`` and ``sample`` use every token. ``length`` must not
    exceed the tokens available (for k-means, after the cap).
    """
    check_names("SPT prototype method", method, METHODS)
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
        raise InputError(f"prompt length must be a positive integer, got {length!r}")
    if max_tokens < 1 or n_init < 1:
        raise InputError(f"max_tokens and n_init must be at least 1, got {max_tokens} and {n_init}")
    length = int(length)
    tokens = _flat_tokens(patch_tokens)
    available = tokens.shape[0] if method != "kmeans" else min(tokens.shape[0], max_tokens)
    if length > available:
        capped = method == "kmeans" and tokens.shape[0] > max_tokens
        cap = f" (at most max_tokens={max_tokens} are used)" if capped else ""
        raise InputError(f"cannot build {length} {method} prototypes from {available} patch tokens{cap}; "
                         f"use a shorter prompt or more images")
    generator = torch.Generator().manual_seed(int(seed))
    if method == "sample":
        return tokens[torch.randperm(tokens.shape[0], generator=generator)[:length]].clone()
    if method == "mean":
        order = torch.randperm(tokens.shape[0], generator=generator)
        return torch.stack([tokens[group].mean(dim=0) for group in torch.tensor_split(order, length)])
    if tokens.shape[0] > max_tokens:
        tokens = tokens[torch.randperm(tokens.shape[0], generator=generator)[:max_tokens]]
    from sklearn.cluster import KMeans

    kmeans = KMeans(n_clusters=length, n_init=n_init, random_state=int(seed)).fit(tokens.numpy())
    return torch.from_numpy(np.ascontiguousarray(kmeans.cluster_centers_, dtype=np.float32))


@torch.no_grad()
def embedded_patches(backbone: PromptedViT, images: Tensor, batch_size: int = 128,
                     per_image: int | None = None, seed: int = 0) -> Tensor:
    """Embedding-layer patch tokens ``[N, P', D]`` (float32, CPU) of ``images``, CLS dropped.

    ``images`` are preprocessed images ``[N, 3, H, W]`` or an :meth:`PromptedViT.embed` output
    ``[N, 1 + P, D]`` already computed. ``per_image`` keeps that many patches of each image
    (a seeded random choice per image) to bound memory on large training sets.
    """
    if images.dim() == 3:
        if images.shape[-1] != backbone.width or images.shape[1] < 2:
            raise InputError(f"embedded tokens must be [N, 1 + patches, {backbone.width}], got {tuple(images.shape)}")
        chunks = [images[:, 1:].to("cpu", torch.float32)]
    elif images.dim() == 4:
        device = next(backbone.parameters()).device
        chunks = [backbone.embed(images[i:i + batch_size].to(device))[:, 1:].to("cpu", torch.float32)
                  for i in range(0, len(images), batch_size)]
    else:
        raise InputError(f"expected images [N, 3, H, W] or embedded tokens [N, 1 + P, D], got {tuple(images.shape)}")
    tokens = torch.cat(chunks) if chunks else torch.zeros(0, backbone.num_patches, backbone.width)
    if per_image is not None and per_image < tokens.shape[1]:
        if per_image < 1:
            raise InputError(f"per_image must be at least 1, got {per_image}")
        generator = torch.Generator().manual_seed(int(seed))
        keep = torch.argsort(torch.rand(tokens.shape[0], tokens.shape[1], generator=generator), dim=1)[:, :per_image]
        tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return tokens


class SelfPrompt(PromptSource):
    """A trainable shallow prompt that starts from given prototypes (SPT); trains like VPT.

    ``forward()`` returns ``{"prompt": nn.Parameter}``, as :class:`cmpt.transfer.LearnedPrompt`
    does for shallow VPT. The initial value is an exact copy of ``init``.
    """

    def __init__(self, init: Tensor, method: str = "given") -> None:
        super().__init__()
        if init.dim() != 2 or init.shape[0] < 1:
            raise InputError(f"an SPT prompt must be [length >= 1, D], got {tuple(init.shape)}")
        self.prompt = nn.Parameter(init.detach().to(torch.float32).clone())
        self.method = method

    @classmethod
    def from_tokens(cls, tokens: Tensor, length: int, method: str = "kmeans", seed: int = 0,
                    max_tokens: int = 20000) -> "SelfPrompt":
        """From patch tokens ``[N, P, D]`` / ``[M, D]`` (CLS already dropped); see :func:`prototypes`."""
        return cls(prototypes(tokens, length, method, seed, max_tokens), method)

    @classmethod
    def from_images(cls, backbone: PromptedViT, images: Tensor, length: int, method: str = "kmeans",
                    seed: int = 0, max_tokens: int = 20000, batch_size: int = 128) -> "SelfPrompt":
        """From the backbone's patch tokens of training ``images`` (or their :meth:`~PromptedViT.embed` output).

        At most about ``max_tokens`` tokens are kept, spread evenly over the images, so a
        large training set does not hold every patch token in memory.
        """
        per_image = max(1, math.ceil(max_tokens / max(1, len(images))))
        tokens = embedded_patches(backbone, images, batch_size, per_image=per_image, seed=seed)
        return cls.from_tokens(tokens, length, method, seed, max_tokens)

    def forward(self) -> dict[str, Tensor]:
        return {"prompt": self.prompt}
