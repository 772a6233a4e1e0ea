"""The verdict rule measured on simulated claims whose truth is known (cmpt.verdicts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cmpt.verdicts import (ALPHA, MARGIN_ACC, Effect, decide, holm, per_target_from_vectors,
                           permutation_correlation, targets_in_general, these_targets)

TARGETS, SEEDS, IMAGES = 3, 3, 200


def _simulated_claim(rng: np.random.Generator, effects: np.ndarray, seed_sd: float = 0.01,
                     image_sd: float = 0.5) -> dict[tuple, np.ndarray]:
    """Per-image paired differences of a benchmark whose per-target true effects are ``effects``.

    Each target has a fixed test set (image effects shared by the seeds) and a seed offset per run.
    """
    differences = {}
    for t, effect in enumerate(effects):
        images = rng.normal(0.0, image_sd, IMAGES)
        images -= images.mean()  # the population of test images of this target has mean effect 0 ...
        images += rng.normal(0.0, image_sd / np.sqrt(IMAGES))  # ... this test set is one draw of it
        for s in range(SEEDS):
            noise = rng.normal(0.0, 0.6 * image_sd, IMAGES)
            differences[(f"t{t}", s)] = effect + images + rng.normal(0.0, seed_sd) + noise
    return differences


def _verdicts(effects: np.ndarray, n: int, seed: int, image_sd: float = 0.5) -> tuple[list[str], float]:
    rng = np.random.default_rng(seed)
    verdicts, covered = [], 0
    for _ in range(n):
        per_target = per_target_from_vectors(_simulated_claim(rng, effects, image_sd=image_sd))
        effect = these_targets(per_target)
        verdicts.append(decide(effect, effect.p, effect.p_equivalence(MARGIN_ACC)))
        covered += effect.low <= effects.mean() <= effect.high
    return verdicts, covered / n


def test_no_effect_is_rarely_called_supported_or_contradicted_and_the_interval_covers():
    verdicts, coverage = _verdicts(np.zeros(TARGETS), 2000, seed=1)
    false = np.mean([v in ("supported", "contradicted") for v in verdicts])
    assert false <= ALPHA + 0.01, f"{false:.3f} of null claims got a directional verdict"
    assert coverage >= 0.93, f"the 95% interval covered the true effect {coverage:.3f} of the time"
    precise, _ = _verdicts(np.zeros(TARGETS), 300, seed=8, image_sd=0.1)  # with less noise, equivalence shows
    assert np.mean([v == "no meaningful effect" for v in precise]) > 0.5


def test_an_effect_at_the_margin_is_rarely_called_no_meaningful_effect():
    verdicts, coverage = _verdicts(np.full(TARGETS, MARGIN_ACC), 2000, seed=2, image_sd=0.1)
    assert np.mean([v == "no meaningful effect" for v in verdicts]) <= ALPHA + 0.01
    assert coverage >= 0.93


def test_a_large_effect_is_supported_and_its_sign_decides():
    verdicts, _ = _verdicts(np.array([0.08, 0.1, 0.12]), 300, seed=3)
    assert np.mean([v == "supported" for v in verdicts]) > 0.95
    negative, _ = _verdicts(np.array([-0.08, -0.1, -0.12]), 100, seed=4)
    assert "supported" not in negative and np.mean([v == "contradicted" for v in negative]) > 0.9


def test_the_detectable_effect_is_detected_with_the_stated_power():
    rng = np.random.default_rng(5)
    mde = these_targets(per_target_from_vectors(_simulated_claim(rng, np.zeros(TARGETS)))).mde()
    verdicts, _ = _verdicts(np.full(TARGETS, mde), 600, seed=6)
    power = np.mean([v == "supported" for v in verdicts])
    assert 0.7 <= power <= 0.9, f"power {power:.2f} at the stated detectable effect {mde:.4f}"


def test_per_target_variances_and_the_general_question():
    differences = {("a", 0): np.array([1.0, 0.0, 0.0, 1.0]), ("a", 1): np.array([1.0, 1.0, 0.0, 0.0]),
                   ("b", 0): np.array([0.0, 0.0, 0.0, -1.0]), ("b", 1): np.array([0.0, 0.0, 0.0, 1.0])}
    table = per_target_from_vectors(differences).set_index("target")
    assert table.loc["a", "effect"] == pytest.approx(0.5) and table.loc["b", "effect"] == pytest.approx(0.0)
    assert table.loc["a", "var_seed"] == pytest.approx(0.0)  # both seeds average 0.5
    assert table.loc["b", "var_seed"] == pytest.approx(np.var([-0.25, 0.25], ddof=1) / 2)
    assert table.loc["a", "var_test"] == pytest.approx(np.var([1, 0.5, 0, 0.5], ddof=1) / 4)
    general = targets_in_general(table.reset_index())
    assert general.estimate == pytest.approx(0.25) and general.df == 1.0
    assert general.se == pytest.approx(np.std([0.5, 0.0], ddof=1) / np.sqrt(2))
    alone = targets_in_general(table.reset_index().iloc[:1])
    assert np.isnan(alone.low) and alone.n_targets == 1  # one target says nothing about targets in general


def test_holm_and_the_four_verdicts():
    assert holm({"a": 0.01, "b": 0.04, "c": 0.03}) == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})
    assert holm({"a": float("nan"), "b": 0.01}) == pytest.approx({"a": 1.0, "b": 0.02})
    up = Effect.from_t(0.05, 0.01, 10, "these", 3, 3)
    down = Effect.from_t(-0.05, 0.01, 10, "these", 3, 3)
    small = Effect.from_t(0.001, 0.004, 10, "these", 3, 3)
    assert decide(up, up.p, 1.0) == "supported" and decide(down, down.p, 1.0) == "contradicted"
    assert decide(down, down.p, 1.0, direction=-1) == "supported"
    assert small.p_equivalence(MARGIN_ACC) < ALPHA and decide(small, small.p, small.p_equivalence(0.02)) == \
        "no meaningful effect"
    assert decide(small, small.p, small.p_equivalence(0.002)) == "inconclusive"


def _correlated(rng: np.random.Generator, rho_scale: float, n_sources: int = 8, n_targets: int = 3) -> tuple:
    norms = pd.Series(rng.normal(size=n_sources), index=[f"s{i}" for i in range(n_sources)])
    rows = [{"target": f"t{t}", "source": s, "value": rho_scale * norms[s] + rng.normal()}
            for t in range(n_targets) for s in norms.index]
    return norms, pd.DataFrame(rows)


def test_permutation_correlation_holds_its_level_and_finds_a_strong_relation():
    rng = np.random.default_rng(7)
    null_p = [permutation_correlation(*_correlated(rng, 0.0), n_boot=50, seed=i).p for i in range(150)]
    assert np.mean(np.array(null_p) < ALPHA) <= 0.1  # 150 draws: about 5% expected
    strong = permutation_correlation(*_correlated(rng, 5.0), seed=1)
    assert strong.p < 0.01 and strong.estimate > 0.7 and strong.low <= strong.estimate <= strong.high
    assert strong.n_permutations == 40320  # 8 sources: every permutation


def test_the_interval_for_targets_like_these_covers_the_mean_of_the_population():
    """Target effects drawn with a 3-point spread around 0: the t over targets covers the population mean."""
    rng = np.random.default_rng(9)
    covered, n = 0, 2000
    for _ in range(n):
        effects = rng.normal(0.0, 0.03, TARGETS)
        general = targets_in_general(per_target_from_vectors(_simulated_claim(rng, effects, image_sd=0.1)))
        covered += general.low <= 0.0 <= general.high
    assert covered / n >= 0.93, f"covered the population mean {covered / n:.3f} of the time"
