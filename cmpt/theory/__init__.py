"""Companion theory: "On the Role of Attention in Prompt-tuning" (Oymak et al., ICML 2023).

``mixture``    the contextual mixture data model (seeded generator), with optional decoys
``models``     prompt-attention, linear prompt-attention, self-attention and uniform averaging,
               with a shared linear head
``algorithm``  the three-step gradient algorithm that learns a prompt
``sweeps``     the chapter's experiments as DataFrames
``evidence``   the chapter's claims: per-seed differences, t-intervals, verdicts, Markdown tables
``plots``      the chapter's figure conventions
``tiles``      the image version on 2 x 2 grids of scikit-learn digits
``sizes``      per-profile sizes and the documented regime
"""

from cmpt.theory.algorithm import ThreeStepResult, cosine, three_step
from cmpt.theory.evidence import VERDICTS, claims_markdown, claims_table, markdown_table, mean_by_model
from cmpt.theory.mixture import MixtureBatch, MixtureSpec, directions, sample_mixture, sample_replicas, token_statistics
from cmpt.theory.models import KINDS, AttentionParams, attention, error_rate, forward, relevant_mass, train
from cmpt.theory.sizes import SEPARATED, SIZES, TheorySizes, theory_sizes
from cmpt.theory.sweeps import (MODEL_LABELS, algorithm_summary, algorithm_vs_n, compare_models, cosines_long, error_vs_n,
                                error_vs_parameter, generator_check, oracle_params, three_step_errors)

__all__ = [
    "KINDS", "MODEL_LABELS", "SEPARATED", "SIZES", "VERDICTS", "AttentionParams", "MixtureBatch", "MixtureSpec",
    "TheorySizes", "ThreeStepResult", "algorithm_summary", "algorithm_vs_n", "attention", "claims_markdown",
    "claims_table", "compare_models", "cosine", "cosines_long", "directions", "error_rate", "error_vs_n",
    "error_vs_parameter", "forward", "generator_check", "markdown_table", "mean_by_model", "oracle_params",
    "relevant_mass", "sample_mixture", "sample_replicas", "theory_sizes", "three_step",
    "three_step_errors", "token_statistics", "train",
]
