"""The contextual mixture: sequences where a few tokens carry the label and the rest confuse.

One example is a label ``y`` in {-1, +1} and ``T`` tokens ``x_1..x_T`` in R^d. Three fixed
orthonormal directions are drawn once per :class:`MixtureSpec` (from ``basis_seed``, shared by
train and test sets):

* ``q_star`` — the *context* direction: what marks a token as relevant,
* ``w_star`` — the *label* direction (the brief's ``mu_relevant``),
* ``u``      — the *nuisance* direction of the irrelevant tokens (``mu_irrelevant = a u``).

Given ``y``, a set ``R`` of ``k = round(zeta T)`` positions is drawn uniformly (so the realised
fraction is ``k / T``; ``1 <= k < T``), and with ``z_t ~ N(0, I_d)``::

    t in R     (relevant):    x_t = c q_star + y w_star                + sigma z_t
    t not in R (irrelevant):  x_t = r_t a u   - kappa s_t w_star        + sigma z_t

    r_t ~ Unif{-1, +1}                       (nuisance sign, independent of y)
    s_t = y with prob (1 + delta) / 2, else -y   (so E[y s_t] = delta: the confusion)
    kappa = k / (T - k)                      (default; ``kappa`` overrides it)

With the default ``kappa`` the irrelevant tokens' label component cancels, *on average over
the sequence*, the relevant tokens' one when ``delta = 1``: the token mean has label component
``(k/T) y (1 - delta)`` plus fluctuations, so uniform averaging sees no signal at
``delta = 1``. A prompt that scores tokens by ``q_star`` picks the relevant ones whatever
``delta`` is.

*Decoys* (``decoys = rho``, default 0) make the irrelevant tokens correlated with the relevant
ones in the way that defeats linear prompt-attention. Each irrelevant token is, with
probability ``rho``, a decoy and gains::

    e_t (h q_star - lam y w_star),   e_t ~ Unif{-1, +1},   h = decoy_context * c,
    lam = k c / ((T - k) h)

A decoy with ``e_t = +1`` carries a weaker copy of the context cue and the *opposite* label;
one with ``e_t = -1`` the reverse. Its product ``<x_t, q_star> <x_t, w_star>`` is ``-h lam y``
whatever ``e_t``, so over a sequence the decoys cancel a fraction ``rho`` of the relevant
tokens' ``k c y``: at ``rho = 1`` the token second moments ``X^T X`` carry no label in
expectation, while the softmax, which ranks context scores ``c > h``, still finds the
relevant tokens. The decoys add nothing to the token mean in expectation (``e_t`` has mean 0).

Choices this project made (the paper's exact construction is not confirmed here):

* the relevant tokens carry a label-free context part ``c q_star`` besides ``y w_star``. Without
  it (``context=0``) no prompt can select them: a softmax over linear scores ``<x_t, q>`` ranks
  ``+w_star`` and ``-w_star`` tokens in opposite orders for the two classes;
* the confusion ``delta`` is a sign correlation of the irrelevant tokens' label component,
  pointed *against* the relevant tokens, scaled by ``kappa`` so that ``delta=1`` cancels exactly;
* the decoys are this project's construction of "relevant and irrelevant tokens are
  correlated" for linear prompt-attention; ``delta`` alone correlates only the label parts,
  which the context score ``<x_t, q_star>`` does not see;
* all noise is isotropic Gaussian of level ``sigma`` on every token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = ["MixtureSpec", "MixtureBatch", "directions", "sample_mixture", "sample_replicas", "token_statistics",
           "expected_statistics"]


@dataclass(frozen=True)
class MixtureSpec:
    """Parameters of the contextual mixture (see the module docstring for the formulas)."""

    d: int = 16  # token dimension
    T: int = 40  # tokens per example
    zeta: float = 0.1  # fraction of relevant tokens (rounded to k / T)
    delta: float = 0.9  # confusion: E[y s_t] over irrelevant tokens, in [-1, 1]
    sigma: float = 0.7  # noise level on every token
    context: float = 1.0  # c: strength of the context direction on relevant tokens
    nuisance: float = 1.0  # a: norm of mu_irrelevant = a u
    kappa: float | None = None  # label weight of irrelevant tokens; None -> k / (T - k)
    decoys: float = 0.0  # rho: probability that an irrelevant token is a decoy
    decoy_context: float = 0.25  # h / c: a decoy's context score relative to a relevant token's
    basis_seed: int = 0  # draws q_star, w_star, u (shared by every sample of this spec)

    def __post_init__(self) -> None:
        if self.d < 3:
            raise ValueError(f"d must be at least 3 (three orthogonal directions), got {self.d}")
        if not 1 <= self.k < self.T:
            raise ValueError(f"zeta={self.zeta} with T={self.T} gives k={self.k} relevant tokens; need 1 <= k < T")
        if not -1.0 <= self.delta <= 1.0:
            raise ValueError(f"delta must lie in [-1, 1], got {self.delta}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be non-negative, got {self.sigma}")
        if not 0.0 <= self.decoys <= 1.0:
            raise ValueError(f"decoys must lie in [0, 1], got {self.decoys}")
        if self.decoys > 0 and not 0.0 < self.decoy_context < 1.0:
            raise ValueError(f"decoy_context must lie in (0, 1) so relevant tokens outscore decoys, "
                             f"got {self.decoy_context}")

    @property
    def k(self) -> int:
        """Number of relevant tokens per example."""
        return int(round(self.zeta * self.T))

    @property
    def label_weight(self) -> float:
        """``kappa``: the label weight carried by each irrelevant token."""
        return self.kappa if self.kappa is not None else self.k / (self.T - self.k)

    @property
    def decoy_label_weight(self) -> float:
        """``lam``: a decoy's label weight, so that ``rho = 1`` cancels ``k c`` exactly."""
        return self.k * self.context / ((self.T - self.k) * self.decoy_context * self.context)

    def replace(self, **changes: Any) -> "MixtureSpec":
        return replace(self, **changes)


