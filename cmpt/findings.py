"""The run plans the chapters share, and the claims the findings page tests on them.

Several chapters read the same runs: projection transfer of every source to every target is
the ground truth of transferability, the runs that choose each target's source, and part of the
transfer comparison. The plans below are the one place those configs are made, so the findings
page (executed first) and the chapters (executed later, or alone) ask the results store for the
same runs and each run trains once.

Seeds: comparisons between settings use every seed of the profile; projection transfer from
*every* source runs on the first ``Profile.truth_replicates`` seeds only (independent replicates
of the ground truth; two give its noise ceiling), and from the source chosen for a target (best
mean validation accuracy over those replicates) on every seed.

A claim is a paired comparison: per (target, seed) the difference of two settings' test
accuracies on the same training images and test images; its estimate is the mean difference
with a paired-t interval over the pairs (:func:`cmpt.stats.compare_settings`). The verdict rule
is :func:`cmpt.stats.verdict`: supported when the 95% interval lies wholly above zero,
contradicted when wholly below, inconclusive otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cmpt.errors import InputError
from cmpt.experiments import target_vpt_prompts
from cmpt.gaps import all_estimates, ground_truth, modality_gap_table, patch_tokens, per_target_ranking
from cmpt.gaps.estimators import Stopwatch
from cmpt.profiles import Profile
from cmpt.prompts import Prompt
from cmpt.results import ResultsStore
from cmpt.run_config import TargetConfig, default_concentrated, setting_configs
from cmpt.runner import TargetRunner
from cmpt.scarcity import choose_sources
from cmpt.stats import (Interval, NoiseCeiling, compare_settings, format_interval, noise_ceiling,
                        paired_t_over_targets, per_target_correlation, seed_replicates, t_interval, verdict)
from cmpt.sweep import target_sweep

__all__ = ["CLAIMS", "Claim", "attention_configs", "better_of", "chosen_configs", "chosen_source",
           "claim_sentence", "claim_table", "compare_claim", "correlation_claim", "mean_over_sources", "norm_correlation",
           "projection_configs", "rank_sources", "ranking_claim", "scarcity_claim", "source_norms", "SourceRanking",
           "truth_seeds"]

#: key -> (claim, comparison, chapter); the findings page's rows, in this order
CLAIMS: dict[str, tuple[str, str, str]] = {
    "a": ("Frozen transfer of a text prompt beats a random prompt of matched norm",
          "frozen (mean over sources) - random, per target and seed", "transfer"),
    "b": ("Projection transfer beats linear probing",
          "projection (source chosen on val) - linear, per target and seed", "transfer"),
    "c": ("Attention transfer beats VPT and SPT",
          "attention (source chosen on val) - the better-scoring of VPT and SPT, per target and seed",
          "attention_transfer"),
    "d": ("Transfer helps most when data is scarce",
          "(projection - VPT) at the fewest shots minus (projection - VPT) on the full training set, "
          "per target and seed", "data_scarcity"),
    "e": ("Sources with larger prompt norms transfer better",
          "Spearman rho of source norm vs frozen-transfer accuracy (mean over seeds), per target",
          "transfer"),
    "f": ("Modality gap + task gap ranks sources better than SPoT and ON",
          "Kendall tau of the combined estimate - tau of the better of SPoT and ON, per target",
          "transferability"),
}


def truth_seeds(profile: Profile) -> list[int]:
    """The seeds of the ground-truth replicates: the profile's first ``truth_replicates`` seeds."""
    return list(profile.seeds[:profile.truth_replicates])


def projection_configs(profile: Profile, sources: Sequence[str], targets: Sequence[str] | None = None
                       ) -> list[TargetConfig]:
    """Projection transfer of every source to every target, on the :func:`truth_seeds`."""
    return setting_configs(profile, "projection", list(targets or profile.image_tasks), list(sources),
                           seeds=truth_seeds(profile))


def chosen_source(projection: pd.DataFrame) -> pd.Series:
    """target -> the source with the best mean validation accuracy of projection transfer."""
    return choose_sources(projection)["val"].rename("source")


