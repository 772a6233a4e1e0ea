"""Transferability estimation (cmpt.gaps): small random tensors, the tiny random ViT; fast."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from cmpt.backbones import load_vision_backbone
from cmpt.gaps import (WidthMismatchError, combined_scores, fit_combined, fit_universal_projector, kendall,
                       mmd2_batched, modality_gap, modality_gap_table, on_scores, patch_tokens, per_target_ranking,
                       spearman, spot_scores, stimulation_patterns, task_gap_table, threshold_analysis, top_k_hit)
from cmpt.gaps.mmd import BANDWIDTH_FACTORS


def _mmd2_loop(x: torch.Tensor, y: torch.Tensor) -> float:
    """Direct O(n^2) reference of the biased multi-kernel MMD^2 of Algorithm 1 (plain Python loops)."""
    pooled = [row.double() for row in torch.cat([x, y])]
    total, pairs = 0.0, 0
    for i, a in enumerate(pooled):
        for j, b in enumerate(pooled):
            if i != j:
                total += float(((a - b) ** 2).sum())
                pairs += 1
    s0 = total / pairs

    def mean_kernel(p: torch.Tensor, q: torch.Tensor) -> float:
        acc = 0.0
        for a in p.double():
            for b in q.double():
                d = float(((a - b) ** 2).sum())
                acc += sum(math.exp(-d / (s0 * f)) for f in BANDWIDTH_FACTORS)
        return acc / (len(p) * len(q))

    return mean_kernel(x, x) + mean_kernel(y, y) - 2 * mean_kernel(x, y)


def test_mmd_matches_a_double_loop_reference():
    gen = torch.Generator().manual_seed(0)
    sources = torch.randn(3, 5, 4, generator=gen) * torch.tensor([1.0, 3.0, 0.5])[:, None, None]
    batches = torch.randn(4, 5, 4, generator=gen) + 0.7
    got = mmd2_batched(sources.double(), batches.double())
    assert got.shape == (3, 4)
    for s in range(3):
        for b in range(4):
            assert abs(float(got[s, b]) - _mmd2_loop(sources[s], batches[b])) < 1e-5


def test_mmd_is_zero_for_identical_samples_and_grows_with_a_mean_shift():
    x = torch.randn(1, 6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(mmd2_batched(x, x))) < 1e-12
    values = [float(mmd2_batched(x, x + shift)) for shift in (0.0, 0.3, 1.0, 3.0)]
    assert values == sorted(values) and values[-1] > values[1] > 0


def test_modality_gap_batches_sources_like_single_calls_and_drops_the_last_batch():
    gen = torch.Generator().manual_seed(2)
    prompts = torch.randn(3, 4, 6, generator=gen)
    tokens = torch.randn(4 * 7 + 3, 6, generator=gen)  # 7 full batches of 4, 3 tokens dropped
    together = modality_gap(prompts, tokens, passes=3, seed=5)
    alone = torch.stack([modality_gap(p, tokens, passes=3, seed=5) for p in prompts])
    assert torch.allclose(together, alone, atol=1e-12)
    chunked = modality_gap(prompts, tokens, passes=3, seed=5, chunk_elements=1)
    assert torch.allclose(together, chunked, atol=1e-12)
    # one pass, one batch: exactly the MMD^2 against the shuffled first L tokens
    order = torch.randperm(4, generator=torch.Generator().manual_seed(9))
    single = modality_gap(prompts[0], tokens[:4], passes=1, seed=9)
    assert abs(float(single) - _mmd2_loop(prompts[0], tokens[:4][order])) < 1e-5


def test_modality_gap_table_and_patch_tokens():
    embedded = torch.randn(5, 1 + 4, 6)
    tokens = patch_tokens(embedded)
    assert tokens.shape == (20, 6) and torch.equal(tokens[:4], embedded[0, 1:])
    prompts = {"a": torch.randn(4, 6), "b": torch.randn(4, 6) + 2.0, "c": torch.randn(2, 6)}
    table = modality_gap_table(prompts, {"t": tokens}, passes=2, seed=0)
    assert list(table.columns) == ["source", "target", "mmd"] and len(table) == 3
    by_source = table.set_index("source")["mmd"]
    assert by_source["b"] > by_source["a"] > 0  # the shifted prompt is farther from the tokens
    assert abs(by_source["a"] - float(modality_gap(prompts["a"], tokens, passes=2, seed=0))) < 1e-12


def test_width_mismatch_is_refused_clearly():
    with pytest.raises(WidthMismatchError, match="only for width-matched pairs.*384/384.*768/768"):
        modality_gap(torch.randn(4, 8), torch.randn(40, 6))
    with pytest.raises(WidthMismatchError, match="SPoT is defined here only for width-matched"):
        spot_scores({"s": torch.randn(4, 8)}, {"t": torch.randn(4, 6)})


def test_kendall_and_spearman_equal_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.normal(size=9), rng.integers(0, 4, size=9).astype(float)  # ties in the truth
        assert kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
    assert math.isnan(kendall([1.0, 2.0, 3.0], [0.5, 0.5, 0.5]))


def test_top_k_hit_on_a_hand_made_case():
    truth = pd.Series({"a": 0.9, "b": 0.5, "c": 0.7, "d": 0.1})
    scores = pd.Series({"a": 0.2, "b": 0.8, "c": 0.6, "d": 0.4})  # predicted order b, c, d, a
    assert top_k_hit(scores, truth, 1) == 0.0
    assert top_k_hit(scores, truth, 3) == 0.0
    assert top_k_hit(scores, truth, 4) == 1.0
    tied = pd.Series({"a": 0.9, "b": 0.9, "c": 0.7, "d": 0.1})  # b shares the best accuracy
    assert top_k_hit(scores, tied, 1) == 1.0
    long_scores = scores.rename_axis("source").reset_index(name="score").assign(target="t")
    long_truth = truth.rename_axis("source").reset_index(name="acc").assign(target="t")
    table = per_target_ranking(long_scores, long_truth)
    assert table.loc["t", "top1"] == 0.0 and table.loc["t", "sources"] == 4
    assert table.loc["t", "kendall"] == pytest.approx(stats.kendalltau(scores, truth).statistic)


def test_universal_projector_loss_decreases():
    gen = torch.Generator().manual_seed(3)
    sources, target = torch.randn(4, 5, 6, generator=gen) * 3, torch.randn(3, 8, generator=gen) + 1.0
    for loss in ("euclidean", "cosine"):
        fit = fit_universal_projector(sources, target, loss=loss, steps=60, dropout=0.0, seed=0, mix=0.3, noise=0.1)
        assert len(fit.losses) == 60 and fit.losses[-1] < 0.5 * fit.losses[0]
    table = task_gap_table({"a": sources[0], "b": sources[1]}, {"t": target}, seeds=(0, 1), steps=20)
    assert table["task_score"].between(-1, 1).all() and len(table) == 2


@pytest.fixture(scope="module")
def tiny_vit():
    return load_vision_backbone("tiny-vit", 32)


def test_stimulation_patterns_are_binary_of_the_right_length(tiny_vit):
    prompts = torch.randn(3, 4, tiny_vit.width)
    patterns = stimulation_patterns(tiny_vit, prompts, layers=3)
    hidden = tiny_vit.vit.blocks[-1].mlp.fc1.out_features
    assert patterns.dtype == torch.bool and patterns.shape == (3, min(3, tiny_vit.depth) * hidden)
    assert torch.equal(stimulation_patterns(tiny_vit, prompts[1], layers=1), patterns[1, -hidden:])
    same = on_scores(tiny_vit, {"p": prompts[0], "q": prompts[1]}, {"t": prompts[0].clone()})
    assert same.set_index("source").loc["p", "score"] == pytest.approx(1.0)
    assert same["score"].between(0, 1).all()


def test_combined_estimate_is_fitted_leave_one_target_out():
    rng = np.random.default_rng(0)
    rows = []
    for target in ("t1", "t2", "t3"):
        for source in "abcde":
            mmd = rng.uniform(0.1, 2.0)
            rows.append({"source": source, "target": target, "mmd": mmd, "task_score": rng.uniform(-1, 1),
                         "acc": 1.0 - mmd})  # the truth follows -MMD exactly
    gaps = pd.DataFrame(rows)
    truth = gaps[["source", "target", "acc"]]
    fit = fit_combined(gaps, truth)
    assert fit.choice["lambda_t"] == 0.0 and fit.choice["lambda_m"] == 1.0  # modality term only
    assert set(fit.folds["held_out"]) == {"t1", "t2", "t3"} and not fit.folds["in_sample"].any()
    assert per_target_ranking(fit.scores, truth)["kendall"].min() == pytest.approx(1.0)
    scores = combined_scores(gaps, 1.0, 0.0, "log")
    assert np.allclose(scores.groupby("target")["score"].mean(), 0.0)  # standardised per target


def test_threshold_analysis_counts_pairs_below_random():
    pairs = pd.DataFrame({"mmd": [0.1, 0.2, 0.8, 0.9], "gain": [0.05, 0.01, -0.02, 0.03]})
    out = threshold_analysis(pairs, threshold=0.5)
    assert out["pairs_above"] == 2 and out["share_below_random_above"] == 0.5
    assert out["share_below_random_below"] == 0.0 and out["slope"] < 0


def test_stimulation_feeds_the_raw_cls_token_unless_asked_for_its_position(tiny_vit):
    from cmpt.gaps.estimators import _cls_token

    raw = _cls_token(tiny_vit)
    assert torch.equal(raw, tiny_vit.vit.cls_token)
    positioned = _cls_token(tiny_vit, with_position=True)
    assert torch.allclose(positioned, raw + tiny_vit.vit.pos_embed[:, :1])
    prompts = torch.randn(3, 4, tiny_vit.width, generator=torch.Generator().manual_seed(1))
    default = stimulation_patterns(tiny_vit, prompts, layers=2)
    assert not torch.equal(default, stimulation_patterns(tiny_vit, prompts, layers=2, cls_position=True))


def test_random_references_are_frozen_and_drawn_as_labelled(tiny_vit):
    import math

    from cmpt.settings import make_prompt_source

    gaussian = make_prompt_source("random", tiny_vit, 4, reference_norm=3.0, seed=0)()["prompt"]
    assert torch.allclose(gaussian.norm(dim=1), torch.full((4,), 3.0))
    xavier = make_prompt_source("random_xavier", tiny_vit, 4, seed=0)()["prompt"]
    patch = tiny_vit.vit.patch_embed.patch_size[0]
    assert xavier.abs().max() <= math.sqrt(6.0 / (3 * patch * patch + tiny_vit.width))
    assert torch.equal(xavier, make_prompt_source("random_xavier", tiny_vit, 4, seed=0)()["prompt"])
    assert not xavier.requires_grad
