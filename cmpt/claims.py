"""The claim registry: each claim the book tests is one record, and one function that tests it.

A :class:`ClaimSpec` says what the claim states, what is compared, which chapter shows it, its
kind (an accuracy difference or a correlation), the margin inside which "no meaningful effect"
is said, and the function that computes it from the runs (:class:`ClaimRuns`). The findings
page iterates over :data:`CLAIMS`; a chapter shows one claim by its key
(:func:`evaluate_claim`).

**Inference** (:mod:`cmpt.verdicts`). An accuracy claim is a paired difference per target:
per test image, the difference of the two sides' correctness, averaged over the target's seeds.
Two questions are answered:

* *these targets* (the targets fixed): the mean of the per-target effects, its variance made of
  the seed variance and the test-image variance of each target, with Welch-Satterthwaite
  degrees of freedom. **The verdict answers this question**: it is about these tasks, at this
  profile's backbones and budgets.
* *targets like these* (targets drawn at random): a t interval over the per-target effects,
  df = targets - 1, shown beside it.

A correlation claim (e) is tested by permuting the sources (the unit shared by every target):
the same permutation for every target; claim (f) by a t over targets. A claim against two
baselines holds only if it holds against each (intersection-union): its effect and p-value are
those of the binding comparison. Holm's correction runs over the claims of the page
(family-wise 5%), once for the tests of a difference and once for the equivalence tests (TOST at
the claim's margin). Verdicts: *supported* / *contradicted* (adjusted p < 0.05, by the sign),
*no meaningful effect* (equivalence shown), *inconclusive* otherwise. ``mde`` is the smallest
true effect the design detects with 80% power at the noise this build measured.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from cmpt.errors import InputError
from cmpt.prompts import Prompt
from cmpt.stats import decode_correct, rank_correlation
from cmpt.verdicts import (MARGIN_ACC, VERDICTS, MARGIN_CORR, Effect, decide, holm, per_target_from_vectors,
                           permutation_correlation, targets_in_general, these_targets)

__all__ = ["CLAIMS", "ClaimResult", "ClaimRuns", "ClaimSpec", "Comparison", "claim_records", "claim_table",
           "compare_runs", "correctness", "display_scale", "overview_sentence", "summary_sentence", "evaluate_claim", "evaluate_claims"]


@dataclass
class ClaimRuns:
    """The runs the claims read (results-store tables); a chapter fills in what its claims need."""

    runs: pd.DataFrame | None = None  # full-data runs of the compared settings (one row per run)
    chosen: pd.DataFrame | None = None  # projection and attention from each target's chosen source
    scarce: pd.DataFrame | None = None  # cmpt.scarcity.run_scarcity's table
    ranking: Any = None  # cmpt.transferability.SourceRanking
    bank: Mapping[str, Prompt] | None = None

    def need(self, name: str, key: str) -> Any:
        value = getattr(self, name)
        if value is None or (isinstance(value, pd.DataFrame) and value.empty):
            raise InputError(f"claim ({key}) needs the {name} runs")
        return value


def display_scale(kind: str) -> tuple[float, int, str]:
    """(scale, digits, unit) of a claim's numbers on the page: accuracy differences in points, correlations as is."""
    return (100.0, 1, " points") if kind == "accuracy" else (1.0, 2, "")


@dataclass(frozen=True)
class ClaimResult:
    """One tested claim: both questions' effects, the verdict after Holm, what the design could detect."""

    key: str
    these: Effect  # the targets fixed (the verdict's question)
    general: Effect  # targets like these
    p_equivalence: float
    note: str = ""
    p_holm: float = float("nan")
    p_equivalence_holm: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)
    adjusted: bool = False  # True when p_holm was adjusted over the findings page's claims

    @property
    def spec(self) -> "ClaimSpec":
        return CLAIMS[self.key]

    @property
    def verdict(self) -> str:
        return decide(self.these, self.p_holm, self.p_equivalence_holm, self.spec.direction)

    @property
    def mde(self) -> float:
        return self.these.mde()

    def record(self) -> dict[str, Any]:
        """The values the findings page records under ``findings/<key>/``."""
        return {"verdict": self.verdict, "effect": self.these.estimate, "ci_these": [self.these.low, self.these.high],
                "ci_general": [self.general.low, self.general.high], "p": self.these.p, "p_holm": self.p_holm,
                "p_equivalence_holm": self.p_equivalence_holm, "mde": self.mde, "margin": self.spec.margin,
                "n_targets": self.these.n_targets, "n_seeds": self.these.n_seeds,
                **({"components": self.extra["components"]} if "components" in self.extra else {})}


