"""Uncertainty for every chapter: intervals, paired comparisons, verdicts and rank correlations.

Which interval a number gets depends on what varies in the runs behind it:

* several seeds: a Student-t interval over the seeds (:func:`t_interval`);
* one seed: a bootstrap over the test images, from the per-example correctness that
  :func:`cmpt.train.fit` stores as ``test_correct`` / ``test_n`` (:func:`bootstrap_interval`).
  It covers the sampling of test images only, not the training noise a second seed would show.

Every function returns an :class:`Interval` whose ``method`` says which of these was used
(``"t over 3 seeds"``, ``"percentile bootstrap over 400 test images"``), so a table or a
sentence can quote it. With a single value there is no interval: the bounds are NaN (never an
exception), the estimate is still the value, and :func:`verdict` calls it inconclusive.

Comparisons of two settings are *paired*: the same target, seed, training subset and test
images on both sides, so shared noise cancels (:func:`paired_t`, :func:`paired_bootstrap`). The
book's comparisons of settings, with the target as the unit, are :mod:`cmpt.verdicts` and
:mod:`cmpt.claims`.

For transferability estimators, :func:`per_target_correlation` gives Kendall's tau (or
Spearman's rho) per target, :func:`correlation_interval` a bootstrap over targets for their
mean, and :func:`noise_ceiling` the best tau any estimator could expect: the agreement of two
independent replicates of the ground truth with each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cmpt.errors import InputError, check_names

__all__ = ["VERDICTS", "VERDICT_WORDS", "BOOTSTRAP_METHODS", "CORRELATIONS", "LEVEL", "N_RESAMPLES", "Interval", "NoiseCeiling",
           "bootstrap_interval", "correlation_interval", "decode_correct", "encode_correct",
           "format_interval", "interval_table", "noise_ceiling", "paired_bootstrap", "paired_t",
           "per_target_correlation", "rank_correlation", "seed_replicates",
           "t_bounds", "t_interval", "verdict"]

LEVEL = 0.95
N_RESAMPLES = 9999
#: scipy's bootstrap interval methods, with the name a method string gives them
BOOTSTRAP_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}
CORRELATIONS = ("kendall", "spearman")
#: at most this many resampled values are held at once (scipy's ``batch``), whatever ``n``
_BOOTSTRAP_CELLS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """An estimate with a two-sided interval; NaN bounds when none can be given (``n == 1``).

    ``method`` names the interval and what it is over (``"t over 3 seeds"``); ``n`` is the
    number of values it was computed from (seeds, test images, pairs, targets).
    """

    estimate: float
    low: float
    high: float
    method: str
    n: int
    level: float = LEVEL

    @property
    def defined(self) -> bool:
        """Whether both bounds are finite numbers."""
        return math.isfinite(self.low) and math.isfinite(self.high)

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:
        return format_interval(self)


# -- helpers -----------------------------------------------------------------------------------

def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def _check_level(level: float) -> float:
    if not 0.0 < float(level) < 1.0:
        raise InputError(f"confidence level must be between 0 and 1, got {level!r}")
    return float(level)


def _vector(values: Any, name: str = "values") -> np.ndarray:
    """A non-empty 1-D float vector of finite numbers (booleans become 0/1)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numbers") from None
    if array.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise InputError(f"{name} is empty: no interval without values")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{name} contains NaN or infinite values; drop them first")
    return array


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = _vector(a, "a"), _vector(b, "b")
    if x.shape != y.shape:
        raise InputError(f"paired values need the same length on both sides, got {len(x)} and {len(y)}")
    return x, y


def _no_interval(estimate: float, method: str) -> Interval:
    return Interval(estimate, math.nan, math.nan, f"{method} (no interval from one value)", 1)


def _t(values: np.ndarray, level: float, method: str) -> Interval:
    n = len(values)
    mean = float(values.mean())
    if n == 1:
        return _no_interval(mean, method)
    half = float(stats.t.ppf(0.5 + level / 2, df=n - 1)) * float(values.std(ddof=1)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, method, n, level)


def _bootstrap(values: np.ndarray, level: float, n_resamples: int, seed: int, method: str, label: str) -> Interval:
    check_names("bootstrap method", method, BOOTSTRAP_METHODS)
    if int(n_resamples) < 1:
        raise InputError(f"n_resamples must be at least 1, got {n_resamples!r}")
    n = len(values)
    mean = float(values.mean())
    if n == 1:
        return _no_interval(mean, label)
    if np.all(values == values[0]):
        # Every resample has the same mean: the interval is that point (scipy's BCa would be NaN).
        return Interval(mean, mean, mean, label, n, level)
    result = stats.bootstrap((values,), np.mean, n_resamples=int(n_resamples), vectorized=True, axis=-1,
                             batch=max(1, _BOOTSTRAP_CELLS // n), confidence_level=level, method=method,
                             rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), label, n, level)


