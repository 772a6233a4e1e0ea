"""Where a prompted vision transformer looks: attention maps of trained classifiers.

Every map comes from :func:`~cmpt.backbones.vision.record_attention`, which reads the softmax
each block of the backbone really used (nothing is re-implemented here; :func:`reapply_error`
checks it). From the recorded ``[B, heads, T, T]`` per block:

:func:`cls_patch_attention`
    attention of the CLS query on each image patch, per layer and head, as a patch grid.
:func:`prompt_mass`
    the share of the CLS query's attention that lands on the prompt slots, per layer (summed
    over the slots, averaged over heads). Zero without a prompt (linear probing).
:func:`rollout`
    attention rollout (Abnar & Zuidema, 2020): average the heads, add the identity for the
    residual stream, renormalise the rows, multiply through the layers. Rows stay distributions.
:func:`query_attention`
    for attention transfer, the learned queries' weights over the source prompt tokens.

The layout decides the indices: ``before_cls`` is ``[P; CLS; patches]`` and ``after_cls`` is
``[CLS; P; patches]``; :class:`RecordedAttention` carries them, taken from the backbone's own
:meth:`~cmpt.backbones.vision.PromptedViT.readout_index` and ``prompt_slice``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cmpt.backbones.vision import PromptedViT, record_attention
from cmpt.transfer import AttentionPrompt, PromptedClassifier


__all__ = ["AttentionView", "RecordedAttention", "attention_view", "first_examples", "shown_images", "cls_patch_attention", "overlay", "plot_image_attention",
           "prompt_mass", "query_attention", "reapply_attention", "reapply_error", "record_maps", "rollout",
           "rollout_cls_patches"]


@dataclass
class RecordedAttention:
    """The attention of one forward pass and where the tokens sit.

    ``maps``: ``[layers, B, heads, T, T]``; ``cls``: CLS index; ``prompt`` and ``patches``: the
    slots of the prompt and of the patch tokens; ``grid``: patch grid (rows, columns);
    ``deep``: whether a fresh prompt replaced the prompt slots before every block.
    """

    maps: torch.Tensor
    cls: int
    prompt: slice
    patches: slice
    grid: tuple[int, int]
    deep: bool = False

    @property
    def prompt_length(self) -> int:
        return self.prompt.stop - self.prompt.start


def _backbone(model: PromptedClassifier | PromptedViT) -> PromptedViT:
    return model.backbone if isinstance(model, PromptedClassifier) else model


def _device(backbone: PromptedViT) -> torch.device:
    return next(backbone.parameters()).device


def _grid(backbone: PromptedViT) -> tuple[int, int]:
    grid = getattr(backbone.vit.patch_embed, "grid_size", None)
    if grid is None:
        side = int(round(backbone.num_patches ** 0.5))
        grid = (side, side)
    return int(grid[0]), int(grid[1])


@torch.no_grad()
def record_maps(model: PromptedClassifier, inputs: torch.Tensor) -> RecordedAttention:
    """Run ``model`` on ``inputs`` (images or embedded tokens) in eval mode and record every block's attention."""
    backbone = _backbone(model)
    kwargs = model.prompt_source()
    deep = "deep_prompts" in kwargs
    length = kwargs["deep_prompts"].shape[1] if deep else (kwargs["prompt"].shape[-2] if "prompt" in kwargs else 0)
    was_training = model.training
    model.eval()
    try:
        with record_attention(backbone) as maps:
            model.features(inputs.to(_device(backbone)))
    finally:
        model.train(was_training)
    if len(maps) != backbone.depth:
        raise RuntimeError(f"recorded {len(maps)} attention maps for {backbone.depth} blocks")
    slots = backbone.prompt_slice(length) if length else slice(0, 0)
    patches = slice(length + 1, length + 1 + backbone.num_patches)
    return RecordedAttention(torch.stack(maps).cpu(), backbone.readout_index(length), slots, patches,
                             _grid(backbone), deep)


def cls_patch_attention(rec: RecordedAttention) -> torch.Tensor:
    """CLS-to-patch attention ``[B, layers, heads, rows, cols]`` (each layer-head sums to <= 1)."""
    layers, batch, heads = rec.maps.shape[:3]
    cls_rows = rec.maps[:, :, :, rec.cls, rec.patches]  # [layers, B, heads, N]
    return cls_rows.permute(1, 0, 2, 3).reshape(batch, layers, heads, *rec.grid)


