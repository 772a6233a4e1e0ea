"""From paired differences to a verdict: the effect, its interval, equivalence, Holm, what was detectable.

The unit of an accuracy claim is the **target**. Each target contributes one effect, the mean
over its seeds of the per-image paired difference (both sides evaluated on the same test
images). Two questions are asked of the per-target effects:

* :func:`these_targets`: *these* targets, fixed. The effect is the mean over targets; its
  variance adds, per target, the seed variance of the target's effect (seed means, divided by
  the number of seeds) and its test-image variance (the seed-averaged per-image differences,
  divided by the number of test images); degrees of freedom by Welch-Satterthwaite. With a
  single seed the seed variance cannot be estimated and only the test-image part is counted.
* :func:`targets_in_general`: targets *like these*, drawn at random. A t interval over the
  per-target effects, ``targets - 1`` degrees of freedom (undefined with one target).

:func:`decide` turns a test into one of four verdicts: *supported* or *contradicted* when the
(Holm-adjusted) test of a difference rejects at :data:`ALPHA` (by the sign), *no meaningful
effect* when the (Holm-adjusted) two one-sided tests show the effect inside the claim's margin,
*inconclusive* otherwise. :meth:`Effect.mde` is the smallest true effect the design detects with
:data:`POWER` at the noise it measured. :func:`permutation_correlation` tests a correlation whose
independent unit is the source (a prompt shared by every target) by permuting the sources.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from cmpt.errors import InputError

__all__ = ["ALPHA", "MARGIN_ACC", "MARGIN_CORR", "POWER", "VERDICTS", "CorrelationTest", "Effect", "decide",
           "holm", "per_target_from_vectors", "permutation_correlation", "targets_in_general", "these_targets"]

#: family-wise error rate of the findings page (Holm over its claims)
ALPHA = 0.05
#: "no meaningful effect" for an accuracy claim: the difference lies within +-2 accuracy points
MARGIN_ACC = 0.02
#: "no meaningful effect" for a correlation claim: within +-0.3 (a weak correlation at most)
MARGIN_CORR = 0.3
#: the power at which the detectable effect (:meth:`Effect.mde`) is stated
POWER = 0.8
#: the four verdicts, in the order the page explains them
VERDICTS = ("supported", "contradicted", "no meaningful effect", "inconclusive")


@dataclass(frozen=True)
class Effect:
    """An estimated effect with a t-based standard error; ``question`` is "these" or "general"."""

    estimate: float
    se: float
    df: float
    low: float
    high: float
    p: float
    question: str
    n_targets: int
    n_seeds: int

    @classmethod
    def from_t(cls, estimate: float, se: float, df: float, question: str, n_targets: int, n_seeds: int,
               alpha: float = ALPHA) -> "Effect":
        """The effect with its two-sided ``1 - alpha`` t interval and the p-value of "no difference"."""
        if not (np.isfinite(se) and np.isfinite(df) and df > 0):
            return cls(estimate, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), question,
                       n_targets, n_seeds)
        if se == 0.0:
            p = 1.0 if estimate == 0.0 else 0.0
            return cls(estimate, 0.0, df, estimate, estimate, p, question, n_targets, n_seeds)
        half = float(sps.t.ppf(1 - alpha / 2, df)) * se
        p = float(2 * sps.t.sf(abs(estimate) / se, df))
        return cls(estimate, se, df, estimate - half, estimate + half, p, question, n_targets, n_seeds)

    def p_equivalence(self, margin: float) -> float:
        """Two one-sided tests of ``|effect| < margin``: the larger of the two p-values (nan if undefined)."""
        if not np.isfinite(self.se):
            return float("nan")
        if self.se == 0.0:
            return 0.0 if abs(self.estimate) < margin else 1.0
        below = sps.t.sf((self.estimate + margin) / self.se, self.df)  # H0: effect <= -margin
        above = sps.t.cdf((self.estimate - margin) / self.se, self.df)  # H0: effect >= +margin
        return float(max(below, above))

    def mde(self, alpha: float = ALPHA, power: float = POWER) -> float:
        """The smallest true effect a two-sided test at ``alpha`` detects with ``power``, at this noise."""
        if not (np.isfinite(self.se) and np.isfinite(self.df) and self.df > 0):
            return float("nan")
        return float((sps.t.ppf(1 - alpha / 2, self.df) + sps.t.ppf(power, self.df)) * self.se)


def per_target_from_vectors(differences: Mapping[tuple, np.ndarray]) -> pd.DataFrame:
    """(target, seed) -> per-image paired difference: one row per target with its effect and variances.

    Columns: target, effect (mean over seeds of the mean difference), var_seed (variance of the
    seed means / seeds; 0 with one seed, where it cannot be estimated), var_test (variance over
    images of the seed-averaged difference / images), n_seeds, n_test.
    """
    by_target: dict[object, list[np.ndarray]] = {}
    for (target, _seed), vector in differences.items():
        by_target.setdefault(target, []).append(np.asarray(vector, dtype=np.float64))
    if not by_target:
        raise InputError("no paired differences to test")
    rows = []
    for target, vectors in by_target.items():
        lengths = {len(v) for v in vectors}
        if len(lengths) != 1:
            raise InputError(f"target {target!r}: the seeds were evaluated on test sets of different sizes {lengths}")
        stacked = np.stack(vectors)
        seed_means = stacked.mean(axis=1)
        n_seeds, n_test = stacked.shape
        var_seed = float(seed_means.var(ddof=1) / n_seeds) if n_seeds > 1 else 0.0
        var_test = float(stacked.mean(axis=0).var(ddof=1) / n_test) if n_test > 1 else 0.0
        rows.append({"target": target, "effect": float(seed_means.mean()), "var_seed": var_seed,
                     "var_test": var_test, "n_seeds": n_seeds, "n_test": n_test})
    return pd.DataFrame(rows)


def these_targets(per_target: pd.DataFrame, alpha: float = ALPHA) -> Effect:
    """The mean effect over the given targets, the targets fixed (seed and test-image noise only)."""
    t = len(per_target)
    parts_seed = per_target["var_seed"].to_numpy(float) / t**2
    parts_test = per_target["var_test"].to_numpy(float) / t**2
    variance = float(parts_seed.sum() + parts_test.sum())
    dof_seed = np.maximum(per_target["n_seeds"].to_numpy(float) - 1, 0)
    dof_test = np.maximum(per_target["n_test"].to_numpy(float) - 1, 0)
    denominator = float(sum(p**2 / d for p, d in zip([*parts_seed, *parts_test], [*dof_seed, *dof_test]) if d > 0))
    df = variance**2 / denominator if denominator > 0 else float("nan")
    return Effect.from_t(float(per_target["effect"].mean()), math.sqrt(variance), df, "these", t,
                         int(per_target["n_seeds"].min()), alpha)


def targets_in_general(per_target: pd.DataFrame, alpha: float = ALPHA) -> Effect:
    """The mean effect over targets drawn like these: a t interval over per-target effects (df = T - 1)."""
    effects = per_target["effect"].dropna().to_numpy(float)
    t = len(effects)
    n_seeds = int(per_target["n_seeds"].min()) if len(per_target) else 0
    if t < 2:
        estimate = float(effects.mean()) if t else float("nan")
        return Effect.from_t(estimate, float("nan"), float("nan"), "general", t, n_seeds, alpha)
    return Effect.from_t(float(effects.mean()), float(effects.std(ddof=1) / math.sqrt(t)), t - 1.0, "general", t,
                         n_seeds, alpha)


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment of a family of p-values (an undefined p counts as 1)."""
    keys = list(p_values)
    raw = np.array([p_values[k] if np.isfinite(p_values[k]) else 1.0 for k in keys], dtype=float)
    order = np.argsort(raw)
    adjusted = np.empty_like(raw)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(raw) - rank) * raw[index]))
        adjusted[index] = running
    return {k: float(a) for k, a in zip(keys, adjusted)}


