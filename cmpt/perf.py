"""The measurements behind ``cmpt bench`` (see :mod:`cmpt.bench` for the figures and the command).

Each figure times cmpt's own code path against a straightforward reference on the same data,
in one process:

- :class:`ReferencePromptTuner` is the plain implementation of a prompt-tuning step: the same
  timm model with its explicit softmax attention, fp32, the patch embedding recomputed from
  pixels every step, every block on every token;
- :func:`direct_mmd_table` is Algorithm 1 written out pair by pair and batch by batch;
- head-only runs go through :func:`cmpt.runner.run_target` both ways (cached CLS
  features, or the backbone's forward recomputed every epoch);
- :func:`memory_growth` (``cmpt bench --memory``) runs one target run per test-split size on a
  generated VTAB-style export folder, each in a fresh process, and reads its peak resident memory.

Rates are medians over rounds that alternate the contenders, so a drifting machine load hits
both. FLOPs are counted by torch's ``FlopCounterMode`` (attention through its explicit path,
which the counter sees: the same arithmetic as the fused kernel).
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from cmpt.backbones import PromptedViT, load_vision_backbone
from cmpt.backbones.vision import VisionPreprocess
from cmpt.backbones.vision_zoo import split_location
from cmpt.bench_config import BenchConfig, MemoryConfig
from cmpt.devices import chosen_precision, cpu_bf16_speedup, cpu_name
from cmpt.gaps.mmd import BANDWIDTH_FACTORS, modality_gap_table
from cmpt.profiles import Profile, get_profile
from cmpt.train import TrainConfig, make_optimizer, resolve_device, resolve_precision, train_step
from cmpt.transfer import LearnedPrompt, PromptedClassifier

__all__ = ["ReferencePromptTuner", "direct_mmd_table", "head_only", "ideas", "machine", "matmul_peak",
           "measure", "memory_growth", "memory_run", "mmd_table", "prompt_tuning", "step_flops",
           "write_vtab_export"]


# ----------------------------------------------------------------------------- machine

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {"device": device.type, "cpu": cpu_name(), "cores": cores,
                            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                            "python": platform.python_version()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda)
    else:
        info["cpu_bf16_speedup"] = cpu_bf16_speedup()
    info["auto_precision"] = chosen_precision("auto", device)  # what a profile's precision="auto" runs in here
    return info


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, size: int | None = None,
                seconds: float = 1.5) -> float:
    """Best FLOP/s of square matmuls on ``device`` in ``dtype`` (the machine's practical peak).

    Several sizes, each timed repeatedly for a share of ``seconds``, and the best of all: one
    small product timed briefly can land on a slow moment of a busy machine and report a peak
    below what the model's own step then reaches.
    """
    sizes = (size,) if size else ((4096, 8192) if device.type == "cuda" else (1536, 2048, 3072))
    gen = torch.Generator().manual_seed(0)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
        a @ b  # warm-up
        _sync(device)
        spent, budget = 0.0, seconds / len(sizes)
        while spent < budget or best == 0.0:
            start = time.perf_counter()
            a @ b
            _sync(device)
            took = time.perf_counter() - start
            spent += took
            best = max(best, 2.0 * n ** 3 / took)
    return best


# ----------------------------------------------------------------------------- models

_RANDOM_TIMM = {"dinov2-s14": "vit_small_patch14_dinov2", "vit-b16-in21k": "vit_base_patch16_224"}


def _backbone(bc: BenchConfig) -> PromptedViT:
    base, _ = split_location(bc.backbone)
    if bc.random_weights and base in _RANDOM_TIMM:
        import timm

        torch.manual_seed(bc.seed)
        vit = timm.create_model(_RANDOM_TIMM[base], pretrained=False, img_size=bc.image_size, num_classes=0)
        prep = VisionPreprocess(bc.image_size, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        return PromptedViT(vit, prep, layout=bc.layout, name=base, sdpa=bc.sdpa, cls_shortcut=bc.cls_shortcut)
    return load_vision_backbone(bc.backbone, bc.image_size, layout=bc.layout, sdpa=bc.sdpa,
                                cls_shortcut=bc.cls_shortcut)


class ReferencePromptTuner(nn.Module):
    """The straightforward implementation the fast path is measured against.

    Its own copy of the timm ViT with the plain (non-fused) attention path, fp32, frozen;
    a trainable prompt placed by ``layout`` and a linear head on the CLS token. Every forward
    starts from pixels (patch embedding, CLS, position embedding) and runs every block on
    every token.
    """

    def __init__(self, vit: nn.Module, prompt: Tensor, num_classes: int, layout: str = "before_cls") -> None:
        super().__init__()
        self.vit = copy.deepcopy(vit).eval()
        for p in self.vit.parameters():
            p.requires_grad_(False)
        for block in self.vit.blocks:
            block.attn.fused_attn = False
        self.prompt = nn.Parameter(prompt.detach().clone().float())
        self.head = nn.Linear(int(self.vit.embed_dim), num_classes)
        self.layout = layout

    def train(self, mode: bool = True) -> "ReferencePromptTuner":
        super().train(mode)
        self.vit.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        x = self.vit._pos_embed(self.vit.patch_embed(images))
        prompt = self.prompt.expand(x.shape[0], -1, -1)
        if self.layout == "before_cls":
            x, cls = torch.cat([prompt, x], dim=1), self.prompt.shape[0]
        else:
            x, cls = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1), 0
        x = self.vit.norm(self.vit.blocks(self.vit.norm_pre(x)))
        return self.head(x[:, cls])


def _pair(backbone: PromptedViT, bc: BenchConfig, device: torch.device) -> tuple[PromptedClassifier, ReferencePromptTuner]:
    """cmpt's prompt-tuning model and the reference, with identical prompt and head."""
    patch = int(backbone.vit.patch_embed.patch_size[0])
    torch.manual_seed(bc.seed)
    fast = PromptedClassifier(backbone, LearnedPrompt(bc.prompt_length, backbone.width, patch), bc.num_classes)
    ref = ReferencePromptTuner(backbone.vit, fast.prompt_source.prompt, bc.num_classes, bc.layout)
    ref.head.load_state_dict(fast.head.state_dict())
    return fast.to(device).train(), ref.to(device).train()


def _train_cfg(bc: BenchConfig, device: torch.device) -> TrainConfig:
    return TrainConfig(optimizer="adam", base_lr=0.1, batch_size=bc.batch_size, epochs=1, warmup_epochs=0,
                       device=str(device), precision=bc.precision)


def _step_fn(model: nn.Module, inputs: Tensor, labels: Tensor, bc: BenchConfig, device: torch.device,
             precision: str) -> Callable[[], Any]:
    """A closure running one optimiser step of ``model`` on the fixed batch (cmpt's :func:`train_step`)."""
    optimizer = make_optimizer(model, _train_cfg(bc, device))
    dtype = resolve_precision(precision, device)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None
    return lambda: train_step(model, inputs, labels, optimizer, None, dtype, scaler)


# ----------------------------------------------------------------------------- measuring

def _rate(step: Callable[[], Any], items: int, steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return items * steps / (time.perf_counter() - start)


def _alternate(steps: Mapping[str, Callable[[], Any]], items: Mapping[str, int], bc: BenchConfig,
               device: torch.device, desc: str, calls: Mapping[str, int] | None = None,
               after: Mapping[str, str] | None = None) -> dict[str, list[float]]:
    """Items/s of each step, per round; rounds alternate the steps so load drift hits all of them.

    The first call of each step is timed; a step more than ``bc.slow_cap`` times slower than the
    fastest first call (bf16 on a CPU that emulates it, say) keeps that one rate and is not
    repeated, so one very slow variant cannot take the benchmark's whole time. A step named in
    ``after`` (``{step: the step it varies}``) is not run at all when that step was slow: it
    gets no rate. ``calls`` sets a step's calls per round (default ``bc.steps``), for a step
    that does several steps' work in one call.
    """
    after, calls = dict(after or {}), dict(calls or {})
    first: dict[str, float] = {}

    def too_slow(name: str) -> bool:  # against the fastest first call so far
        return first[name] * bc.slow_cap < max(first.values())

    for name, step in steps.items():  # in order, so a step's base is timed before it
        base = after.get(name)
        if base is None or not too_slow(base):
            first[name] = _rate(step, items[name], 1, device)
    slow = {name for name in first if too_slow(name)}
    timed = {name: step for name, step in steps.items() if name in first and name not in slow}
    for step in timed.values():
        for _ in range(bc.warmup - 1):
            step()
    rates: dict[str, list[float]] = {name: [first[name]] if name in slow else [] for name in first}
    for _ in tqdm(range(bc.rounds), desc=desc, leave=False, disable=None):
        for name, step in timed.items():
            rates[name].append(_rate(step, items[name], calls.get(name, bc.steps), device))
    return rates


@contextlib.contextmanager
def _plain_attention(model: nn.Module) -> Iterator[None]:
    """Explicit softmax attention inside the block (FLOP counters do not see fused CPU kernels)."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, fused in saved:
            m.fused_attn = fused


def step_flops(step: Callable[[], Any], model: nn.Module) -> int:
    """FLOPs of one call of ``step`` (matmuls, convolutions, attention), counted by torch's FlopCounterMode.

    Attention is counted through its explicit path: the same arithmetic as a fused kernel.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with _plain_attention(model), FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def _saved_bytes(step: Callable[[], Any], model: nn.Module) -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass during ``step``.

    The model's own (frozen) weights, which backward reads but which stay resident anyway,
    are left out.
    """
    resident = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in resident:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _peak_memory(step: Callable[[], Any], model: nn.Module, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"bytes": peak - resident, "peak_allocated": peak, "what": "CUDA peak allocated during a step, above resident"}
    return {"bytes": _saved_bytes(step, model), "what": "activations autograd saves for the backward pass (CPU)"}


# ----------------------------------------------------------------------------- figures 1, 2, 5

def prompt_tuning(bc: BenchConfig, backbone: PromptedViT, device: torch.device) -> dict[str, Any]:
    """Figures 1, 2 and 5: throughput, FLOP/s against the matmul peak, memory; plus parity."""
    gen = torch.Generator().manual_seed(bc.seed)
    images = torch.randn(bc.batch_size, 3, bc.image_size, bc.image_size, generator=gen).to(device)
    labels = torch.randint(0, bc.num_classes, (bc.batch_size,), generator=gen).to(device)
    backbone.to(device)
    with torch.no_grad():
        tokens = backbone.embed(images)
    fast, ref = _pair(backbone, bc, device)
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        parity = {"max_abs_logit_diff": float((fast(tokens) - ref(images)).abs().max())}
    with torch.no_grad():  # the fast path's own precision
        dtype = resolve_precision(bc.precision, device)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            parity["max_abs_logit_diff_in_precision"] = float((fast(tokens).float() - ref(images)).abs().max())
    steps = {"reference": _step_fn(ref, images, labels, bc, device, "fp32"),
             "cmpt": _step_fn(fast, tokens, labels, bc, device, bc.precision)}
    flops = {"reference": step_flops(steps["reference"], ref), "cmpt": step_flops(steps["cmpt"], fast)}
    rates = _alternate(steps, {k: bc.batch_size for k in steps}, bc, device, "prompt-tuning steps")
    median = {k: statistics.median(v) for k, v in rates.items()}
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if name != "fp32":
        peaks[name] = matmul_peak(device, dtype)
    achieved = {k: flops[k] / bc.batch_size * median[k] for k in steps}
    memory = {k: _peak_memory(steps[k], model, device) for k, model in (("reference", ref), ("cmpt", fast))}
    return {"rates": rates, "images_per_s": median, "speedup": median["cmpt"] / median["reference"],
            "flops_per_step": flops, "achieved_flops": achieved, "matmul_peak": peaks, "precision": name,
            "peak_fraction": {"cmpt": achieved["cmpt"] / peaks[name], "reference": achieved["reference"] / peaks["fp32"]},
            "memory": memory, "parity": parity}


# ----------------------------------------------------------------------------- figure 3

def _bench_profile(bc: BenchConfig) -> Profile:
    profile = get_profile(bc.profile)
    return profile.replace(vision_backbone=bc.backbone, image_size=bc.image_size, prompt_length=bc.prompt_length,
                       prompt_layout=bc.layout, n_train=bc.n_train, n_val=bc.n_val, n_test=bc.n_test,
                       head_epochs=bc.head_epochs, batch_size=bc.batch_size)


def _synthetic_target(bc: BenchConfig, backbone: PromptedViT, device: torch.device):
    """A :class:`~cmpt.target_data.TargetData` of random images (embedded once, as cmpt does)."""
    from cmpt.data import ImageTask
    from cmpt.features import embed_tokens
    from cmpt.target_data import TargetData

    sizes = {"train": bc.n_train, "val": bc.n_val, "test": bc.n_test}
    gen = torch.Generator().manual_seed(bc.seed + 1)
    n = sum(sizes.values())
    labels = np.arange(n) % bc.num_classes
    bounds = np.cumsum([0, *sizes.values()])
    splits = {name: np.arange(bounds[i], bounds[i + 1]) for i, name in enumerate(sizes)}
    task = ImageTask(name="bench", group="bench", classes=tuple(str(c) for c in range(bc.num_classes)),
                     images=np.zeros((n, 1, 1, 3), dtype=np.uint8), labels=labels, splits=splits)
    tokens, ys = {}, {}
    for name, idx in splits.items():
        images = torch.randn(len(idx), 3, bc.image_size, bc.image_size, generator=gen)
        tokens[name] = embed_tokens(backbone, images, device=device)
        ys[name] = torch.as_tensor(labels[idx], dtype=torch.long)
    return TargetData(task, tokens, ys)


def loss_curve_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    """The largest absolute difference between two run records' per-epoch train losses and final validation losses."""
    curves = [(r["train_loss"], s["train_loss"]) for r, s in zip(a["metrics_per_epoch"], b["metrics_per_epoch"],
                                                                  strict=True)]
    finals = [(a["final"]["val_loss"], b["final"]["val_loss"])] if a["final"].get("val_loss") is not None else []
    return max(abs(float(x) - float(y)) for x, y in curves + finals)


def head_only(bc: BenchConfig, backbone: PromptedViT, device: torch.device) -> dict[str, Any]:
    """Figure 3: every head-only run of one target, cached features against recomputed forwards.

    The cached path runs all ``2 + sources`` runs (linear, random, frozen per source) at the
    full ``head_epochs``. Recomputing costs the same for each run, so one frozen run is
    timed at 1 and 3 epochs (the faster of two tries each) and the line through them is
    extrapolated to ``head_epochs`` and to all runs (the fixed part — model set-up, the
    final test pass — counts once per run). Parity: the 3-epoch run of both paths, the largest
    difference of their per-epoch train losses and final validation loss
    (``parity_max_loss_diff``; on random data the accuracies sit at chance and prove nothing).
    """
    from cmpt.run_config import TargetConfig, recipe
    from cmpt.runner import run_target
    from cmpt.prompts import Prompt

    profile = _bench_profile(bc)
    gen = torch.Generator().manual_seed(bc.seed + 2)
    prompts = {f"source{i}": Prompt(torch.randn(bc.prompt_length, backbone.width, generator=gen))
               for i in range(bc.sources)}
    plan = [("linear", None), ("random", None)] + [("frozen", s) for s in prompts]
    configs = [TargetConfig.of(profile, setting, "bench", bc.seed, source=source, **recipe(profile, setting, fixed_rate=True))
               for setting, source in plan]
    dev = str(device)

    target = _synthetic_target(bc, backbone, device)
    run_target(configs[0].replace(epochs=1), backbone, target, None, device=dev)  # warm-up (lazy set-up), untimed

    def timed(config: dict[str, Any], cache: bool) -> tuple[float, dict[str, Any]]:
        _sync(device)
        start = time.perf_counter()
        record = run_target(config, backbone, target, prompts.get(config.source), device=dev, cache_features=cache)
        _sync(device)
        return time.perf_counter() - start, record  # type: ignore[return-value]

    cached = [timed(c, True)[0] for c in tqdm(configs, desc="head-only, cached", leave=False, disable=None)]
    probe = configs[-1]
    short: dict[int, tuple[float, dict[str, Any]]] = {}
    for epochs in tqdm((1, 3) * min(2, bc.rounds), desc="head-only, recomputing", leave=False, disable=None):
        took = timed(probe.replace(epochs=epochs), False)
        if epochs not in short or took[0] < short[epochs][0]:  # the faster of two tries: load spikes only add
            short[epochs] = took
    per_epoch = max(0.0, (short[3][0] - short[1][0]) / 2)
    fixed = max(0.0, short[1][0] - per_epoch)
    recompute = len(configs) * (fixed + per_epoch * bc.head_epochs)
    same = timed(probe.replace(epochs=3), True)[1]
    return {"parity_max_loss_diff": loss_curve_diff(same, short[3][1]),
            "runs": len(configs), "epochs": bc.head_epochs, "cached_s": sum(cached), "recompute_s": recompute,
            "recompute_per_epoch_s": per_epoch, "recompute_fixed_s": fixed, "speedup": recompute / sum(cached),
            "test_acc_cached_3_epochs": same["final"]["test_acc"],
            "test_acc_recomputed_3_epochs": short[3][1]["final"]["test_acc"]}


# ----------------------------------------------------------------------------- figure 4

def direct_mmd_table(prompts: Mapping[str, Tensor], target_tokens: Mapping[str, Tensor], passes: int = 5,
                     seed: int = 0, factors: Sequence[float] = BANDWIDTH_FACTORS) -> pd.DataFrame:
    """Algorithm 1 written out pair by pair and batch by batch: the reference for the MMD figure.

    Same batches as :func:`cmpt.gaps.modality_gap` (one generator per target and group of
    equally shaped prompts, seeded by ``seed``, one permutation per pass); each MMD² from the
    pooled kernel matrix of prompt and batch, in float64.
    """
    rows = []
    for target, tokens in target_tokens.items():
        tokens = tokens.double()
        values = {name: 0.0 for name in prompts}
        shapes: dict[tuple[int, ...], list[str]] = {}
        for name, prompt in prompts.items():
            shapes.setdefault(tuple(prompt.shape), []).append(name)
        for shape, names in shapes.items():
            size = shape[0]
            count = tokens.shape[0] // size
            gen = torch.Generator().manual_seed(seed)
            for _ in range(passes):
                order = torch.randperm(tokens.shape[0], generator=gen)[: count * size].to(tokens.device)
                for b in range(count):
                    batch = tokens[order[b * size:(b + 1) * size]]
                    for name in names:
                        values[name] += _pooled_mmd2(prompts[name].to(tokens), batch, factors) / (passes * count)
        rows += [{"source": name, "target": target, "mmd": values[name]} for name in prompts]
    return pd.DataFrame(rows, columns=["source", "target", "mmd"])


def _pooled_mmd2(x: Tensor, y: Tensor, factors: Sequence[float]) -> float:
    z = torch.cat([x, y])
    sq = (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)
    n = len(z)
    s0 = max(float(sq.sum()) / (n * (n - 1)), torch.finfo(z.dtype).tiny)
    kernel = sum(torch.exp(-sq / (s0 * f)) for f in factors)
    m = len(x)
    return float(kernel[:m, :m].mean() + kernel[m:, m:].mean() - 2 * kernel[:m, m:].mean())


def mmd_table(bc: BenchConfig, width: int, patches: int, device: torch.device) -> dict[str, Any]:
    """Figure 4: the MMD table for all source x target pairs, cmpt against :func:`direct_mmd_table`."""
    gen = torch.Generator().manual_seed(bc.seed + 3)
    prompts = {f"source{i}": torch.randn(bc.prompt_length, width, generator=gen) for i in range(bc.sources)}
    targets = {f"target{j}": torch.randn(bc.n_train * patches, width, generator=gen).to(device)
               for j in range(bc.mmd_targets)}
    times: dict[str, list[float]] = {"cmpt": [], "direct": []}
    tables = {}
    for _ in tqdm(range(max(1, bc.rounds - 1)), desc="MMD tables", leave=False, disable=None):
        for name, fn in (("cmpt", modality_gap_table), ("direct", direct_mmd_table)):
            _sync(device)
            start = time.perf_counter()
            tables[name] = fn(prompts, targets, passes=bc.mmd_passes, seed=bc.seed)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    a, b = tables["cmpt"]["mmd"].to_numpy(), tables["direct"]["mmd"].to_numpy()
    best = {k: min(v) for k, v in times.items()}
    return {"pairs": len(prompts) * len(targets), "cmpt_s": best["cmpt"], "direct_s": best["direct"],
            "speedup": best["direct"] / best["cmpt"], "max_rel_diff": float(np.max(np.abs(a - b) / np.abs(b))),
            "tokens_per_target": bc.n_train * patches}


# ----------------------------------------------------------------------------- ideas

def ideas(bc: BenchConfig, backbone: PromptedViT, device: torch.device) -> dict[str, Any]:
    """Measurements behind the choices: threads, precision, several prompts in one forward, compile."""
    gen = torch.Generator().manual_seed(bc.seed)
    images = torch.randn(bc.batch_size, 3, bc.image_size, bc.image_size, generator=gen).to(device)
    labels = torch.randint(0, bc.num_classes, (bc.batch_size,), generator=gen).to(device)
    with torch.no_grad():
        tokens = backbone.embed(images)
    out: dict[str, Any] = {}
    fast, _ = _pair(backbone, bc, device)

    def switched(precision: str, **state: Any) -> Callable[[], Any]:
        """cmpt's step with some of the backbone's switches flipped for its duration."""
        step = _step_fn(fast, tokens, labels, bc, device, precision)

        def run() -> Any:
            backbone.cls_shortcut = state.get("cls_shortcut", bc.cls_shortcut)
            backbone.set_sdpa(state.get("sdpa", bc.sdpa))
            try:
                return step()
            finally:
                backbone.cls_shortcut = bc.cls_shortcut
                backbone.set_sdpa(bc.sdpa)
        return run

    other = "explicit attention" if device.type == "cuda" else "fused SDPA"
    flip = {"sdpa": device.type != "cuda"}
    steps: dict[str, Callable[[], Any]] = {"fp32": switched("fp32"), "bf16 autocast": switched("bf16"),
                                           "fp32, no CLS shortcut": switched("fp32", cls_shortcut=False),
                                           f"fp32, {other}": switched("fp32", **flip),
                                           f"bf16 autocast, {other}": switched("bf16", **flip)}
    stacked = f"{bc.sources} prompts in one forward"
    steps[stacked] = _stacked_step(backbone, bc, tokens, labels, device)
    if device.type == "cpu":
        steps["fp32, 1 thread"] = _one_thread(steps["fp32"])
    items = {k: bc.batch_size * (bc.sources if k == stacked else 1) for k in steps}
    after = {f"bf16 autocast, {other}": "bf16 autocast"}
    # one stacked call is ``sources`` steps' work: fewer calls per round time about as many images
    rates = _alternate(steps, items, bc, device, "ideas", calls={stacked: max(1, bc.steps // bc.sources)},
                       after=after)
    out["images_per_s"] = {k: statistics.median(v) for k, v in rates.items()}
    out["timed_once"] = [k for k, v in rates.items() if len(v) == 1 and bc.rounds > 1]
    out["not_timed"] = {k: base for k, base in after.items() if k not in rates}
    if bc.compile:
        out["compile"] = _compiled(bc, backbone, tokens, labels, device)
    return out


def _one_thread(step: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return step()
        finally:
            torch.set_num_threads(threads)
    return run


def _stacked_step(backbone: PromptedViT, bc: BenchConfig, tokens: Tensor, labels: Tensor,
                  device: torch.device) -> Callable[[], Any]:
    """``sources`` independent prompts and heads trained by one forward over ``sources x batch`` rows.

    The summed loss gives each prompt and head exactly its own gradient, so with Adam this
    is ``sources`` independent runs on one data order.
    """
    s, b, width = bc.sources, bc.batch_size, backbone.width
    prompts = nn.Parameter(torch.randn(s, bc.prompt_length, width, device=device) * 0.02)
    heads = nn.Parameter(torch.randn(s, bc.num_classes, width, device=device) * 0.02)
    biases = nn.Parameter(torch.zeros(s, bc.num_classes, device=device))
    optimizer = torch.optim.Adam([prompts, heads, biases], lr=1e-3)
    rows = tokens.repeat(s, 1, 1)
    targets = labels.repeat(s)

    def step() -> Tensor:
        feats = backbone(None, prompt=prompts.repeat_interleave(b, dim=0), tokens=rows).view(s, b, width)
        logits = torch.einsum("sbd,scd->sbc", feats, heads) + biases[:, None]
        loss = F.cross_entropy(logits.reshape(s * b, -1), targets, reduction="sum") / b
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def _compiled(bc: BenchConfig, backbone: PromptedViT, tokens: Tensor, labels: Tensor,
              device: torch.device) -> dict[str, float]:
    fast, _ = _pair(backbone, bc, device)
    compiled = torch.compile(fast)
    step = _step_fn(compiled, tokens, labels, bc, device, bc.precision)
    _sync(device)
    start = time.perf_counter()
    step()
    _sync(device)
    first = time.perf_counter() - start
    eager = _step_fn(fast, tokens, labels, bc, device, bc.precision)
    rates = _alternate({"eager": eager, "compiled": step}, {"eager": bc.batch_size, "compiled": bc.batch_size},
                       bc, device, "compiled")
    return {"compile_s": first, "eager": statistics.median(rates["eager"]),
            "compiled": statistics.median(rates["compiled"])}


def measure(bc: BenchConfig) -> dict[str, Any]:
    """Every figure (and the ideas, if asked) for ``bc``: ``machine``, ``figures``, ``ideas``."""
    if bc.threads:
        torch.set_num_threads(bc.threads)
    device = resolve_device(bc.device)
    backbone = _backbone(bc)
    figures = {"prompt_tuning": prompt_tuning(bc, backbone, device),
               "head_only": head_only(bc, backbone, device),
               "mmd": mmd_table(bc, backbone.width, backbone.num_patches, device)}
    extra = ideas(bc, backbone, device) if bc.ideas or bc.compile else {}
    return {"machine": machine(device), "figures": figures, "ideas": extra}


# ----------------------------------------------------------------------------- memory growth

def write_vtab_export(root: str | Path, task: str, n_train: int, n_val: int, n_test: int, image_size: int = 224,
                      chunk: int = 500) -> Path:
    """A VTAB-1k-style export folder ``root/<task>/`` of generated ``image_size`` px PNG images.

    Image ``i`` is render ``i`` of the generated task (upscaled from 64 px); train, val and
    test take consecutive renders. Writes ``train800.txt``, ``val200.txt``,
    ``train800val200.txt`` and ``test.txt`` beside the images, as the export does.
    """
    from PIL import Image

    from cmpt.data.generated import render_generated

    folder = Path(root) / task
    (folder / "images").mkdir(parents=True, exist_ok=True)
    total = n_train + n_val + n_test
    lines: list[str] = []
    with tqdm(total=total, desc=f"writing {total:,} images", leave=False, disable=None) as bar:
        for start in range(0, total, chunk):
            images, labels, _ = render_generated(task, min(chunk, total - start), start=start)
            for offset, (image, label) in enumerate(zip(images, labels)):
                rel = f"images/{start + offset:06d}.png"
                picture = Image.fromarray(image)
                if image_size != picture.width:
                    picture = picture.resize((image_size, image_size), Image.NEAREST)
                picture.save(folder / rel, compress_level=1)
                lines.append(f"{rel} {int(label)}")
            bar.update(len(images))
    bounds = {"train800.txt": (0, n_train), "val200.txt": (n_train, n_train + n_val),
              "train800val200.txt": (0, n_train + n_val), "test.txt": (n_train + n_val, total)}
    for name, (lo, hi) in bounds.items():
        (folder / name).write_text("\n".join(lines[lo:hi]) + "\n")
    return folder


def _peak_rss(who: int) -> int:
    import resource
    import sys

    peak = resource.getrusage(who).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def memory_run(spec: Mapping[str, Any]) -> dict[str, Any]:
    """One target run on the export at ``spec["root"]`` (meant for a fresh process); its peak memory.

    ``spec`` holds the :class:`~cmpt.bench_config.MemoryConfig` fields plus ``n_test`` and
    ``root``. The run is what :func:`cmpt.runner.run_target` does for the setting: the
    target's splits from :func:`cmpt.target_data.prepare_target`, the setting's model and
    hyper-parameters, :func:`cmpt.train.fit`.
    """
    import resource

    from cmpt.run_config import recipe
    from cmpt.settings import make_prompt_source
    from cmpt.target_data import prepare_target
    from cmpt.train import fit

    if spec["threads"]:
        torch.set_num_threads(int(spec["threads"]))
    device = resolve_device(spec["device"])
    backbone = load_vision_backbone(spec["backbone"], spec["image_size"])
    profile = get_profile("paper", vision_backbone=spec["backbone"], image_size=spec["image_size"],
                          n_train=spec["n_train"], n_val=spec["n_val"], n_test=spec["n_test"],
                          prompt_length=spec["prompt_length"], batch_size=spec["batch_size"],
                          target_epochs=spec["epochs"], head_epochs=spec["epochs"], concentrated_grid=(),
                          device=str(device))
    start_rss = _peak_rss(resource.RUSAGE_SELF)
    start = time.perf_counter()
    data = prepare_target(spec["task"], profile, backbone, device=device, cache_bytes=int(spec["cache_mib"]) << 20,
                          workers=spec["workers"], vtab_root=spec["root"])
    seed, setting = int(spec["seed"]), spec["setting"]
    torch.manual_seed(seed)
    model = PromptedClassifier(backbone, make_prompt_source(setting, backbone, profile.prompt_length, seed=seed),
                               data.task.num_classes)
    hp = recipe(profile, setting, fixed_rate=True)
    train_cfg = TrainConfig(optimizer=hp["optimizer"], base_lr=hp["lr"], weight_decay=hp["weight_decay"],
                      batch_size=profile.batch_size, eval_batch_size=profile.batch_size, epochs=profile.target_epochs,
                      warmup_epochs=0, seed=seed, device=str(device))
    # one batch size for training and evaluation: the largest batch sets the activations' share of
    # the peak, and it must be the same at every test-split size
    batches = {"seed": seed, "batch_size": profile.batch_size, "eval_batch_size": profile.batch_size}
    if setting == "linear":
        trained: nn.Module = model.head
        splits = data.head_splits(backbone, None, device, **batches)
    else:
        trained = model
        splits = data.splits(**batches)
    result = fit(trained, *splits, train_cfg)
    return {"n_test": int(spec["n_test"]), "peak_rss_bytes": _peak_rss(resource.RUSAGE_SELF),
            "start_rss_bytes": start_rss, "worker_peak_rss_bytes": _peak_rss(resource.RUSAGE_CHILDREN),
            "cached": sorted(data.tokens), "streamed": sorted(data.streamed), "cached_bytes": data.cached_bytes,
            "test_acc": result.final["test_acc"], "seconds": time.perf_counter() - start}


_CHILD = ("import json, sys\nfrom cmpt.perf import memory_run\n"
          "print(json.dumps(memory_run(json.loads(sys.argv[1]))))")


def memory_growth(mc: MemoryConfig) -> list[dict[str, Any]]:
    """:func:`memory_run` at each of ``mc.sizes`` test images, each on its own export folder and process."""
    import json
    import shutil
    import subprocess
    import sys
    import tempfile
    from dataclasses import asdict

    from cmpt.errors import CmptError

    package_root = str(Path(__file__).resolve().parents[1])
    runs = []
    with tempfile.TemporaryDirectory(prefix="cmpt-memory-") as tmp:
        env = {**os.environ, "CMPT_CACHE": str(Path(tmp) / "cache"), "HF_HUB_OFFLINE": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        for n_test in tqdm(sorted(mc.sizes), desc="memory runs", leave=False, disable=None):
            root = Path(tmp) / f"export-{n_test}"
            write_vtab_export(root, mc.task, mc.n_train, mc.n_val, n_test, mc.image_size)
            spec = {**asdict(mc), "n_test": n_test, "root": str(root)}
            proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], env=env, capture_output=True,
                                  text=True)
            shutil.rmtree(root, ignore_errors=True)
            if proc.returncode != 0 or not proc.stdout.strip():
                detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise CmptError(f"the memory run at n_test={n_test} failed (exit {proc.returncode}): {detail}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs
