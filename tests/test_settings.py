"""The setting registry and the recipe every setting trains on (issue: every setting fits its data)."""

import math

import numpy as np
import pytest
import torch

from cmpt.backbones import load_vision_backbone
from cmpt.calibration import calibration_configs, chosen_rate, resolve_rates
from cmpt.data import ImageTask
from cmpt.errors import InputError
from cmpt.profiles import get_profile
from cmpt.results import ResultsStore, RunFailedError
from cmpt.run_config import TargetConfig, recipe, setting_configs
from cmpt.runner import run_target
from cmpt.settings import REGISTRY, Setting, get_setting, register
from cmpt.target_data import TargetData, prepare_target
from cmpt.transfer import AttentionPrompt, LearnedPrompt

SMOKE = get_profile("smoke")


@pytest.fixture(scope="module")
def vit():
    return load_vision_backbone(SMOKE.vision_backbone, SMOKE.image_size)


def _toy_target(vit, n_train=64, classes=2, seed=0):
    """A separable task: the class sets the brightness of one colour channel."""
    g = torch.Generator().manual_seed(seed)
    sizes = {"train": n_train, "val": 16, "test": 32}
    images, labels = {}, {}
    for i, (split, n) in enumerate(sizes.items()):
        y = torch.arange(n) % classes
        x = torch.randn(n, 3, SMOKE.image_size, SMOKE.image_size, generator=g) * 0.5
        x[torch.arange(n), y] += 1.5
        images[split], labels[split] = x, y
    bounds = np.cumsum([0, *sizes.values()])
    task = ImageTask("toy", "Structured", tuple("ab"[:classes]), np.zeros((bounds[-1], 1, 1, 3), np.uint8),
                     torch.cat(list(labels.values())).numpy(),
                     {s: np.arange(bounds[i], bounds[i + 1]) for i, s in enumerate(sizes)})
    return TargetData(task, {s: vit.embed(images[s]).detach() for s in sizes}, labels)


def test_a_fresh_head_starts_at_ln_c_on_a_smoke_target(vit, tmp_path, monkeypatch):
    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path))
    data = prepare_target("clevr_count", SMOKE, vit)
    for setting in ("linear", "vpt"):
        config = TargetConfig.of(SMOKE, setting, "clevr_count", 42, **recipe(SMOKE, setting, fixed_rate=True))
        config = config.replace(epochs=1)
        record = run_target(config, vit, data, None, device="cpu")
        chance = math.log(data.task.num_classes)
        assert record["final"]["initial_loss"] == pytest.approx(chance, rel=0.10), setting


def test_a_smoke_prompt_run_fits_a_separable_toy_set(vit):
    data = _toy_target(vit)
    config = TargetConfig.of(SMOKE, "vpt", "toy", 42, **recipe(SMOKE, "vpt", fixed_rate=True))
    record = run_target(config, vit, data, None, device="cpu")
    final = record["final"]
    assert final["last_train_acc"] == 1.0
    assert final["last_train_loss"] < final["initial_loss"]
    assert final["prompt_moved"]["relative"] > 0  # the prompt trained, not only the head
    groups = final["lr_groups"]  # the head in its own rate group, at the profile's head rate
    assert set(groups) == {"head", "body"} and groups["head"]["names"] == ["head.weight", "head.bias"]
    assert groups["head"]["peak_lr"] == pytest.approx(SMOKE.head_lr * SMOKE.batch_size / 256)


def test_calibration_chooses_the_rate_with_the_best_validation_accuracy(tmp_path):
    store = ResultsStore(tmp_path / "smoke")
    rates = (0.3, 1.0)
    val = {(0.3, "clevr_count"): 0.5, (0.3, "dsprites_loc"): 0.2, (1.0, "clevr_count"): 0.4,
           (1.0, "dsprites_loc"): 0.4}  # mean 0.35 vs 0.40: 1.0 wins though it loses on clevr_count
    calibration = calibration_configs(SMOKE, "vpt", rates)
    assert len(calibration) == 2 * len(SMOKE.image_tasks) and {c.seed for c in calibration} == {SMOKE.seeds[0]}
    pending = setting_configs(SMOKE, "vpt", list(SMOKE.image_tasks))
    with pytest.raises(RunFailedError, match="4 calibration run.s. of 'vpt' have not finished"):
        resolve_rates(SMOKE, pending, store)  # nothing stored, nothing to run it with
    for config in calibration:
        store.put(config, {"final": {"val_acc": val[config.lr, config.target], "test_acc": 0.9}})
    assert chosen_rate(store, SMOKE, "vpt", rates) == 1.0
    resolved = resolve_rates(SMOKE, pending, store)
    assert {c.lr for c in resolved} == {1.0} and all(c.rates == rates for c in resolved)
    assert store.get(resolved[0]) is not None  # the first seed's run is its calibration run
    for config in calibration:  # a tie goes to the smaller rate
        store.put(config, {"final": {"val_acc": 0.5, "test_acc": 0.9}})
    assert chosen_rate(store, SMOKE, "vpt", rates) == 0.3


