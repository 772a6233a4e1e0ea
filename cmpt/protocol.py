"""The evaluation protocol as data: one run per seed, or VTAB-1k's search-then-final.

``Profile.protocol`` names it:

``"val"``
    each config runs as it is, once per seed: trained on the train split, the epoch chosen on
    the validation split (``Profile.selection``), the test split evaluated once. The embedded
    default uses it: its budget has no room for a grid.
``"vtab"``
    VTAB-1k's protocol. Per setting, target, source and training subset, a grid search at the
    profile's first seed trains on train800 and selects on val200 (hyper-parameters and epoch
    count: the best validation accuracy over the grid, earliest grid point on ties); then one
    *final* run per seed trains on train800val200 at the chosen values, on the searched schedule
    stopped at the chosen epoch, and is tested once. Attention transfer searches its concentrated length l_s first
    (``Profile.concentrated_grid``, at the setting's fixed recipe), then its learning rate and
    weight decay at that l_s.

Every grid point and every final run is a record in the results store, so a sweep (local or
Ray) resumes and skips them like any run; which values were chosen is a pure function of the
stored search records, so a re-run recomputes the same finals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from cmpt.cost import grid_cost
from cmpt.profiles import Profile
from cmpt.prompts import Prompt
from cmpt.results import ResultsStore, RunFailedError, config_hash
from cmpt.run_config import TargetConfig
from cmpt.sweep import target_sweep

__all__ = ["PROTOCOL_LABELS", "SearchSpace", "final_config", "plan_table", "planned_runs", "run_protocol",
           "search_configs", "search_space"]

PROTOCOL_LABELS = {
    "val": "one run per seed on the train split, epoch chosen on validation, tested once",
    "vtab": "grid search on train800 chosen on val200, then one run per seed on train800val200, tested once",
}


@dataclass(frozen=True)
class SearchSpace:
    """The grid of one setting: optimiser, base learning rates, weight decays (and l_s, searched first)."""

    setting: str
    optimizer: str
    lrs: tuple[float, ...]
    weight_decays: tuple[float, ...]
    concentrated: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Search runs per (target, source, subset): the l_s phase plus the learning-rate phase."""
        return len(self.concentrated) + len(self.lrs) * len(self.weight_decays)


def search_space(profile: Profile, setting: str) -> SearchSpace | None:
    """The profile's grid for ``setting`` (None: the setting keeps its fixed recipe)."""
    for name, optimizer, lrs, decays in profile.search:
        if name == setting:
            ls = profile.concentrated_grid if setting == "attention" else ()
            return SearchSpace(setting, optimizer, tuple(lrs), tuple(decays), tuple(ls))
    return None


def _groups(configs: Iterable[TargetConfig]) -> dict[TargetConfig, list[int]]:
    """The units a search is run for (each config with its seed removed) and the seeds asked of each."""
    groups: dict[TargetConfig, list[int]] = {}
    for config in configs:
        groups.setdefault(config.replace(seed=0), []).append(config.seed)
    return groups


def search_configs(base: TargetConfig, space: SearchSpace, seed: int, concentrated: int | None = None,
                   phase: str = "lr") -> list[TargetConfig]:
    """The grid points of one phase (``"ls"`` or ``"lr"``) for ``base`` at ``seed``, in grid order."""
    point = base.replace(seed=seed, stage="search", train_split=None, selection="val")
    if phase == "ls":
        return [point.replace(concentrated=ls) for ls in space.concentrated]
    chosen = concentrated if concentrated is not None else base.concentrated
    return [point.replace(optimizer=space.optimizer, lr=lr, weight_decay=wd, concentrated=chosen)
            for lr in space.lrs for wd in space.weight_decays]


def _best(store: ResultsStore, points: Sequence[TargetConfig]) -> tuple[TargetConfig, int]:
    """The grid point with the best validation accuracy (earliest on ties) and its selected epoch."""
    best: tuple[float, TargetConfig, int] | None = None
    for point in points:
        record = store.get(point)
        if record is None or record["status"] != "done":
            continue
        score = record["final"]["val_acc"]
        if best is None or score > best[0]:
            best = (score, point, int(record["final"]["best_epoch"]))
    if best is None:
        raise RunFailedError(f"no search run of {points[0].setting} on {points[0].target} finished; "
                             "their records say why (run the sweep again to retry them)")
    return best[1], best[2]


