"""The transferability comparison: the ground truth, every estimator's scores and their rankings per target.

:func:`rank_sources` runs (or reads from the store) projection transfer of every source to every
target on the :func:`cmpt.plans.truth_seeds`, measures the modality gap (MMD between each source
prompt and the target's patch tokens), scores every source with each estimator
(:mod:`cmpt.gaps.estimators`) and ranks them per target against the ground truth. The
transferability chapter shows it; the findings page tests claim (f) on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cmpt.experiments import target_vpt_prompts
from cmpt.gaps import all_estimates, ground_truth, modality_gap_table, patch_tokens, per_target_ranking
from cmpt.gaps.estimators import Stopwatch
from cmpt.plans import projection_configs, truth_seeds
from cmpt.profiles import Profile
from cmpt.prompts import Prompt
from cmpt.results import ResultsStore
from cmpt.runner import TargetRunner
from cmpt.stats import NoiseCeiling, noise_ceiling, seed_replicates
from cmpt.sweep import target_sweep

__all__ = ["SourceRanking", "rank_sources"]


@dataclass
class SourceRanking:
    """Everything the transferability comparison computes, for the chapter to show and the findings to test."""

    projection: pd.DataFrame  # the ground-truth runs (every source x target x truth seed)
    truth: pd.DataFrame  # source, target, acc: mean over the truth seeds
    ceiling: dict[str, NoiseCeiling]  # "kendall" / "spearman": replicate vs replicate
    mmd: pd.DataFrame
    estimates: dict[str, pd.DataFrame]
    combined: Any  # cmpt.gaps.estimators.CombinedFit
    per_method: dict[str, pd.DataFrame]
    watch: Stopwatch
    target_bank: Any  # cmpt.experiments.TargetPrompts
    runner: TargetRunner


def rank_sources(profile: Profile, bank: Mapping[str, Prompt], mmd_passes: int = 5,
                 projector_seeds: Sequence[int] = (42, 44, 100), projector_loss: str = "euclidean",
                 stimulation_layers: int = 3) -> SourceRanking:
    """Run (or read) the ground truth, score every source for every target with each estimator.

    The ground truth is projection-transfer accuracy on the :func:`truth_seeds`; with two of them
    they are the independent replicates of the noise ceiling (:func:`cmpt.stats.noise_ceiling`;
    none with one).
    """
    targets = list(profile.image_tasks)
    projection = target_sweep(profile, projection_configs(profile, list(bank), targets), prompts=bank,
                              desc="ground truth")
    truth = ground_truth(projection)
    seeds = truth_seeds(profile)
    ceiling: dict[str, NoiseCeiling] = {}
    if len(seeds) >= 2:
        first, second = seed_replicates(projection, seeds[:1], seeds[1:2])
        ceiling = {m: noise_ceiling(first, second, method=m) for m in ("kendall", "spearman")}
    runner = TargetRunner(profile, ResultsStore.for_profile(profile), bank)  # loads each target once
    data = {t: runner.target(t) for t in targets}
    target_bank = target_vpt_prompts(profile)
    target_prompts = {t: p.tensor for t, p in target_bank.prompts.items()}
    watch = Stopwatch()
    patches = {t: patch_tokens(data[t].tokens["train"]) for t in targets}
    with watch("mmd"):
        mmd = modality_gap_table(bank, patches, passes=mmd_passes, seed=profile.seeds[0])
    estimates, combined = all_estimates(bank, target_prompts, runner.backbone, mmd, truth, watch,
                                        projector_seeds=projector_seeds, projector_loss=projector_loss,
                                        stimulation_layers=stimulation_layers, seed=profile.seeds[0])
    per_method = {m: per_target_ranking(s, truth) for m, s in estimates.items()}
    return SourceRanking(projection, truth, ceiling, mmd, estimates, combined, per_method, watch, target_bank, runner)
