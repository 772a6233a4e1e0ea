"""Four one-layer attention models with the same linear head, and their full-batch training.

For one example ``X`` (``T x d``, rows are tokens) and head ``w`` in R^d:

``prompt``   prompt-attention  ``f(X) = w^T X^T softmax(X W q)`` with the key matrix ``W = I``
             fixed. A trainable ``W`` would only ever appear through the product ``W q``, so
             learning ``q`` alone spans the same functions; the prompt ``q`` is the single query.
``linear``   linear prompt-attention: the same with the softmax removed, the scores ``X q``
             weight the tokens directly, ``f(X) = w^T X^T (X q) / T``
             ``= (1/T) sum_t <x_t, q> <x_t, w>``. It is a bilinear form of the token second
             moments ``X^T X / T``; at ``q = 0`` it is identically zero (not the mean token).
``self``     self-attention, mean-pooled: every token is a query,
             ``f(X) = w^T (1/T) sum_t X^T softmax(X W x_t)`` with trainable ``W`` (``d x d``);
             the value is the token itself (no value matrix) and the read-out is the mean over
             query positions (no CLS token).
``uniform``  uniform averaging (``q = 0``): ``f(X) = w^T (1/T) sum_t x_t`` — prompt-attention
             with ``q = 0``, the attention a softmax gives before it has learned anything. It reads
             the token mean only, so it is weaker than prompt-attention and different from
             linear prompt-attention.

Every tensor may carry leading *replica* axes (``X: [R, n, T, d]``, ``w, q: [R, d]``,
``W: [R, d, d]``): replicas share nothing but the optimiser call, so one Adam run trains
``R`` independent models (seeds, sweep points) at once. Adam acts per coordinate, so this is
exactly ``R`` separate runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cmpt.theory.mixture import MixtureBatch

__all__ = ["KINDS", "AttentionParams", "init_params", "attention", "forward", "relevant_mass",
           "error_rate", "train"]

KINDS = ("prompt", "linear", "self", "uniform")


@dataclass
class AttentionParams:
    """Parameters of one of :data:`KINDS`; ``q`` for ``prompt`` and ``linear``, ``W`` only for ``self``.

    ``b`` is an optional scalar offset per replica (``f + b``); trained models have none, the
    three-step algorithm sets it when it debiases.
    """

    kind: str
    w: torch.Tensor  # [..., d]
    q: torch.Tensor | None = None  # [..., d]
    W: torch.Tensor | None = None  # [..., d, d]
    b: torch.Tensor | None = None  # [...]

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.w, self.q, self.W) if t is not None]

    def detach(self) -> "AttentionParams":
        return AttentionParams(self.kind, *(None if t is None else t.detach().clone()
                                            for t in (self.w, self.q, self.W, self.b)))


def init_params(kind: str, d: int, replicas: tuple[int, ...] = (), seed: int = 0,
                scale: float = 0.01) -> AttentionParams:
    """Small Gaussian initial parameters (``N(0, scale^2)``), seeded."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")
    gen = torch.Generator().manual_seed(seed)
    draw = lambda *shape: scale * torch.randn(*replicas, *shape, generator=gen)  # noqa: E731
    return AttentionParams(kind, w=draw(d), q=draw(d) if kind in ("prompt", "linear") else None,
                           W=draw(d, d) if kind == "self" else None)


def attention(params: AttentionParams, X: torch.Tensor) -> torch.Tensor:
    """Token weights: ``[..., n, T]`` (prompt, linear, uniform) or ``[..., n, T_query, T_key]`` (self).

    Softmax weights sum to one; the weights of ``linear`` are the raw scores ``<x_t, q> / T``
    and need not be positive or sum to one.
    """
    if params.kind in ("prompt", "linear"):
        scores = torch.einsum("...td,...d->...t", X, params.q.unsqueeze(-2))
        return scores.softmax(dim=-1) if params.kind == "prompt" else scores / X.shape[-2]
    if params.kind == "self":
        scores = (X @ params.W.unsqueeze(-3)) @ X.transpose(-1, -2)  # [.., n, query t, key s] = x_t^T W x_s
        return scores.softmax(dim=-1)
    if params.kind == "uniform":
        return torch.full(X.shape[:-1], 1.0 / X.shape[-2], dtype=X.dtype)
    raise ValueError(f"unknown model kind {params.kind!r}")


def forward(params: AttentionParams, X: torch.Tensor) -> torch.Tensor:
    """Model outputs ``f(X)``: ``[..., n]``."""
    weights = attention(params, X)
    if params.kind == "self":
        pooled = (weights @ X).mean(dim=-2)
    else:
        pooled = torch.einsum("...t,...td->...d", weights, X)
    out = torch.einsum("...d,...d->...", pooled, params.w.unsqueeze(-2))
    return out if params.b is None else out + params.b.unsqueeze(-1)


def relevant_mass(params: AttentionParams, batch: MixtureBatch) -> torch.Tensor:
    """Mean attention mass on relevant tokens per replica (self: averaged over queries).

    For ``linear`` the weights are not a distribution; its mass is the share of the absolute
    weights ``|<x_t, q>|`` that falls on relevant tokens, so that it reads like the others.
    """
    with torch.no_grad():
        weights = attention(params, batch.X)
        if params.kind == "linear":
            weights = weights.abs() / weights.abs().sum(-1, keepdim=True).clamp_min(1e-12)
        rel = batch.relevant.to(weights.dtype)
        if params.kind == "self":
            return (weights * rel.unsqueeze(-2)).sum(-1).mean(dim=(-1, -2))
        return (weights * rel).sum(-1).mean(-1)


def error_rate(params: AttentionParams, batch: MixtureBatch) -> torch.Tensor:
    """0-1 error of ``sign f(X)`` per replica (``f = 0`` counts as an error)."""
    with torch.no_grad():
        return ((forward(params, batch.X) * batch.y) <= 0).float().mean(-1)


def train(kind: str, batch: MixtureBatch, steps: int = 300, lr: float = 0.05, seed: int = 0,
          loss: str = "logistic", init_scale: float = 0.01) -> AttentionParams:
    """Full-batch Adam on ``loss`` (``logistic``: mean log(1 + e^{-y f}); ``correlation``: mean -y f).

    All replicas in ``batch`` train together, each on its own data and loss.
    """
    replicas = tuple(batch.X.shape[:-3])
    params = init_params(kind, batch.X.shape[-1], replicas, seed=seed, scale=init_scale)
    tensors = [t.requires_grad_() for t in params.tensors()]
    opt = torch.optim.Adam(tensors, lr=lr)
    for _ in range(steps):
        margin = forward(params, batch.X) * batch.y
        if loss == "logistic":
            per_replica = F.softplus(-margin).mean(-1)
        elif loss == "correlation":
            per_replica = (-margin).mean(-1)
        else:
            raise ValueError(f"unknown loss {loss!r}; valid: logistic, correlation")
        opt.zero_grad(set_to_none=True)
        per_replica.sum().backward()
        opt.step()
    return params.detach()