# -- one setting ---------------------------------------------------------------------------------

def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL, unit: str = "seed") -> Interval:
    """Mean and Student-t interval (``n - 1`` degrees of freedom) of ``values``, e.g. one per seed.

    ``mean +- t_{(1+level)/2, n-1} * s / sqrt(n)`` with the sample standard deviation ``s``.
    One value gives NaN bounds (documented, not an error): there is no spread to measure.
    ``unit`` (singular) names what the values are over, for the method string.
    """
    x = _vector(values)
    return _t(x, _check_level(level), f"t over {_plural(len(x), unit)}")


def bootstrap_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL, n_resamples: int = N_RESAMPLES,
                       seed: int = 0, method: str = "percentile", unit: str = "test image") -> Interval:
    """Mean and bootstrap interval of ``values`` (``scipy.stats.bootstrap``, fixed ``seed``).

    Meant for per-example correctness (booleans or 0/1) of one run on its test images, where
    the mean is the accuracy; also used over targets. ``method`` is ``"percentile"``
    (default), ``"basic"`` or ``"bca"``. A constant vector gives a zero-width interval; a
    single value NaN bounds.
    """
    x = _vector(values)
    label = f"{BOOTSTRAP_METHODS.get(method, method)} bootstrap over {_plural(len(x), unit)}"
    return _bootstrap(x, _check_level(level), n_resamples, seed, method, label)


# -- two settings, paired ----------------------------------------------------------------------

def paired_t(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = LEVEL,
             unit: str = "seed") -> Interval:
    """Mean of ``a - b`` over aligned pairs (e.g. seeds) with a paired-t interval.

    Position ``i`` of ``a`` and of ``b`` must be the same target, seed, training subset and
    test set. The interval equals ``scipy.stats.ttest_rel(a, b).confidence_interval(level)``.
    """
    x, y = _pair(a, b)
    return _t(x - y, _check_level(level), f"paired t over {_plural(len(x), unit)}")


def paired_bootstrap(correct_a: Sequence[float] | np.ndarray, correct_b: Sequence[float] | np.ndarray,
                     level: float = LEVEL, n_resamples: int = N_RESAMPLES, seed: int = 0,
                     method: str = "percentile", unit: str = "test image") -> Interval:
    """Accuracy difference ``a - b`` of two runs on the same test images, bootstrapped over images.

    Resampling the per-example differences (values -1, 0, 1) keeps each image's two outcomes
    together, so the interval reflects only the images on which the runs disagree. Both
    vectors must list the images in the same order.
    """
    x, y = _pair(correct_a, correct_b)
    label = f"paired {BOOTSTRAP_METHODS.get(method, method)} bootstrap over {_plural(len(x), unit)}"
    return _bootstrap(x - y, _check_level(level), n_resamples, seed, method, label)




#: what :func:`verdict` can say
VERDICTS = ("supported", "contradicted", "inconclusive")

def verdict(interval: Interval, direction: int = +1) -> str:
    """``"supported"`` when the whole interval lies on the claimed side of zero, ``"contradicted"``
    when it lies wholly on the other side, ``"inconclusive"`` otherwise (touching or straddling
    zero, or no interval). ``direction`` is +1 for a claimed increase, -1 for a decrease.
    """
    if direction not in (1, -1):
        raise InputError(f"direction must be +1 (claimed increase) or -1 (claimed decrease), got {direction!r}")
    if not interval.defined:
        return "inconclusive"
    low, high = direction * interval.low, direction * interval.high
    low, high = min(low, high), max(low, high)
    if low > 0:
        return "supported"
    if high < 0:
        return "contradicted"
    return "inconclusive"


# -- per-example correctness in records -----------------------------------------------------------

def encode_correct(correct: Any) -> str:
    """Per-example correctness as a hex string of packed bits (example ``i`` is bit ``i % 8`` of byte ``i // 8``).

    A few thousand test images take a few hundred bytes. The count is not part of the string;
    store it next to it (``fit`` stores ``test_n``).
    """
    bits = np.asarray(correct.cpu() if hasattr(correct, "cpu") else correct)
    if bits.ndim != 1:
        raise InputError(f"per-example correctness must be one-dimensional, got shape {bits.shape}")
    if bits.dtype != np.bool_:
        if not np.all((bits == 0) | (bits == 1)):
            raise InputError("per-example correctness must be booleans or 0/1 values")
        bits = bits.astype(np.bool_)
    return np.packbits(bits, bitorder="little").tobytes().hex()


