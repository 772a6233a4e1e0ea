"""The findings page's claims: paired comparisons, counts and verdicts, checked by direct computation."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cmpt.errors import InputError
from cmpt.findings import (CLAIMS, attention_configs, better_of, chosen_configs, chosen_source, claim_sentence,
                           claim_table, compare_claim, correlation_claim, mean_over_sources, projection_configs,
                           ranking_claim, scarcity_claim, truth_seeds)
from cmpt.profiles import get_profile
from cmpt.results import config_hash
from cmpt.run_config import default_concentrated, setting_configs

DEFAULT = get_profile("default")


def _side(values, targets=("t1", "t2"), seeds=(1, 2, 3)):
    keys = [(t, s) for t in targets for s in seeds]
    return pd.DataFrame({"target": [k[0] for k in keys], "seed": [k[1] for k in keys], "test_acc": values})


def test_compare_claim_is_the_paired_t_interval_over_target_seed_pairs():
    a = _side([0.70, 0.72, 0.69, 0.55, 0.58, 0.57])
    b = _side([0.60, 0.65, 0.61, 0.50, 0.49, 0.52])
    claim = compare_claim("b", a, b)
    ci = sps.ttest_rel(a.test_acc, b.test_acc).confidence_interval()
    assert claim.interval.estimate == pytest.approx((a.test_acc - b.test_acc).mean())
    assert (claim.interval.low, claim.interval.high) == pytest.approx((ci.low, ci.high))
    assert claim.n_pairs == 6 and claim.n_seeds == 3 and claim.verdict == "supported"
    rec = claim.record()
    assert rec["verdict"] == "supported" and rec["ci"] == [claim.interval.low, claim.interval.high]
    assert compare_claim("b", b, a).verdict == "contradicted"


def test_a_difference_inside_the_noise_is_inconclusive():
    a = _side([0.70, 0.60, 0.65, 0.55, 0.50, 0.57])
    b = _side([0.60, 0.65, 0.66, 0.50, 0.55, 0.56])
    assert compare_claim("a", a, b).verdict == "inconclusive"


def test_compare_claim_refuses_unaveraged_sides():
    a = pd.concat([_side([0.5] * 6), _side([0.6] * 6)])
    with pytest.raises(InputError, match="several runs per"):
        compare_claim("a", a, _side([0.5] * 6))


def test_mean_over_sources_and_better_of():
    runs = pd.DataFrame({"setting": "frozen", "target": ["t"] * 4, "seed": [1, 1, 2, 2], "source": list("abab"),
                         "test_acc": [0.2, 0.4, 0.6, 0.8]})
    means = mean_over_sources(runs)
    assert means.set_index("seed")["test_acc"].to_dict() == pytest.approx({1: 0.3, 2: 0.7})
    both = pd.DataFrame({"setting": ["vpt", "spt", "vpt", "spt"], "test_acc": [0.5, 0.6, 0.5, 0.7]})
    assert better_of(both, ["vpt", "spt"]) == "spt"


def test_scarcity_claim_is_a_difference_of_differences():
    rows = []
    gains = {("t1", 1): (0.10, 0.00), ("t1", 2): (0.08, 0.01), ("t2", 1): (0.12, -0.01), ("t2", 2): (0.09, 0.02)}
    for (target, seed), (scarce, full) in gains.items():
        for regime, k, n, gain in (("kshot", 1, 10, scarce), ("kshot", 2, 20, 0.0), ("full", None, 80, full)):
            rows.append({"setting": "vpt", "target": target, "seed": seed, "regime": regime, "k": k, "n_train": n,
                         "test_acc": 0.5})
            rows.append({"setting": "projection", "target": target, "seed": seed, "regime": regime, "k": k,
                         "n_train": n, "test_acc": 0.5 + gain})
    claim = scarcity_claim("d", pd.DataFrame(rows))
    diffs = [s - f for s, f in gains.values()]
    ci = sps.ttest_1samp(diffs, 0.0).confidence_interval()
    assert claim.interval.estimate == pytest.approx(np.mean(diffs))
    assert (claim.interval.low, claim.interval.high) == pytest.approx((ci.low, ci.high))
    assert claim.n_pairs == 4 and claim.n_seeds == 2 and "[1]" in claim.note


def test_ranking_claim_uses_the_stronger_baseline_and_targets_as_units():
    per_method = {name: pd.DataFrame({"kendall": values}, index=["t1", "t2", "t3"])
                  for name, values in (("combined", [0.6, 0.4, 0.5]), ("spot", [0.1, 0.0, 0.2]),
                                       ("on", [0.3, 0.2, 0.1]))}
    claim = ranking_claim("f", per_method, "combined", ["spot", "on"], n_seeds=2)
    assert claim.extra["baseline"] == "on"  # mean 0.2 against SPoT's 0.1
    diffs = np.array([0.3, 0.2, 0.4])
    ci = sps.ttest_1samp(diffs, 0.0).confidence_interval()
    assert claim.interval.estimate == pytest.approx(diffs.mean())
    assert (claim.interval.low, claim.interval.high) == pytest.approx((ci.low, ci.high))
    assert claim.n_pairs == 3 and claim.n_seeds == 2


def test_correlation_claim_is_a_t_interval_over_targets():
    rho = pd.Series([0.5, 0.1, np.nan, 0.3])
    claim = correlation_claim("e", rho, n_seeds=3)
    ci = sps.ttest_1samp([0.5, 0.1, 0.3], 0.0).confidence_interval()
    assert claim.n_pairs == 3 and (claim.interval.low, claim.interval.high) == pytest.approx((ci.low, ci.high))
    with pytest.raises(InputError):
        correlation_claim("e", pd.Series([np.nan]), n_seeds=3)


def test_claim_table_and_sentence_name_every_part():
    claim = compare_claim("b", _side([0.7] * 5 + [0.71]), _side([0.6] * 5 + [0.62]))
    table = claim_table([claim])
    assert list(table.columns) == ["claim", "comparison", "effect [95% CI]", "pairs", "seeds", "interval",
                                   "verdict", "chapter"]
    row = table.iloc[0]
    assert row.claim.startswith("(b) ") and row.chapter == CLAIMS["b"][2] and row.verdict == claim.verdict
    text = claim_sentence(claim)
    assert "6 pairs, 3 seed(s)" in text and f"**{claim.verdict}**" in text


def test_plans_share_configs_with_the_chapters():
    sources = list(DEFAULT.text_tasks)
    assert truth_seeds(DEFAULT) == list(DEFAULT.seeds[:DEFAULT.truth_replicates])
    assert truth_seeds(DEFAULT.replace(truth_replicates=2)) == list(DEFAULT.seeds[:2])
    truth = projection_configs(DEFAULT.replace(truth_replicates=2), sources)
    assert len(truth) == len(sources) * len(DEFAULT.image_tasks) * 2 and {c.seed for c in truth} == set(DEFAULT.seeds[:2])
    projection = pd.DataFrame([{"target": c.target, "source": c.source, "seed": c.seed,
                                "val_acc": 0.9 if c.source == sources[1] else 0.5, "test_acc": 0.5} for c in truth])
    chosen = chosen_source(projection)
    assert set(chosen) == {sources[1]} and set(chosen.index) == set(DEFAULT.image_tasks)
    finals = chosen_configs(DEFAULT, "projection", chosen)
    assert {c.seed for c in finals} == set(DEFAULT.seeds)
    # the chosen source's runs on the replicate seeds are the very ground-truth runs (one run each)
    assert {config_hash(c) for c in finals if c.seed in DEFAULT.seeds[:2]} <= {config_hash(c) for c in truth}
    chapter = [c for t, s in chosen.items() for c in setting_configs(DEFAULT, "attention", [t], [s],
                                                                     concentrated=default_concentrated(DEFAULT))]
    assert [config_hash(c) for c in attention_configs(DEFAULT, chosen)] == [config_hash(c) for c in chapter]
