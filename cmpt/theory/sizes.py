"""How big the theory chapter runs at each profile, and the mixture regime it documents.

The chapter reads ``theory_sizes(cfg.name)``: ``smoke`` runs in seconds (numbers mean
little; it keeps two seeds so that every interval of the chapter's summary exists), ``default`` is the real chapter on a laptop CPU (a few minutes), ``paper`` adds
seeds and sample sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cmpt.theory.mixture import MixtureSpec

__all__ = ["TheorySizes", "SIZES", "SEPARATED", "theory_sizes"]

#: The headline regime: 2 of 20 tokens relevant, irrelevant tokens sign-correlated against the label
#: with delta = 0.75, noise 0.5. Chosen so that prompt-attention can separate the classes while the
#: token mean carries too little label signal for uniform averaging (the chapter measures both).
SEPARATED = MixtureSpec(d=8, T=20, zeta=0.1, delta=0.75, sigma=0.5, context=2.0, nuisance=1.0)


@dataclass(frozen=True)
class TheorySizes:
    """Every size of the theory chapter."""

    seeds: tuple[int, ...]
    n_values: tuple[int, ...]  # training-set sizes for error vs n
    n_sweep: int  # training-set size for the zeta and delta sweeps
    n_test: int
    zetas: tuple[float, ...]
    deltas: tuple[float, ...]
    decoy_values: tuple[float, ...]  # decoy probabilities rho for the linear prompt-attention sweep
    steps: int  # full-batch Adam steps
    lr: float
    algo_n_values: tuple[int, ...]  # |S1| = |S2| = |S3| for the three-step algorithm
    tile_constructions: tuple[str, ...]
    tile_n_train: tuple[int, ...]
    tile_n_test: int
    tile_seeds: tuple[int, ...]
    tile_pretrain_canvases: int
    tile_pretrain_epochs: int
    tile_head_steps: int
    tile_finetune_epochs: int


SIZES: dict[str, TheorySizes] = {
    "smoke": TheorySizes(
        seeds=(0, 1), n_values=(32, 128), n_sweep=64, n_test=200, zetas=(0.1, 0.3), deltas=(0.0, 1.0),
        decoy_values=(0.0, 1.0),
        steps=30, lr=0.05, algo_n_values=(32, 128), tile_constructions=("A", "C"), tile_n_train=(40,),
        tile_n_test=100, tile_seeds=(0,), tile_pretrain_canvases=256, tile_pretrain_epochs=1,
        tile_head_steps=30, tile_finetune_epochs=1),
    "default": TheorySizes(
        seeds=(0, 1, 2), n_values=(32, 64, 128, 256, 512, 1024), n_sweep=512, n_test=2000,
        zetas=(0.05, 0.1, 0.15, 0.2, 0.3, 0.5), deltas=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
        decoy_values=(0.0, 0.25, 0.5, 0.75, 1.0),
        steps=300, lr=0.05, algo_n_values=(16, 32, 64, 128, 256, 512, 1024, 2048),
        tile_constructions=("A", "B", "C"), tile_n_train=(100, 400), tile_n_test=500, tile_seeds=(0, 1),
        tile_pretrain_canvases=4000, tile_pretrain_epochs=8, tile_head_steps=300, tile_finetune_epochs=30),
    "paper": TheorySizes(
        seeds=(0, 1, 2, 3, 4), n_values=(32, 64, 128, 256, 512, 1024, 2048, 4096), n_sweep=1024,
        n_test=5000, zetas=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
        deltas=(0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 0.95, 1.0),
        decoy_values=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), steps=600, lr=0.05,
        algo_n_values=(16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
        tile_constructions=("A", "B", "C"), tile_n_train=(50, 100, 200, 400, 800), tile_n_test=1000,
        tile_seeds=(0, 1, 2, 3, 4), tile_pretrain_canvases=8000, tile_pretrain_epochs=15,
        tile_head_steps=500, tile_finetune_epochs=40),
}


def theory_sizes(profile: str, n_seeds: int | None = None) -> TheorySizes:
    """The sizes for ``profile``; ``n_seeds`` (if given) keeps that many seeds for both parts."""
    if profile not in SIZES:
        raise ValueError(f"no theory sizes for profile {profile!r}; known: {', '.join(SIZES)}")
    sizes = SIZES[profile]
    if n_seeds is not None:
        if n_seeds < 1:
            raise ValueError(f"n_seeds must be at least 1, got {n_seeds}")
        sizes = replace(sizes, seeds=tuple(range(n_seeds)), tile_seeds=tuple(range(n_seeds)))
    return sizes
