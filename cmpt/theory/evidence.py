"""The chapter's claims, each measured as a per-seed difference with an interval and a verdict.

Every claim is a *difference* that the paper (or this chapter) says is positive, computed once
per seed (the replicas the chapter trains anyway), so that one seed's train and test sets give
one number. The interval is :func:`cmpt.stats.t_interval` (two-sided Student-t interval of the
mean over seeds, 95% by default) and the verdict :func:`cmpt.stats.verdict`:

* ``supported``     the whole interval lies above zero,
* ``contradicted``  the whole interval lies below zero,
* ``inconclusive``  the interval contains zero (or there are fewer than two seeds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cmpt.plotting import markdown_text
from cmpt.stats import VERDICTS, t_interval, verdict
from cmpt.theory.mixture import MixtureSpec
from cmpt.theory.sweeps import MODEL_LABELS

__all__ = ["VERDICTS", "Claim", "per_seed", "claims_table", "claims_markdown",
           "mean_by_model", "markdown_table"]

def per_seed(data: pd.DataFrame, value: str = "error", **where: object) -> pd.Series:
    """``value`` per seed among the rows matching every ``column=value`` in ``where`` (floats: closest)."""
    mask = pd.Series(True, index=data.index)
    for column, target in where.items():
        if isinstance(target, float):
            mask &= np.isclose(data[column], target)
        else:
            mask &= data[column] == target
    rows = data[mask]
    if rows.empty:
        raise ValueError(f"no rows match {where}")
    return rows.groupby("seed")[value].mean()


@dataclass(frozen=True)
class Claim:
    """One claim: a slug for records, what is claimed, what is measured, and the per-seed differences."""

    slug: str
    claim: str
    measured: str
    differences: pd.Series  # indexed by seed

    def row(self, level: float = 0.95) -> dict[str, object]:
        interval = t_interval(self.differences.to_numpy(), level)
        return dict(slug=self.slug, claim=self.claim, measured=self.measured, effect=interval.estimate,
                    low=interval.low, high=interval.high, seeds=len(self.differences), verdict=verdict(interval))


def claims_table(spec: MixtureSpec, by_n: pd.DataFrame, by_zeta: pd.DataFrame, by_delta: pd.DataFrame,
                 by_decoys: pd.DataFrame, algo: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The chapter's claims from its experiment tables, one row each (see :class:`Claim`).

    ``by_n`` comes from :func:`~cmpt.theory.sweeps.error_vs_n`, ``by_zeta``, ``by_delta`` and
    ``by_decoys`` from :func:`~cmpt.theory.sweeps.error_vs_parameter`, ``algo`` from
    :func:`~cmpt.theory.sweeps.algorithm_vs_n`; ``spec`` is the headline regime.
    """
    n_max = int(by_n.n.max())
    z_min = float(by_zeta.zeta.min())
    d_lo, d_hi = float(by_delta.delta.min()), float(by_delta.delta.max())
    r_lo, r_hi = float(by_decoys.decoys.min()), float(by_decoys.decoys.max())
    algo_n = int(algo.n.max())
    claims = [
        Claim("beats_uniform", "prompt-attention beats uniform averaging ($q=0$)",
              f"uniform minus prompt error, $n={n_max}$",
              per_seed(by_n, kind="uniform", n=n_max) - per_seed(by_n, kind="prompt", n=n_max)),
        Claim("beats_linear_with_decoys",
              "prompt-attention beats linear prompt-attention when irrelevant tokens are correlated with relevant ones",
              f"linear minus prompt error, decoys $\\rho={r_hi:g}$",
              per_seed(by_decoys, kind="linear", decoys=r_hi) - per_seed(by_decoys, kind="prompt", decoys=r_hi)),
        Claim("linear_fails_with_decoys", "linear prompt-attention fails when decoys correlate the tokens",
              f"linear error at $\\rho={r_hi:g}$ minus at $\\rho={r_lo:g}$",
              per_seed(by_decoys, kind="linear", decoys=r_hi) - per_seed(by_decoys, kind="linear", decoys=r_lo)),
        Claim("linear_fails_with_confusion",
              "linear prompt-attention fails when the label parts are correlated (confusion $\\delta$)",
              f"linear error at $\\delta={d_hi:g}$ minus at $\\delta={d_lo:g}$",
              per_seed(by_delta, kind="linear", delta=d_hi) - per_seed(by_delta, kind="linear", delta=d_lo)),
        Claim("uniform_fails_with_confusion", "uniform averaging fails as the confusion $\\delta$ grows",
              f"uniform error at $\\delta={d_hi:g}$ minus at $\\delta={d_lo:g}$",
              per_seed(by_delta, kind="uniform", delta=d_hi) - per_seed(by_delta, kind="uniform", delta=d_lo)),
        Claim("self_fails_when_irrelevant_dominate", "self-attention fails when irrelevant tokens dominate",
              f"self minus prompt error, $\\zeta={z_min:g}$",
              per_seed(by_zeta, kind="self", zeta=z_min) - per_seed(by_zeta, kind="prompt", zeta=z_min)),
        Claim("three_step_attends", "three gradient steps learn a prompt that attends to the relevant tokens",
              f"attention mass on relevant tokens minus $k/T={spec.k / spec.T:g}$, $n={algo_n}$ per split",
              algo[algo.n == algo_n].groupby("seed").relevant_mass.mean() - spec.k / spec.T),
    ]
    return pd.DataFrame([c.row(level) for c in claims])


def claims_markdown(table: pd.DataFrame, level: float = 0.95) -> str:
    """:func:`claims_table` as a Markdown table: claim, measured difference, effect [interval], verdict."""
    shown = pd.DataFrame({
        "claim": table.claim,
        "measured difference (per seed)": table.measured,
        f"mean [{level:.0%} t-interval]": [f"{e:+.3f} [{lo:+.3f}, {hi:+.3f}]"
                                           for e, lo, hi in zip(table.effect, table.low, table.high)],
        "verdict": table.verdict.map(lambda v: f"**{v}**"),
    })
    return markdown_table(shown)


def mean_by_model(data: pd.DataFrame, index: str, value: str = "error") -> pd.DataFrame:
    """Mean of ``value`` over seeds, one row per ``index`` value, one column per model (chapter order)."""
    table = data.pivot_table(index=index, columns="model", values=value, aggfunc="mean")
    return table[[m for m in MODEL_LABELS.values() if m in table.columns]]


def markdown_table(data: pd.DataFrame, floatfmt: str = ".3f", index: bool = False) -> str:
    """``data`` as Markdown table text (:func:`cmpt.plotting.markdown_text`; the chapter's default: no index)."""
    return markdown_text(data, floatfmt=floatfmt, index=index)