@dataclass(frozen=True)
class ClaimSpec:
    """One claim: what it states and compares, where it is shown, how it is tested."""

    key: str
    statement: str
    comparison: str
    chapter: str
    kind: str  # "accuracy" (a difference of test accuracy) or "correlation"
    compute: Callable[[ClaimRuns, str], ClaimResult] = field(repr=False)
    direction: int = +1
    paper: str = "not reported as a number in the paper"  # the published effect, where there is one

    @property
    def display(self) -> tuple[float, int, str]:
        """(scale, digits, unit) the book shows this claim's numbers in: accuracy in points."""
        return display_scale(self.kind)

    @property
    def margin(self) -> float:
        return MARGIN_ACC if self.kind == "accuracy" else MARGIN_CORR


# -- per-image correctness ------------------------------------------------------------------------

def correctness(runs: pd.DataFrame, by: Sequence[str] = ("target", "seed")) -> dict[tuple, np.ndarray]:
    """(target, seed) -> per-test-image correctness (float), averaged over the runs that share the key.

    Several runs per key (frozen transfer from every source) give the mean over them, image by image.
    """
    if "test_correct" not in runs.columns:
        raise InputError("the runs have no per-example test correctness (test_correct); re-run them")
    out: dict[tuple, list[np.ndarray]] = {}
    for row in runs.itertuples(index=False):
        key = tuple(getattr(row, k) for k in by)
        out.setdefault(key, []).append(decode_correct(row.test_correct, int(row.test_n)).astype(np.float64))
    return {key: np.mean(vectors, axis=0) for key, vectors in out.items()}


def _paired(key: str, a: Mapping[tuple, np.ndarray], b: Mapping[tuple, np.ndarray]) -> dict[tuple, np.ndarray]:
    missing = sorted(set(a) ^ set(b))
    if missing:
        raise InputError(f"{key}: the two sides are not paired on (target, seed); unmatched: {missing[:3]}")
    for k in a:
        if len(a[k]) != len(b[k]):
            raise InputError(f"{key}: {k} was tested on {len(a[k])} images on one side and {len(b[k])} on the other")
    return {k: a[k] - b[k] for k in a}


@dataclass(frozen=True)
class Comparison:
    """A paired accuracy comparison a chapter shows beside its claims (unadjusted: not one of the claims)."""

    label: str
    these: Effect
    general: Effect

    @property
    def p_equivalence(self) -> float:
        return self.these.p_equivalence(MARGIN_ACC)

    @property
    def verdict(self) -> str:
        return decide(self.these, self.these.p, self.p_equivalence)

    def sentence(self) -> str:
        """``"<label>: +1.2 points [-0.4, +2.8] over 3 targets x 3 seeds; detectable 3.0 points: <verdict>"``."""
        mde = self.these.mde()
        scale, digits, unit = display_scale("accuracy")
        detect = f"; detectable {scale * mde:.{digits}f}{unit}" if np.isfinite(mde) else ""
        return (f"{self.label}: {_interval(self.these, scale, digits)}{unit} over {self.these.n_targets} target(s) x "
                f"{self.these.n_seeds} seed(s){detect}: {self.verdict}")

    def row(self) -> dict[str, Any]:
        scale, digits, unit = display_scale("accuracy")
        return {"effect [95% CI]": _interval(self.these, scale, digits) + unit,
                "targets x seeds": f"{self.these.n_targets} x {self.these.n_seeds}", "verdict": self.verdict}


