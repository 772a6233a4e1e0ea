"""Transferability estimators: the combined modality + task gap estimate and its baselines.

Every estimator returns a long table ``source, target, score`` where a *higher* score means
"predicted to transfer better".

``combined``
    ``lambda_t * task_score - lambda_m * phi(MMD)`` with ``phi`` in identity / log / sinh.
    Both terms are standardised across the sources of each target by default (only the
    ranking within a target matters, and the two terms live on unrelated scales), and the
    weights are a convex pair ``lambda_t = w``, ``lambda_m = 1 - w`` on a grid; ``(w, phi)``
    is chosen by leave-one-target-out (:func:`fit_combined`), so no target's ground truth
    helps score that target. Standardising and the grid are our choices (unconfirmed).
``spot``
    SPoT: cosine of the mean-pooled raw prompts (source vs target prompt).
``on``
    model stimulation (Su et al. 2022): ``[prompt; CLS]`` through the frozen vision backbone;
    FFN activations after the GELU of the last blocks at the CLS position, binarised (> 0),
    compared by cosine between a source prompt and the target prompt.
``random``
    seeded uniform scores: the chance level of every metric.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from cmpt.backbones import PromptedViT
from cmpt.gaps.mmd import check_same_width
from cmpt.gaps.ranking import per_target_ranking
from cmpt.gaps.task_gap import task_gap_table
from cmpt.prompts import Prompt

__all__ = ["ESTIMATOR_LABELS", "PHIS", "CombinedFit", "Stopwatch", "all_estimates", "combined_scores", "fit_combined",
           "on_scores", "random_scores", "spot_scores", "stimulation_patterns", "stimulation_similarity"]

#: monotone transforms of the MMD term (log is floored at 1e-12)
PHIS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "log": lambda x: np.log(np.maximum(x, 1e-12)),
    "sinh": np.sinh,
}
WEIGHTS = tuple(np.round(np.linspace(0.0, 1.0, 11), 2))


def _tensor(prompt: Tensor | Prompt) -> Tensor:
    return prompt.tensor if isinstance(prompt, Prompt) else prompt


@dataclass
class Stopwatch:
    """Accumulates wall-clock seconds per named step: ``with watch("spot"): ...``."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------- baselines

def spot_scores(prompts: Mapping[str, Tensor | Prompt], target_prompts: Mapping[str, Tensor | Prompt]) -> pd.DataFrame:
    """SPoT: cosine of mean-pooled raw prompts, every source x target (widths must match)."""
    rows = []
    for target, t_prompt in target_prompts.items():
        t_mean = _tensor(t_prompt).float().mean(0)
        for source, s_prompt in prompts.items():
            s_mean = _tensor(s_prompt).float().mean(0)
            check_same_width(s_mean.shape[-1], t_mean.shape[-1], "SPoT")
            rows.append({"source": source, "target": target,
                         "score": float(F.cosine_similarity(s_mean, t_mean.to(s_mean.device), dim=0))})
    return pd.DataFrame(rows, columns=["source", "target", "score"])


@torch.no_grad()
def _cls_token(backbone: PromptedViT, with_position: bool = False) -> Tensor:
    """The CLS token ``[1, 1, D]``: raw, as the CMPT code feeds it, or with its position embedding."""
    if not with_position:
        return backbone.vit.cls_token.detach()
    size = backbone.preprocess.image_size
    param = next(backbone.parameters())
    return backbone.embed(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))[:, :1]


