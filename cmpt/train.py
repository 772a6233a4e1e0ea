"""One training loop for every setting (linear probe, VPT, frozen / projection / attention transfer).

The protocol is the papers' (VPT's training recipe, which CMPT's code follows): cross-entropy; Adam or SGD (momentum 0.9); no
weight decay on biases and other 1-D parameters; learning rate ``base_lr * batch_size / 256``;
linear warm-up then cosine, stepped once per epoch.

Model selection (``TrainConfig.selection``):

``"val"`` (default)
    keep the trainable state of the epoch with the best validation accuracy (ties: the
    *earliest* such epoch, i.e. early stopping) and evaluate the test set once, at the end.
``"last"``
    the final epoch; the test set is evaluated once, at the end.
``"best_test"``
    the original code's protocol: test accuracy every epoch, the maximum reported. That is
    selection on the test set, so results carry the label :data:`BEST_TEST_PROTOCOL`.

On return the model holds the selected state, so a trained prompt read from it matches the
reported accuracy.

Per-example correctness of the reported test evaluation (for ``best_test``: that of the
selected epoch) is kept in ``final["test_correct"]``, packed bits as a hex string, with the
number of test examples in ``final["test_n"]``; :func:`cmpt.stats.decode_correct` unpacks it,
so a bootstrap over test images can be computed from stored records. Its mean is exactly
``test_acc``. The order is the test split's: rows of a tensor split, or a DataLoader's
iteration order (align runs only with a loader that does not shuffle).

Precision (``TrainConfig.precision``): ``"auto"`` is fp32 on CPUs and bf16 autocast on CUDA
devices that support it (fp16 with loss scaling on older ones). Target runs name theirs: a
profile's ``precision="auto"`` is chosen by measurement (:func:`cmpt.devices.chosen_precision`,
bf16 on a CPU only where a timed step runs faster in it) and written into each run's config,
so records of two precisions never share a hash. Parameters and optimiser state stay fp32 in
every case.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cmpt.devices import PRECISIONS, autocast, resolve_device, resolve_precision
from cmpt.stats import encode_correct

__all__ = ["BEST_TEST_PROTOCOL", "PRECISIONS", "PROTOCOLS", "Data", "FitResult", "TrainConfig", "autocast",
           "evaluate", "fit", "make_optimizer", "param_groups", "resolve_device", "resolve_precision", "train_step",
           "warmup_cosine"]

BEST_TEST_PROTOCOL = "best test accuracy over epochs (selection on test; the original code's protocol)"
PROTOCOLS = {
    "val": "test accuracy at the epoch of best validation accuracy (earliest on ties)",
    "last": "test accuracy after the last epoch",
    "best_test": BEST_TEST_PROTOCOL,
}

#: Inputs: a tensor, or a tuple / dict of tensors sharing the first dimension (e.g. text ids + mask).
Inputs = Union[Tensor, tuple, list, dict]
#: A split: ``(inputs, labels)`` tensors on the CPU, or a DataLoader yielding ``(inputs, labels)``.
Data = Union[tuple, DataLoader]
#: ``forward(model, inputs) -> logits``; the default calls ``model(inputs)``.
Forward = Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one run.

    ``warmup_epochs`` is capped at ``epochs // 2`` (:attr:`warmup`) so that short runs (the
    smoke profile's 3 epochs) still reach the full learning rate and decay from it; the paper's
    runs (100 epochs, 10 warm-up) are unaffected.
    """

    optimizer: str = "adam"  # "adam" or "sgd" (momentum 0.9)
    base_lr: float = 0.005
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 100
    warmup_epochs: int = 10
    scale_lr: bool = True  # lr = base_lr * batch_size / 256
    seed: int = 42
    selection: str = "val"  # "val", "last" or "best_test"
    device: str = "auto"  # "auto": cuda when available, else cpu
    eval_every: int = 1  # validate every N epochs (and always after the last)
    momentum: float = 0.9  # SGD only
    eval_batch_size: int = 256
    precision: str = "auto"  # "auto" (fp32 on CPU, bf16/fp16 autocast on CUDA), "fp32", "bf16" or "fp16"
    #: base learning rate of the head's parameters (names starting ``head_prefix``), scaled like
    #: ``base_lr``; None: the head shares ``base_lr`` (VPT's and CMPT's code)
    head_lr: float | None = None
    head_prefix: str = "head."
    #: "epoch": warm-up and cosine stepped once per epoch (the papers' code); "step": the same
    #: curve evaluated at every optimiser step, so a run of few steps per epoch warms up smoothly
    schedule: str = "epoch"
    #: stop after this epoch of the ``epochs``-long schedule (a final run that follows the
    #: schedule its search chose, cut at the chosen epoch); None: run every epoch
    stop_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.selection not in PROTOCOLS:
            raise ValueError(f"selection must be one of {', '.join(PROTOCOLS)}, got {self.selection!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("batch_size", "epochs", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_epochs < 0 or self.base_lr <= 0 or self.weight_decay < 0:
            raise ValueError("warmup_epochs and weight_decay must be >= 0 and base_lr > 0")
        if self.head_lr is not None and self.head_lr <= 0:
            raise ValueError(f"head_lr must be positive (or None: the same as base_lr), got {self.head_lr}")
        if self.schedule not in ("epoch", "step"):
            raise ValueError(f"schedule must be 'epoch' or 'step', got {self.schedule!r}")
        if self.stop_epoch is not None and not 1 <= self.stop_epoch <= self.epochs:
            raise ValueError(f"stop_epoch must be in 1..epochs ({self.epochs}), got {self.stop_epoch}")

    @property
    def lr(self) -> float:
        """The peak learning rate actually used."""
        return self.base_lr * self.batch_size / 256 if self.scale_lr else self.base_lr

    @property
    def head_rate(self) -> float:
        """The head's peak learning rate actually used."""
        base = self.base_lr if self.head_lr is None else self.head_lr
        return base * self.batch_size / 256 if self.scale_lr else base

    @property
    def trained_epochs(self) -> int:
        """Epochs that run: ``stop_epoch`` where set, else ``epochs``."""
        return self.stop_epoch or self.epochs

    @property
    def warmup(self) -> int:
        """Warm-up epochs actually used: ``min(warmup_epochs, epochs // 2)``."""
        return min(self.warmup_epochs, self.epochs // 2)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``final``: val_acc, val_loss, test_acc, best_epoch (1-based), train_loss (of that epoch),
    selection, protocol, test_correct (packed per-example correctness of the test evaluation
    behind test_acc, see the module doc) and test_n (number of test examples). ``history``:
    one dict per epoch (epoch, lr, train_loss, train_acc, val_acc, val_loss and, for
    ``best_test``, test_acc; None where not evaluated).
    ``state``: CPU copy of the trainable parameters of the selected epoch. ``clock``: where the
    run's time went (``train_s`` in the training loops, ``eval_s`` in evaluation passes,
    ``train_images`` over all epochs), kept apart from ``final`` because it differs between
    two runs that compute the same.
    """

    final: dict[str, Any]
    history: list[dict[str, Any]]
    n_trainable: int
    state: dict[str, Tensor] = field(default_factory=dict, repr=False)
    clock: dict[str, float] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The dict a :meth:`cmpt.results.ResultsStore.run` function returns."""
        return {"final": {**self.final, "n_trainable": self.n_trainable}, "metrics_per_epoch": self.history,
                "clock": dict(self.clock)}


def param_groups(named_params: Iterable[tuple[str, Tensor]], weight_decay: float, lr: float | None = None,
                 head_lr: float | None = None, head_prefix: str = "head.") -> list[dict[str, Any]]:
    """Optimizer groups: weight decay on matrices (and prompts), none on biases and 1-D params (norms).

    With ``head_lr`` the parameters whose names start with ``head_prefix`` form their own groups
    at that rate (the others at ``lr``). Frozen parameters are left out. Each group carries the
    parameter ``names`` and its ``role`` ("head" or "body") for inspection.
    """
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in named_params:
        if not param.requires_grad:
            continue
        role = "head" if head_lr is not None and name.startswith(head_prefix) else "body"
        decays = not (param.ndim <= 1 or name.endswith("bias"))
        group = groups.setdefault((role, decays), {"params": [], "names": [], "role": role,
                                                   "weight_decay": weight_decay if decays else 0.0})
        if lr is not None:
            group["lr"] = head_lr if role == "head" else lr
        group["params"].append(param)
        group["names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0] != "body", not k[1]))]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    head_lr = cfg.head_rate if cfg.head_lr is not None else None
    groups = param_groups(model.named_parameters(), cfg.weight_decay, cfg.lr, head_lr, cfg.head_prefix)
    if not groups:
        raise ValueError("the model has no parameter with requires_grad: nothing to train")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, total: int,
                  steps_per_epoch: int = 1) -> torch.optim.lr_scheduler.LambdaLR:
    """Schedule: linear warm-up over ``warmup`` epochs, then cosine towards 0 at epoch ``total``.

    With ``steps_per_epoch == 1`` it is the per-epoch schedule of the papers' code (factor
    ``(e+1)/warmup`` for epochs ``e < warmup``; unlike the VPT code's, no epoch trains at lr 0):
    call ``step()`` once after each epoch. With ``steps_per_epoch = S > 1`` the same curve is
    evaluated at every optimiser step (``e = step / S``): call ``step()`` after each step.
    """
    if not 0 <= warmup < total:
        raise ValueError(f"need 0 <= warmup < total, got warmup={warmup}, total={total}")
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be at least 1, got {steps_per_epoch}")
    start = 1.0 / steps_per_epoch  # the first step already trains, like the first epoch

    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        if epoch < warmup:
            return (epoch + start) / warmup
        progress = (epoch - warmup) / (total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def steps_per_epoch(data: Data, batch_size: int) -> int:
    """Optimiser steps one epoch of ``data`` takes."""
    if isinstance(data, DataLoader):
        return max(1, len(data))
    return max(1, math.ceil(len(data[1]) / batch_size))


# -- data ------------------------------------------------------------------------------------

def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def _take(inputs: Inputs, index: Tensor | slice) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs[index]
    if isinstance(inputs, Mapping):
        return {k: _take(v, index) for k, v in inputs.items()}
    return type(inputs)(_take(v, index) for v in inputs)


def _length(inputs: Inputs) -> int:
    if isinstance(inputs, Tensor):
        return inputs.shape[0]
    first = next(iter(inputs.values() if isinstance(inputs, Mapping) else inputs))
    return _length(first)


def _check(split: str, data: Data) -> None:
    if isinstance(data, DataLoader):
        return
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise TypeError(f"{split} must be an (inputs, labels) pair of tensors or a DataLoader")
    if _length(data[0]) != len(data[1]) or len(data[1]) == 0:
        raise ValueError(f"{split}: {_length(data[0])} inputs and {len(data[1])} labels (need as many, and some)")


def _batches(data: Data, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[Any, Tensor]]:
    """Batches of a split; tensor splits are shuffled with ``generator`` when one is given."""
    if isinstance(data, DataLoader):
        yield from data
        return
    inputs, labels = data
    n = len(labels)
    order = torch.randperm(n, generator=generator) if generator is not None else None
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size] if order is not None else slice(start, start + batch_size)
        yield _take(inputs, index), labels[index]


def _call(model: nn.Module, forward: Forward | None, inputs: Any) -> Tensor:
    return model(inputs) if forward is None else forward(model, inputs)


def evaluate(model: nn.Module, data: Data, batch_size: int = 256, forward: Forward | None = None,
             device: torch.device | str | None = None, dtype: torch.dtype | None = None,
             per_example: bool = False) -> dict[str, Any]:
    """Accuracy and mean cross-entropy of ``model`` on a split, in eval mode; restores the mode.

    Runs without autograd (autocast to ``dtype`` when given); sums stay on the device and are
    read once, so a GPU is not synchronised every batch. With ``per_example`` the result also
    has ``"correct"``: a CPU bool tensor, one entry per example in the split's order, whose
    mean is ``"acc"`` exactly.
    """
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss = torch.zeros((), dtype=torch.float64, device=device)
    hits: list[Tensor] = []
    n = 0
    try:
        with torch.no_grad(), autocast(device, dtype):
            for inputs, labels in _batches(data, batch_size):
                labels = labels.to(device)
                logits = _call(model, forward, _to(inputs, device)).float()
                loss += F.cross_entropy(logits, labels, reduction="sum")
                right = logits.argmax(-1) == labels
                correct += right.sum()
                if per_example:
                    hits.append(right)
                n += len(labels)
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("cannot evaluate on an empty split")
    out: dict[str, Any] = {"acc": correct.item() / n, "loss": loss.item() / n}
    if per_example:
        out["correct"] = torch.cat(hits).cpu()
    return out


def train_step(model: nn.Module, inputs: Any, labels: Tensor, optimizer: torch.optim.Optimizer,
               forward: Forward | None = None, dtype: torch.dtype | None = None,
               scaler: torch.amp.GradScaler | None = None) -> tuple[Tensor, Tensor]:
    """One optimiser step on a batch already on the device: ``(loss, correct)`` as device tensors.

    The forward runs under autocast to ``dtype`` (None: fp32); the loss is taken in fp32. With
    a ``scaler`` (fp16) the loss is scaled. Nothing here synchronises a GPU.
    """
    with autocast(labels.device, dtype):
        logits = _call(model, forward, inputs)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), (logits.detach().argmax(-1) == labels).sum()


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in _trainable(model).items()}