def final_config(chosen: TargetConfig, epochs: int, seed: int) -> TargetConfig:
    """The final run at the chosen values: train+val on the searched schedule, stopped after ``epochs``.

    The schedule (warm-up and cosine over the search run's ``chosen.epochs``) is the one the
    search chose from; the run stops at the chosen epoch and that epoch counts. A chosen epoch
    equal to the schedule's length runs it whole.
    """
    stop = min(max(1, epochs), chosen.epochs)
    return chosen.replace(seed=seed, stage="final", train_split="trainval", selection="last",
                          stop_epoch=stop if stop < chosen.epochs else None)


def run_protocol(profile: Profile, configs: Iterable[TargetConfig], prompts: Mapping[str, Prompt] | None = None,
                 desc: str = "runs", store: ResultsStore | None = None, **options: Any) -> pd.DataFrame:
    """Run ``configs`` under ``profile.protocol``; the table of the runs whose test accuracy counts.

    Under ``"val"`` that is the configs themselves. Under ``"vtab"`` the searches come first (all
    groups together, phase by phase, so an executor runs them in parallel), then the finals; the
    table holds the final runs; its ``attrs["sweep"]`` counts the runs of every phase.
    ``options`` go to :func:`cmpt.sweep.target_sweep`.
    """
    configs = list(configs)
    store = store or ResultsStore.for_profile(profile)
    if profile.protocol == "val":
        return target_sweep(profile, configs, prompts, desc=desc, store=store, **options)
    groups = _groups(configs)
    seed = profile.seeds[0]
    chosen: dict[TargetConfig, tuple[TargetConfig, int]] = {}
    spaces = {key: search_space(profile, key.setting) for key in groups}
    ls_phase = {key: search_configs(key, space, seed, phase="ls") for key, space in spaces.items()
                if space is not None and space.concentrated}
    reports = []
    if ls_phase:
        reports.append(target_sweep(profile, [c for points in ls_phase.values() for c in points], prompts,
                                    desc=f"{desc}: l_s search", store=store, save_models=False,
                                    **options).attrs["sweep"])
    lr_phase = {}
    for key, space in spaces.items():
        if space is None:
            chosen[key] = (key.replace(seed=seed), key.epochs)
            continue
        concentrated = _best(store, ls_phase[key])[0].concentrated if key in ls_phase else None
        lr_phase[key] = search_configs(key, space, seed, concentrated=concentrated)
    if lr_phase:
        reports.append(target_sweep(profile, [c for points in lr_phase.values() for c in points], prompts,
                                    desc=f"{desc}: search", store=store, save_models=False,
                                    **options).attrs["sweep"])
    for key, points in lr_phase.items():
        chosen[key] = _best(store, points)
    finals = [final_config(chosen[key][0], chosen[key][1], s) for key, seeds in groups.items() for s in seeds]
    table = target_sweep(profile, finals, prompts, desc=f"{desc}: final runs", store=store, **options)
    reports.append(table.attrs["sweep"])
    table.attrs["sweep"] = {"executor": reports[-1]["executor"],
                            **{k: sum(r[k] for r in reports) for k in ("total", "ran", "skipped")},
                            "failed": [h for r in reports for h in r["failed"]]}
    return table


def planned_runs(profile: Profile, configs: Iterable[TargetConfig]) -> list[TargetConfig]:
    """Every run ``configs`` need under ``profile.protocol``, without running anything.

    The chosen values are not known before the searches ran, so the finals are planned at the
    setting's own recipe and full epoch count, and the learning-rate phase at the config's l_s:
    right in number, and an upper bound on the finals' epochs.
    """
    configs = list(configs)
    if profile.protocol == "val":
        return configs
    groups = _groups(configs)
    seed = profile.seeds[0]
    out: list[TargetConfig] = []
    for key, seeds in groups.items():
        space = search_space(profile, key.setting)
        if space is not None:
            out += search_configs(key, space, seed, phase="ls") if space.concentrated else []
            out += search_configs(key, space, seed)
        out += [final_config(key, key.epochs, s) for s in seeds]
    return list({config_hash(c): c for c in out}.values())  # a point two phases share runs once


def plan_table(profile: Profile, configs: Iterable[TargetConfig], **cost: Any) -> pd.DataFrame:
    """Per setting: search runs, final runs and projected GPU hours (``cost`` goes to :func:`cmpt.cost.grid_cost`)."""
    runs = planned_runs(profile, configs)
    counts = pd.DataFrame([{"setting": c.setting, "stage": c.stage or "single"} for c in runs])
    table = counts.groupby(["setting", "stage"], sort=False).size().unstack(fill_value=0)
    hours = grid_cost(profile, runs, **cost)["GPU hours"]
    table["GPU hours"] = hours
    return table
