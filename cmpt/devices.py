"""Where and at what precision a run computes: the device named by a profile, the autocast dtype.

A module of its own so that inputs (target data) and runs (training) both read it without the
inputs importing the training loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from functools import lru_cache
from pathlib import Path

import torch

from cmpt.assets import cache_dir
from cmpt.atomic import write_atomic

__all__ = ["BF16_MIN_SPEEDUP", "PRECISIONS", "autocast", "chosen_precision", "cpu_bf16_speedup", "cpu_name",
           "resolve_device", "resolve_precision"]

#: how much faster than fp32 a few timed bf16 steps must run on a CPU before "auto" picks bf16 there
BF16_MIN_SPEEDUP = 1.2

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA where there is a device, else the CPU; any other name as torch spells it."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def resolve_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None means plain fp32 (no autocast).

    ``"auto"``: bf16 on a CUDA device that supports it, else fp16 there; fp32 on CPU.
    """
    _check(precision)
    if precision == "auto":
        precision = _cuda_precision() if torch.device(device).type == "cuda" else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _cuda_precision() -> str:
    """What "auto" takes on CUDA: bf16 where the device supports it, else fp16."""
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_bf16_speedup(repeats: int = 5) -> float:
    """fp32 time over bf16-autocast time of a transformer-sized step on this CPU; above 1: bf16 is faster.

    Measured once per machine and kept in the cache (``precision.json``, keyed by CPU model, core
    count and torch version), so every process of a build, and later builds, choose alike. The
    step is one MLP block of a small ViT, forward and backward (197 tokens x 384 -> 1536 -> 384),
    the matrix products a training step spends its time in: the median of ``repeats`` timings
    after a warm-up call, per precision.
    """
    key = f"{cpu_name()} | {os.cpu_count()} cores | torch {torch.__version__}"
    path = cache_dir() / "precision.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(known, dict) and isinstance(known.get(key), (int, float)):
            return float(known[key])
    except (OSError, ValueError):
        known = {}
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(197, 384, generator=generator)
    up = torch.randn(384, 1536, generator=generator).requires_grad_()
    down = torch.randn(1536, 384, generator=generator).requires_grad_()

    def seconds(dtype: torch.dtype | None) -> float:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with autocast("cpu", dtype):
                ((tokens @ up).relu() @ down).float().square().mean().backward()
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    speedup = seconds(None) / seconds(torch.bfloat16)
    known = {**(known if isinstance(known, dict) else {}), key: speedup}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(known, indent=1), encoding="utf-8"))
    return speedup


def chosen_precision(precision: str, device: torch.device | str) -> str:
    """The precision a run uses for ``precision`` on ``device``: ``"fp32"``, ``"bf16"`` or ``"fp16"``.

    ``"auto"`` is chosen by measurement on a CPU (bf16 where :func:`cpu_bf16_speedup` is at least
    :data:`BF16_MIN_SPEEDUP`, else fp32) and by capability on CUDA (bf16 where supported, else fp16).
    """
    _check(precision)
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return _cuda_precision()
    return "bf16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
