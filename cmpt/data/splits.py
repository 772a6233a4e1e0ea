"""Fixed, class-stratified data splits, saved once and reused.

Every subset a run trains or evaluates on is a pure function of ``(labels, sizes, seed)``:
numpy's ``default_rng(seed)`` (PCG64, identical on every platform), classes visited in
ascending label order, indices sorted ascending inside each class before they are permuted.
Nothing depends on set or dict iteration order, so two machines get the same split.

Three kinds of subset:

:func:`split_indices`
    disjoint train / val / test, each class-stratified (class proportions of the pool kept,
    largest-remainder rounding). When the pool is smaller than the sizes asked for, the sizes
    shrink by :func:`split_sizes` instead of failing.
:func:`kshot_indices`
    ``k`` examples per class drawn from a train split. One permutation per class is drawn
    from ``seed`` and the first ``k`` are taken, so for one seed the 1-shot set is inside the
    2-shot set, which is inside the 4-shot set, and so on (nested).
:func:`fraction_indices`
    a stratified fraction of a train split, nested across fractions in the same way (the
    per-class counts come from a sequential Webster/Sainte-Lague apportionment, which only
    ever adds examples as the fraction grows).

Passing ``task=NAME`` to any of them stores the result as JSON under
``cache_dir()/splits/`` (file name: task, sizes, seed) together with a fingerprint of the
labels; a later call with the same name reuses the file if the fingerprint still matches.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmpt.assets import cache_dir
from cmpt.atomic import write_atomic

__all__ = ["MIN_TEST_FRACTION", "SPLIT_SEED", "split_sizes", "split_indices", "kshot_indices",
           "fraction_indices", "split_path"]

#: the seed of the fixed data splits (training seeds vary separately; the data split does not)
SPLIT_SEED = 0
#: when a pool is too small for the sizes asked for, the test split keeps at least this share
MIN_TEST_FRACTION = 0.3
_FORMAT = 1  # bump when the algorithm changes, so stale JSON files are recomputed


def split_sizes(pool: int, n_train: int, n_val: int, n_test: int) -> tuple[int, int, int]:
    """The (train, val, test) sizes actually used for a pool of ``pool`` examples.

    If everything fits, the sizes are kept. Otherwise the rule is: test gets
    ``min(n_test, max(ceil(MIN_TEST_FRACTION * pool), pool - n_train - n_val))``; the rest of the
    pool goes to train and val, split in the requested train:val ratio when it does not fit.
    """
    if min(pool, n_train, n_val, n_test) < 0:
        raise ValueError(f"sizes must be non-negative, got pool={pool}, {n_train}/{n_val}/{n_test}")
    if n_train + n_val + n_test <= pool:
        return n_train, n_val, n_test
    test = min(n_test, max(math.ceil(MIN_TEST_FRACTION * pool), pool - n_train - n_val))
    rest = pool - test
    if n_train + n_val <= rest:
        return n_train, n_val, test
    val = rest * n_val // (n_train + n_val)
    return rest - val, val, test


def _allocate(total: int, weights: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Split ``total`` over classes proportionally to ``weights`` (largest remainder), capped."""
    caps = caps.astype(np.int64)
    if total > caps.sum():
        raise ValueError(f"cannot take {total} examples from {int(caps.sum())}")
    raw = total * weights / weights.sum()
    out = np.minimum(np.floor(raw).astype(np.int64), caps)
    while (missing := total - int(out.sum())) > 0:
        open_ = np.flatnonzero(out < caps)
        order = open_[np.argsort(-(raw[open_] - out[open_]), kind="stable")]
        out[order[:missing]] += 1
    return out


def _by_class(labels: np.ndarray, subset: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    idx = np.arange(len(labels)) if subset is None else np.sort(np.asarray(subset, dtype=np.int64))
    lab = labels[idx]
    classes = np.unique(lab)
    return classes, [idx[lab == c] for c in classes]


def _as_labels(labels) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be a 1-d integer array, got shape {arr.shape} dtype {arr.dtype}")
    return arr.astype(np.int64)


def _split(labels: np.ndarray, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    if len(labels) == 0:
        raise ValueError("cannot split an empty pool")
    sizes = split_sizes(len(labels), n_train, n_val, n_test)
    classes, members = _by_class(labels)
    counts = np.array([len(m) for m in members])
    left = counts.copy()
    quotas = []
    for size in sizes:
        q = _allocate(size, counts.astype(float), left)
        left -= q
        quotas.append(q)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(len(classes)):
        perm = rng.permutation(members[c])
        start = 0
        for name, q in zip(out, quotas):
            out[name].append(perm[start:start + q[c]])
            start += q[c]
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, np.int64)
            for name, parts in out.items()}