@torch.no_grad()
def stimulation_patterns(backbone: PromptedViT, prompts: Tensor, layers: int = 3,
                         cls_position: bool = False) -> Tensor:
    """Binary FFN activation pattern at the CLS position for ``[prompt; CLS]`` sequences.

    ``prompts``: ``[S, L, D]`` (or ``[L, D]``); returns a bool tensor ``[S, layers * hidden]``
    from forward hooks on ``blocks[i].mlp.act`` of the last ``layers`` blocks (all blocks
    when the backbone has fewer). The prompt sits where the backbone's layout puts it. The CLS
    token enters without its position embedding, as in the CMPT code (``cls_position=True`` adds it).
    """
    single = prompts.dim() == 2
    prompts = prompts.unsqueeze(0) if single else prompts
    check_same_width(prompts.shape[-1], backbone.width, "Model stimulation")
    device = next(backbone.parameters()).device
    prompts = prompts.to(device=device, dtype=torch.float32)
    blocks = list(backbone.vit.blocks)[-layers:]
    captured: list[Tensor] = []
    handles = [b.mlp.act.register_forward_hook(lambda _m, _i, out: captured.append(out)) for b in blocks]
    try:
        cls = _cls_token(backbone, cls_position).expand(prompts.shape[0], -1, -1)
        backbone.forward_tokens(None, prompt=prompts, tokens=cls)  # type: ignore[arg-type]
    finally:
        for handle in handles:
            handle.remove()
    where = backbone.readout_index(prompts.shape[1])
    pattern = torch.cat([acts[:, where] > 0 for acts in captured], dim=-1)
    return pattern[0] if single else pattern


def stimulation_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of binary patterns (last dim); 0 where a pattern is all zeros."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1, eps=1e-12)


def on_scores(backbone: PromptedViT, prompts: Mapping[str, Tensor | Prompt],
              target_prompts: Mapping[str, Tensor | Prompt], layers: int = 3,
              cls_position: bool = False) -> pd.DataFrame:
    """ON / model stimulation similarity of every source prompt to every target prompt."""
    names = list(prompts)
    source_patterns = [stimulation_patterns(backbone, _tensor(prompts[n]), layers, cls_position) for n in names]
    rows = []
    for target, t_prompt in target_prompts.items():
        t_pattern = stimulation_patterns(backbone, _tensor(t_prompt), layers, cls_position)
        rows += [{"source": n, "target": target, "score": float(stimulation_similarity(p, t_pattern))}
                 for n, p in zip(names, source_patterns)]
    return pd.DataFrame(rows, columns=["source", "target", "score"])