def prompt_mass(rec: RecordedAttention) -> torch.Tensor:
    """Share of the CLS query's attention on the prompt slots ``[B, layers]``, summed over slots, mean over heads."""
    mass = rec.maps[:, :, :, rec.cls, rec.prompt].sum(-1).mean(-1)  # [layers, B]
    return mass.T.contiguous()


def rollout(rec: RecordedAttention) -> torch.Tensor:
    """Attention rollout ``[B, T, T]``: row ``t`` says how the last layer's token ``t`` mixes the inputs.

    Per layer: mean over heads, plus the identity (the residual), rows renormalised; the
    product runs from the first layer to the last. With deep prompts the prompt slots are
    fresh inputs before every block, so their rows restart as unit vectors there.
    """
    layers, batch, _, tokens, _ = rec.maps.shape
    eye = torch.eye(tokens, dtype=rec.maps.dtype).expand(batch, tokens, tokens)
    joint = eye.clone()
    for layer in range(layers):
        if rec.deep and layer > 0 and rec.prompt_length:
            joint[:, rec.prompt] = eye[:, rec.prompt]
        mixed = rec.maps[layer].mean(1) + eye
        mixed = mixed / mixed.sum(-1, keepdim=True)
        joint = mixed @ joint
    return joint


def rollout_cls_patches(rec: RecordedAttention) -> torch.Tensor:
    """The CLS row of :func:`rollout` on the patches, as a grid ``[B, rows, cols]``."""
    return rollout(rec)[:, rec.cls, rec.patches].reshape(-1, *rec.grid)


def query_attention(trained: PromptedClassifier | Mapping[str, Any]) -> np.ndarray:
    """Attention transfer's query-to-source-token weights ``[l_s, L_src]``.

    From a model whose prompt source is an :class:`~cmpt.transfer.AttentionPrompt`, or from an
    attention-transfer run's record (``final.query_attention``, written by ``run_target``).
    """
    if isinstance(trained, PromptedClassifier):
        if not isinstance(trained.prompt_source, AttentionPrompt):
            raise ValueError(f"query attention needs an attention-transfer model, got {type(trained.prompt_source).__name__}")
        with torch.no_grad():
            return trained.prompt_source.attention().cpu().numpy()
    final = trained.get("final", trained)
    if final.get("query_attention") is None:
        raise ValueError("the record has no query_attention: it is not an attention-transfer run")
    return np.asarray(final["query_attention"], dtype=np.float64)


