import pytest
import torch

from cmpt.backbones import load_vision_backbone
from cmpt.prompts import PromptError
from cmpt.train import TrainConfig, fit
from cmpt.settings import SETTINGS, make_prompt_source
from cmpt.transfer import AttentionPrompt, PromptedClassifier

SRC_WIDTH = 24  # a text width that differs from tiny-vit's 32


@pytest.fixture(scope="module")
def vit():
    return load_vision_backbone("tiny-vit", 32)


def _model(vit, setting, source_width=32, length=4, head_init="default"):
    """A model whose head starts random, so every trainable part gets a gradient at the first step
    (a zero head, the recipe's default, passes no gradient back until its first update)."""
    torch.manual_seed(0)
    source = torch.randn(length, source_width)
    src = make_prompt_source(setting, vit, length, source_prompt=source, concentrated=2, reference_norm=3.0)
    return PromptedClassifier(vit, src, num_classes=3, head_init=head_init)


EXPECTED_TRAINABLE = {
    "linear": {"head.weight", "head.bias"},
    "vpt": {"head.weight", "head.bias", "prompt_source.prompt"},
    "vpt_deep": {"head.weight", "head.bias", "prompt_source.prompt"},
    "frozen": {"head.weight", "head.bias"},
    "random": {"head.weight", "head.bias"},
    "random_xavier": {"head.weight", "head.bias"},
    "projection": {"head.weight", "head.bias", "prompt_source.proj.weight", "prompt_source.proj.bias"},
    "attention": {"head.weight", "head.bias", "prompt_source.queries", "prompt_source.key.weight", "prompt_source.key.bias",
                  "prompt_source.value.weight", "prompt_source.value.bias", "prompt_source.target"},
}


@pytest.mark.parametrize("setting", [s for s in SETTINGS if not s.startswith("spt")])  # spt: tests/test_experiments.py
def test_trainable_parameters_are_exactly_the_settings(vit, setting):
    width = 32 if setting == "frozen" else SRC_WIDTH
    model = _model(vit, setting, source_width=width)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == EXPECTED_TRAINABLE[setting]
    assert not any(p.requires_grad for p in model.backbone.parameters())
    x = torch.randn(2, 3, 32, 32)
    (model(x) * torch.randn(3)).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None and p.grad.abs().sum() > 0) == (name in trainable), name


def test_deep_prompt_has_one_slice_per_block(vit):
    model = _model(vit, "vpt_deep")
    assert model.prompt_source.prompt.shape == (vit.depth, 4, 32)
    bound = (6 / (3 * 8 * 8 + 32)) ** 0.5  # VPT's xavier-uniform bound for patch 8, width 32
    assert model.prompt_source.prompt.abs().max() <= bound


def test_frozen_transfer_refuses_a_width_mismatch(vit):
    with pytest.raises(PromptError, match="prompt width 24 does not fit backbone 'tiny-vit'.*projection"):
        _model(vit, "frozen", source_width=SRC_WIDTH)


def test_attention_transfer_keeps_the_total_length(vit):
    source = torch.randn(6, SRC_WIDTH)
    block = AttentionPrompt(source, 32, length=4, concentrated=3, patch_size=8)
    prompt = block()["prompt"]
    assert prompt.shape == (4, 32)
    weights = block.attention()
    assert weights.shape == (3, 6) and torch.allclose(weights.sum(-1), torch.ones(3))
    with pytest.raises(ValueError, match="concentrated length"):
        AttentionPrompt(source, 32, length=4, concentrated=5, patch_size=8)
    scaled = AttentionPrompt(source, 32, length=4, concentrated=3, patch_size=8, scaled=True)
    assert scaled.scale == pytest.approx(32 ** -0.5)


def test_unknown_setting_lists_valid(vit):
    with pytest.raises(ValueError, match="unknown setting 'lora'.*projection"):
        make_prompt_source("lora", vit, 4)


def _separable_images(n, seed):
    """Three classes: which third of the image (left, middle, right) is bright."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randn(n, 3, 32, 32, generator=gen) * 0.3
    for i, y in enumerate(labels.tolist()):
        images[i, :, :, y * 10:(y + 1) * 10] += 2.0
    return images, labels


@pytest.mark.parametrize("setting", [s for s in SETTINGS if not s.startswith("spt")])  # spt: tests/test_experiments.py
def test_every_setting_learns_a_separable_task(vit, setting):
    model = _model(vit, setting, source_width=32 if setting == "frozen" else SRC_WIDTH)
    train, val, test = _separable_images(96, 0), _separable_images(48, 1), _separable_images(48, 2)
    cfg = TrainConfig(optimizer="adam", base_lr=0.3, batch_size=32, epochs=15, warmup_epochs=1, seed=0)
    result = fit(model, train, val, test, cfg)
    assert result.final["test_acc"] > 0.6, result.final  # chance is 1/3


def test_a_zero_head_starts_every_setting_at_uniform_logits(vit):
    model = _model(vit, "vpt", head_init="zero")
    logits = model(torch.randn(5, 3, 32, 32))
    assert torch.equal(logits, torch.zeros_like(logits))  # loss ln C whatever the features' scale
    with pytest.raises(ValueError, match="unknown head initialisation .kaiming.; valid: zero, default"):
        _model(vit, "vpt", head_init="kaiming")