def chosen_configs(profile: Profile, setting: str, chosen: Mapping[str, str], **extra: Any) -> list[TargetConfig]:
    """``setting`` from each target's chosen source, on every seed of the profile."""
    return [c for target, source in chosen.items()
            for c in setting_configs(profile, setting, [target], [source], **extra)]


def attention_configs(profile: Profile, chosen: Mapping[str, str], concentrated: int | None = None,
                      scaled: bool = False) -> list[TargetConfig]:
    """Attention transfer from each target's chosen source at ``concentrated`` (default: half the prompt)."""
    return chosen_configs(profile, "attention", chosen, concentrated=concentrated or default_concentrated(profile),
                          scaled=scaled)


def mean_over_sources(runs: pd.DataFrame, setting: str | None = None) -> pd.DataFrame:
    """One row per (target, seed): the mean test accuracy over the sources of a transfer setting."""
    table = runs.groupby(["target", "seed"], sort=False)["test_acc"].mean().reset_index()
    return table.assign(setting=setting or str(runs["setting"].iloc[0]))


@dataclass(frozen=True)
class Claim:
    """One tested claim: the estimate, its interval, the counts and the verdict."""

    key: str
    interval: Interval
    n_pairs: int
    n_seeds: int
    direction: int = +1
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return verdict(self.interval, self.direction)

    def record(self) -> dict[str, Any]:
        """The values the findings page records under ``findings/<key>/``."""
        return {"verdict": self.verdict, "effect": self.interval.estimate,
                "ci": [self.interval.low, self.interval.high], "n_pairs": self.n_pairs, "n_seeds": self.n_seeds}


def _counts(table: pd.DataFrame) -> tuple[int, int]:
    return int(len(table.drop_duplicates(["target", "seed"]))), int(table["seed"].nunique())


def compare_claim(key: str, a: pd.DataFrame, b: pd.DataFrame, note: str = "") -> Claim:
    """Claim ``key``: the paired difference of two per-(target, seed) tables (``a - b``, test accuracy)."""
    for name, side in (("a", a), ("b", b)):
        if side.duplicated(["target", "seed"]).any():
            raise InputError(f"claim {key}: side {name} has several runs per (target, seed); average them first")
    table = pd.concat([a.assign(side="a"), b.assign(side="b")], ignore_index=True)
    interval = compare_settings(table, "a", "b", by="side", pair_on=("target", "seed"))
    paired = a.merge(b, on=["target", "seed"])
    n_pairs, n_seeds = _counts(paired)
    return Claim(key, interval, n_pairs, n_seeds, note=note)


def better_of(runs: pd.DataFrame, settings: Sequence[str]) -> str:
    """Of ``settings``, the one with the higher mean test accuracy in ``runs`` (the stronger baseline)."""
    means = runs[runs.setting.isin(settings)].groupby("setting")["test_acc"].mean()
    if means.empty:
        raise InputError(f"no runs of {list(settings)}")
    return str(means.idxmax())


def correlation_claim(key: str, per_target: pd.Series, n_seeds: int, note: str = "") -> Claim:
    """A claim on a per-target correlation: its mean over targets with a t interval over targets."""
    values = per_target.dropna()
    if values.empty:
        raise InputError(f"claim {key}: no target has a defined correlation")
    return Claim(key, t_interval(values.to_numpy(float), unit="target"), int(len(values)), n_seeds, note=note)


def ranking_claim(key: str, per_method: Mapping[str, pd.DataFrame], estimator: str, baselines: Sequence[str],
                  n_seeds: int, metric: str = "kendall") -> Claim:
    """``estimator``'s per-target ``metric`` minus the better baseline's (higher mean), t interval over targets."""
    means = {b: float(per_method[b][metric].mean()) for b in baselines}
    best = max(means, key=lambda b: means[b])
    joined = pd.concat({"est": per_method[estimator][metric], "base": per_method[best][metric]}, axis=1).dropna()
    if joined.empty:
        raise InputError(f"claim {key}: no target where both {estimator} and {best} rank the sources")
    interval = t_interval((joined["est"] - joined["base"]).to_numpy(float), unit="target")
    return Claim(key, interval, int(len(joined)), n_seeds, note=f"baseline: {best}", extra={"baseline": best})


