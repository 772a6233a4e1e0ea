"""Transferability estimation: which source prompt will transfer best to a target task?

The paper's second finding: a good estimate needs both the *modality gap* (:mod:`.mmd`,
Algorithm 1: MMD between a raw source prompt and the target's embedded patch tokens) and
the *task gap* (:mod:`.task_gap`: a universal projector pulls source prompts towards a prompt
tuned on the target). :mod:`.estimators` combines them and implements the baselines (SPoT,
ON / model stimulation, random); :mod:`.ranking` scores every estimator against the
projection-transfer ground truth.
"""

from cmpt.gaps.estimators import (ESTIMATOR_LABELS, PHIS, CombinedFit, all_estimates, Stopwatch, combined_scores, fit_combined, on_scores,
                                  random_scores, spot_scores, stimulation_patterns, stimulation_similarity)
from cmpt.gaps.mmd import (BANDWIDTH_FACTORS, WidthMismatchError, check_same_width, mmd2_batched, modality_gap,
                           modality_gap_table, patch_tokens, threshold_analysis, threshold_curve)
from cmpt.gaps.ranking import (cost_table, ground_truth, kendall, per_target_ranking, predicted_ranks, ranking_summary,
                               recommendations, spearman, top_k_hit)
from cmpt.gaps.task_gap import LOSSES, ProjectorFit, UniversalProjector, fit_universal_projector, task_gap_table, task_scores

__all__ = [
    "ESTIMATOR_LABELS", "all_estimates", "threshold_curve", "BANDWIDTH_FACTORS", "LOSSES", "PHIS", "CombinedFit", "ProjectorFit", "Stopwatch",
    "UniversalProjector", "WidthMismatchError", "check_same_width", "combined_scores", "cost_table", "fit_combined",
    "fit_universal_projector", "ground_truth", "kendall", "mmd2_batched", "modality_gap", "modality_gap_table",
    "on_scores", "patch_tokens", "per_target_ranking", "predicted_ranks", "random_scores", "ranking_summary",
    "recommendations", "spearman", "spot_scores", "stimulation_patterns", "stimulation_similarity",
    "task_gap_table", "task_scores", "threshold_analysis", "top_k_hit",
]
