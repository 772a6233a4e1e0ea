"""The three-step gradient algorithm for prompt-attention, on three disjoint sample splits.

The objective is the *correlation* ``C_S(q, w) = (1/|S|) sum_{(X, y) in S} y f(X)`` of the
prompt-attention model ``f(X) = w^T X^T softmax(X q)`` (so a step *up* ``C`` is a gradient
step *down* the linear loss ``-y f``). From ``q0 = 0, w0 = 0``, with ``S1, S2, S3`` of size
``n`` each::

    w1 = eta   * grad_w C_S1(0, 0)     = eta (1/n) sum y x_bar          (uniform averaging)
    q1 = gamma * grad_q C_S2(0, w1)                                      (the prompt)
    w2 = eta   * grad_w C_S3(q1, w1)   = eta (1/n) sum y X^T softmax(X q1)
    b  = -(m_+ + m_-) / 2,  m_pm = mean of f_(q1, w2) over the class pm1 examples of S3   (debiasing)

and the prediction is ``sign(f(X) + b)``.

Choices made here (the paper's step sizes and debiasing are not confirmed):

* ``gamma`` is a *normalised* step, ``gamma = prompt_norm / ||grad_q||``, so every run ends
  with ``||q1|| = prompt_norm`` and the softmax temperature is the same for all ``n``;
* ``eta`` only rescales the head and is 1 (the sign of ``f`` is what is evaluated);
* debiasing is an intercept: the attended tokens share the context part ``c q_star`` in both
  classes, and whatever ``w2`` picked up along it (from the finite-sample label balance of ``S3``
  or from an imperfect ``q1``) shifts ``f`` by a label-free offset. ``b`` puts the threshold
  midway between the two class means of ``f`` on ``S3``. (Projecting ``q1`` out of ``w2``
  instead was tried; it was worse than the intercept at every ``n`` we ran.) ``debias=False`` gives ``b = 0``.

Gradients are taken by autograd on :func:`cmpt.theory.models.forward`, not by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cmpt.theory.mixture import MixtureBatch
from cmpt.theory.models import AttentionParams, forward

__all__ = ["ThreeStepResult", "correlation", "split_three", "three_step", "cosine"]


@dataclass
class ThreeStepResult:
    """Iterates of the algorithm (leading replica axes allowed)."""

    w1: torch.Tensor
    q1: torch.Tensor
    w2: torch.Tensor
    b: torch.Tensor  # the debiasing intercept (zeros when debias=False)

    def params(self, debiased: bool = True) -> AttentionParams:
        """The final prompt-attention model ``(q1, w2)``, with the intercept ``b`` if ``debiased``."""
        return AttentionParams("prompt", w=self.w2, q=self.q1, b=self.b if debiased else None)


def correlation(params: AttentionParams, batch: MixtureBatch) -> torch.Tensor:
    """``C_S = mean y f(X)`` per replica."""
    return (forward(params, batch.X) * batch.y).mean(-1)


def split_three(batch: MixtureBatch) -> tuple[MixtureBatch, MixtureBatch, MixtureBatch]:
    """Split ``3n`` examples (last sample axis) into ``S1, S2, S3`` of ``n`` each."""
    total = len(batch)
    if total % 3:
        raise ValueError(f"need a multiple of 3 examples, got {total}")
    n = total // 3
    parts = []
    for i in range(3):
        take = lambda t, axis: t.narrow(axis, i * n, n)  # noqa: E731  (axis: the sample axis of t)
        parts.append(MixtureBatch(X=take(batch.X, -3), y=take(batch.y, -1), relevant=take(batch.relevant, -2),
                                  signs=take(batch.signs, -2), decoy=take(batch.decoy, -2)))
    return parts[0], parts[1], parts[2]


def _grad(batch: MixtureBatch, q: torch.Tensor, w: torch.Tensor, wrt: str) -> torch.Tensor:
    q = q.detach().clone().requires_grad_(wrt == "q")
    w = w.detach().clone().requires_grad_(wrt == "w")
    value = correlation(AttentionParams("prompt", w=w, q=q), batch).sum()
    (grad,) = torch.autograd.grad(value, q if wrt == "q" else w)
    return grad


def three_step(batch: MixtureBatch, prompt_norm: float = 4.0, eta: float = 1.0,
               debias: bool = True) -> ThreeStepResult:
    """Run the three steps on ``batch`` (``3n`` examples, split in order into S1, S2, S3)."""
    s1, s2, s3 = split_three(batch)
    d = batch.X.shape[-1]
    zero = torch.zeros(*batch.X.shape[:-3], d, dtype=batch.X.dtype)
    w1 = eta * _grad(s1, zero, zero, "w")
    g = _grad(s2, zero, w1, "q")
    q1 = prompt_norm * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w2 = eta * _grad(s3, q1, w1, "w")
    b = torch.zeros(w2.shape[:-1], dtype=w2.dtype)
    if debias:
        with torch.no_grad():
            f = forward(AttentionParams("prompt", w=w2, q=q1), s3.X)
            pos = (s3.y > 0).to(f.dtype)
            mean_pos = (f * pos).sum(-1) / pos.sum(-1).clamp_min(1)
            mean_neg = (f * (1 - pos)).sum(-1) / (1 - pos).sum(-1).clamp_min(1)
            b = -(mean_pos + mean_neg) / 2
    return ThreeStepResult(w1=w1, q1=q1, w2=w2, b=b)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity along the last axis (broadcasting)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