def scarcity_claim(key: str, tidy: pd.DataFrame, setting: str = "projection", reference: str = "vpt") -> Claim:
    """Gain of ``setting`` over ``reference`` at the fewest shots minus the gain on the full training set.

    ``tidy``: :func:`cmpt.scarcity.run_scarcity`'s table (one row per run; ``label`` names the
    training set, ``regime`` is ``"full"`` for the full one). Pairs: (target, seed).
    """
    sub = tidy[tidy.setting.isin([setting, reference])]
    shots = sub[sub.regime == "kshot"]
    if shots.empty or not (sub.regime == "full").any():
        raise InputError(f"claim {key}: needs k-shot and full-data runs of {setting} and {reference}")
    fewest = shots[shots.n_train == shots.groupby("target")["n_train"].transform("min")]
    gains = []
    for part, name in ((fewest, "scarce"), (sub[sub.regime == "full"], "full")):
        wide = part.pivot_table(index=["target", "seed"], columns="setting", values="test_acc").dropna()
        gains.append((wide[setting] - wide[reference]).rename(name))
    both = pd.concat(gains, axis=1).dropna().reset_index()
    if both.empty:
        raise InputError(f"claim {key}: no (target, seed) with both a scarce and a full training set")
    interval = paired_t_over_targets(both["scarce"].to_numpy(), both["full"].to_numpy(), both["target"].tolist())
    shots_used = sorted(int(k) for k in fewest["k"].dropna().unique())
    return Claim(key, interval, int(len(both)), int(both["seed"].nunique()),
                 note=f"fewest shots: {shots_used} per class")


def claim_table(claims: Sequence[Claim], digits: int = 3) -> pd.DataFrame:
    """The findings table: claim, comparison, effect [95% interval], pairs, seeds, verdict, chapter."""
    rows = []
    for c in claims:
        text, comparison, chapter = CLAIMS[c.key]
        rows.append({"claim": f"({c.key}) {text}", "comparison": comparison + (f" ({c.note})" if c.note else ""),
                     "effect [95% CI]": format_interval(c.interval, digits), "pairs": c.n_pairs,
                     "seeds": c.n_seeds, "interval": c.interval.method, "verdict": c.verdict, "chapter": chapter})
    return pd.DataFrame(rows)


def source_norms(bank: Mapping[str, Prompt]) -> pd.Series:
    """source -> mean token norm of its prompt."""
    return pd.Series({name: float(p.tensor.norm(dim=1).mean()) for name, p in bank.items()}, name="norm")


def norm_correlation(frozen: pd.DataFrame, bank: Mapping[str, Prompt]) -> pd.Series:
    """Per target: Spearman rho between source norm and frozen-transfer accuracy (mean over seeds)."""
    means = frozen.groupby(["target", "source"], sort=False)["test_acc"].mean().reset_index()
    means["norm"] = means["source"].map(source_norms(bank))
    return per_target_correlation(means, score="norm", truth="test_acc", method="spearman")



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


def claim_sentence(claim: Claim, digits: int = 3) -> str:
    """``"(a) <claim>: <effect> [<low>, <high>] over N pairs, S seeds (<interval>): supported."``"""
    text, comparison, _ = CLAIMS[claim.key]
    iv = claim.interval
    bounds = f"[{iv.low:+.{digits}f}, {iv.high:+.{digits}f}]" if iv.defined else "[no interval]"
    note = f"; {claim.note}" if claim.note else ""
    return (f"({claim.key}) {text}. Tested as {comparison}{note}: {iv.estimate:+.{digits}f} {bounds} over "
            f"{claim.n_pairs} pairs, {claim.n_seeds} seed(s) ({iv.method}): **{claim.verdict}**.")
