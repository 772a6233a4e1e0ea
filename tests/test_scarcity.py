"""Data scarcity: fixed stratified nested subsets, resumable sweeps, gains over the reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cmpt.calibration import resolve_rates
from cmpt.data import load_image_task
from cmpt.runner import subset_indices
from cmpt.profiles import get_profile
from cmpt.results import ResultsStore
from cmpt.scarcity import choose_sources, default_targets, equal_step_epochs, plan_runs, run_scarcity, subset_plan
from cmpt.scarcity_curves import gain_over

SMOKE = get_profile("smoke")
ROOT = Path(__file__).resolve().parents[1]
SIZES = [SMOKE.n_train, SMOKE.n_val, SMOKE.n_test]


def test_kshot_subsets_are_stratified_nested_and_skip_the_full_set():
    plan = subset_plan(SMOKE, ["clevr_count", "dsprites_loc"], shots=[1, 2, 4, 100], fractions=[0.25, 0.5],
                       seeds=[42, 7])
    assert plan["stratified"].all() and plan["nested"].all()
    task = load_image_task("clevr_count", SMOKE)
    avail = np.bincount(task.labels[task.splits["train"]], minlength=task.num_classes)
    for _, row in plan[(plan.regime == "kshot") & (plan.target == "clevr_count")].iterrows():
        counts = np.bincount(task.labels[list(row.indices)], minlength=task.num_classes)
        assert (counts == np.minimum(row.k, avail)).all()  # k per class, capped by what the class has
    train = set(task.splits["train"].tolist())
    # dsprites_loc has 16 classes and 64 training images (4 each): 4-shot is the full set, not run again
    dsprites = plan[(plan.target == "dsprites_loc") & (plan.seed == 42)]
    assert sorted(dsprites.label) == ["1-shot", "2-shot", "25%", "50%", "full"]
    assert set(plan[plan.target == "clevr_count"].k.dropna()) == {1, 2, 4}  # 100-shot = full, dropped
    one, two = (set(plan[(plan.target == "clevr_count") & (plan.seed == 42) & (plan.k == k)].indices.iloc[0])
                for k in (1, 2))
    assert one < two <= train
    other_seed = set(plan[(plan.target == "clevr_count") & (plan.seed == 7) & (plan.k == 2)].indices.iloc[0])
    assert other_seed != two


SUBSETS_SCRIPT = """
import json, sys
from cmpt.calibration import resolve_rates
from cmpt.data import load_image_task
from cmpt.runner import subset_indices
from cmpt.profiles import get_profile

