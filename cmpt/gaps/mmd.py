"""The modality gap of Algorithm 1: MMD between a raw source prompt and a target's patch tokens.

Target features are the vision backbone's *embedding-layer* output (patch projection plus
position embedding, no block), CLS dropped, flattened to one row per patch token. They are
shuffled into batches of as many tokens as the prompt has (the last, incomplete batch is
dropped), and the biased multi-kernel estimate

    MMD^2(X, Y) = mean K(X, X) + mean K(Y, Y) - 2 mean K(X, Y)

is taken between the prompt ``X`` and every batch ``Y``, with ``K`` a sum of Gaussians
``exp(-||a - b||^2 / s_k)``, ``s_k = s0 * {1/4, 1/2, 1, 2, 4}`` and ``s0`` the mean squared
distance over the pooled points (off-diagonal pairs). Values are averaged over batches and
over ``passes`` seeded reshuffles.

Everything is batched: all source prompts against all batches of a pass in a few tensor
operations (chunked to bound memory), on the device the target tokens live on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor

from cmpt.errors import InputError
from cmpt.prompts import Prompt

__all__ = ["BANDWIDTH_FACTORS", "WidthMismatchError", "check_same_width", "mmd2_batched", "modality_gap",
           "modality_gap_table", "patch_tokens", "threshold_analysis", "threshold_curve"]

#: multipliers of the base bandwidth s0 (Algorithm 1)
BANDWIDTH_FACTORS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)
#: cap on the elements of one [sources, batches, L, L] block (x5 kernels, 8 bytes each in float64)
CHUNK_ELEMENTS = 2 ** 22


class WidthMismatchError(InputError):
    """A source prompt and target features (or target prompt) of different widths."""


def check_same_width(source_width: int, target_width: int, what: str = "MMD") -> None:
    """Refuse a width-mismatched pair, saying why (no silent projection)."""
    if source_width != target_width:
        raise WidthMismatchError(
            f"{what} is defined here only for width-matched pairs: the source prompt is {source_width} wide, "
            f"the target features are {target_width} wide. The raw prompt is compared with no projection, "
            f"as in Algorithm 1; the default profile (384/384) and the paper profile (768/768) are "
            f"width-matched, so choose text and vision backbones of equal width."
        )


def patch_tokens(embedded: Tensor) -> Tensor:
    """``[N, 1 + P, D]`` embedding-layer output (CLS at index 0) -> ``[N * P, D]`` patch tokens."""
    if embedded.dim() != 3 or embedded.shape[1] < 2:
        raise ValueError(f"expected [images, 1 + patches, width] tokens, got {tuple(embedded.shape)}")
    return embedded[:, 1:].reshape(-1, embedded.shape[-1])


def _self_sqdist(points: Tensor) -> Tensor:
    """Squared distances within each set ``[..., n, D] -> [..., n, n]`` (exact zero diagonal)."""
    return torch.cdist(points, points, compute_mode="donot_use_mm_for_euclid_dist").pow(2)


def _kernel_means(sqdist: Tensor, scales: Tensor) -> Tensor:
    """Mean of the multi-kernel over the last two dims; ``scales`` ``[..., K]`` broadcast to ``sqdist``."""
    return torch.exp(-sqdist.unsqueeze(-3) / scales[..., None, None]).mean(dim=(-1, -2)).sum(-1)


def mmd2_batched(sources: Tensor, batches: Tensor,
                 factors: Sequence[float] = BANDWIDTH_FACTORS) -> Tensor:
    """Biased multi-kernel MMD^2 of every source ``[S, n, D]`` against every batch ``[B, m, D]`` -> ``[S, B]``.

    The bandwidth base ``s0`` is computed per (source, batch) pair over its pooled ``n + m``
    points. Computed in the inputs' dtype; pass float64 for exactness.
    """
    if sources.dim() != 3 or batches.dim() != 3:
        raise ValueError(f"need [S, n, D] sources and [B, m, D] batches, got {tuple(sources.shape)}, "
                         f"{tuple(batches.shape)}")
    check_same_width(sources.shape[-1], batches.shape[-1])
    n, m = sources.shape[1], batches.shape[1]
    if n + m < 3:
        raise ValueError("MMD needs at least three pooled points")
    factors_t = torch.as_tensor(factors, dtype=sources.dtype, device=sources.device)
    d_xx = _self_sqdist(sources)  # [S, n, n]
    d_yy = _self_sqdist(batches)  # [B, m, m]
    sq_x = sources.pow(2).sum(-1)  # [S, n]
    sq_y = batches.pow(2).sum(-1)  # [B, m]
    d_xy = (sq_x[:, None, :, None] + sq_y[None, :, None, :]
            - 2.0 * torch.einsum("snd,bmd->sbnm", sources, batches)).clamp_min(0.0)  # [S, B, n, m]
    pooled = n + m
    s0 = (d_xx.sum((-1, -2))[:, None] + d_yy.sum((-1, -2))[None, :] + 2.0 * d_xy.sum((-1, -2)))
    s0 = (s0 / (pooled * (pooled - 1))).clamp_min(torch.finfo(sources.dtype).tiny)  # [S, B]
    scales = s0[..., None] * factors_t  # [S, B, K]
    k_xx = _kernel_means(d_xx[:, None], scales)  # [S, B]
    k_yy = _kernel_means(d_yy[None], scales)
    k_xy = _kernel_means(d_xy, scales)
    return k_xx + k_yy - 2.0 * k_xy


def modality_gap(sources: Tensor, target_tokens: Tensor, passes: int = 5, seed: int = 0,
                 batch_size: int | None = None, dtype: torch.dtype = torch.float64,
                 chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Algorithm 1 for stacked source prompts ``[S, L, D]`` (or one ``[L, D]``) -> MMD^2 per source ``[S]``.

    ``target_tokens`` are ``[N, D]`` patch tokens (see :func:`patch_tokens`); batches hold
    ``batch_size`` (default: the prompt length) tokens; each pass reshuffles them with a
    generator seeded by ``seed``, so one seed gives the same batches to every source.
    """
    single = sources.dim() == 2
    sources = sources.unsqueeze(0) if single else sources
    if sources.dim() != 3 or target_tokens.dim() != 2:
        raise ValueError(f"need [S, L, D] (or [L, D]) sources and [N, D] target tokens, got "
                         f"{tuple(sources.shape)} and {tuple(target_tokens.shape)}")
    check_same_width(sources.shape[-1], target_tokens.shape[-1])
    if passes < 1:
        raise ValueError(f"passes must be at least 1, got {passes}")
    size = batch_size or sources.shape[1]
    n_batches = target_tokens.shape[0] // size
    if n_batches == 0:
        raise ValueError(f"{target_tokens.shape[0]} target tokens do not fill one batch of {size}")
    device = target_tokens.device
    x = sources.to(device=device, dtype=dtype)
    tokens = target_tokens.to(dtype=dtype)
    per_chunk = max(1, chunk_elements // max(1, x.shape[0] * x.shape[1] * size))
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(x.shape[0], dtype=dtype, device=device)
    for _ in range(passes):
        order = torch.randperm(tokens.shape[0], generator=generator)[: n_batches * size].to(device)
        batches = tokens[order].view(n_batches, size, -1)
        for start in range(0, n_batches, per_chunk):
            total += mmd2_batched(x, batches[start:start + per_chunk]).sum(1)
    out = total / (passes * n_batches)
    return out[0] if single else out


def _tensor(prompt: Tensor | Prompt) -> Tensor:
    return prompt.tensor if isinstance(prompt, Prompt) else prompt


def modality_gap_table(prompts: Mapping[str, Tensor | Prompt], target_tokens: Mapping[str, Tensor],
                       passes: int = 5, seed: int = 0, **kwargs) -> pd.DataFrame:
    """MMD^2 of every source prompt against every target's patch tokens: ``source, target, mmd``.

    Prompts of one shape are stacked and scored together; ``kwargs`` go to :func:`modality_gap`.
    """
    names = list(prompts)
    tensors = [_tensor(prompts[n]) for n in names]
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    rows = []
    for target, tokens in target_tokens.items():
        values: dict[int, float] = {}
        for members in groups.values():
            stacked = torch.stack([tensors[i] for i in members])
            gaps = modality_gap(stacked, tokens, passes=passes, seed=seed, **kwargs)
            values.update({i: float(v) for i, v in zip(members, gaps.cpu())})
        rows += [{"source": names[i], "target": target, "mmd": values[i]} for i in range(len(names))]
    return pd.DataFrame(rows, columns=["source", "target", "mmd"])


def threshold_analysis(pairs: pd.DataFrame, threshold: float | None = None) -> dict[str, float]:
    """Algorithm 1's reading: among pairs with MMD above ``threshold``, the share that transfer worse than random.

    ``pairs``: ``mmd`` and ``gain`` (projection accuracy minus the target's random-prompt
    reference). ``threshold`` defaults to the median MMD (the paper's value is not given for
    our scales). Also returns the same share below the threshold, for contrast, and the
    least-squares line ``gain ~ slope * mmd + intercept`` with Pearson's and Spearman's r.
    """
    mmd, gain = pairs["mmd"].to_numpy(dtype=float), pairs["gain"].to_numpy(dtype=float)
    threshold = float(np.median(mmd)) if threshold is None else float(threshold)
    above, below = mmd > threshold, mmd <= threshold
    out = {"threshold": threshold, "pairs_above": int(above.sum()), "pairs_below": int(below.sum()),
           "share_below_random_above": float((gain[above] < 0).mean()) if above.any() else float("nan"),
           "share_below_random_below": float((gain[below] < 0).mean()) if below.any() else float("nan")}
    varied = len(mmd) > 1 and np.ptp(mmd) > 0
    slope, intercept = np.polyfit(mmd, gain, 1) if varied else (float("nan"), float("nan"))
    out.update(slope=float(slope), intercept=float(intercept),
               pearson=float(stats.pearsonr(mmd, gain).statistic) if varied and np.ptp(gain) > 0 else float("nan"),
               spearman=float(stats.spearmanr(mmd, gain).statistic) if varied and np.ptp(gain) > 0 else float("nan"))
    return out


def threshold_curve(pairs: pd.DataFrame) -> pd.DataFrame:
    """:func:`threshold_analysis` at every cut between the observed MMD values (one row per cut)."""
    cuts = np.unique(pairs["mmd"].to_numpy(dtype=float))[:-1]
    return pd.DataFrame([threshold_analysis(pairs, c) for c in cuts])
