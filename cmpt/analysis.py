"""Tables the chapters show, computed from results-store tables (pure pandas)."""

from __future__ import annotations

import pandas as pd

from cmpt.data.image_tasks import IMAGE_GROUPS as GROUP_ORDER
from cmpt.data.image_tasks import group_of

__all__ = ["CONVERGED", "GROUP_ORDER", "convergence_table", "group_of", "group_summary", "loss_curves",
           "mean_over_seeds", "unconverged"]

#: last-epoch train accuracy at which a run counts as fitting its training set
CONVERGED = 0.95

def mean_over_seeds(table: pd.DataFrame, keys: list[str], metric: str = "test_acc") -> pd.DataFrame:
    """Mean and standard deviation of ``metric`` over seeds, per ``keys``; with run counts."""
    out = table.groupby(keys, dropna=False)[metric].agg(["mean", "std", "count"]).reset_index()
    return out.rename(columns={"mean": metric, "std": f"{metric}_std", "count": "seeds"})


def group_summary(table: pd.DataFrame, row: str = "setting", metric: str = "test_acc") -> pd.DataFrame:
    """Per ``row``: the mean of each VTAB-style group, the mean of group means, the mean of tasks.

    Both averages are given because the literature uses both; their names say which.
    """
    per_task = table.groupby([row, "target"])[metric].mean().reset_index()
    per_task["group"] = per_task["target"].map(group_of)
    groups = per_task.pivot_table(index=row, columns="group", values=metric, aggfunc="mean")
    groups = groups[[g for g in GROUP_ORDER if g in groups.columns]]
    groups["mean of group means"] = groups.mean(axis=1)
    groups["mean of tasks"] = per_task.groupby(row)[metric].mean()
    return groups


def convergence_table(runs: pd.DataFrame, keys: tuple[str, ...] = ("setting", "target")) -> pd.DataFrame:
    """Per ``keys``: last-epoch train accuracy (mean and minimum over the runs), train loss, loss start and peak.

    ``start`` is the first batch's loss (a neutral head starts near ln C); ``peak`` the largest
    epoch-mean train loss, which stays below ``start`` when the warm-up is long enough.
    """
    grouped = runs.groupby(list(keys), sort=False)
    out = grouped.agg(runs=("last_train_acc", "size"), train_acc_mean=("last_train_acc", "mean"),
                      train_acc_min=("last_train_acc", "min"), train_loss_mean=("last_train_loss", "mean"),
                      loss_start=("initial_loss", "mean"), loss_peak=("max_train_loss", "max"))
    return out.reset_index()


def unconverged(runs: pd.DataFrame, threshold: float = CONVERGED) -> pd.DataFrame:
    """The runs whose last-epoch train accuracy is below ``threshold``."""
    cols = [c for c in ("setting", "source", "target", "seed", "last_train_acc", "last_train_loss") if c in runs]
    return runs.loc[runs["last_train_acc"] < threshold, cols].reset_index(drop=True)


def loss_curves(records: list[dict]) -> pd.DataFrame:
    """Long table (setting, seed, epoch, train_loss, train_acc) of stored run records' epochs."""
    rows = [{"setting": r["config"]["setting"], "seed": r["config"]["seed"], "epoch": row["epoch"],
             "train_loss": row["train_loss"], "train_acc": row["train_acc"]}
            for r in records for row in r["metrics_per_epoch"]]
    return pd.DataFrame(rows)
