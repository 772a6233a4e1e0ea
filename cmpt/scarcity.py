"""Data scarcity: the runs of accuracy against training-set size, on fixed subsets, through the results store.

The curves drawn from their table are :mod:`cmpt.scarcity_curves`.

The protocol (CoOp's, adapted; the CMPT paper does not publish its counts):

- **subsets** of each target's train split: ``k`` examples per class (all of a class that has
  fewer) and stratified fractions, drawn by :func:`cmpt.runner.subset_indices` from one
  permutation per class and seed — so for one seed the 1-shot set lies inside the 2-shot set,
  and so on up to the full split — and saved under the cache's ``splits/``;
- the subset's seed is the run's seed: each seed draws another subset *and* another
  initialisation, so seed bands show both sources of variance;
- a subset as large as the whole train split is not run: the full-data run stands for it
  (it is the run the earlier chapters stored, same config, reused);
- a subset run reports its **last** epoch: a k-shot budget has no room for model selection
  on a validation split (it would hold more labelled images than the training set). Test is the
  whole test split; the recipe (batch, learning rates, schedule) is the full-data run's, and so
  is the number of **optimiser steps** (:func:`equal_step_epochs`): a smaller set trains more
  epochs, so a comparison across sizes is about data, not about optimisation;
- transfer settings take one source per target, chosen from full-data projection transfer
  by validation accuracy (``choice="val"``) and, labelled as an oracle, by test accuracy
  (``choice="oracle"``, the paper's ground-truth transferability).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cmpt.data import IMAGE_TASKS, VTAB_TASKS, load_image_task
from cmpt.data.image_tasks import IMAGE_GROUPS, group_of
from cmpt.results import ResultsStore, config_hash
from cmpt.run_config import TargetConfig, default_concentrated, epochs_for, setting_configs, warmup_for
from cmpt.calibration import resolve_rates
from cmpt.runner import subset_indices
from cmpt.settings import get_setting
from cmpt.sweep import target_sweep
from cmpt.profiles import Profile

__all__ = ["CHOICES", "choose_sources", "default_targets", "equal_step_epochs", "plan_runs", "run_scarcity",
           "subset_plan"]

CHOICES = {"none": "no source", "val": "source chosen on validation",
           "oracle": "source chosen on test (ground truth; an oracle)"}


def _num_classes(name: str, profile: Profile) -> int:
    if name in IMAGE_TASKS and profile.name != "paper":
        return len(IMAGE_TASKS[name].classes)
    return VTAB_TASKS[name].num_classes


def default_targets(profile: Profile) -> list[str]:
    """One target per VTAB-style group of ``profile.image_tasks``: the one with the fewest classes.

    Fewest classes means the cheapest k-shot sets; ties go to the profile's order.
    """
    best: dict[str, str] = {}
    for task in profile.image_tasks:
        group = group_of(task)
        if group not in best or _num_classes(task, profile) < _num_classes(best[group], profile):
            best[group] = task
    return [best[g] for g in IMAGE_GROUPS if g in best]


def _subset_row(task: Any, regime: str, value: float, seed: int, indices: np.ndarray, train: np.ndarray) -> dict:
    labels_all = task.labels
    avail = np.bincount(labels_all[train], minlength=task.num_classes)
    got = np.bincount(labels_all[indices], minlength=task.num_classes)
    if regime == "kshot":
        stratified = bool(np.all(got == np.minimum(int(value), avail)))
        label = f"{int(value)}-shot"
    elif regime == "fraction":
        stratified = bool(np.all((got >= np.minimum(avail, 1)) & (np.abs(got - value * avail) < 1 + 1e-9)))
        label = f"{value:.0%}"
    else:
        stratified, label = True, "full"
    return {"target": task.name, "group": group_of(task.name), "regime": regime,
            "k": int(value) if regime == "kshot" else None, "fraction": float(value) if regime == "fraction" else None,
            "label": label, "seed": int(seed), "n_train": int(len(indices)), "n_full": int(len(train)),
            "classes": int(task.num_classes), "stratified": stratified,
            "indices": tuple(int(i) for i in np.sort(indices))}


def subset_plan(profile: Profile, targets: Sequence[str], shots: Iterable[int] = (), fractions: Iterable[float] = (),
                seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Every training set of the study: per target and seed, the k-shot and fraction subsets and the full split.

    Columns: target, group, regime (``kshot`` / ``fraction`` / ``full``), k, fraction, label,
    seed, n_train, n_full, classes, stratified (k per class, or within one of the exact share),
    nested (inside the next larger set of its regime, the last inside the full split), indices
    (pool indices), spec (the ``train_subset`` of the run, None for the full split).
    Subsets that would equal the full split are left out (the full run stands for them).
    """
    seeds = list(seeds or profile.seeds)
    sizes = [profile.n_train, profile.n_val, profile.n_test]
    rows = []
    for name in targets:
        task = load_image_task(name, profile)
        train = np.asarray(task.splits["train"])
        for seed in seeds:
            rows.append({**_subset_row(task, "full", 1.0, seed, train, train), "spec": None})
            for regime, values in (("kshot", sorted({int(k) for k in shots})),
                                   ("fraction", sorted({float(f) for f in fractions}))):
                for value in values:
                    key = "k" if regime == "kshot" else "fraction"
                    spec = {"kind": regime, key: value, "seed": int(seed)}
                    chosen = subset_indices(task, spec, sizes)
                    if len(chosen) < len(train):
                        rows.append({**_subset_row(task, regime, value, seed, chosen, train), "spec": spec})
    plan = pd.DataFrame(rows)
    plan["nested"] = _nested(plan)
    order = {"kshot": 0, "fraction": 1, "full": 2}
    return plan.sort_values(["target", "seed", "regime", "n_train"], key=lambda c: c.map(order) if c.name == "regime"
                            else c).reset_index(drop=True)


