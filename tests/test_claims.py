"""The claim registry (cmpt.claims) on runs whose answers are known, and the shared run plans (cmpt.plans)."""

import numpy as np
import pandas as pd
import pytest
import torch

from cmpt.claims import (CLAIMS, ClaimRuns, claim_records, claim_table, compare_runs, correctness, summary_sentence,
                         evaluate_claim, evaluate_claims)
from cmpt.errors import InputError
from cmpt.plans import attention_configs, chosen_configs, chosen_source, projection_configs, truth_seeds
from cmpt.profiles import get_profile
from cmpt.prompts import Prompt
from cmpt.results import config_hash
from cmpt.run_config import default_concentrated, setting_configs
from cmpt.stats import encode_correct
from cmpt.verdicts import VERDICTS

DEFAULT = get_profile("default")
TARGETS, SEEDS, IMAGES = ("t1", "t2", "t3"), (1, 2, 3), 400


def _runs(setting: str, accuracy: dict[str, float], seed_jitter: float = 0.0, source: str | None = None,
          rng_seed: int = 0, **extra) -> pd.DataFrame:
    """Runs of ``setting`` whose per-image correctness reaches ``accuracy[target]`` (plus a seed jitter)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for target in TARGETS:
        for seed in SEEDS:
            p = np.clip(accuracy[target] + seed_jitter * rng.normal(), 0.0, 1.0)
            correct = rng.random(IMAGES) < p
            rows.append({"setting": setting, "target": target, "seed": seed, "source": source,
                         "test_acc": float(correct.mean()), "test_correct": encode_correct(correct),
                         "test_n": IMAGES, **extra})
    return pd.DataFrame(rows)


HIGH = {"t1": 0.8, "t2": 0.7, "t3": 0.75}
LOW = {"t1": 0.6, "t2": 0.5, "t3": 0.55}


def test_correctness_averages_the_runs_that_share_a_key():
    runs = pd.concat([_runs("frozen", HIGH, source="s1", rng_seed=1), _runs("frozen", LOW, source="s2", rng_seed=2)])
    vectors = correctness(runs)
    assert set(vectors) == {(t, s) for t in TARGETS for s in SEEDS}
    both = runs[(runs.target == "t1") & (runs.seed == 1)].test_acc.mean()
    assert vectors[("t1", 1)].mean() == pytest.approx(both)
    with pytest.raises(InputError, match="test_correct"):
        correctness(runs.drop(columns="test_correct"))


def test_a_clear_gain_is_supported_and_its_reverse_contradicted():
    data = ClaimRuns(runs=pd.concat([_runs("linear", LOW, rng_seed=3)]),
                     chosen=_runs("projection", HIGH, source="s1", rng_seed=4))
    result = evaluate_claim("b", data)
    assert result.verdict == "supported" and result.these.estimate == pytest.approx(0.2, abs=0.03)
    assert result.these.n_targets == 3 and result.these.n_seeds == 3
    assert result.these.low < result.these.estimate < result.these.high
    assert result.general.df == 2.0 and result.general.question == "general"  # targets - 1
    reverse = ClaimRuns(runs=_runs("linear", HIGH, rng_seed=3), chosen=_runs("projection", LOW, rng_seed=4))
    assert evaluate_claim("b", reverse).verdict == "contradicted"


def test_equal_settings_are_not_called_different():
    same = ClaimRuns(runs=_runs("linear", HIGH, rng_seed=5), chosen=_runs("projection", HIGH, rng_seed=6))
    assert evaluate_claim("b", same).verdict in ("inconclusive", "no meaningful effect")


def test_claim_c_must_beat_both_baselines():
    """Attention far above VPT but below SPT: the claim is contradicted, with SPT the binding baseline."""
    runs = pd.concat([_runs("vpt", LOW, rng_seed=7), _runs("spt", {t: v + 0.1 for t, v in HIGH.items()}, rng_seed=8)])
    result = evaluate_claim("c", ClaimRuns(runs=runs, chosen=_runs("attention", HIGH, source="s1", rng_seed=9)))
    assert result.extra["binding"] == "SPT" and result.verdict == "contradicted"
    assert result.extra["components"]["VPT"] == pytest.approx(0.2, abs=0.03)
    assert result.record()["components"] == result.extra["components"]
    above = pd.concat([_runs("vpt", LOW, rng_seed=7), _runs("spt", LOW, rng_seed=8)])
    assert evaluate_claim("c", ClaimRuns(runs=above, chosen=_runs("attention", HIGH, rng_seed=9))).verdict == "supported"


def test_claim_d_is_a_difference_of_gains():
    rows = []
    for regime, k, gain in (("kshot", 1, 0.2), ("full", None, 0.0)):
        base = {t: 0.5 for t in TARGETS}
        for setting, acc in (("vpt", base), ("projection", {t: 0.5 + gain for t in TARGETS})):
            rows.append(_runs(setting, acc, rng_seed=len(rows), regime=regime, k=k, choice="val",
                              n_train=8 if k else 80))
    result = evaluate_claim("d", ClaimRuns(scarce=pd.concat(rows, ignore_index=True)))
    assert result.these.estimate == pytest.approx(0.2, abs=0.04) and result.verdict == "supported"
    assert "[1]" in result.note


def test_claim_e_permutes_sources_and_claim_f_uses_targets():
    sources = [f"s{i}" for i in range(6)]
    bank = {s: Prompt(torch.full((4, 8), 0.1 * (i + 1))) for i, s in enumerate(sources)}
    frozen = pd.concat([_runs("frozen", {t: 0.3 + 0.1 * i for t in TARGETS}, source=s, rng_seed=20 + i)
                        for i, s in enumerate(sources)], ignore_index=True)
    rho = evaluate_claim("e", ClaimRuns(runs=frozen, bank=bank))
    assert rho.these.estimate > 0.9 and rho.these.p <= 2 / 720 + 1e-9  # 6 sources: 720 permutations
    per_method = {name: pd.DataFrame({"kendall": values}, index=list(TARGETS))
                  for name, values in (("combined", [0.6, 0.5, 0.55]), ("spot", [0.1, 0.0, 0.2]),
                                       ("on", [0.3, 0.35, 0.4]))}
    ranking = type("Ranking", (), {"per_method": per_method})()
    f = evaluate_claim("f", ClaimRuns(ranking=ranking))
    assert f.extra["binding"] == "ON" and f.these.estimate == pytest.approx(0.2) and f.these.n_targets == 3


def test_holm_over_the_page_and_the_outputs():
    data = ClaimRuns(runs=pd.concat([_runs("linear", LOW, rng_seed=3), _runs("vpt", LOW, rng_seed=10),
                                     _runs("spt", LOW, rng_seed=11)]),
                     chosen=pd.concat([_runs("projection", HIGH, rng_seed=4), _runs("attention", HIGH, rng_seed=12)]))
    results = evaluate_claims(data, ["b", "c"])
    for r in results:
        assert r.p_holm >= r.these.p and r.verdict in VERDICTS
    records = claim_records(results)
    assert records["findings/b/verdict"] == "supported" and len(records["findings/b/ci_these"]) == 2
    table = claim_table(results)
    assert list(table.claim.str[:3]) == ["(b)", "(c)"] and set(table.verdict) == {"supported"}
    text = summary_sentence(results[0])
    assert "**supported**" in text and "points" in text and "80% power" in text
    with pytest.raises(InputError, match="needs the scarce runs"):
        evaluate_claims(data, ["d"])
    with pytest.raises(InputError, match="unknown claim"):
        evaluate_claim("z", data)


def test_unpaired_sides_are_refused():
    short = _runs("projection", HIGH)
    with pytest.raises(InputError, match="not paired"):
        compare_runs("x", short[short.seed != 3], _runs("linear", LOW))
    assert set(CLAIMS) == set("abcdef")


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