def _class_orders(labels: np.ndarray, train_idx, seed: int) -> list[np.ndarray]:
    """One permutation per class of the train indices, drawn once: the basis of nesting."""
    _, members = _by_class(labels, np.asarray(train_idx))
    rng = np.random.default_rng(seed)
    return [rng.permutation(m) for m in members]


def _kshot(labels: np.ndarray, train_idx, k: int, seed: int) -> dict[str, np.ndarray]:
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    orders = _class_orders(labels, train_idx, seed)
    return {"train": np.sort(np.concatenate([o[:k] for o in orders])).astype(np.int64)}


def _fraction(labels: np.ndarray, train_idx, fraction: float, seed: int) -> dict[str, np.ndarray]:
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    orders = _class_orders(labels, train_idx, seed)
    counts = np.array([len(o) for o in orders])
    total = max(len(orders), round(fraction * counts.sum()))
    # one example per class first, then seats one at a time by Webster priority n_c / (s_c + 1/2):
    # the seat sequence does not depend on the fraction, so smaller fractions are prefixes.
    seats = np.minimum(counts, 1)
    heap = [(-n / (s + 0.5), c) for c, (n, s) in enumerate(zip(counts, seats)) if s < n]
    heapq.heapify(heap)
    for _ in range(total - int(seats.sum())):
        _, c = heapq.heappop(heap)
        seats[c] += 1
        if seats[c] < counts[c]:
            heapq.heappush(heap, (-counts[c] / (seats[c] + 0.5), c))
    return {"train": np.sort(np.concatenate([o[:s] for o, s in zip(orders, seats)])).astype(np.int64)}


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for arr in arrays:
        h.update(np.ascontiguousarray(arr, dtype="<i8").tobytes())
        h.update(b"|")
    return h.hexdigest()


def split_path(task: str, kind: str, seed: int) -> Path:
    """Where the JSON of a saved split lives (``kind`` encodes the sizes)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", task)
    return cache_dir() / "splits" / f"{safe}--{kind}--seed{seed}.json"


def _cached(task: str | None, kind: str, seed: int, arrays: tuple[np.ndarray, ...],
            compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if task is None:
        return compute()
    path = split_path(task, kind, seed)
    fingerprint = _fingerprint(*arrays)
    if path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("format") == _FORMAT and saved.get("fingerprint") == fingerprint:
                return {k: np.asarray(v, dtype=np.int64) for k, v in saved["indices"].items()}
            warnings.warn(f"saved split {path.name} was made from different labels; recomputing it")
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"saved split {path.name} is unreadable; recomputing it")
    result = compute()
    record = {"format": _FORMAT, "task": task, "kind": kind, "seed": seed, "fingerprint": fingerprint,
              "sizes": {k: int(len(v)) for k, v in result.items()},
              "indices": {k: v.tolist() for k, v in result.items()}}
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record)))
    return result


def split_indices(labels, n_train: int, n_val: int, n_test: int, seed: int = SPLIT_SEED,
                  task: str | None = None) -> dict[str, np.ndarray]:
    """Disjoint, class-stratified ``{"train", "val", "test"}`` index arrays (sorted).

    Sizes shrink by :func:`split_sizes` when the pool is too small. With ``task`` the
    result is saved to / reused from ``cache_dir()/splits/``.
    """
    lab = _as_labels(labels)
    kind = f"split-{n_train}-{n_val}-{n_test}"
    return _cached(task, kind, seed, (lab,), lambda: _split(lab, n_train, n_val, n_test, seed))


def kshot_indices(labels, train_idx, k: int, seed: int, task: str | None = None) -> np.ndarray:
    """``k`` indices per class from ``train_idx`` (all of a class if it has fewer); nested in ``k``."""
    lab, tr = _as_labels(labels), np.asarray(train_idx, dtype=np.int64)
    return _cached(task, f"kshot-{k}", seed, (lab, tr), lambda: _kshot(lab, tr, k, seed))["train"]


def fraction_indices(labels, train_idx, fraction: float, seed: int, task: str | None = None) -> np.ndarray:
    """A stratified ``fraction`` of ``train_idx`` (at least one per class); nested in ``fraction``."""
    lab, tr = _as_labels(labels), np.asarray(train_idx, dtype=np.int64)
    kind = f"fraction-{fraction:.6g}"
    return _cached(task, kind, seed, (lab, tr), lambda: _fraction(lab, tr, fraction, seed))["train"]
