"""Tables the chapters show, computed from results-store tables (pure pandas)."""

from __future__ import annotations

import pandas as pd

from cmpt.data.image_tasks import IMAGE_GROUPS as GROUP_ORDER
from cmpt.data.image_tasks import group_of

__all__ = ["CONVERGED", "GROUP_ORDER", "build_accounting", "convergence_table", "group_of", "group_summary", "loss_curves",
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


def build_accounting(runs: pd.DataFrame, chapters: dict[str, dict], install_s: float | None = None
                     ) -> tuple[pd.DataFrame, dict[str, float]]:
    """Where a build's time went: per setting, the runs this build made, split into training, evaluation and the rest.

    ``runs``: a results-store table (``wall_time_s``, ``finished_at`` and the fit's ``train_s``,
    ``eval_s``, ``train_images``); ``chapters``: the runner's chapter times of the build
    (``{entry: {"seconds", "finished"}}``); ``install_s``: the environment's install time, if known.
    A run counts when it finished after the first chapter started (earlier runs were reused and
    cost this build nothing). Returns the table (one row per setting, and source prompts) and
    totals: ``chapters_s`` (their measured wall), ``training_s``, ``evaluation_s``, ``in_runs_other_s``
    (model building and data passes inside runs), ``outside_runs_s`` (kernels, shared feature
    passes, plots, the benchmark), ``install_s``, ``wall_s`` (install + chapters) and
    ``efficiency`` (training and evaluation over that wall).
    """
    chapters_s = float(sum(v["seconds"] for v in chapters.values()))
    if chapters:
        ends = pd.to_datetime([v["finished"] for v in chapters.values()], utc=True)
        start = min(end - pd.Timedelta(seconds=v["seconds"]) for end, v in zip(ends, chapters.values()))
    else:
        start = pd.Timestamp.max.tz_localize("UTC")
    made = runs.copy()
    for column in ("train_s", "eval_s", "train_images", "finished_at", "wall_time_s"):
        if column not in made:
            made[column] = None
    made = made[pd.to_datetime(made["finished_at"], utc=True, errors="coerce") >= start]
    made = made.assign(what=["source prompt" if kind == "source_prompt" else setting
                             for kind, setting in zip(made.get("kind", []), made.get("setting", []))])
    numbers = made[["wall_time_s", "train_s", "eval_s", "train_images"]].apply(pd.to_numeric, errors="coerce")
    made = made.assign(**numbers.fillna(0.0))
    table = made.groupby("what").agg(runs=("hash", "count"), run_s=("wall_time_s", "sum"), training_s=("train_s", "sum"),
                                     evaluation_s=("eval_s", "sum"), train_images=("train_images", "sum"))
    table["other_in_runs_s"] = table.run_s - table.training_s - table.evaluation_s
    table["training images/s"] = table.train_images / table.training_s.where(table.training_s > 0)
    table = table.sort_values("run_s", ascending=False).drop(columns="train_images")
    install = float(install_s or 0.0)
    totals = {"chapters_s": chapters_s, "training_s": float(table.training_s.sum()),
              "evaluation_s": float(table.evaluation_s.sum()), "in_runs_other_s": float(table.other_in_runs_s.sum()),
              "install_s": install, "wall_s": install + chapters_s}
    totals["outside_runs_s"] = chapters_s - float(table.run_s.sum())
    totals["efficiency"] = (totals["training_s"] + totals["evaluation_s"]) / totals["wall_s"] if totals["wall_s"] else 0.0
    return table, totals