def random_scores(sources: Sequence[str], targets: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Uniform random scores (seeded): the chance reference."""
    rng = np.random.default_rng(seed)
    rows = [{"source": s, "target": t, "score": float(rng.random())} for t in targets for s in sources]
    return pd.DataFrame(rows, columns=["source", "target", "score"])


# ----------------------------------------------------------------------------- combined estimate

def _zscore(values: pd.Series, by: pd.Series) -> pd.Series:
    grouped = values.groupby(by)
    std = grouped.transform("std", ddof=0)
    return ((values - grouped.transform("mean")) / std.where(std > 0)).fillna(0.0)


def combined_scores(gaps: pd.DataFrame, lambda_t: float, lambda_m: float, phi: str = "identity",
                    standardize: bool = True) -> pd.DataFrame:
    """``lambda_t * task_score - lambda_m * phi(mmd)`` per row of ``gaps`` (``source, target, task_score, mmd``)."""
    if phi not in PHIS:
        raise ValueError(f"phi must be one of {', '.join(PHIS)}, got {phi!r}")
    task = gaps["task_score"].astype(float)
    modality = pd.Series(PHIS[phi](gaps["mmd"].to_numpy(dtype=float)), index=gaps.index)
    if standardize:
        task, modality = _zscore(task, gaps["target"]), _zscore(modality, gaps["target"])
    out = gaps[["source", "target"]].copy()
    out["score"] = lambda_t * task - lambda_m * modality
    return out


@dataclass
class CombinedFit:
    """Leave-one-target-out choice of ``(w, phi)``: ``lambda_t = w``, ``lambda_m = 1 - w``.

    ``scores``: held-out scores (each target scored with the choice fitted on the others);
    ``folds``: the choice per held-out target; ``choice``: the choice fitted on all targets
    (what one would use on a new target).
    """

    scores: pd.DataFrame
    folds: pd.DataFrame
    choice: dict[str, object]
    grid: pd.DataFrame = field(repr=False)


def fit_combined(gaps: pd.DataFrame, truth: pd.DataFrame, weights: Sequence[float] = WEIGHTS,
                 phis: Sequence[str] = tuple(PHIS), standardize: bool = True) -> CombinedFit:
    """Choose ``(w, phi)`` by leave-one-target-out on mean Kendall tau (ties: Spearman, then grid order).

    ``gaps``: ``source, target, task_score, mmd``; ``truth``: ``source, target, acc``. With a
    single target there is nothing to hold out: it is fitted and scored on itself (flagged
    in ``folds.in_sample``).
    """
    candidates = [(float(w), phi) for phi in phis for w in weights]
    per_target = {}
    for w, phi in candidates:
        table = per_target_ranking(combined_scores(gaps, w, 1.0 - w, phi, standardize), truth)
        per_target[(w, phi)] = table[["kendall", "spearman"]]
    grid = pd.concat(per_target, names=["w", "phi", "target"]).reset_index()
    targets = list(dict.fromkeys(gaps["target"]))

    def best(on: list[str]) -> tuple[float, str, float]:
        sub = grid[grid["target"].isin(on)].groupby(["w", "phi"], sort=False)[["kendall", "spearman"]].mean()
        sub = sub.reindex(pd.MultiIndex.from_tuples(candidates, names=["w", "phi"])).fillna(-np.inf)
        order = sorted(range(len(candidates)), key=lambda i: (-sub.iloc[i]["kendall"], -sub.iloc[i]["spearman"], i))
        w, phi = candidates[order[0]]
        return w, phi, float(sub.iloc[order[0]]["kendall"])

    fold_rows, held_out = [], []
    for target in targets:
        others = [t for t in targets if t != target] or [target]
        w, phi, train_kendall = best(others)
        fold_rows.append({"held_out": target, "lambda_t": w, "lambda_m": round(1.0 - w, 2), "phi": phi,
                          "train_kendall": train_kendall, "in_sample": others == [target]})
        scored = combined_scores(gaps[gaps["target"] == target], w, 1.0 - w, phi, standardize)
        held_out.append(scored)
    w, phi, train_kendall = best(targets)
    choice = {"lambda_t": w, "lambda_m": round(1.0 - w, 2), "phi": phi, "kendall_all_targets": train_kendall,
              "standardize": standardize}
    return CombinedFit(pd.concat(held_out, ignore_index=True), pd.DataFrame(fold_rows), choice, grid)


#: the estimators a transferability chapter compares, as they are named on its page
ESTIMATOR_LABELS = {"combined": "combined (modality + task, LOTO)", "modality": "modality gap only (-MMD)",
                    "task": "task gap only", "spot": "SPoT", "on": "ON (model stimulation)", "random": "random"}


def all_estimates(bank: Mapping[str, Tensor | Prompt], target_prompts: Mapping[str, Tensor | Prompt],
                  backbone: PromptedViT, mmd: pd.DataFrame, truth: pd.DataFrame, watch: "Stopwatch",
                  projector_seeds: Sequence[int] = (42, 44, 100), projector_loss: str = "euclidean",
                  stimulation_layers: int = 3, seed: int = 0) -> tuple[dict[str, pd.DataFrame], "CombinedFit"]:
    """Every estimator's scores per (source, target) (keys of :data:`ESTIMATOR_LABELS`) and the combined fit.

    ``mmd`` is the modality-gap table (computed before, so its time is already on ``watch``);
    each estimator's own time is added to ``watch`` under its name.
    """
    with watch("task"):
        task = task_gap_table(bank, target_prompts, seeds=projector_seeds, loss=projector_loss)
    gaps = mmd.merge(task, on=["source", "target"])
    with watch("combined fit"):
        combined = fit_combined(gaps, truth)
    with watch("spot"):
        spot = spot_scores(bank, target_prompts)
    with watch("on"):
        stimulation = on_scores(backbone, bank, target_prompts, layers=stimulation_layers)
    with watch("random"):
        chance = random_scores(list(bank), list(target_prompts), seed=seed)
    estimates = {
        "combined": combined.scores,
        "modality": gaps.assign(score=-gaps["mmd"])[["source", "target", "score"]],
        "task": gaps.assign(score=gaps["task_score"])[["source", "target", "score"]],
        "spot": spot, "on": stimulation, "random": chance,
    }
    return estimates, combined