def test_attention_queries_start_neither_saturated_nor_uniform(vit):
    source = torch.randn(SMOKE.prompt_length, 24) * 5  # a large-norm text prompt
    torch.manual_seed(0)
    default = AttentionPrompt(source, vit.width, SMOKE.prompt_length, 2, 8, query_init="unit_logits")
    torch.manual_seed(0)
    original = AttentionPrompt(source, vit.width, SMOKE.prompt_length, 2, 8, query_init="randn")
    uniform = math.log(SMOKE.prompt_length)
    assert 0.2 * uniform < default.entropy() < 0.95 * uniform
    assert original.entropy() < default.entropy()
    with pytest.raises(ValueError, match="query"):
        AttentionPrompt(source, vit.width, SMOKE.prompt_length, 2, 8, query_init="ones")


def test_a_registered_setting_runs_through_configs_runs_and_the_recipe(vit):
    half = Setting("vpt_half", "VPT (half length)", "a fresh prompt of half the length", "prompt, head",
                   lambda i: LearnedPrompt(max(1, i.length // 2), i.backbone.width, i.patch),
                   rates=(0.3,))
    register(half)
    try:
        with pytest.raises(InputError, match="registered already"):
            register(half)
        assert get_setting("vpt_half") is half
        config = TargetConfig.of(SMOKE, "vpt_half", "toy", 42, **recipe(SMOKE, "vpt_half"))
        assert config.lr is None and config.rates == (0.3,) and not config.head_only
        record = run_target(config.replace(lr=0.3), vit, _toy_target(vit), None, device="cpu")
        assert record["final"]["prompt_moved"]["relative"] > 0
        with pytest.raises(InputError, match="takes no source"):
            TargetConfig.of(SMOKE, "vpt_half", "toy", 42, source="x", lr=0.3)
    finally:
        REGISTRY.pop("vpt_half", None)


def test_a_target_listed_in_target_epochs_for_trains_its_prompt_settings_longer():
    profile = SMOKE.replace(target_epochs_for=[["clevr_count", 7]])
    by_target = {c.target: c for c in setting_configs(profile, "vpt", list(profile.image_tasks))}
    assert by_target["clevr_count"].epochs == 7 and by_target["dsprites_loc"].epochs == SMOKE.target_epochs
    # the warm-up follows the run's own length; head-only settings keep head_epochs everywhere
    assert by_target["clevr_count"].warmup == round(7 * SMOKE.warmup_fraction)
    assert {c.epochs for c in setting_configs(profile, "linear", list(profile.image_tasks))} == {SMOKE.head_epochs}
    # a subset run takes as many steps as that target's full set does
    from cmpt.scarcity import equal_step_epochs
    assert equal_step_epochs(profile, 8, "vpt", "clevr_count") == 7 * 2  # 64 images: 2 steps an epoch; 8: 1
    with pytest.raises(InputError, match="target_epochs_for.*positive"):
        SMOKE.replace(target_epochs_for=[["clevr_count", 0]])


# --- precision ------------------------------------------------------------------------------------------------------

def test_auto_precision_is_measured_once_per_machine_and_kept_in_every_config(monkeypatch, tmp_path):
    import json

    from cmpt import devices
    from cmpt.profiles import ProfileError
    from cmpt.results import config_hash
    from cmpt.runner import train_config

    monkeypatch.setenv("CMPT_CACHE", str(tmp_path))
    devices.cpu_bf16_speedup.cache_clear()
    try:
        speedup = devices.cpu_bf16_speedup(repeats=1)
        kept = json.loads((tmp_path / "precision.json").read_text())
        assert speedup > 0 and list(kept.values()) == [speedup]
        devices.cpu_bf16_speedup.cache_clear()
        monkeypatch.setattr(devices, "autocast", lambda *a: pytest.fail("measured again instead of read"))
        assert devices.cpu_bf16_speedup(repeats=1) == speedup  # another process of the machine reads it
    finally:
        devices.cpu_bf16_speedup.cache_clear()

    default = get_profile("default")
    assert default.precision == "auto" and get_profile("smoke").precision == "fp32"
    for measured, expected in ((devices.BF16_MIN_SPEEDUP + 0.3, "bf16"), (0.9, "fp32")):
        monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: measured)
        assert devices.chosen_precision("auto", "cpu") == expected
    assert devices.chosen_precision("bf16", "cpu") == "bf16" and devices.chosen_precision("fp32", "cpu") == "fp32"

    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: 0.9)
    fp32 = setting_configs(default.replace(device="cpu"), "vpt", ["digits"])[0]
    assert fp32.precision is None and "precision" not in fp32.as_config()  # hashes as the records before the field
    assert train_config(fp32.replace(lr=0.1)).precision == "fp32"
    monkeypatch.setattr(devices, "cpu_bf16_speedup", lambda: 2.0)
    bf16 = setting_configs(default.replace(device="cpu"), "vpt", ["digits"])[0]
    assert bf16.precision == "bf16" and config_hash(bf16) != config_hash(fp32)  # records of the two never mix
    assert train_config(bf16.replace(lr=0.1)).precision == "bf16"
    assert setting_configs(default.replace(precision="fp32"), "vpt", ["digits"])[0] == fp32
    with pytest.raises(ProfileError, match="precision must be one of"):
        default.replace(precision="fp8")
    with pytest.raises(InputError, match="precision must be None"):
        fp32.replace(precision="auto")