def reapply_attention(attn: nn.Module, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """A timm ``Attention`` module's output on its input ``x`` with ``probs`` ``[B, heads, T, T]`` as the softmax.

    Values, head merge, (optional) norm and gate, output projection: the module's own layers.
    """
    batch, tokens, _ = x.shape
    qkv = attn.qkv(x).reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    out = (probs.to(x.dtype) @ qkv[2]).transpose(1, 2).reshape(batch, tokens, -1)
    out = getattr(attn, "norm", nn.Identity())(out)
    gate = getattr(attn, "gate", None)
    if gate is not None:
        out = out * gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


@torch.no_grad()
def reapply_error(model: PromptedClassifier, inputs: torch.Tensor) -> float:
    """Largest difference, over blocks, between a block's attention output and its recorded softmax re-applied.

    Near zero when the recorded maps are exactly what the backbone computed with.
    """
    backbone = _backbone(model)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [block.attn.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
             for block in backbone.vit.blocks]
    model.eval()
    try:
        with record_attention(backbone) as maps:
            model.features(inputs.to(_device(backbone)))
    finally:
        for hook in hooks:
            hook.remove()
    return max(float((reapply_attention(block.attn, x, probs) - out).abs().max())
               for block, (x, out), probs in zip(backbone.vit.blocks, seen, maps))


def overlay(ax: Any, image: np.ndarray, grid_map: np.ndarray | torch.Tensor, title: str = "",
            alpha: float = 0.55, cmap: str = "inferno") -> None:
    """Draw ``image`` (uint8 ``[H, W(, 3)]``) with a patch-grid map stretched over it (nearest patches)."""
    grid_map = np.asarray(grid_map, dtype=np.float64)
    height, width = image.shape[:2]
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, extent=(0, width, height, 0))
    ax.imshow(grid_map, cmap=cmap, alpha=alpha, extent=(0, width, height, 0), interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def plot_image_attention(image: np.ndarray, patches: np.ndarray | torch.Tensor, rolled: np.ndarray | torch.Tensor,
                         title: str = "", columns: int = 6) -> Any:
    """One image's CLS attention: the image, its rollout, the last layer and each of its heads, then every
    layer (head mean), in rows of at most ``columns`` panels so that the figure fits a page column.

    ``patches``: ``[layers, heads, rows, cols]`` (one image of :func:`cls_patch_attention`);
    ``rolled``: ``[rows, cols]`` (one image of :func:`rollout_cls_patches`). Returns the figure.
    """
    import matplotlib.pyplot as plt

    patches = np.asarray(patches, dtype=np.float64)
    layers, heads = patches.shape[:2]
    panels = [("rollout", rolled), ("last layer", patches[-1].mean(0))]
    panels += [(f"last, head {head}", patches[-1, head]) for head in range(heads)]
    panels += [(f"layer {layer + 1}", patches[layer].mean(0)) for layer in range(layers)]
    n_rows = -(-(len(panels) + 1) // columns)
    fig, axes = plt.subplots(n_rows, columns, figsize=(7.5, 7.5 / columns * n_rows + 0.5), squeeze=False)
    flat = axes.ravel()
    for ax in flat:
        ax.set_axis_off()
    flat[0].imshow(image, cmap="gray" if image.ndim == 2 else None)
    flat[0].set_title("image", fontsize=9)
    for ax, (name, values) in zip(flat[1:], panels):
        overlay(ax, image, values, name)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- trained models


@dataclass
class AttentionView:
    """What the attention chapter shows of one trained model on a target's test images.

    ``shown``: test indices of the images drawn (the first of evenly spaced classes);
    ``patches``: their CLS-to-patch maps ``[images, layers, heads, rows, cols]``; ``rolled``:
    their rollout maps; ``mass``: prompt mass per image and layer over the first ``mass_images``
    test images; ``rollout_prompt``: the rollout share of the prompt slots, averaged; ``errors``:
    the largest deviations of the checks (rows summing to 1, re-applying the recorded softmax).
    """

    shown: list[int]
    patches: np.ndarray
    rolled: np.ndarray
    mass: np.ndarray
    rollout_prompt: float
    grid: tuple[int, int]
    layers: int
    heads: int
    errors: dict[str, float]


def shown_images(labels: torch.Tensor, num_classes: int, n_images: int) -> list[int]:
    """The first test image of each of ``n_images`` evenly spaced classes (classes present only)."""
    classes = np.linspace(0, num_classes - 1, n_images).round().astype(int)
    values = labels.numpy()
    return [int(np.flatnonzero(values == c)[0]) for c in classes if (values == c).any()]


def attention_view(model: PromptedClassifier, tokens: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   n_images: int = 4, mass_images: int = 64, chunk: int = 8) -> AttentionView:
    """Record ``model``'s attention on test ``tokens`` and reduce it to an :class:`AttentionView`.

    Maps are ``[layers, B, heads, T, T]``, so the mass curves are recorded ``chunk`` images at a time.
    """
    shown = shown_images(labels, num_classes, n_images)
    rec = record_maps(model, tokens[shown])
    errors = {"row_sum": 0.0, "rollout_row_sum": 0.0}
    masses, shares = [], []
    for part_tokens in tokens[:mass_images].split(chunk):
        part = record_maps(model, part_tokens)
        joint = rollout(part)
        errors["row_sum"] = max(errors["row_sum"], float((part.maps.sum(-1) - 1).abs().max()))
        errors["rollout_row_sum"] = max(errors["rollout_row_sum"], float((joint.sum(-1) - 1).abs().max()))
        masses.append(prompt_mass(part))
        shares.append(joint[:, part.cls, part.prompt].sum(-1))
    errors["reapply"] = reapply_error(model, tokens[shown])
    return AttentionView(shown, cls_patch_attention(rec).numpy(), rollout_cls_patches(rec).numpy(),
                         torch.cat(masses).numpy(), float(torch.cat(shares).mean()), rec.grid,
                         int(rec.maps.shape[0]), int(rec.maps.shape[2]), errors)


def first_examples(split: tuple[torch.Tensor, torch.Tensor] | Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` ``(tokens, labels)`` of a split, cached (a tensor pair) or streamed (a DataLoader).

    The chapter draws its maps from the start of the test split; a streamed split (the paper
    profile's large ones) is read only that far.
    """
    if isinstance(split, tuple):
        return split[0][:n], split[1][:n]
    tokens, labels, seen = [], [], 0
    for batch_tokens, batch_labels in split:
        tokens.append(batch_tokens.cpu())
        labels.append(batch_labels.cpu())
        seen += len(batch_labels)
        if seen >= n:
            break
    return torch.cat(tokens)[:n], torch.cat(labels)[:n]