def compare_runs(label: str, a: pd.DataFrame, b: pd.DataFrame) -> Comparison:
    """Runs ``a`` minus runs ``b``, paired image by image on (target, seed); several runs per key averaged."""
    per_target = per_target_from_vectors(_paired(label, correctness(a), correctness(b)))
    return Comparison(label, these_targets(per_target), targets_in_general(per_target))


def _accuracy_result(key: str, differences: Mapping[tuple, np.ndarray], note: str = "") -> ClaimResult:
    per_target = per_target_from_vectors(differences)
    these, general = these_targets(per_target), targets_in_general(per_target)
    return ClaimResult(key, these, general, these.p_equivalence(MARGIN_ACC), note=note)


def _intersection(key: str, results: Sequence[ClaimResult], names: Sequence[str], direction: int = +1
                  ) -> ClaimResult:
    """A claim against several baselines: it holds if it holds against each; the binding one is reported."""
    signed = [direction * r.these.estimate for r in results]
    if all(s > 0 for s in signed):
        binding = int(np.argmax([r.these.p for r in results]))  # the weakest support
    else:
        binding = int(np.argmin(signed))  # the strongest evidence against
    chosen = results[binding]
    detail = "; ".join(f"vs {n}: {r.these.estimate:+.3f} (p {r.these.p:.2g})" for n, r in zip(names, results))
    return replace(chosen, p_equivalence=max(r.p_equivalence for r in results),
                   note=f"binding baseline: {names[binding]} ({detail})",
                   extra={"binding": names[binding], "components": {n: r.these.estimate for n, r in zip(names, results)}})


def _side(runs: pd.DataFrame, setting: str, **where: Any) -> pd.DataFrame:
    rows = runs[runs.setting == setting]
    for column, value in where.items():
        rows = rows[rows[column] == value]
    return rows


# -- the claims -----------------------------------------------------------------------------------

def _claim_a(data: ClaimRuns, key: str) -> ClaimResult:
    runs = data.need("runs", key)
    frozen, random = _side(runs, "frozen"), _side(runs, "random")
    return _accuracy_result(key, _paired(key, correctness(frozen), correctness(random)),
                            note=f"frozen: mean over {frozen.source.nunique()} sources, image by image")


def _claim_b(data: ClaimRuns, key: str) -> ClaimResult:
    chosen, runs = data.need("chosen", key), data.need("runs", key)
    return _accuracy_result(key, _paired(key, correctness(_side(chosen, "projection")),
                                         correctness(_side(runs, "linear"))))


def _claim_c(data: ClaimRuns, key: str) -> ClaimResult:
    chosen, runs = data.need("chosen", key), data.need("runs", key)
    attention = correctness(_side(chosen, "attention"))
    parts = [_accuracy_result(key, _paired(key, attention, correctness(_side(runs, b)))) for b in ("vpt", "spt")]
    return _intersection(key, parts, ["VPT", "SPT"])


def _claim_d(data: ClaimRuns, key: str, setting: str = "projection", reference: str = "vpt") -> ClaimResult:
    tidy = data.need("scarce", key)
    sub = tidy[tidy.setting.isin([setting, reference]) & tidy.choice.isin(["none", "val"])]
    shots = sub[sub.regime == "kshot"]
    if shots.empty or not (sub.regime == "full").any():
        raise InputError(f"claim ({key}) needs k-shot and full-data runs of {setting} and {reference}")
    fewest = shots[shots.n_train == shots.groupby("target")["n_train"].transform("min")]
    full = sub[sub.regime == "full"]
    gain = {name: _paired(key, correctness(_side(part, setting)), correctness(_side(part, reference)))
            for name, part in (("scarce", fewest), ("full", full))}
    shots_used = sorted(int(k) for k in fewest["k"].dropna().unique())
    return _accuracy_result(key, _paired(key, gain["scarce"], gain["full"]),
                            note=f"fewest shots: {shots_used} per class; equal optimiser steps")