def decide(effect: Effect, p_adjusted: float, p_equivalence_adjusted: float, direction: int = +1,
           alpha: float = ALPHA) -> str:
    """One of :data:`VERDICTS` from the adjusted tests of a difference and of equivalence."""
    if np.isfinite(p_adjusted) and p_adjusted < alpha:
        return "supported" if direction * effect.estimate > 0 else "contradicted"
    if np.isfinite(p_equivalence_adjusted) and p_equivalence_adjusted < alpha:
        return "no meaningful effect"
    return "inconclusive"


@dataclass(frozen=True)
class CorrelationTest:
    """A mean Spearman correlation over targets, tested by permuting the sources."""

    estimate: float
    p: float  # two-sided permutation p-value of "no correlation"
    low: float  # percentile bootstrap interval over sources
    high: float
    null_sd: float  # the spread of the statistic under permutation (its noise at no effect)
    boot_sd: float  # the spread of the statistic under resampling the sources
    n_sources: int
    n_permutations: int

    def p_equivalence(self, margin: float) -> float:
        """Two one-sided tests of ``|rho| < margin`` on the bootstrap's normal approximation."""
        if not (np.isfinite(self.boot_sd) and self.boot_sd > 0):
            return float("nan")
        below = sps.norm.sf((self.estimate + margin) / self.boot_sd)
        above = sps.norm.cdf((self.estimate - margin) / self.boot_sd)
        return float(max(below, above))


