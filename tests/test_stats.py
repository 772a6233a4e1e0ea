import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cmpt.errors import InputError, UnknownNameError
from cmpt.stats import (Interval, bootstrap_interval, correlation_interval, decode_correct,
                        encode_correct, format_interval, interval_table, noise_ceiling, paired_bootstrap, paired_t,
                        per_target_correlation, rank_correlation, seed_replicates,
                        t_interval, verdict)


def test_t_interval_is_the_hand_computation():
    values = [0.60, 0.64, 0.62]
    iv = t_interval(values)
    # mean 0.62, s = 0.02, t_{0.975, 2} = 4.302652729911275
    half = 4.302652729911275 * 0.02 / math.sqrt(3)
    assert iv.estimate == pytest.approx(0.62, abs=1e-15)
    assert (iv.low, iv.high) == pytest.approx((0.62 - half, 0.62 + half), abs=1e-10)  # s is 0.02 up to rounding
    assert iv.method == "t over 3 seeds" and iv.n == 3 and iv.level == 0.95 and iv.defined
    ci = sps.ttest_1samp(values, 0.0).confidence_interval(0.9)
    assert (t_interval(values, level=0.9).low, t_interval(values, level=0.9).high) == pytest.approx((ci.low, ci.high))
    assert t_interval([0.5, 0.5]).width == 0.0


def test_one_value_gives_nan_bounds_not_an_error():
    iv = t_interval([0.7])
    assert iv.estimate == 0.7 and math.isnan(iv.low) and math.isnan(iv.high) and not iv.defined
    assert iv.n == 1 and iv.method == "t over 1 seed (no interval from one value)"
    assert verdict(iv) == "inconclusive" and format_interval(iv) == "0.700 [n/a]"
    assert not bootstrap_interval([1.0]).defined


def test_bad_inputs_are_input_errors():
    for bad in ([], [[1.0, 2.0]], [1.0, float("nan")], ["a", "b"]):
        with pytest.raises(InputError):
            t_interval(bad)
    with pytest.raises(InputError, match="level"):
        t_interval([1.0, 2.0], level=95)
    with pytest.raises(InputError, match="same length"):
        paired_t([1.0, 2.0], [1.0])
    with pytest.raises(UnknownNameError):
        bootstrap_interval([0, 1, 1], method="studentized")


def test_paired_t_equals_scipy_ttest_rel():
    a = np.array([0.61, 0.65, 0.58, 0.70, 0.66])
    b = np.array([0.59, 0.60, 0.57, 0.66, 0.67])
    iv = paired_t(a, b)
    ci = sps.ttest_rel(a, b).confidence_interval()
    assert iv.estimate == pytest.approx(a.mean() - b.mean())
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert iv.method == "paired t over 5 seeds"
    # Pairing matters: the same numbers unpaired give a far wider interval.
    assert iv.width < sps.ttest_ind(a, b).confidence_interval().high - sps.ttest_ind(a, b).confidence_interval().low


def test_bootstrap_over_test_images():
    constant = bootstrap_interval(np.ones(50, dtype=bool))
    assert (constant.low, constant.estimate, constant.high) == (1.0, 1.0, 1.0) and constant.width == 0.0
    assert bootstrap_interval(np.zeros(30), method="bca").width == 0.0
    rng = np.random.default_rng(0)
    correct = rng.random(400) < 0.6
    iv = bootstrap_interval(correct, n_resamples=2000, seed=1)
    assert iv.estimate == correct.mean() and iv.low < iv.estimate < iv.high
    assert iv.method == "percentile bootstrap over 400 test images" and iv.n == 400
    assert iv == bootstrap_interval(correct, n_resamples=2000, seed=1)  # fixed seed: same interval
    p = correct.mean()  # close to the normal approximation of a proportion
    assert iv.width == pytest.approx(2 * 1.96 * math.sqrt(p * (1 - p) / 400), rel=0.1)
    expected = sps.bootstrap((correct.astype(float),), np.mean, n_resamples=2000, method="percentile",
                             rng=np.random.default_rng(1)).confidence_interval
    assert (iv.low, iv.high) == pytest.approx((expected.low, expected.high))
    assert bootstrap_interval(correct, n_resamples=500, method="bca").method.startswith("BCa bootstrap")