def _claim_e(data: ClaimRuns, key: str) -> ClaimResult:
    runs, bank = data.need("runs", key), data.need("bank", key)
    frozen = _side(runs, "frozen")
    means = frozen.groupby(["target", "source"], sort=False)["test_acc"].mean().rename("value").reset_index()
    norms = pd.Series({name: float(p.norm) for name, p in bank.items() if name in set(means.source)})
    test = permutation_correlation(norms, means)
    # se: the statistic's spread under permutation, so that mde() is the effect the test would detect
    effect = Effect(estimate=test.estimate, se=test.null_sd, df=1e6, low=test.low, high=test.high,
                    p=test.p, question="these", n_targets=int(means.target.nunique()),
                    n_seeds=int(frozen.seed.nunique()))
    per_target = np.array([rank_correlation(g["source"].map(norms), g["value"], "spearman")
                           for _, g in means.groupby("target", sort=False)])
    general = targets_in_general(pd.DataFrame({"effect": per_target, "var_seed": 0.0, "var_test": 0.0,
                                               "n_seeds": effect.n_seeds, "n_test": 0}))
    return ClaimResult(key, effect, general, test.p_equivalence(MARGIN_CORR),
                       note=f"permutation test over {len(norms)} sources (one permutation for every target)",
                       extra={"null_sd": test.null_sd})


def _claim_f(data: ClaimRuns, key: str, estimator: str = "combined", baselines: Sequence[str] = ("spot", "on"),
             metric: str = "kendall") -> ClaimResult:
    per_method = data.need("ranking", key).per_method
    parts = []
    for baseline in baselines:
        joined = pd.concat({"est": per_method[estimator][metric], "base": per_method[baseline][metric]},
                           axis=1).dropna()
        if joined.empty:
            raise InputError(f"claim ({key}): no target where both {estimator} and {baseline} rank the sources")
        table = pd.DataFrame({"effect": (joined["est"] - joined["base"]).to_numpy(float), "var_seed": 0.0,
                              "var_test": 0.0, "n_seeds": 1, "n_test": 0})
        general = targets_in_general(table)  # no variance within a target: the targets are the unit
        parts.append(ClaimResult(key, replace(general, question="these"), general,
                                 general.p_equivalence(MARGIN_CORR)))
    return _intersection(key, parts, [b.upper() if b == "on" else "SPoT" for b in baselines])


CLAIMS: dict[str, ClaimSpec] = {c.key: c for c in (
    ClaimSpec("a", "Frozen transfer of a text prompt beats a random prompt of matched norm",
              "frozen (mean over sources) - random", "transfer", "accuracy", _claim_a),
    ClaimSpec("b", "Projection transfer beats linear probing",
              "projection (source chosen on validation) - linear probing", "transfer", "accuracy", _claim_b),
    ClaimSpec("c", "Attention transfer beats VPT and SPT",
              "attention (source chosen on validation) - VPT, and - SPT; both must hold", "attention_transfer",
              "accuracy", _claim_c),
    ClaimSpec("d", "Transfer helps most when data is scarce",
              "(projection - VPT) at the fewest shots - (projection - VPT) on the full training set",
              "data_scarcity", "accuracy", _claim_d),
    ClaimSpec("e", "Sources with larger prompt norms transfer better",
              "Spearman rho of source norm vs frozen-transfer accuracy, mean over targets", "transfer",
              "correlation", _claim_e),
    ClaimSpec("f", "Modality gap + task gap ranks sources better than SPoT and ON",
              "Kendall tau of the combined estimate - tau of SPoT, and - tau of ON; both must hold",
              "transferability", "correlation", _claim_f),
)}


def evaluate_claim(key: str, data: ClaimRuns) -> ClaimResult:
    """Claim ``key`` on ``data``, unadjusted (a chapter's view; the findings page adjusts over all claims)."""
    if key not in CLAIMS:
        raise InputError(f"unknown claim {key!r}; claims: {', '.join(CLAIMS)}")
    result = CLAIMS[key].compute(data, key)
    return replace(result, p_holm=result.these.p, p_equivalence_holm=result.p_equivalence)


