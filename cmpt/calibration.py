"""Each setting's own learning rate, chosen once on validation from its grid, before the runs.

A config whose ``lr`` is None carries the grid it is chosen from (``rates``; see
:func:`cmpt.run_config.recipe`). :func:`resolve_rates` turns such configs into runnable ones:

1. the *calibration runs* of a setting are its runs at the profile's first seed on every target
   of the profile (from the profile's first source where the setting takes one; attention at its
   default l_s; the full training set), one per rate of the grid;
2. the chosen rate is the one with the best mean last-epoch validation accuracy over those runs
   (the smallest rate on ties);
3. every config of the setting (every seed, source, subset, l_s) runs at that rate.

The calibration runs are ordinary runs in the results store: the one at the chosen rate *is*
that target's first-seed run, so the grid costs one extra run per target and rate, and a later
chapter that asks for the same setting reads the same choice. Which rate was chosen is a pure
function of stored records, so a re-run chooses the same. For a head-only setting the rate is
its head's; for the others it is the rate of what they train besides the head (the head keeps
``Profile.head_lr``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

from cmpt.errors import InputError
from cmpt.profiles import Profile
from cmpt.results import ResultsStore, RunFailedError
from cmpt.run_config import TargetConfig, default_concentrated, epochs_for, setting_configs
from cmpt.settings import get_setting

__all__ = ["calibration_configs", "calibration_table", "chosen_rate", "needs_rate", "recipe_table", "resolve_rates"]

#: runs a list of configs into the store (e.g. a sweep); the calibration runs go through it
RunAll = Callable[[list[TargetConfig]], Any]


def needs_rate(config: TargetConfig) -> bool:
    """Whether ``config``'s learning rate is still to be chosen."""
    return config.lr is None


def calibration_configs(profile: Profile, setting: str, rates: Sequence[float]) -> list[TargetConfig]:
    """The calibration runs of ``setting``: first seed x every target x every rate of ``rates``."""
    record = get_setting(setting)
    source = profile.text_tasks[0] if record.takes_source else None
    extra: dict[str, Any] = {"concentrated": default_concentrated(profile)} if setting == "attention" else {}
    base = setting_configs(profile, setting, list(profile.image_tasks), [source], seeds=profile.seeds[:1], **extra)
    return [c.replace(lr=float(rate), rates=tuple(rates)) for rate in rates for c in base]


def _grid_key(config: TargetConfig) -> tuple[str, tuple[float, ...]]:
    return config.setting, tuple(config.rates or ())


def calibration_table(store: ResultsStore, profile: Profile, setting: str, rates: Sequence[float]) -> pd.DataFrame:
    """One row per calibration run: target, rate, validation and last-epoch train accuracy (NaN where missing)."""
    rows = []
    for config in calibration_configs(profile, setting, rates):
        record = store.get(config)
        done = record is not None and record.get("status") == "done"
        final = record["final"] if done else {}
        rows.append({"setting": setting, "target": config.target, "rate": config.lr,
                     "val_acc": final.get("val_acc"), "last_train_acc": final.get("last_train_acc"),
                     "seconds": record.get("wall_time_s") if done else None})
    return pd.DataFrame(rows)


def chosen_rate(store: ResultsStore, profile: Profile, setting: str, rates: Sequence[float]) -> float:
    """The rate of ``rates`` with the best mean validation accuracy over the calibration runs (smallest on ties)."""
    table = calibration_table(store, profile, setting, rates)
    if table["val_acc"].isna().any():
        missing = table[table["val_acc"].isna()]
        raise RunFailedError(f"{len(missing)} calibration run(s) of {setting!r} have not finished (e.g. "
                             f"{missing.iloc[0]['target']} at rate {missing.iloc[0]['rate']}); run the sweep again")
    means = table.groupby("rate")["val_acc"].mean().sort_index()
    return float(means.idxmax())  # idxmax: the first (smallest) rate among equal means


def resolve_rates(profile: Profile, configs: Iterable[TargetConfig], store: ResultsStore,
                  run: RunAll | None = None) -> list[TargetConfig]:
    """``configs`` with every missing rate chosen (running the calibration runs through ``run`` first).

    Without ``run`` only stored calibration runs are read; a missing one is an error.
    """
    configs = list(configs)
    grids = {_grid_key(c) for c in configs if needs_rate(c)}
    if not grids:
        return configs
    for setting, rates in grids:
        if not rates:
            raise InputError(f"a {setting!r} config has neither a learning rate nor a grid to choose one from")
    if run is not None:
        run([c for setting, rates in sorted(grids) for c in calibration_configs(profile, setting, rates)])
    chosen = {key: chosen_rate(store, profile, *key) for key in grids}
    return [c.replace(lr=chosen[_grid_key(c)]) if needs_rate(c) else c for c in configs]


def recipe_table(profile: Profile, settings: Sequence[str], store: ResultsStore) -> pd.DataFrame:
    """Per setting: what trains, its optimiser steps (and where a target gets more), schedule, head and body
    rates, and the rate choice.

    ``chosen`` is the rate :func:`chosen_rate` picked (NaN while its calibration runs are
    missing); ``calibration s`` the seconds its calibration runs took, all rates together.
    """
    rows = []
    for setting in settings:
        record = get_setting(setting)
        config = setting_configs(profile, setting, [profile.image_tasks[0]], [profile.text_tasks[0]
                                 if record.takes_source else None], seeds=profile.seeds[:1])[0]
        per_epoch = max(1, math.ceil(config.sizes[0] / config.batch_size))
        longer = {t: epochs_for(profile, setting, t) for t in profile.image_tasks}
        longer = {t: e for t, e in longer.items() if e != config.epochs}
        steps = f"{config.epochs * per_epoch}" + "".join(f" ({e * per_epoch} on {t})" for t, e in longer.items())
        chosen, seconds = float("nan"), float("nan")
        if config.rates:
            table = calibration_table(store, profile, setting, config.rates)
            seconds = float(table["seconds"].sum()) if table["seconds"].notna().all() else float("nan")
            if table["val_acc"].notna().all():
                chosen = chosen_rate(store, profile, setting, config.rates)
        rows.append({"setting": setting, "trains": record.trains, "epochs": config.epochs,
                     "steps (full set)": steps, "batch": config.batch_size,
                     "schedule": f"{config.schedule or 'epoch'}, warm-up {config.warmup or 1} ep",
                     "head": f"{config.head_init or 'default'} init" + (f", lr {config.head_lr:g}" if config.head_lr
                                                                       else ""),
                     "grid": ", ".join(f"{r:g}" for r in config.rates or (config.lr,)),
                     "chosen": chosen if config.rates else config.lr, "calibration s": seconds})
    return pd.DataFrame(rows).set_index("setting")