@torch.no_grad()
def _restore(model: nn.Module, state: dict[str, Tensor]) -> None:
    params = _trainable(model)
    for name, value in state.items():
        params[name].copy_(value)


def _lr_groups(optimizer: torch.optim.Optimizer) -> dict[str, dict[str, Any]]:
    """role -> {"peak_lr", "names"}: what each learning-rate group trained, for the record."""
    out: dict[str, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        entry = out.setdefault(group.get("role", "body"), {"peak_lr": group["initial_lr"], "names": []})
        entry["names"] += list(group.get("names", []))
    return out


def fit(model: nn.Module, train: Data, val: Data | None, test: Data | None, cfg: TrainConfig,
        forward: Forward | None = None) -> FitResult:
    """Train the parameters of ``model`` that have ``requires_grad``; see the module doc.

    ``model`` (or ``forward(model, inputs)``) maps a batch of inputs to logits. Splits are
    ``(inputs, labels)`` CPU tensors (batches move to the device; the training set is shuffled
    by a generator seeded with ``cfg.seed``) or DataLoaders (used as they are). The model is
    moved to ``cfg.device`` and left there. ``val`` may be None unless ``selection == "val"``;
    ``test`` may be None (a search run, which must not see the test split) unless
    ``selection == "best_test"``: its test metrics are then None. The global torch RNG is seeded with ``cfg.seed`` too (dropout in trainable modules).
    """
    if val is None and cfg.selection == "val":
        raise ValueError("selection='val' needs a validation split; pass val or use selection='last'")
    if test is None and cfg.selection == "best_test":
        raise ValueError("selection='best_test' needs the test split")
    for split, data in (("train", train), ("val", val), ("test", test)):
        if data is not None:
            _check(split, data)
    device = resolve_device(cfg.device)
    model.to(device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    optimizer = make_optimizer(model, cfg)
    per_step = steps_per_epoch(train, cfg.batch_size) if cfg.schedule == "step" else 1
    scheduler = warmup_cosine(optimizer, cfg.warmup, cfg.epochs, per_step)
    n_trainable = sum(p.numel() for p in _trainable(model).values())
    dtype = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type) if dtype is torch.float16 else None

    clock = {"train_s": 0.0, "eval_s": 0.0, "train_images": 0}  # where the run's time went (the build's accounting)

    def run_eval(data: Data, per_example: bool = False) -> dict[str, Any]:
        start = time.perf_counter()
        out = evaluate(model, data, cfg.eval_batch_size, forward, device, dtype, per_example)
        clock["eval_s"] += time.perf_counter() - start
        return out

    history: list[dict[str, Any]] = []
    initial_loss: float | None = None  # the first batch's loss, before any step
    best: dict[str, Any] | None = None  # {"score", "row", "state", "test"} of the selected epoch so far
    last = cfg.trained_epochs
    bar = tqdm(range(1, last + 1), desc="epochs", leave=False, disable=None)
    for epoch in bar:
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        head_lr = next((g["lr"] for g in optimizer.param_groups if g.get("role") == "head"), None)
        total_loss = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        seen = 0
        started = time.perf_counter()
        for inputs, labels in _batches(train, cfg.batch_size, generator):
            labels = labels.to(device)
            loss, hits = train_step(model, _to(inputs, device), labels, optimizer, forward, dtype, scaler)
            if initial_loss is None:
                initial_loss = loss.item()
            total_loss += loss.double() * len(labels)
            correct += hits
            seen += len(labels)
            if per_step > 1:
                scheduler.step()
        if per_step == 1:
            scheduler.step()
        train_loss = total_loss.item() / seen  # .item() waits for the device, so the clock below is honest
        clock["train_s"] += time.perf_counter() - started
        clock["train_images"] += seen
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": train_loss,
                               "train_acc": correct.item() / seen, "val_acc": None, "val_loss": None}
        if head_lr is not None:
            row["head_lr"] = head_lr
        if cfg.selection == "best_test":
            row["test_acc"] = None
        if epoch % cfg.eval_every == 0 or epoch == last:
            if val is not None:
                v = run_eval(val)
                row["val_acc"], row["val_loss"] = v["acc"], v["loss"]
            tested = None
            if cfg.selection == "best_test":
                tested = run_eval(test, per_example=True)
                row["test_acc"] = tested["acc"]
            score = {"val": row["val_acc"], "best_test": row.get("test_acc"), "last": epoch}[cfg.selection]
            if best is None or score > best["score"]:  # strict: the earliest best epoch wins ties
                best = {"score": score, "row": row, "state": _snapshot(model) if epoch < last else None,
                        "test": tested}
            bar.set_postfix(loss=f"{row['train_loss']:.3f}", val=row["val_acc"], refresh=False)
        history.append(row)
    bar.close()

    assert best is not None  # the last epoch is always evaluated
    if best["state"] is not None:
        _restore(model, best["state"])
    chosen = best["row"]
    if cfg.selection == "best_test":
        tested = best["test"]
    else:
        tested = run_eval(test, per_example=True) if test is not None else None
    final = {"val_acc": chosen["val_acc"], "val_loss": chosen["val_loss"],
             "test_acc": tested["acc"] if tested else None,
             "best_epoch": chosen["epoch"], "train_loss": chosen["train_loss"], "selection": cfg.selection,
             "protocol": PROTOCOLS[cfg.selection],
             "test_correct": encode_correct(tested["correct"]) if tested else None,
             "test_n": len(tested["correct"]) if tested else 0,
             "initial_loss": initial_loss, "last_train_loss": history[-1]["train_loss"],
             "last_train_acc": history[-1]["train_acc"], "max_train_loss": max(r["train_loss"] for r in history),
             "lr_groups": _lr_groups(optimizer)}
    state = {name: p.detach().to("cpu", copy=True) for name, p in _trainable(model).items()}
    return FitResult(final=final, history=history, n_trainable=n_trainable, state=state, clock=clock)
