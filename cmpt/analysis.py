"""Tables the chapters show, computed from results-store tables (pure pandas)."""

from __future__ import annotations

import pandas as pd

from cmpt.data import IMAGE_TASKS

__all__ = ["GROUP_ORDER", "group_of", "group_summary", "mean_over_seeds", "relative_to"]

GROUP_ORDER = ("Natural", "Specialized", "Structured")


def group_of(task: str) -> str:
    """VTAB-style group of an image task (embedded or VTAB name)."""
    spec = IMAGE_TASKS.get(task)
    if spec is not None:
        return spec.group
    from cmpt.data import VTAB_TASKS

    return VTAB_TASKS[task].group


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


def relative_to(table: pd.DataFrame, reference: pd.Series, metric: str = "test_acc") -> pd.Series:
    """``metric`` minus the reference accuracy of the same target (index of ``reference``)."""
    return table[metric] - table["target"].map(reference)