def test_paired_bootstrap_over_images():
    rng = np.random.default_rng(2)
    a = rng.random(300) < 0.7
    assert paired_bootstrap(a, a).width == 0.0 and paired_bootstrap(a, a).estimate == 0.0
    b = a.copy()
    b[np.flatnonzero(a)[:30]] = False  # b loses 30 of a's correct images: a is better by 0.1
    iv = paired_bootstrap(a, b, n_resamples=2000)
    assert iv.estimate == pytest.approx(0.1) and iv.method == "paired percentile bootstrap over 300 test images"
    assert verdict(iv, +1) == "supported" and verdict(iv, -1) == "contradicted"
    # Unpaired intervals of the two accuracies overlap; the paired difference is still resolved.
    assert bootstrap_interval(b, n_resamples=2000).high > bootstrap_interval(a, n_resamples=2000).low




@pytest.mark.parametrize("low, high, expected", [(0.01, 0.03, ("supported", "contradicted")),
                                                  (-0.03, -0.01, ("contradicted", "supported")),
                                                  (-0.01, 0.02, ("inconclusive", "inconclusive")),
                                                  (0.0, 0.02, ("inconclusive", "inconclusive")),
                                                  (0.02, 0.02, ("supported", "contradicted"))])
def test_verdicts(low, high, expected):
    iv = Interval((low + high) / 2, low, high, "test", 3)
    assert (verdict(iv), verdict(iv, direction=-1)) == expected
    with pytest.raises(InputError, match="direction"):
        verdict(iv, direction=2)