@dataclass
class MixtureBatch:
    """``n`` examples (optionally ``R`` independent replicas in front: ``[R, n, ...]``)."""

    X: torch.Tensor  # [..., n, T, d]
    y: torch.Tensor  # [..., n], float in {-1, +1}
    relevant: torch.Tensor  # [..., n, T], bool
    signs: torch.Tensor  # [..., n, T], s_t on irrelevant tokens, 0 on relevant ones
    decoy: torch.Tensor  # [..., n, T], bool: irrelevant tokens that are decoys

    def __len__(self) -> int:
        return int(self.y.shape[-1])


def directions(spec: MixtureSpec) -> dict[str, torch.Tensor]:
    """The orthonormal ``q_star``, ``w_star`` and ``u`` of ``spec`` (a random rotation of e1..e3)."""
    gen = torch.Generator().manual_seed(spec.basis_seed)
    basis, _ = torch.linalg.qr(torch.randn(spec.d, 3, generator=gen))
    return {"q_star": basis[:, 0], "w_star": basis[:, 1], "u": basis[:, 2]}


def _pm1(shape: tuple[int, ...], p_plus: float | torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(shape, generator=gen) < p_plus, 1.0, -1.0)


def sample_mixture(spec: MixtureSpec, n: int, seed: int) -> MixtureBatch:
    """Draw ``n`` labelled examples from ``spec`` with generator ``seed`` (labels balanced in law)."""
    gen = torch.Generator().manual_seed(seed)
    T, d, k = spec.T, spec.d, spec.k
    dirs = directions(spec)
    y = _pm1((n,), 0.5, gen)
    order = torch.rand(n, T, generator=gen).argsort(dim=1)
    relevant = torch.zeros(n, T, dtype=torch.bool)
    relevant.scatter_(1, order[:, :k], True)
    r = _pm1((n, T), 0.5, gen)
    s = y[:, None] * _pm1((n, T), (1.0 + spec.delta) / 2.0, gen)
    noise = torch.randn(n, T, d, generator=gen)
    rel_tok = spec.context * dirs["q_star"] + y[:, None, None] * dirs["w_star"]
    irr_tok = (r[..., None] * spec.nuisance) * dirs["u"] - (spec.label_weight * s[..., None]) * dirs["w_star"]
    # decoy draws come last so that decoys=0 leaves every other draw as it was
    decoy = (torch.rand(n, T, generator=gen) < spec.decoys) & ~relevant
    e = _pm1((n, T), 0.5, gen)
    h = spec.decoy_context * spec.context
    decoy_part = e[..., None] * (h * dirs["q_star"] - spec.decoy_label_weight * y[:, None, None] * dirs["w_star"])
    irr_tok = irr_tok + decoy[..., None] * decoy_part
    X = torch.where(relevant[..., None], rel_tok.expand(n, T, d), irr_tok) + spec.sigma * noise
    return MixtureBatch(X=X, y=y, relevant=relevant, signs=torch.where(relevant, 0.0, s), decoy=decoy)