def _nested(plan: pd.DataFrame) -> list[bool]:
    out = []
    for _, row in plan.iterrows():
        same = plan[(plan.target == row.target) & (plan.seed == row.seed)]
        bigger = same[(same.regime.isin([row.regime, "full"])) & (same.n_train > row.n_train)]
        if row.regime == "full":
            out.append(True)
            continue
        nxt = bigger.sort_values("n_train").iloc[0]
        out.append(set(row.indices) <= set(nxt.indices))
    return out


def choose_sources(projection: pd.DataFrame) -> pd.DataFrame:
    """Per target, the source with the best mean validation accuracy (``val``) and best test accuracy (``oracle``).

    ``projection``: a table of full-data projection-transfer runs (target, source, val_acc,
    test_acc; several seeds are averaged). Ties go to the alphabetically first source.
    """
    means = projection.groupby(["target", "source"])[["val_acc", "test_acc"]].mean().reset_index()
    means = means.sort_values(["target", "source"])
    rows = {}
    for target, group in means.groupby("target"):
        by_val = group.loc[group["val_acc"].idxmax()]
        by_test = group.loc[group["test_acc"].idxmax()]
        rows[target] = {"val": by_val.source, "oracle": by_test.source, "val_acc of val choice": by_val.val_acc,
                        "test_acc of val choice": by_val.test_acc, "test_acc of oracle": by_test.test_acc}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("target")


def equal_step_epochs(profile: Profile, n_train: int, setting: str, target: str | None = None) -> int:
    """Epochs at which ``n_train`` images take as many optimiser steps as the full training set of ``target`` does."""
    full = epochs_for(profile, setting, target)
    per_epoch = lambda n: max(1, math.ceil(n / profile.batch_size))  # noqa: E731
    return max(1, math.ceil(full * per_epoch(profile.n_train) / per_epoch(int(n_train))))


def plan_runs(profile: Profile, plan: pd.DataFrame, settings: Sequence[str], sources: pd.DataFrame | None = None,
              concentrated: int | None = None, scaled: bool = False,
              choices: Sequence[str] = ("val", "oracle")) -> list[tuple[dict[str, Any], TargetConfig]]:
    """``(meta, config)`` for every setting x training set (x source ``choices`` for transfer settings).

    Configs are the ones :func:`cmpt.run_config.setting_configs` makes (full-data ones are
    the earlier chapters' runs, so they are reused); attention transfer uses ``concentrated``
    (default: half the prompt, the attention chapter's first length). When both choices pick
    the same source the two rows share one config (it runs once).
    """
    runs = []
    for _, row in plan.iterrows():
        meta = {key: row[key] for key in ("target", "group", "regime", "k", "fraction", "label", "n_train", "seed")}
        for setting in settings:
            extra: dict[str, Any] = {"train_subset": row.spec}
            if row.spec is not None:  # a subset run: the last epoch counts, after as many steps as full data
                epochs = equal_step_epochs(profile, int(row.n_train), setting, row.target)
                extra.update(selection="last", epochs=epochs, warmup=warmup_for(profile, epochs))
            if setting == "attention":
                extra.update(concentrated=concentrated or default_concentrated(profile), scaled=scaled)
            if get_setting(setting).takes_source:
                if sources is None:
                    raise ValueError(f"setting {setting!r} needs the chosen sources")
                picks = [(choice, sources.loc[row.target, choice]) for choice in choices]
            else:
                picks = [("none", None)]
            for choice, source in picks:
                config = setting_configs(profile, setting, [row.target], [source], seeds=(int(row.seed),), **extra)[0]
                runs.append(({**meta, "setting": setting, "choice": choice, "source": source}, config))
    return runs


def run_scarcity(profile: Profile, runs: Sequence[tuple[dict[str, Any], TargetConfig]],
                 prompts: Mapping[str, Any] | None = None, desc: str = "data scarcity") -> pd.DataFrame:
    """Run what the store lacks (resumable; shared configs run once) and return the tidy table.

    One row per planned run: the meta columns (setting, choice, source, target, group, regime,
    k, fraction, label, n_train, seed), test_acc, val_acc, last_train_acc, epochs, wall_time_s and the
    run's hash (of the config with its chosen rate).
    """
    unique = list({config_hash(c): c for _, c in runs}.values())
    target_sweep(profile, unique, prompts=dict(prompts or {}), desc=desc)
    store = ResultsStore.for_profile(profile)
    resolved = resolve_rates(profile, [c for _, c in runs], store)
    rows = []
    for (meta, _), config in zip(runs, resolved):
        record = store.get(config)
        final = record["final"]
        rows.append({**meta, "test_acc": final["test_acc"], "val_acc": final["val_acc"],
                     "test_correct": final.get("test_correct"), "test_n": final.get("test_n"),
                     "last_train_acc": final.get("last_train_acc"), "epochs": config.epochs,
                     "wall_time_s": record.get("wall_time_s"), "hash": config_hash(config)})
    return pd.DataFrame(rows)