def test_correctness_bits_round_trip():
    rng = np.random.default_rng(3)
    for n in (0, 1, 7, 8, 9, 203, 3000):
        bits = rng.random(n) < 0.5
        text = encode_correct(bits)
        assert len(text) == 2 * ((n + 7) // 8)
        assert np.array_equal(decode_correct(text, n), bits)
    assert encode_correct([True, False, False, False, False, False, False, False, True]) == "0101"
    with pytest.raises(InputError, match="bytes"):
        decode_correct("0101", 20)
    with pytest.raises(InputError, match="past example 5"):
        decode_correct("ff", 5)  # eight bits set, five examples claimed: a wrong count
    with pytest.raises(InputError, match="hex"):
        decode_correct("zz", 4)
    with pytest.raises(InputError, match="0/1"):
        encode_correct([0, 2])


def test_format_interval():
    iv = Interval(0.6123, 0.58, 0.6414, "t over 3 seeds", 3)
    assert format_interval(iv) == "0.612 [0.580, 0.641]" == str(iv)
    assert format_interval(iv, digits=1, scale=100) == "61.2 [58.0, 64.1]"


def _runs() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for setting, base in (("vpt", 0.6), ("projection", 0.65)):
        for target in ("cifar", "dtd"):
            for seed in (0, 1, 2):
                rows.append({"setting": setting, "target": target, "seed": seed,
                             "test_acc": base + 0.01 * seed + rng.normal(0, 0.005)})
    return pd.DataFrame(rows)


def test_interval_table_t_over_seeds_and_bootstrap_for_one_seed():
    runs = _runs()
    table = interval_table(runs)
    assert list(table.columns) == ["setting", "target", "test_acc", "test_acc_low", "test_acc_high", "n", "method",
                                   "test_acc_interval"]
    first = table.iloc[0]
    values = runs[(runs.setting == "vpt") & (runs.target == "cifar")]["test_acc"]
    assert first.test_acc == pytest.approx(values.mean()) and first.method == "t over 3 seeds"
    assert first.test_acc_interval == format_interval(t_interval(values))
    assert interval_table(runs, by="setting")["method"].tolist() == ["t over 6 runs"] * 2

    bits = np.arange(400) % 5 < 3  # 240 of 400 right
    one = pd.DataFrame([{"setting": "vpt", "target": "cifar", "seed": 0, "test_acc": 0.6,
                         "test_correct": encode_correct(bits), "test_n": 400},
                        {"setting": "vpt", "target": "dtd", "seed": 0, "test_acc": 0.5,
                         "test_correct": None, "test_n": None}])
    boot = interval_table(one, correct="test_correct", count="test_n", n_resamples=1000)
    assert boot.loc[0, "method"] == "percentile bootstrap over 400 test images" and boot.loc[0, "test_acc"] == 0.6
    assert boot.loc[0, "test_acc_low"] < 0.6 < boot.loc[0, "test_acc_high"]
    assert boot.loc[1, "method"] == "t over 1 seed (no interval from one value)"  # an old record without bits
    assert boot.loc[1, "test_acc_interval"] == "0.500 [n/a]"
    with pytest.raises(InputError, match="count="):
        interval_table(one, correct="test_correct")
    with pytest.raises(InputError, match="no column 'acc'"):
        interval_table(runs, metric="acc")




def test_rank_correlations_match_scipy():
    x, y = [0.1, 0.4, 0.3, 0.9, 0.5], [0.2, 0.3, 0.5, 0.8, 0.4]
    assert rank_correlation(x, y) == pytest.approx(sps.kendalltau(x, y).statistic)
    assert rank_correlation(x, y, "spearman") == pytest.approx(sps.spearmanr(x, y).statistic)
    assert math.isnan(rank_correlation([1, 1, 1], y[:3])) and math.isnan(rank_correlation([1.0], [2.0]))
    assert rank_correlation(x, [-v for v in x]) == pytest.approx(-1.0)
    with pytest.raises(UnknownNameError):
        rank_correlation(x, y, "pearson")


def _truth(seed: int, noise: float = 0.02) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for t, target in enumerate(("cifar", "dtd", "flowers", "pets")):
        for s, source in enumerate(("sst2", "imdb", "qnli", "mnli", "qqp")):
            rows.append({"target": target, "source": source, "acc": 0.5 + 0.05 * ((s + t) % 5) + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_per_target_correlation_and_interval_over_targets():
    truth = _truth(0)
    scores = truth.assign(score=truth["acc"] + np.random.default_rng(9).normal(0, 0.03, len(truth)))
    taus = per_target_correlation(scores)
    assert list(taus.index) == ["cifar", "dtd", "flowers", "pets"] and taus.name == "kendall"
    dtd = scores[scores.target == "dtd"]
    assert taus["dtd"] == pytest.approx(sps.kendalltau(dtd.score, dtd.acc).statistic)
    iv = correlation_interval(taus, n_resamples=1000)
    assert iv.estimate == pytest.approx(taus.mean()) and iv.method == "percentile bootstrap over 4 targets"
    assert iv.low <= iv.estimate <= iv.high
    assert correlation_interval(pd.concat([taus, pd.Series({"svhn": np.nan})]), n_resamples=1000) == iv
    with pytest.raises(InputError, match="several rows"):
        per_target_correlation(pd.concat([scores, scores]))


def test_noise_ceiling():
    truth = _truth(0)
    same = noise_ceiling(truth, truth.copy())
    assert same.mean == 1.0 and (same.per_target == 1.0).all() and same.interval.width == 0.0
    assert noise_ceiling(truth, truth, method="spearman").mean == 1.0
    noisy = noise_ceiling(_truth(1, noise=0.05), _truth(2, noise=0.05))
    assert -1.0 <= noisy.mean < 1.0 and len(noisy.per_target) == 4

    runs = pd.concat([_truth(s).assign(seed=s).rename(columns={"acc": "test_acc"}) for s in (0, 1, 2, 3)])
    first, second = seed_replicates(runs, [0, 1], [2, 3])
    assert list(first.columns) == ["source", "target", "acc"] and len(first) == 20
    cifar_sst2 = runs[(runs.target == "cifar") & (runs.source == "sst2") & runs.seed.isin([0, 1])]["test_acc"].mean()
    assert first[(first.target == "cifar") & (first.source == "sst2")]["acc"].item() == pytest.approx(cifar_sst2)
    assert 0.0 < noise_ceiling(first, second).mean <= 1.0
    with pytest.raises(InputError, match="disjoint"):
        seed_replicates(runs, [0, 1], [1, 2])
