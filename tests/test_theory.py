"""The companion theory (cmpt.theory): data model, four models, three-step algorithm, evidence, tiles."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from cmpt import theory
from cmpt.profiles import PROFILES
from cmpt.theory import (KINDS, SEPARATED, VERDICTS, AttentionParams, MixtureSpec, attention, claims_table, cosine,
                         directions, error_rate, error_vs_n, error_vs_parameter, forward, relevant_mass,
                         sample_mixture, sample_replicas, theory_sizes, three_step, token_statistics,
                         train)
from cmpt.theory.algorithm import split_three
from cmpt.theory.mixture import expected_statistics
from cmpt.theory.models import init_params
from cmpt.theory.tiles import (PromptAttentionHead, digit_pools, fine_tune, fine_tuned_tile_attention, make_tiles,
                               tile_tokens, tiny_tile_vit)


def test_generator_statistics_match_parameters():
    spec = MixtureSpec(d=8, T=20, zeta=0.2, delta=0.6, sigma=0.5, context=1.5)
    batch = sample_mixture(spec, 4000, seed=1)
    stats = token_statistics(batch, spec)
    assert stats["relevant_fraction"] == pytest.approx(spec.k / spec.T) and spec.k == 4
    assert stats["positive_fraction"] == pytest.approx(0.5, abs=0.03)
    assert stats["irrelevant_sign_correlation"] == pytest.approx(spec.delta, abs=0.03)
    assert stats["mean_token_label_signal"] == pytest.approx(spec.k / spec.T * (1 - spec.delta), abs=0.01)
    assert stats["relevant_context"] == pytest.approx(spec.context, abs=0.03)
    # noise: spread along a direction orthogonal to q_star, w_star and u is sigma
    dirs = torch.stack(list(directions(spec).values()), dim=1)
    free = torch.linalg.svd(torch.eye(spec.d) - dirs @ dirs.T).U[:, 0]
    assert (batch.X @ free).std().item() == pytest.approx(spec.sigma, rel=0.03)


def test_generator_is_seeded_and_directions_are_orthonormal():
    spec = SEPARATED
    a, b = sample_mixture(spec, 50, seed=3), sample_mixture(spec, 50, seed=3)
    assert torch.equal(a.X, b.X) and torch.equal(a.y, b.y)
    assert not torch.equal(a.X, sample_mixture(spec, 50, seed=4).X)
    basis = torch.stack(list(directions(spec).values()))
    assert torch.allclose(basis @ basis.T, torch.eye(3), atol=1e-5)
    with pytest.raises(ValueError, match="relevant tokens"):
        MixtureSpec(T=20, zeta=0.01)


def test_delta_one_cancels_the_label_in_the_token_mean():
    spec = SEPARATED.replace(delta=1.0, sigma=0.0)
    batch = sample_mixture(spec, 200, seed=0)
    w_star = directions(spec)["w_star"]
    assert (batch.X.mean(dim=1) @ w_star).abs().max().item() < 1e-5


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "linear"])  # linear: raw scores
def test_attention_weights_sum_to_one(kind):
    batch = sample_replicas([SEPARATED] * 2, 16, seeds=[0, 1])
    params = init_params(kind, SEPARATED.d, replicas=(2,), seed=0, scale=1.0)
    weights = attention(params, batch.X)
    assert weights.shape[:3] == (2, 16, SEPARATED.T)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
    assert (weights >= 0).all()


def test_decoys_cancel_the_second_moment_signal_and_leave_the_rest_alone():
    spec = SEPARATED.replace(decoys=0.6, kappa=0.3)
    batch = sample_mixture(spec, 6000, seed=2)
    measured, expected = token_statistics(batch, spec), expected_statistics(spec)
    assert set(measured) == set(expected)
    for key in expected:
        assert measured[key] == pytest.approx(expected[key], abs=0.02), key
    # decoy draws come after every other draw: the same seed without decoys gives the same relevant tokens
    plain = sample_mixture(spec.replace(decoys=0.0), 6000, seed=2)
    assert torch.equal(plain.relevant, batch.relevant) and torch.equal(plain.y, batch.y)
    assert torch.equal(plain.X[plain.relevant], batch.X[batch.relevant])
    assert not plain.decoy.any() and not (batch.decoy & batch.relevant).any()
    with pytest.raises(ValueError, match="decoy_context"):
        SEPARATED.replace(decoys=0.5, decoy_context=1.0)


def test_linear_prompt_attention_is_the_formula_on_a_hand_case():
    X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # T = 3 tokens in R^2
    q, w = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 1.0])
    linear = AttentionParams("linear", w=w, q=q)
    # scores X q = (1, -2, 0); X^T (X q) / T = (1, -4) / 3; f = w . that = (2 - 4) / 3
    assert torch.allclose(attention(linear, X), torch.tensor([1.0, -2.0, 0.0]) / 3)
    assert forward(linear, X).item() == pytest.approx(-2.0 / 3.0)
    # uniform averaging: w . mean token = w . (2/3, 1) = 7/3; a different number
    uniform = AttentionParams("uniform", w=w)
    assert forward(uniform, X).item() == pytest.approx(7.0 / 3.0)
    # in this parameterisation q = 0 gives the zero function, not uniform averaging
    zero_q = AttentionParams("linear", w=w, q=torch.zeros(2))
    assert forward(zero_q, X).item() == 0.0 and forward(uniform, X).item() != 0.0


def test_linear_prompt_attention_differs_from_uniform_and_prompt_attention():
    batch = sample_replicas([SEPARATED] * 2, 32, seeds=[0, 1])
    params = init_params("linear", SEPARATED.d, replicas=(2,), seed=3, scale=1.0)
    out = forward(params, batch.X)
    uniform = forward(AttentionParams("uniform", w=params.w), batch.X)
    softmax = forward(AttentionParams("prompt", w=params.w, q=params.q), batch.X)
    assert out.shape == (2, 32)
    assert not torch.allclose(out, uniform, atol=1e-3) and not torch.allclose(out, softmax, atol=1e-3)
    # the formula, per example: (1/T) sum_t <x_t, q> <x_t, w>
    score_q = torch.einsum("rntd,rd->rnt", batch.X, params.q)
    score_w = torch.einsum("rntd,rd->rnt", batch.X, params.w)
    by_hand = (score_q * score_w).sum(-1) / SEPARATED.T
    assert torch.allclose(out, by_hand, atol=1e-5)
    assert (attention(params, batch.X) < 0).any()  # raw scores: not a distribution
    mass = relevant_mass(params, batch)
    assert ((mass >= 0) & (mass <= 1)).all()


def test_linear_prompt_attention_is_blind_to_confusion_and_undone_by_decoys():
    confused = SEPARATED.replace(delta=1.0, sigma=0.3)
    dirs = directions(confused)
    linear = AttentionParams("linear", w=dirs["w_star"], q=dirs["q_star"])
    assert error_rate(linear, sample_mixture(confused, 2000, seed=0)).item() < 0.02
    decoyed = SEPARATED.replace(decoys=1.0)
    train_set = sample_replicas([decoyed] * 2, 256, seeds=[30, 31])
    test_set = sample_replicas([decoyed] * 2, 2000, seeds=[40, 41])
    trained = train("linear", train_set, steps=200, lr=0.05, seed=0)
    assert error_rate(trained, test_set).min().item() > 0.4
    oracle = AttentionParams("prompt", w=dirs["w_star"].expand(2, -1), q=4.0 * dirs["q_star"].expand(2, -1))
    assert error_rate(oracle, test_set).max().item() < 0.1


def test_prompt_attention_separates_where_uniform_attention_cannot():
    # the chapter's separated regime with less noise: 2 relevant tokens of 20, delta = 0.75
    spec = SEPARATED.replace(sigma=0.3)
    train_set = sample_replicas([spec] * 2, 256, seeds=[10, 11])
    test_set = sample_replicas([spec] * 2, 1000, seeds=[20, 21])
    prompt = train("prompt", train_set, steps=300, lr=0.05, seed=0)
    uniform = train("uniform", train_set, steps=300, lr=0.05, seed=0)
    assert error_rate(prompt, test_set).max().item() < 0.02
    assert error_rate(uniform, test_set).min().item() > 0.3
    assert relevant_mass(prompt, test_set).min().item() > 4 * spec.k / spec.T


def test_three_step_prompt_aligns_with_the_context_direction():
    # milder confusion than the chapter's regime: the first step (uniform averaging) needs signal
    spec = SEPARATED.replace(delta=0.5)
    data = sample_replicas([spec] * 2, 3 * 2048, seeds=[5, 6])
    result = three_step(data, prompt_norm=4.0)
    dirs = directions(spec)
    assert cosine(result.q1, dirs["q_star"]).min().item() > 0.9
    assert cosine(result.w2, dirs["w_star"]).min().item() > 0.9
    # debiasing centres the scores of S3 between the two classes
    _, _, s3 = split_three(data)
    f = forward(result.params(), s3.X)
    for r in range(2):
        midpoint = (f[r][s3.y[r] > 0].mean() + f[r][s3.y[r] < 0].mean()) / 2
        assert midpoint.abs().item() < 1e-4 * f[r].abs().mean().item()
    test = sample_replicas([spec] * 2, 1000, seeds=[7, 8])
    assert error_rate(result.params(), test).max().item() < 0.05


def test_oracle_prompt_is_near_perfect_even_at_full_confusion():
    spec = SEPARATED.replace(delta=1.0, sigma=0.3)
    dirs = directions(spec)
    params = AttentionParams("prompt", w=dirs["w_star"], q=4.0 * dirs["q_star"])
    assert error_rate(params, sample_mixture(spec, 2000, seed=0)).item() < 0.01


def _tiny_sizes():
    return replace(theory_sizes("smoke"), n_values=(24,), n_sweep=24, n_test=60, steps=5, algo_n_values=(24,))


def test_error_vs_parameter_has_one_row_per_value_model_and_seed():
    sizes = _tiny_sizes()
    table = error_vs_parameter(SEPARATED, "decoys", (0.0, 0.5, 1.0), sizes, kinds=("prompt", "linear"))
    assert len(table) == 3 * 3 * len(sizes.seeds)  # (prompt, linear, oracle) x values x seeds
    assert sorted(table.decoys.unique()) == [0.0, 0.5, 1.0]
    assert set(table.kind) == {"prompt", "linear", "oracle"} and (table.n == sizes.n_sweep).all()
    assert table.error.between(0, 1).all()
    assert not hasattr(theory, "sweep")  # the old name is gone: it clashed with the results store's and Ray's


def test_claims_table_rows_are_ordered_intervals_with_a_verdict():
    sizes = _tiny_sizes()
    spec = SEPARATED
    table = claims_table(spec, error_vs_n(spec, sizes),
                         error_vs_parameter(spec, "zeta", (0.1, 0.3), sizes),
                         error_vs_parameter(spec, "delta", (0.0, 1.0), sizes),
                         error_vs_parameter(spec, "decoys", (0.0, 1.0), sizes),
                         theory.algorithm_vs_n(spec, sizes))
    assert table.slug.is_unique and len(table) == 7
    assert set(table.verdict) <= set(VERDICTS) and (table.seeds == len(sizes.seeds)).all()
    assert ((table.low <= table.effect) & (table.effect <= table.high)).all()
    algo = theory.algorithm_vs_n(spec, sizes)
    assert len(theory.algorithm_summary(algo)) == len(sizes.algo_n_values)
    errors = theory.three_step_errors(algo, error_vs_n(spec, sizes))
    assert errors.model.nunique() == 3 and errors["test error"].between(0, 1).all()
    markdown = theory.claims_markdown(table)
    assert markdown.count("\n") == len(table) + 1 and "t-interval" in markdown


def test_every_profile_has_theory_sizes():
    for name in PROFILES:
        sizes = theory_sizes(name)
        assert sizes.seeds and sizes.n_values and sizes.tile_n_train and sizes.decoy_values
        assert len(sizes.seeds) >= 2  # the chapter's t-intervals need two seeds
    assert theory_sizes("default", n_seeds=2).seeds == (0, 1)
    with pytest.raises(ValueError, match="known"):
        theory_sizes("huge")


def test_tile_constructions_put_the_relevant_digit_where_they_say():
    pools = digit_pools(seed=0)
    a = make_tiles("A", 64, pools.train_images, pools.train_labels, seed=1)
    assert a.images.shape == (64, 1, 20, 20) and a.n_classes == 10
    for i in range(8):  # the framed tile is the relevant one: its border is all white
        r, c = divmod(int(a.relevant_tile[i]), 2)
        tile = a.images[i, 0, r * 10:(r + 1) * 10, c * 10:(c + 1) * 10]
        assert (tile[0] == 1).all() and (tile[:, -1] == 1).all()
    b = make_tiles("B", 64, pools.train_images, pools.train_labels, seed=1)
    assert (b.relevant_tile == 0).all()
    c = make_tiles("C", 64, pools.test_images, pools.test_labels, seed=1)
    assert c.n_classes == 5 and c.labels.max().item() <= 4
    head = PromptAttentionHead(width=32, n_classes=5)
    weights = head.attention(torch.randn(7, 4, 32))
    assert torch.allclose(weights.sum(-1), torch.ones(7))


def test_tile_models_expose_attention_over_the_four_tiles():
    pools = digit_pools(seed=0)
    data = make_tiles("A", 6, pools.train_images, pools.train_labels, seed=2)
    vit = tiny_tile_vit(seed=0)
    assert tile_tokens(vit, data.images).shape == (6, 4, 32)
    tuned = fine_tune(vit, data, epochs=0)
    weights = fine_tuned_tile_attention(tuned, data.images)
    assert weights.shape == (6, 4) and torch.allclose(weights.sum(-1), torch.ones(6), atol=1e-5)
    assert vit.blocks[0].attn.fused_attn == tuned.vit.blocks[0].attn.fused_attn  # switched back after recording
