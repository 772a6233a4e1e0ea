"""The task gap: how close a source prompt can be brought to a prompt tuned on the target.

1. A target prompt ``P_t`` per target task: a trained VPT prompt, given as an input (the book
   takes the baselines chapter's VPT runs, the seed with the best validation accuracy:
   :func:`cmpt.experiments.target_vpt_prompts`). Nothing here trains a backbone.
2. A *universal projector* ``Linear(d_src, d_tgt)`` + dropout, shared by all source prompts
   of one target, trained for a few full-batch Adam steps to pull every mean-pooled projected
   source prompt towards the mean-pooled target prompt (Euclidean or cosine loss), optionally
   with token mixing across sources and Gaussian noise as augmentation (unconfirmed details).
3. Task score of a source = ``cos(mean(proj(P_s)), mean(P_t))``, averaged over projector seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmpt.prompts import Prompt

__all__ = ["LOSSES", "ProjectorFit", "UniversalProjector", "fit_universal_projector", "task_gap_table", "task_scores"]

LOSSES = ("euclidean", "cosine")


# ----------------------------------------------------------------------------- universal projector

class UniversalProjector(nn.Module):
    """``Linear(d_src, d_tgt)`` followed by dropout, applied token-wise to every source prompt."""

    def __init__(self, source_width: int, target_width: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.linear = nn.Linear(source_width, target_width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, prompts: Tensor) -> Tensor:
        return self.dropout(self.linear(prompts))


@dataclass
class ProjectorFit:
    """A trained projector and its loss at every step (before the update)."""

    projector: UniversalProjector
    losses: list[float]


def _augment(sources: Tensor, mix: float, noise: float, generator: torch.Generator) -> Tensor:
    """Swap a fraction ``mix`` of token slots with another source's token; add relative Gaussian noise."""
    out = sources
    if mix > 0 and sources.shape[0] > 1:
        n_src, length = sources.shape[:2]
        swap = torch.rand(n_src, length, generator=generator) < mix
        donor = (torch.arange(n_src)[:, None] + torch.randint(1, n_src, (n_src, length), generator=generator)) % n_src
        mixed = sources[donor, torch.arange(length)[None, :].expand(n_src, -1)]
        out = torch.where(swap.to(sources.device)[..., None], mixed.to(sources.device), out)
    if noise > 0:
        scale = sources.norm(dim=-1, keepdim=True) / sources.shape[-1] ** 0.5
        out = out + noise * scale * torch.randn(sources.shape, generator=generator).to(sources.device)
    return out


def _pooled_loss(projected: Tensor, target_mean: Tensor, loss: str) -> Tensor:
    pooled = projected.mean(dim=-2)  # [S, D_t]
    if loss == "euclidean":
        return (pooled - target_mean).pow(2).sum(-1).mean()
    return (1.0 - F.cosine_similarity(pooled, target_mean.expand_as(pooled), dim=-1)).mean()


def fit_universal_projector(sources: Tensor, target_prompt: Tensor, loss: str = "euclidean", steps: int = 100,
                            lr: float = 1e-2, dropout: float = 0.1, seed: int = 42, mix: float = 0.0,
                            noise: float = 0.0) -> ProjectorFit:
    """Train one projector for stacked sources ``[S, L, D_s]`` towards ``mean(target_prompt)`` (Adam, full batch)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if sources.dim() != 3 or target_prompt.dim() != 2:
        raise ValueError(f"need [S, L, D_s] sources and an [L_t, D_t] target prompt, got {tuple(sources.shape)}, "
                         f"{tuple(target_prompt.shape)}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = target_prompt.device
    sources = sources.detach().float().to(device)
    target_mean = target_prompt.detach().float().mean(0)
    projector = UniversalProjector(sources.shape[-1], target_prompt.shape[-1], dropout).to(device)
    optimizer = torch.optim.Adam(projector.parameters(), lr=lr)
    losses = []
    projector.train()
    for _ in range(steps):
        value = _pooled_loss(projector(_augment(sources, mix, noise, generator)), target_mean, loss)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        losses.append(float(value.detach()))
    projector.eval()
    return ProjectorFit(projector, losses)


@torch.no_grad()
def task_scores(sources: Tensor, target_prompt: Tensor, seeds: Sequence[int] = (42, 44, 100),
                **kwargs: Any) -> Tensor:
    """``cos(mean(proj(P_s)), mean(P_t))`` per stacked source ``[S]``, averaged over projector seeds."""
    scores = []
    for seed in seeds:
        with torch.enable_grad():
            projector = fit_universal_projector(sources, target_prompt, seed=seed, **kwargs).projector
        pooled = projector(sources.float().to(target_prompt.device)).mean(-2)
        target_mean = target_prompt.float().mean(0).expand_as(pooled)
        scores.append(F.cosine_similarity(pooled, target_mean, dim=-1))
    return torch.stack(scores).mean(0)


def task_gap_table(prompts: Mapping[str, Tensor | Prompt], target_prompts: Mapping[str, Tensor | Prompt],
                   seeds: Sequence[int] = (42, 44, 100), **kwargs: Any) -> pd.DataFrame:
    """Task score of every source for every target: ``source, target, task_score`` (sources stacked)."""
    names = list(prompts)
    stacked = torch.stack([p.tensor if isinstance(p, Prompt) else p for p in prompts.values()])
    rows = []
    for target, prompt in target_prompts.items():
        tensor = prompt.tensor if isinstance(prompt, Prompt) else prompt
        values = task_scores(stacked, tensor, seeds=seeds, **kwargs).cpu()
        rows += [{"source": n, "target": target, "task_score": float(v)} for n, v in zip(names, values)]
    return pd.DataFrame(rows, columns=["source", "target", "task_score"])
