"""Attention maps of prompted classifiers: the recorded maps are the ones the backbone used."""

import pytest
import torch

from cmpt.attention_maps import (cls_patch_attention, prompt_mass, query_attention, reapply_error, record_maps,
                                 rollout, rollout_cls_patches)
from cmpt.backbones import load_vision_backbone
from cmpt.profiles import get_profile
from cmpt.settings import make_prompt_source
from cmpt.transfer import PromptedClassifier

SMOKE = get_profile("smoke")
SETTINGS = ("linear", "vpt", "vpt_deep", "frozen", "projection", "attention")
L = 4


def _model(setting: str, layout: str) -> PromptedClassifier:
    vit = load_vision_backbone("tiny-vit", 32, layout=layout)
    torch.manual_seed(0)
    source = torch.randn(L, 32) * 3
    return PromptedClassifier(vit, make_prompt_source(setting, vit, L, source_prompt=source, concentrated=2), 3)


def _images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layout", ["before_cls", "after_cls"])
@pytest.mark.parametrize("setting", SETTINGS)
def test_maps_are_distributions_the_blocks_really_used(setting, layout):
    model = _model(setting, layout)
    rec = record_maps(model, _images())
    depth, heads = model.backbone.depth, model.backbone.vit.blocks[0].attn.num_heads
    length = 0 if setting == "linear" else L
    tokens = 1 + length + model.backbone.num_patches
    assert rec.maps.shape == (depth, 3, heads, tokens, tokens)
    assert torch.allclose(rec.maps.sum(-1), torch.ones(()), atol=1e-5)
    assert rec.cls == model.backbone.readout_index(length)
    assert reapply_error(model, _images()) < 1e-5  # every block, not only the first

    patches = cls_patch_attention(rec)
    assert patches.shape == (3, depth, heads, *rec.grid) and rec.grid == (4, 4)
    mass = prompt_mass(rec)
    assert mass.shape == (3, depth) and bool(((mass >= 0) & (mass <= 1)).all())
    assert torch.all(mass == 0) if setting == "linear" else bool((mass > 0).all())
    # CLS attention splits exactly into the prompt slots, itself and the patches: the slices are right
    self_share = rec.maps[:, :, :, rec.cls, rec.cls].permute(1, 0, 2)
    total = patches.sum((-1, -2)) + self_share + rec.maps[:, :, :, rec.cls, rec.prompt].sum(-1).permute(1, 0, 2)
    assert torch.allclose(total, torch.ones(()), atol=1e-5)

    joint = rollout(rec)
    assert joint.shape == (3, tokens, tokens) and bool((joint >= 0).all())
    assert torch.allclose(joint.sum(-1), torch.ones(()), atol=1e-5)
    cls_map = rollout_cls_patches(rec)
    assert cls_map.shape == (3, *rec.grid) and float(cls_map.sum((-1, -2)).max()) <= 1 + 1e-6


def test_rollout_of_identity_attention_is_the_identity():
    model = _model("vpt", "before_cls")
    rec = record_maps(model, _images(1))
    eye = torch.eye(rec.maps.shape[-1])
    rec.maps = eye.expand_as(rec.maps).clone()
    assert torch.allclose(rollout(rec), eye.expand(1, -1, -1))


def test_query_attention_from_the_model_and_from_a_record():
    model = _model("attention", "before_cls")
    weights = query_attention(model)
    assert weights.shape == (2, L)
    assert abs(weights.sum(1) - 1).max() < 1e-6
    assert (query_attention({"final": {"query_attention": weights.tolist()}}) == weights).all()
    with pytest.raises(ValueError, match="attention-transfer"):
        query_attention(_model("vpt", "before_cls"))


def test_trained_models_come_back_from_the_store_with_their_accuracy(tmp_path, monkeypatch):
    from cmpt.experiments import trained_models
    from cmpt.results import ResultsStore
    from cmpt.run_config import setting_configs
    from cmpt.runner import TargetRunner
    from cmpt.sweep import target_sweep
    from cmpt.train import evaluate

    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path))
    configs = setting_configs(SMOKE, "linear", ["clevr_count"]) + setting_configs(SMOKE, "vpt", ["clevr_count"])
    target_sweep(SMOKE, configs)
    store = ResultsStore.for_profile(SMOKE)
    runner = TargetRunner(SMOKE, store)
    data = runner.target("clevr_count")
    loaded = trained_models(SMOKE, configs, runner=runner)
    assert [run.trained_here for run in loaded] == [False, False]
    configs = [run.config for run in loaded]  # the rates chosen on validation filled in
    for run in loaded:
        acc = evaluate(run.model, data.split("test"))["acc"]
        assert acc == pytest.approx(store.get(run.config)["final"]["test_acc"], abs=1e-9)
    store.model_path(configs[1]).unlink()  # a run stored before models were kept: trained again
    (again,) = trained_models(SMOKE, configs[1:], runner=runner)
    store.model_path(configs[0]).write_bytes(b"\x00" * 10)  # damaged: trained again, with a warning
    with pytest.warns(UserWarning, match="Delete this file"):
        (mended,) = trained_models(SMOKE, configs[:1], runner=runner)
    assert mended.trained_here and evaluate(mended.model, data.split("test"))["acc"] == pytest.approx(
        store.get(configs[0])["final"]["test_acc"], abs=1e-9)
    assert again.trained_here and store.model_path(configs[1]).exists()
    final = again.record["final"]
    assert final["retrained_test_acc"] == pytest.approx(final["test_acc"], abs=1e-9)


def test_every_layer_and_head_figure_fits_the_page_column():
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from cmpt.attention_maps import plot_image_attention

    layers, heads = 12, 6  # DINOv2 ViT-S/14: a row of 12 + 3 panels was 15 inches wide
    patches = np.random.default_rng(0).random((layers, heads, 3, 3))
    fig = plot_image_attention(np.zeros((42, 42), dtype=np.uint8), patches, patches[-1, 0], "t", columns=6)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 1 + 2 + heads + layers  # image, rollout, last layer, each head, each layer
    assert fig.get_size_inches()[0] <= 7.5 and fig.axes[0].get_gridspec().ncols == 6