def decode_correct(hex_string: str, n: int) -> np.ndarray:
    """The boolean vector of ``n`` examples that :func:`encode_correct` packed into ``hex_string``."""
    n = int(n)
    if n < 0:
        raise InputError(f"the number of examples must be >= 0, got {n}")
    try:
        raw = bytes.fromhex(hex_string)
    except (TypeError, ValueError) as err:
        raise InputError(f"per-example correctness is not a hex string: {err}") from None
    if len(raw) != (n + 7) // 8:
        raise InputError(f"per-example correctness holds {len(raw)} bytes; {n} examples need {(n + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise InputError(f"per-example correctness has bits set past example {n}: wrong count or corrupt record")
    return bits[:n].astype(np.bool_)


# -- tidy tables ------------------------------------------------------------------------------------

def _as_list(keys: str | Iterable[str]) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys)


def _require(table: pd.DataFrame, columns: Iterable[str | None]) -> None:
    missing = [c for c in columns if c is not None and c not in table.columns]
    if missing:
        raise InputError(f"table has no column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}; "
                         f"it has {', '.join(map(str, table.columns))}")


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    return True


def _correct_of(row: pd.Series, correct: str | None, count: str | None) -> np.ndarray | None:
    """The per-example correctness of one run, if its row has it (a hex string with a count, or an array)."""
    if correct is None or not _present(row[correct]):
        return None
    value = row[correct]
    if isinstance(value, str):
        if count is None or not _present(row[count]):
            raise InputError(f"column {correct!r} holds packed bits; pass count= (the column with the number "
                             f"of test examples, e.g. 'test_n')")
        return decode_correct(value, int(row[count]))
    return np.asarray(value, dtype=np.float64)


def _runs_unit(group: pd.DataFrame) -> str:
    """``"seed"`` when the runs of a group differ by seed alone (as far as the table says), else ``"run"``."""
    if "seed" not in group.columns or group["seed"].nunique() != len(group):
        return "run"
    if "target" in group.columns and group["target"].nunique() > 1:
        return "run"
    return "seed"


def interval_table(table: pd.DataFrame, by: str | Sequence[str] = ("setting", "target"), metric: str = "test_acc",
                   correct: str | None = None, count: str | None = None, level: float = LEVEL,
                   n_resamples: int = N_RESAMPLES, seed: int = 0, method: str = "percentile",
                   digits: int = 3) -> pd.DataFrame:
    """Per group of ``by``: the mean of ``metric`` with its interval, one row per group.

    Groups of several runs get a t interval over the runs (``"t over 3 seeds"``; ``"runs"``
    when the group spans more than seeds). A group of one run gets a bootstrap over its test
    images when ``correct`` names a column of per-example correctness (packed hex strings with
    the count in column ``count``, as ``fit`` records ``test_correct`` / ``test_n``; or
    arrays) and that run has it; otherwise NaN bounds.

    Columns: ``by``..., ``metric`` (the estimate), ``{metric}_low``, ``{metric}_high``, ``n``,
    ``method`` and ``{metric}_interval`` (``"0.612 [0.580, 0.641]"``).
    """
    keys = _as_list(by)
    _require(table, [*keys, metric, correct, count])
    if table.empty:
        raise InputError("the table is empty: no intervals to compute")
    level = _check_level(level)
    rows = []
    for key, group in table.groupby(keys, sort=False, dropna=False):
        values = _vector(group[metric], metric)
        bits = _correct_of(group.iloc[0], correct, count) if len(group) == 1 else None
        if bits is not None:
            iv = bootstrap_interval(bits, level, n_resamples, seed, method)
        else:
            iv = t_interval(values, level, unit=_runs_unit(group))
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), metric: iv.estimate, f"{metric}_low": iv.low,
                     f"{metric}_high": iv.high, "n": iv.n, "method": iv.method,
                     f"{metric}_interval": format_interval(iv, digits)})
    return pd.DataFrame(rows)




def format_interval(interval: Interval, digits: int = 3, scale: float = 1.0) -> str:
    """``"0.612 [0.580, 0.641]"``; ``"0.612 [n/a]"`` when there is no interval. ``scale=100`` for percent."""
    est = f"{interval.estimate * scale:.{digits}f}"
    if not interval.defined:
        return f"{est} [n/a]"
    return f"{est} [{interval.low * scale:.{digits}f}, {interval.high * scale:.{digits}f}]"


# -- rank correlations (transferability) ---------------------------------------------------------