def evaluate_claims(data: ClaimRuns, keys: Sequence[str] | None = None) -> list[ClaimResult]:
    """Every claim of ``keys`` (default: all) on ``data``, with Holm's correction over them."""
    results = [CLAIMS[k].compute(data, k) for k in (keys or CLAIMS)]
    adjusted = holm({r.key: r.these.p for r in results})
    equivalent = holm({r.key: r.p_equivalence for r in results})
    return [replace(r, p_holm=adjusted[r.key], p_equivalence_holm=equivalent[r.key], adjusted=True) for r in results]


def _interval(effect: Effect, scale: float, digits: int) -> str:
    if not np.isfinite(effect.low):
        return f"{effect.estimate * scale:+.{digits}f} [no interval]"
    return f"{effect.estimate * scale:+.{digits}f} [{effect.low * scale:+.{digits}f}, {effect.high * scale:+.{digits}f}]"


def _scale(result: ClaimResult) -> tuple[float, int, str]:
    return result.spec.display


def claim_table(results: Sequence[ClaimResult]) -> pd.DataFrame:
    """One row per claim, accuracy effects in points: both questions' intervals and the design's reach."""
    rows = []
    for r in results:
        scale, digits, unit = _scale(r)
        rows.append({"claim": f"({r.key}) {r.spec.statement}", "effect [95% CI]": _interval(r.these, scale, digits),
                     "targets like these": _interval(r.general, scale, digits), "Holm p": f"{r.p_holm:.2g}",
                     "detectable": f"{r.mde * scale:.{digits}f}" if np.isfinite(r.mde) else "n/a",
                     "margin": f"±{r.spec.margin * scale:g}", "unit": unit.strip() or "correlation",
                     "targets": r.these.n_targets, "seeds": r.these.n_seeds, "verdict": r.verdict,
                     "chapter": r.spec.chapter})
    return pd.DataFrame(rows)


def claim_records(results: Sequence[ClaimResult]) -> dict[str, Any]:
    """``findings/<key>/<field>`` -> value for every claim."""
    return {f"findings/{r.key}/{name}": value for r in results for name, value in r.record().items()}


def overview_sentence(results: Sequence[ClaimResult]) -> str:
    """How the page's claims came out, counted by verdict: the first thing the findings page says."""
    counts = {v: sum(r.verdict == v for r in results) for v in VERDICTS}
    parts = [f"{n} {'is' if n == 1 else 'are'} {v}" if v != "no meaningful effect" else
             f"{n} {'shows' if n == 1 else 'show'} no meaningful effect" for v, n in counts.items()]
    return (f"Of the {len(results)} claims tested on this build's runs, " + ", ".join(parts[:-1]) + f" and {parts[-1]}"
            + " (Holm-adjusted over the page).")


def summary_sentence(result: ClaimResult) -> str:
    """One plain sentence: the verdict, the direction and size, what the design could have detected."""
    scale, digits, unit = _scale(result)
    effect = result.these.estimate * scale
    lean = "above" if effect > 0 else "below" if effect < 0 else "at"
    what = {"supported": "supported", "contradicted": "contradicted",
            "no meaningful effect": f"no meaningful effect (within ±{result.spec.margin * scale:g}{unit})",
            "inconclusive": "inconclusive"}[result.verdict]
    detect = (f"; the design detects {result.mde * scale:.{digits}f}{unit} with 80% power"
              if np.isfinite(result.mde) else "")
    bounds = (f"[{result.these.low * scale:+.{digits}f}, {result.these.high * scale:+.{digits}f}]"
              if np.isfinite(result.these.low) else "[no interval]")
    return (f"({result.key}) {result.spec.statement}: **{what}** — {effect:+.{digits}f}{unit}, {lean} zero "
            f"{bounds}, "
            f"{'Holm p' if result.adjusted else 'p (unadjusted; the findings page adjusts)'} {result.p_holm:.2g}"
            f"{detect}. {result.note}".rstrip(". ") + ".")