def _mean_spearman(x_ranks: np.ndarray, value_ranks: np.ndarray) -> np.ndarray:
    """Mean over targets (rows of ``value_ranks``) of Pearson on ranks; ``x_ranks`` (P, S) -> (P,)."""
    xc = x_ranks - x_ranks.mean(axis=1, keepdims=True)
    vc = value_ranks - value_ranks.mean(axis=1, keepdims=True)
    num = xc @ vc.T  # (P, T)
    den = np.sqrt((xc**2).sum(axis=1))[:, None] * np.sqrt((vc**2).sum(axis=1))[None, :]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a target whose values all tie has no correlation
        return np.nanmean(num / den, axis=1)


def permutation_correlation(x: pd.Series, values: pd.DataFrame, n_permutations: int = 5000, n_boot: int = 2000,
                            seed: int = 0, alpha: float = ALPHA) -> CorrelationTest:
    """Mean over targets of Spearman(x[source], value) with the sources as the unit.

    ``x``: source -> a property of the source (its prompt norm); ``values``: columns target,
    source, value. One permutation of the sources serves every target (exact when there are at
    most 8 sources); the interval resamples sources with replacement.
    """
    wide = values.pivot_table(index="target", columns="source", values="value")
    sources = [s for s in wide.columns if s in x.index]
    if len(sources) < 2:
        raise InputError(f"a correlation over sources needs at least 2 sources with values; got {len(sources)}")
    wide = wide[sources].dropna()
    value_ranks = wide.rank(axis=1).to_numpy(float)
    x_values = x[sources].to_numpy(float)
    x_ranks = sps.rankdata(x_values)[None, :]
    estimate = float(_mean_spearman(x_ranks, value_ranks)[0])
    rng = np.random.default_rng(seed)
    n = len(sources)
    exact = math.factorial(n) <= 40320
    if exact:
        orders = np.array(list(itertools.permutations(range(n))))
    else:
        orders = np.argsort(rng.random((n_permutations, n)), axis=1)
    null = _mean_spearman(x_ranks[0][orders], value_ranks)
    extreme = int(np.sum(np.abs(null) >= abs(estimate) - 1e-12))
    p = extreme / len(null) if exact else (extreme + 1) / (len(null) + 1)  # the identity is among the exact ones
    if n < 3 or not np.isfinite(estimate):  # two sources: a rank correlation is +-1 by construction
        nan = float("nan")
        return CorrelationTest(estimate, 1.0 if n < 3 else nan, nan, nan, nan, nan, n, len(null))
    draws = rng.integers(0, n, size=(n_boot, n))
    boot = np.array([_mean_spearman(sps.rankdata(x_values[d])[None, :],
                                    np.apply_along_axis(sps.rankdata, 1, value_ranks[:, d]))[0] for d in draws])
    boot = boot[np.isfinite(boot)]
    low, high = (np.quantile(boot, [alpha / 2, 1 - alpha / 2]) if len(boot) else (float("nan"), float("nan")))
    return CorrelationTest(estimate, p, float(low), float(high), float(np.std(null)),
                           float(np.std(boot)) if len(boot) else float("nan"), n, len(null))
