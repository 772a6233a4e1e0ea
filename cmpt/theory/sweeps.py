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
from cmpt.theory.mixture import MixtureSpec, directions, expected_statistics, sample_mixture, sample_replicas, \
    token_statistics
from cmpt.theory.models import KINDS, AttentionParams, error_rate, relevant_mass, train
from cmpt.theory.sizes import TheorySizes

__all__ = ["MODEL_LABELS", "STATISTIC_LABELS", "data_seed", "generator_check", "oracle_params", "compare_models",
           "error_vs_n", "error_vs_parameter", "algorithm_vs_n", "algorithm_summary", "cosines_long",
           "three_step_errors"]

MODEL_LABELS = {
    "prompt": "prompt-attention",
    "linear": "linear prompt-attention",
    "self": "self-attention",
    "uniform": "uniform (q = 0)",
    "oracle": "prompt-attention, oracle",
}

#: what each :func:`~cmpt.theory.mixture.token_statistics` entry measures (MyST math, for tables)
STATISTIC_LABELS = {
    "relevant_fraction": r"share of relevant tokens, $k/T$",
    "positive_fraction": r"share of label $y=+1$",
    "irrelevant_sign_correlation": r"$\mathbb E[y\,s_t]$ over irrelevant tokens ($\delta$)",
    "mean_token_label_signal": r"$\mathbb E[y\,\langle\bar x, w_\star\rangle]$ (uniform averaging's signal)",
    "relevant_context": r"$\mathbb E\langle x_t, q_\star\rangle$ over relevant tokens ($c$)",
    "decoy_fraction": r"share of irrelevant tokens that are decoys ($\rho$)",
    "cross_moment_label_signal": r"$\mathbb E[y\,\frac1T\sum_t\langle x_t,q_\star\rangle\langle x_t,w_\star\rangle]$"
                                 r" (linear prompt-attention's signal)",
}

_ROLES = {"train": 0, "test": 1, "algorithm": 2, "init": 3}


def data_seed(seed: int, point: int, n: int, role: str) -> int:
    """A generator seed for one data set, distinct for every argument combination."""
    return int(np.random.SeedSequence([seed, point, n, _ROLES[role]]).generate_state(1)[0])


def generator_check(specs: dict[str, MixtureSpec], n: int, seed: int = 0) -> pd.DataFrame:
    """Sample statistics of ``n`` examples of each named spec next to the values its parameters imply."""
    table = pd.DataFrame({"statistic": list(STATISTIC_LABELS.values())}, index=list(STATISTIC_LABELS))
    for name, spec in specs.items():
        sample = token_statistics(sample_mixture(spec, n, seed), spec)
        expected = expected_statistics(spec)
        table[f"{name}: expected"] = [expected[key] for key in STATISTIC_LABELS]
        table[f"{name}: sample"] = [sample[key] for key in STATISTIC_LABELS]
    return table


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
                             delta=spec.delta, sigma=spec.sigma, decoys=spec.decoys, error=errors[r].item(),
                             relevant_mass=masses[r].item()))
    return pd.DataFrame(rows)


def error_vs_n(spec: MixtureSpec, sizes: TheorySizes, kinds: tuple[str, ...] = KINDS) -> pd.DataFrame:
    """Test error of each model kind for every training-set size in ``sizes.n_values``."""
    return pd.concat([compare_models([spec], n, sizes, kinds) for n in sizes.n_values], ignore_index=True)


def error_vs_parameter(spec: MixtureSpec, name: str, values: tuple[float, ...], sizes: TheorySizes,
                       kinds: tuple[str, ...] = KINDS, with_oracle: bool = True) -> pd.DataFrame:
    """Test error (and attention mass) of each model kind as one :class:`MixtureSpec` field varies.

    ``name`` is the field (``zeta``, ``delta``, ``decoys``, ``sigma``...), ``values`` its values;
    every model trains on ``n = sizes.n_sweep`` examples per value and seed.
    """
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


_COSINES = {"cos_q1_qstar": r"$\cos(q_1, q_\star)$", "cos_w1_wstar": r"$\cos(w_1, w_\star)$",
            "cos_w2_wstar": r"$\cos(w_2, w_\star)$"}


def cosines_long(algo: pd.DataFrame) -> pd.DataFrame:
    """:func:`algorithm_vs_n`'s three cosines in long form: columns ``n, seed, pair, cosine``."""
    long = algo.melt(id_vars=["n", "seed"], value_vars=list(_COSINES), var_name="pair", value_name="cosine")
    return long.assign(pair=long.pair.map(_COSINES))


def algorithm_summary(algo: pd.DataFrame) -> pd.DataFrame:
    """:func:`algorithm_vs_n` averaged over seeds, one row per ``n``, with readable column names."""
    names = {**_COSINES, "error": "error, debiased", "error_raw": "error, no intercept",
             "relevant_mass": "relevant mass"}
    return algo.groupby("n")[list(names)].mean().rename(columns=names)


def three_step_errors(algo: pd.DataFrame, by_n: pd.DataFrame) -> pd.DataFrame:
    """Test errors of the three-step prompt (with and without intercept) next to Adam's prompt-attention.

    Columns ``n, seed, model, test error``; ``by_n`` is :func:`error_vs_n`'s table (its ``n`` is the
    training-set size, the three-step ``n`` the size of each of the three splits).
    """
    names = {"error": "three steps, debiased", "error_raw": "three steps, no intercept"}
    steps = algo[["n", "seed", *names]].melt(id_vars=["n", "seed"], var_name="model", value_name="test error")
    adam = by_n[by_n.kind == "prompt"].assign(model="prompt-attention, Adam on n examples")
    adam = adam.rename(columns={"error": "test error"})[["n", "seed", "model", "test error"]]
    return pd.concat([steps.assign(model=steps.model.map(names)), adam], ignore_index=True)
