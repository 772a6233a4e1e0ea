"""The chapter's experiments on the mixture, each returning a tidy ``pandas.DataFrame``.

Seeds: every (seed, sweep point, sample size, role) gets its own generator seed through
``numpy.random.SeedSequence``, so train and test sets never share draws and any row's data can
be drawn again alone. Initial parameters come from one generator per Adam run (all replicas).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cmpt.theory.algorithm import cosine, three_step
from cmpt.theory.mixture import MixtureSpec, directions, sample_replicas
from cmpt.theory.models import KINDS, AttentionParams, error_rate, relevant_mass, train
from cmpt.theory.sizes import TheorySizes

__all__ = ["MODEL_LABELS", "data_seed", "oracle_params", "compare_models", "error_vs_n", "sweep", "algorithm_vs_n"]

MODEL_LABELS = {
    "prompt": "prompt-attention",
    "self": "self-attention",
    "uniform": "uniform attention",
    "oracle": "prompt-attention, oracle",
}

_ROLES = {"train": 0, "test": 1, "algorithm": 2, "init": 3}


def data_seed(seed: int, point: int, n: int, role: str) -> int:
    """A generator seed for one data set, distinct for every argument combination."""
    return int(np.random.SeedSequence([seed, point, n, _ROLES[role]]).generate_state(1)[0])


def oracle_params(spec: MixtureSpec, prompt_norm: float = 4.0) -> AttentionParams:
    """Prompt-attention with the true directions: ``q = prompt_norm q_star``, ``w = w_star``."""
    dirs = directions(spec)
    return AttentionParams("prompt", w=dirs["w_star"], q=prompt_norm * dirs["q_star"])


def compare_models(specs: list[MixtureSpec], n: int, sizes: TheorySizes, kinds: tuple[str, ...] = KINDS,
                   with_oracle: bool = False) -> pd.DataFrame:
    """Train every model kind on ``n`` examples of every spec x seed; test on ``sizes.n_test``.

    One Adam run per kind trains all ``len(specs) * len(seeds)`` replicas together.
    """
    pairs = [(i, spec, seed) for i, spec in enumerate(specs) for seed in sizes.seeds]
    train_set = sample_replicas([s for _, s, _ in pairs], n, [data_seed(sd, i, n, "train") for i, _, sd in pairs])
    test_set = sample_replicas([s for _, s, _ in pairs], sizes.n_test,
                               [data_seed(sd, i, n, "test") for i, _, sd in pairs])
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for kind in kinds:
        init = data_seed(sizes.seeds[0], len(specs), n, "init")
        params = train(kind, train_set, steps=sizes.steps, lr=sizes.lr, seed=init)
        results[kind] = (error_rate(params, test_set), relevant_mass(params, test_set))
    if with_oracle:
        oracle = [oracle_params(s) for _, s, _ in pairs]
        stacked = AttentionParams("prompt", w=torch.stack([o.w for o in oracle]), q=torch.stack([o.q for o in oracle]))
        results["oracle"] = (error_rate(stacked, test_set), relevant_mass(stacked, test_set))
    rows = []
    for kind, (errors, masses) in results.items():
        for r, (i, spec, seed) in enumerate(pairs):
            rows.append(dict(model=MODEL_LABELS[kind], kind=kind, n=n, seed=seed, zeta=spec.k / spec.T,
                             delta=spec.delta, sigma=spec.sigma, error=errors[r].item(),
                             relevant_mass=masses[r].item()))
    return pd.DataFrame(rows)


def error_vs_n(spec: MixtureSpec, sizes: TheorySizes, kinds: tuple[str, ...] = KINDS) -> pd.DataFrame:
    """Test error of each model kind for every training-set size in ``sizes.n_values``."""
    return pd.concat([compare_models([spec], n, sizes, kinds) for n in sizes.n_values], ignore_index=True)


def sweep(spec: MixtureSpec, name: str, values: tuple[float, ...], sizes: TheorySizes,
          kinds: tuple[str, ...] = KINDS, with_oracle: bool = True) -> pd.DataFrame:
    """Vary one :class:`MixtureSpec` field (``zeta``, ``delta``, ``sigma``...) at ``n = sizes.n_sweep``."""
    specs = [spec.replace(**{name: v}) for v in values]
    return compare_models(specs, sizes.n_sweep, sizes, kinds, with_oracle=with_oracle)


def algorithm_vs_n(spec: MixtureSpec, sizes: TheorySizes, prompt_norm: float = 4.0) -> pd.DataFrame:
    """The three-step algorithm at every ``|S_i| = n`` in ``sizes.algo_n_values``, every seed.

    Columns: cosines of ``q1`` with ``q_star`` and of ``w1``, ``w2`` with ``w_star``; test error
    with and without debiasing; attention mass the learned prompt puts on relevant tokens.
    """
    dirs = directions(spec)
    rows = []
    for n in sizes.algo_n_values:
        seeds = list(sizes.seeds)
        data = sample_replicas([spec] * len(seeds), 3 * n, [data_seed(s, 0, n, "algorithm") for s in seeds])
        test = sample_replicas([spec] * len(seeds), sizes.n_test, [data_seed(s, 0, n, "test") for s in seeds])
        result = three_step(data, prompt_norm=prompt_norm)
        cos_q = cosine(result.q1, dirs["q_star"])
        cos_w1 = cosine(result.w1, dirs["w_star"])
        cos_w2 = cosine(result.w2, dirs["w_star"])
        err = error_rate(result.params(), test)
        err_raw = error_rate(result.params(debiased=False), test)
        mass = relevant_mass(result.params(), test)
        for r, seed in enumerate(seeds):
            rows.append(dict(n=n, seed=seed, cos_q1_qstar=cos_q[r].item(), cos_w1_wstar=cos_w1[r].item(),
                             cos_w2_wstar=cos_w2[r].item(), error=err[r].item(), error_raw=err_raw[r].item(),
                             relevant_mass=mass[r].item()))
    return pd.DataFrame(rows)
