"""Data-scarcity curves: the tables the data-scarcity chapter plots, from :func:`cmpt.scarcity.run_scarcity`'s table.

Pure pandas on a finished table (one row per run); the runs themselves are planned and made
in :mod:`cmpt.scarcity`.
"""

from __future__ import annotations

import pandas as pd

from cmpt.data.image_tasks import group_of

__all__ = ["SUBSET_KEYS", "curves", "gain_over", "group_curves"]

#: the columns that name one training set of one target
SUBSET_KEYS = ["target", "regime", "k", "fraction", "label", "n_train"]


def curves(tidy: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds per setting, choice and training set."""
    keys = ["setting", "choice"] + SUBSET_KEYS
    out = tidy.groupby(keys, dropna=False)["test_acc"].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": "test_acc", "std": "test_acc_std", "count": "seeds"})


def group_curves(tidy: pd.DataFrame) -> pd.DataFrame:
    """Per VTAB-style group: mean over its targets of the per-target mean over seeds, per training-set label.

    ``"mean of group means"`` is added as a group of its own.
    """
    per_target = curves(tidy)
    per_target["group"] = per_target["target"].map(group_of)
    keys = ["setting", "choice", "regime", "k", "fraction", "label"]
    groups = per_target.groupby(keys + ["group"], dropna=False)["test_acc"].mean().reset_index()
    overall = groups.groupby(keys, dropna=False)["test_acc"].mean().reset_index().assign(group="mean of group means")
    return pd.concat([groups, overall], ignore_index=True)


def gain_over(tidy: pd.DataFrame, reference: str = "vpt") -> pd.DataFrame:
    """Test accuracy of every other setting minus ``reference``'s on the same target, training set and seed.

    Mean (and sd) over seeds, one row per setting, choice, target and training set.
    """
    ref = tidy[tidy.setting == reference][["target", "label", "seed", "test_acc"]].rename(columns={"test_acc": "ref"})
    others = tidy[tidy.setting != reference].merge(ref, on=["target", "label", "seed"], how="inner")
    others["gain"] = others["test_acc"] - others["ref"]
    if "source" not in others:
        others["source"] = None
    keys = ["setting", "choice", "source"] + SUBSET_KEYS
    out = others.groupby(keys, dropna=False, sort=False)["gain"].agg(["mean", "std"]).reset_index()
    return out.rename(columns={"mean": "gain", "std": "gain_std"})
