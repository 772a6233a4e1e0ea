"""The companion theory (cmpt.theory): data model, three models, three-step algorithm, tiles."""

from __future__ import annotations

import pytest
import torch

from cmpt.profiles import PROFILES
from cmpt.theory import (KINDS, SEPARATED, AttentionParams, MixtureSpec, attention, cosine, directions,
                         error_rate, forward, relevant_mass, sample_mixture, sample_replicas,
                         theory_sizes, three_step, token_statistics, train)
from cmpt.theory.algorithm import split_three
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


@pytest.mark.parametrize("kind", KINDS)
def test_attention_weights_sum_to_one(kind):
    batch = sample_replicas([SEPARATED] * 2, 16, seeds=[0, 1])
    params = init_params(kind, SEPARATED.d, replicas=(2,), seed=0, scale=1.0)
    weights = attention(params, batch.X)
    assert weights.shape[:3] == (2, 16, SEPARATED.T)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-5)
    assert (weights >= 0).all()


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
    # milder confusion than the chapter's regime: the first step (uniform attention) needs signal
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


def test_every_profile_has_theory_sizes():
    for name in PROFILES:
        sizes = theory_sizes(name)
        assert sizes.seeds and sizes.n_values and sizes.tile_n_train
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
