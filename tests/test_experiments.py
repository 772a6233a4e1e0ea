"""Experiments on the smoke profile: source prompts, target runs, caching and resuming."""

import pytest
import torch

from cmpt.experiments import (prepare_target, results_store, run_target, source_bank, source_config,
                              target_config, target_sweep)
from cmpt.backbones import load_vision_backbone
from cmpt.profiles import get_profile
from cmpt.results import ResultsStore

SMOKE = get_profile("smoke")


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path))
    return tmp_path


def test_source_bank_trains_once_and_beats_chance(results):
    bank = source_bank(SMOKE)
    assert set(bank) == set(SMOKE.text_tasks)
    for task, prompt in bank.items():
        assert (prompt.length, prompt.width) == (SMOKE.prompt_length, 32)
        assert prompt.task == task and prompt.training["selection"] == "val"
    store = results_store(SMOKE)
    keywords = store.get(source_config(SMOKE, "keywords", SMOKE.seeds[0]))["final"]
    assert keywords["test_acc"] > 0.6  # binary task, chance 0.5
    again = source_bank(SMOKE)  # read back from the store, not retrained
    assert all(torch.equal(again[t].tensor, bank[t].tensor) for t in bank)


def test_cached_head_only_training_equals_training_behind_the_backbone(results):
    backbone = load_vision_backbone(SMOKE.vision_backbone, SMOKE.image_size)
    data = prepare_target("dsprites_loc", SMOKE, backbone)
    source = type("P", (), {"tensor": torch.randn(SMOKE.prompt_length, 32)})()
    config = target_config(SMOKE, "frozen", "dsprites_loc", seed=3, source="x", lr=0.05)
    cached = run_target(config, backbone, data, source, cache_features=True)
    direct = run_target(config, backbone, data, source, cache_features=False)
    assert cached["final"]["test_acc"] == pytest.approx(direct["final"]["test_acc"], abs=1e-6)
    for a, b in zip(cached["metrics_per_epoch"], direct["metrics_per_epoch"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_interrupted_target_sweep_resumes_without_redoing_runs(results, monkeypatch):
    import cmpt.experiments as experiments

    configs = [target_config(SMOKE, "linear", t, seed=s) for t in SMOKE.image_tasks for s in (1, 2)]
    calls = []
    real = experiments.run_target

    def flaky(config, *args, **kwargs):
        calls.append(config["target"] + str(config["seed"]))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(config, *args, **kwargs)

    monkeypatch.setattr(experiments, "run_target", flaky)
    with pytest.raises(KeyboardInterrupt):
        target_sweep(SMOKE, configs)
    assert len(ResultsStore(results / "smoke").records()) == 2
    table = target_sweep(SMOKE, configs)
    assert len(table) == 4 and len(calls) == 3 + 2  # only the two missing runs ran again