def rank_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                     method: str = "kendall") -> float:
    """Kendall's tau-b or Spearman's rho (scipy) between two score vectors over the same items.

    NaN with fewer than two items or when either side is constant (no ranking). Identical
    rankings give exactly 1.0 (scipy's arithmetic can land one ulp below).
    """
    check_names("rank correlation", method, CORRELATIONS)
    a, b = _pair(x, y)
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return math.nan
    if np.array_equal(stats.rankdata(a), stats.rankdata(b)):
        return 1.0
    fn = stats.kendalltau if method == "kendall" else stats.spearmanr
    return float(fn(a, b).statistic)


def per_target_correlation(table: pd.DataFrame, score: str = "score", truth: str = "acc", target: str = "target",
                           item: str = "source", method: str = "kendall") -> pd.Series:
    """Per target: the rank correlation between ``score`` and ``truth`` over the items (sources).

    ``table`` is long: one row per (target, item). NaN for a target with fewer than two items
    or a constant side.
    """
    _require(table, [score, truth, target, item])
    if table.duplicated([target, item]).any():
        raise InputError(f"several rows per ({target}, {item}); average replicates first")
    out = {name: rank_correlation(group[score].to_numpy(float), group[truth].to_numpy(float), method)
           for name, group in table.groupby(target, sort=False)}
    return pd.Series(out, name=method, dtype=float).rename_axis(target)


def correlation_interval(per_target: pd.Series | Sequence[float], level: float = LEVEL,
                         n_resamples: int = N_RESAMPLES, seed: int = 0, method: str = "percentile") -> Interval:
    """Mean per-target correlation with a bootstrap interval over targets (NaN targets left out)."""
    values = np.asarray(per_target, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise InputError("no target has a defined rank correlation")
    return bootstrap_interval(values, level, n_resamples, seed, method, unit="target")


@dataclass(frozen=True)
class NoiseCeiling:
    """The rank agreement of two independent replicates of the ground truth, per target and on average."""

    per_target: pd.Series
    mean: float
    interval: Interval
    method: str


def noise_ceiling(first: pd.DataFrame, second: pd.DataFrame, value: str = "acc", target: str = "target",
                  item: str = "source", method: str = "kendall", level: float = LEVEL,
                  n_resamples: int = N_RESAMPLES, seed: int = 0) -> NoiseCeiling:
    """How well one replicate of the ground truth ranks the items of another, per target.

    ``first`` and ``second`` are long tables (``target, item, value``) from independent runs,
    e.g. projection-transfer accuracies from disjoint seeds (:func:`seed_replicates`). No
    estimator can be expected to agree with the ground truth better than the ground truth
    agrees with itself. Two identical replicates give exactly 1. A replicate from one seed is
    noisier than the multi-seed mean a ground truth usually is, so this ceiling is a lower
    bound on the agreement the averaged truth allows.
    """
    _require(first, [target, item, value])
    _require(second, [target, item, value])
    joined = first[[target, item, value]].merge(second[[target, item, value]], on=[target, item],
                                                suffixes=("_first", "_second"), validate="one_to_one")
    if joined.empty:
        raise InputError(f"the replicates share no ({target}, {item}) pair")
    per_target = per_target_correlation(joined, f"{value}_first", f"{value}_second", target, item, method)
    interval = correlation_interval(per_target, level, n_resamples, seed)
    return NoiseCeiling(per_target, interval.estimate, interval, method)


def seed_replicates(runs: pd.DataFrame, first_seeds: Iterable[Any], second_seeds: Iterable[Any],
                    metric: str = "test_acc", keys: Sequence[str] = ("source", "target"),
                    seed_column: str = "seed") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two ground-truth replicates from disjoint seed sets: ``keys`` + ``acc`` (mean over each set)."""
    first, second = set(first_seeds), set(second_seeds)
    if not first or not second or first & second:
        raise InputError(f"replicates need two non-empty, disjoint seed sets, got {sorted(first)} and {sorted(second)}")
    _require(runs, [*keys, metric, seed_column])
    out = []
    for seeds in (first, second):
        part = runs[runs[seed_column].isin(seeds)]
        if part.empty:
            raise InputError(f"no runs with {seed_column} in {sorted(seeds)}")
        out.append(part.groupby(list(keys), sort=False)[metric].mean().rename("acc").reset_index())
    return out[0], out[1]


#: how a chapter's closing words say each verdict of a claimed increase
VERDICT_WORDS = {"supported": "higher, beyond the noise", "contradicted": "lower, beyond the noise",
                 "inconclusive": "within the noise (the interval includes zero)"}




def t_bounds(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """``(low, high)`` of :func:`t_interval`, for seaborn's ``errorbar=`` (no whisker from one value)."""
    iv = t_interval(values, level)
    return (iv.low, iv.high) if iv.defined else (iv.estimate, iv.estimate)
