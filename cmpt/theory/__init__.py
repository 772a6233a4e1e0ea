"""Companion theory: "On the Role of Attention in Prompt-tuning" (Oymak et al., ICML 2023).

``mixture``    the contextual mixture data model (seeded generator)
``models``     prompt-attention, self-attention and uniform attention with a shared linear head
``algorithm``  the three-step gradient algorithm that learns a prompt
``sweeps``     the chapter's experiments as DataFrames
``tiles``      the image version on 2 x 2 grids of scikit-learn digits
``sizes``      per-profile sizes and the documented regime
"""

from cmpt.theory.algorithm import ThreeStepResult, cosine, three_step
from cmpt.theory.mixture import MixtureBatch, MixtureSpec, directions, sample_mixture, sample_replicas, token_statistics
from cmpt.theory.models import KINDS, AttentionParams, attention, error_rate, forward, relevant_mass, train
from cmpt.theory.sizes import SEPARATED, SIZES, TheorySizes, theory_sizes
from cmpt.theory.sweeps import MODEL_LABELS, algorithm_vs_n, compare_models, error_vs_n, oracle_params, sweep

__all__ = [
    "KINDS", "MODEL_LABELS", "SEPARATED", "SIZES", "AttentionParams", "MixtureBatch", "MixtureSpec", "TheorySizes",
    "ThreeStepResult", "algorithm_vs_n", "attention", "compare_models", "cosine", "directions", "error_rate",
    "error_vs_n", "forward", "oracle_params", "relevant_mass", "sample_mixture", "sample_replicas", "sweep",
    "theory_sizes", "three_step", "token_statistics", "train",
]