cfg = get_profile("smoke")
task = load_image_task("clevr_count", cfg)
sizes = [cfg.n_train, cfg.n_val, cfg.n_test]
specs = [{"kind": "kshot", "k": k, "seed": 42} for k in (1, 2, 4)] + [{"kind": "fraction", "fraction": 0.3, "seed": 42}]
json.dump([subset_indices(task, spec, sizes).tolist() for spec in specs], sys.stdout)
"""


def test_subsets_are_the_same_in_another_process(tmp_path):
    def run(cache: Path, hash_seed: str) -> list:
        env = {**os.environ, "CMPT_CACHE": str(cache), "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-c", SUBSETS_SCRIPT], capture_output=True, text=True, env=env,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    first = run(tmp_path / "cache-a", "1")
    second = run(tmp_path / "cache-b", "12345")  # computed afresh (no saved split), other hash seed
    assert first == second
    task = load_image_task("clevr_count", SMOKE)
    here = [subset_indices(task, {"kind": "kshot", "k": k, "seed": 42}, SIZES).tolist() for k in (1, 2, 4)]
    assert first[:3] == here
    assert list((tmp_path / "cache-b" / "splits").glob("*kshot-2--seed42.json"))  # saved there too


def test_interrupted_scarcity_sweep_resumes_without_redoing_runs(tmp_path, monkeypatch):
    import cmpt.runner as runner

    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path))
    plan = subset_plan(SMOKE, ["clevr_count"], shots=[1, 2])
    runs = plan_runs(SMOKE, plan, ["linear", "vpt"])
    assert len(runs) == 6  # (1-shot, 2-shot, full) x (linear, vpt)
    calls = []
    real = runner.run_target

    def flaky(config, *args, **kwargs):
        calls.append(config)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(config, *args, **kwargs)

    monkeypatch.setattr(runner, "run_target", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_scarcity(SMOKE, runs)
    assert len(ResultsStore(tmp_path / "smoke").records()) == 3
    tidy = run_scarcity(SMOKE, runs)
    stored = len(ResultsStore(tmp_path / "smoke").records())
    assert stored == 8 + 6 - 2  # calibration (2 rates x 2 targets x 2 settings) + planned - the shared full runs
    assert len(calls) == 4 + stored - 3  # the interrupted run and those never started, nothing else
    assert len(tidy) == 6 and tidy.test_acc.between(0, 1).all()
    subset_rows = tidy[tidy.regime == "kshot"]
    assert (subset_rows.n_train == subset_rows.k * 8).all()  # 8 classes, >= 2 training images each
    store = ResultsStore(tmp_path / "smoke")
    record = store.get(resolve_rates(SMOKE, [runs[0][1]], store)[0])
    assert record["config"]["train_subset"] == {"kind": "kshot", "k": 1, "seed": 42}
    assert record["final"]["n_train"] == 8
    # a subset run takes as many optimiser steps as the full set (8 images: 1 step an epoch; 64: 2 an epoch)
    # and reports its last epoch, validated once at the end
    epochs = record["config"]["epochs"]
    assert epochs == equal_step_epochs(SMOKE, 8, "linear") == 2 * SMOKE.head_epochs
    assert record["config"]["selection"] == "last" and record["final"]["best_epoch"] == epochs
    assert [row["val_acc"] is not None for row in record["metrics_per_epoch"]] == [False] * (epochs - 1) + [True]
    full = [c for m, c in runs if m["regime"] == "full"]
    assert full and all(c.selection == SMOKE.selection for c in full)
    assert all("train_subset" not in c.as_config() for c in full)  # full-data configs keep their old keys (and hashes)


def test_source_choice_by_validation_and_by_test():
    runs = pd.DataFrame({"target": ["a"] * 4, "source": ["x", "x", "y", "z"], "seed": [1, 2, 1, 1],
                         "val_acc": [0.9, 0.7, 0.6, 0.5], "test_acc": [0.5, 0.5, 0.4, 0.7]})
    chosen = choose_sources(runs)
    assert chosen.loc["a", "val"] == "x" and chosen.loc["a", "oracle"] == "z"


def _tidy(gains: dict[str, list[float]], sizes=(10, 20, 40), labels=("1-shot", "2-shot", "full")) -> pd.DataFrame:
    rows = []
    for setting, accs in {"vpt": [0.5, 0.5, 0.5], **gains}.items():
        for n, label, acc in zip(sizes, labels, accs):
            rows.append({"setting": setting, "choice": "none" if setting == "vpt" else "val", "target": "t",
                         "regime": "full" if label == "full" else "kshot", "k": None, "fraction": None,
                         "label": label, "n_train": n, "seed": 42, "test_acc": acc})
    return pd.DataFrame(rows)



def test_gain_over_is_each_setting_minus_the_reference_on_the_same_training_set():
    gains = gain_over(_tidy({"projection": [0.6, 0.55, 0.45], "frozen": [0.4, 0.5, 0.45]}))
    table = gains.set_index(["setting", "label"])["gain"]
    assert table[("projection", "1-shot")] == pytest.approx(0.1) and table[("frozen", "full")] == pytest.approx(-0.05)
    assert set(gains.setting) == {"projection", "frozen"} and gains["source"].isna().all()  # no source column


def test_default_targets_take_one_per_group_with_fewest_classes():
    four = get_profile("default").replace(image_tasks=("animals", "digits", "textures", "clevr_count"))
    assert default_targets(four) == ["animals", "textures", "clevr_count"]  # animals and digits tie: profile order
    assert default_targets(get_profile("default")) == ["animals", "clevr_count"]
    assert default_targets(SMOKE) == ["clevr_count"]