def sample_replicas(specs: list[MixtureSpec], n: int, seeds: list[int]) -> MixtureBatch:
    """One batch per (spec, seed) pair stacked on a leading replica axis ``[R, n, ...]``."""
    if len(specs) != len(seeds):
        raise ValueError("specs and seeds must have the same length")
    parts = [sample_mixture(spec, n, seed) for spec, seed in zip(specs, seeds)]
    return MixtureBatch(*(torch.stack([getattr(p, f) for p in parts]) for f in ("X", "y", "relevant", "signs", "decoy")))


def token_statistics(batch: MixtureBatch, spec: MixtureSpec) -> dict[str, float]:
    """Empirical counterparts of ``zeta``, the label balance, ``delta`` and the mean's label signal."""
    dirs = directions(spec)
    irrelevant = ~batch.relevant
    y = batch.y[..., None].expand_as(batch.signs)
    mean_token = batch.X.mean(dim=-2)
    return {
        "relevant_fraction": batch.relevant.float().mean().item(),
        "positive_fraction": (batch.y > 0).float().mean().item(),
        "irrelevant_sign_correlation": (batch.signs * y)[irrelevant].mean().item(),
        # E[y <mean token, w_star>]; theory: (k / T) (1 - delta) with the default kappa
        "mean_token_label_signal": (batch.y * (mean_token @ dirs["w_star"])).mean().item(),
        # E[<x_t, q_star>] on relevant tokens; theory: context
        "relevant_context": (batch.X @ dirs["q_star"])[batch.relevant].mean().item(),
        # share of irrelevant tokens that are decoys; theory: decoys
        "decoy_fraction": batch.decoy[irrelevant].float().mean().item(),
        # E[y (1/T) sum_t <x_t, q_star> <x_t, w_star>]; theory: (k/T) c (1 - decoys)
        "cross_moment_label_signal": (batch.y * ((batch.X @ dirs["q_star"]) * (batch.X @ dirs["w_star"])).mean(-1))
        .mean().item(),
    }


def expected_statistics(spec: MixtureSpec) -> dict[str, float]:
    """What :func:`token_statistics` should return for a large sample of ``spec``."""
    zeta = spec.k / spec.T
    return {
        "relevant_fraction": zeta,
        "positive_fraction": 0.5,
        "irrelevant_sign_correlation": spec.delta,
        # zeta (1 - delta) with the default kappa
        "mean_token_label_signal": zeta - (1 - zeta) * spec.label_weight * spec.delta,
        "relevant_context": spec.context,
        "decoy_fraction": spec.decoys,
        "cross_moment_label_signal": zeta * spec.context * (1 - spec.decoys),
    }
