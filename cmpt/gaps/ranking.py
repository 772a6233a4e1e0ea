"""Scoring an estimator's ranking of the sources against the ground truth, target by target.

The ground truth is the projection-transfer test accuracy of every (source, target) pair
(mean over seeds). Per target: Kendall's tau-b and Spearman's rho between the estimator's
scores and the accuracies over the sources (:mod:`scipy.stats`; NaN when either side is
constant), and the top-k hit: whether a truly best source (ties all count) is among the
estimator's ``k`` highest-scored sources (score ties broken by source name). Summaries
average over targets (NaNs skipped) and give the spread (standard deviation over targets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from cmpt.stats import rank_correlation

__all__ = ["cost_table", "ground_truth", "kendall", "per_target_ranking", "predicted_ranks", "ranking_summary",
           "recommendations", "spearman", "top_k_hit"]


def kendall(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Kendall's tau-b (:func:`cmpt.stats.rank_correlation`); NaN when either side is constant or short."""
    return rank_correlation(scores, truth, "kendall")


def spearman(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's rho (:func:`cmpt.stats.rank_correlation`); NaN when either side is constant or short."""
    return rank_correlation(scores, truth, "spearman")


def top_k_hit(scores: pd.Series, truth: pd.Series, k: int) -> float:
    """1.0 when a best source by ``truth`` is among the ``k`` best by ``scores`` (both indexed by source)."""
    truth = truth.reindex(scores.index)
    order = sorted(scores.index, key=lambda s: (-scores[s], str(s)))
    best = set(truth.index[truth == truth.max()])
    return float(bool(best & set(order[:k])))


def ground_truth(runs: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """``source, target, acc`` (mean over seeds) from a results-store table of transfer runs."""
    table = runs.groupby(["source", "target"], sort=False)[metric].mean().reset_index()
    return table.rename(columns={metric: "acc"})


def _joined(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    joined = scores.merge(truth, on=["source", "target"], how="inner")
    if joined.empty:
        raise ValueError("no (source, target) pair is shared by the estimate and the ground truth")
    return joined


def per_target_ranking(scores: pd.DataFrame, truth: pd.DataFrame, ks: Sequence[int] = (1, 3)) -> pd.DataFrame:
    """Per target: ``kendall, spearman, top<k>..., sources``. ``scores``: ``source, target, score``."""
    rows = {}
    for target, sub in _joined(scores, truth).groupby("target", sort=False):
        pred, true = sub.set_index("source")["score"], sub.set_index("source")["acc"]
        row = {"kendall": kendall(pred.values, true.values), "spearman": spearman(pred.values, true.values)}
        row.update({f"top{k}": top_k_hit(pred, true, k) for k in ks})
        row["sources"] = len(sub)
        rows[target] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("target")


def ranking_summary(per_method: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Methods x (mean, std over targets) of each metric of :func:`per_target_ranking` tables."""
    rows = {}
    for method, table in per_method.items():
        metrics = table.drop(columns="sources", errors="ignore")
        row = {}
        for col in metrics.columns:
            row[col] = metrics[col].mean()
            row[f"{col}_std"] = metrics[col].std(ddof=0)
        row["targets"] = int(metrics["kendall"].notna().sum()) if "kendall" in metrics else len(metrics)
        rows[method] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")


def predicted_ranks(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``source, target, score, acc, pred_rank, true_rank`` (1 = best; ties share the minimum rank)."""
    joined = _joined(scores, truth)
    joined["pred_rank"] = joined.groupby("target")["score"].rank(ascending=False, method="min").astype(int)
    joined["true_rank"] = joined.groupby("target")["acc"].rank(ascending=False, method="min").astype(int)
    return joined


def recommendations(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Per target: the estimator's top source, the truly best source, and the accuracy given up (regret)."""
    ranked = predicted_ranks(scores, truth)
    rows = []
    for target, sub in ranked.groupby("target", sort=False):
        pick = sub.sort_values(["score", "source"], ascending=[False, True]).iloc[0]
        best = sub.sort_values(["acc", "source"], ascending=[False, True]).iloc[0]
        rows.append({"target": target, "recommended": pick.source, "its_acc": pick.acc, "its_true_rank": pick.true_rank,
                     "best": best.source, "best_acc": best.acc, "regret": best.acc - pick.acc})
    return pd.DataFrame(rows).set_index("target")


def cost_table(estimator_seconds: Mapping[str, float], needs_target_prompt: Mapping[str, bool],
               target_prompt_seconds: float, ground_truth_seconds: float) -> pd.DataFrame:
    """Seconds per estimator, with the shared target-prompt training where it is needed, vs the ground truth."""
    rows = {}
    for method, seconds in estimator_seconds.items():
        setup = target_prompt_seconds if needs_target_prompt.get(method, False) else 0.0
        total = seconds + setup
        rows[method] = {"estimator_s": seconds, "target_prompts_s": setup, "total_s": total,
                        "share_of_ground_truth": total / ground_truth_seconds if ground_truth_seconds else float("nan")}
    rows["ground truth (projection runs)"] = {"estimator_s": ground_truth_seconds, "target_prompts_s": 0.0,
                                              "total_s": ground_truth_seconds, "share_of_ground_truth": 1.0}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("method")
