"""A target task's data as the training loop takes it, in memory that does not grow with the task.

The vision backbone is frozen and nothing is augmented, so every split can be embedded once
(patch projection + CLS + position embedding) and every run trains from those tokens. That is
what the default profile does: its splits are a few hundred small images. VTAB-1k is another
matter: at ViT-B/16 and 224 px one image's tokens take 605 KB, and dSprites' test split
(73,728 images) would need 45 GB of tokens, twice that as pixels on the way.

:class:`TargetData` therefore keeps a split's tokens only while they fit ``cache_bytes``
(1 GiB by default: VTAB-1k's train800 and val200 fit, its test splits do not) and streams the
others: batches are decoded from disk, preprocessed and embedded when they are drawn, on the
run's device, then dropped. Either way :meth:`TargetData.split` returns what
:func:`cmpt.train.fit` accepts — ``(tokens, labels)`` tensors or a DataLoader of
``(tokens, labels)`` batches — and a streamed training split is shuffled exactly as ``fit``
shuffles a cached one (:class:`~cmpt.data.task.SeededShuffle`), so the two give the same
trajectory up to float rounding.

Head-only settings train on final CLS features (:meth:`TargetData.head_splits`); those are
cached per fixed prompt within the same budget, and streamed batch by batch through the
backbone for a split that does not fit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cmpt.backbones.vision import PromptedViT
from cmpt.data.image_tasks import load_image_task
from cmpt.data.splits import SPLIT_SEED
from cmpt.data.task import ImageTask, batch_loader
from cmpt.errors import InputError
from cmpt.features import cls_features, embed_batches, feature_stream, token_stream
from cmpt.profiles import Profile
from cmpt.devices import resolve_device

__all__ = ["DEFAULT_CACHE_BYTES", "EMBED_BATCH_SIZE", "EVAL_BATCH_SIZE", "HEAD_SPLITS", "TargetData",
           "prepare_target"]

#: memory for cached tokens and features of one target (1 GiB)
DEFAULT_CACHE_BYTES = 1 << 30
#: batch size of embedding and feature extraction (also of the cached path, so both agree)
EMBED_BATCH_SIZE = 128
#: batch size of a streamed evaluation split (cmpt.train.TrainConfig's eval_batch_size)
EVAL_BATCH_SIZE = 256
#: the splits a run trains, selects and reports on
HEAD_SPLITS = ("train", "val", "test")
#: a split as :func:`cmpt.train.fit` takes it
Data = Union[tuple[Tensor, Tensor], DataLoader]
Keep = Union[Tensor, np.ndarray, Sequence[int], None]

_FLOAT_BYTES = 4


class _TensorBatches(Dataset):
    """Cached tensors at chosen positions; ``dataset[positions]`` is one ``(inputs, labels)`` batch."""

    def __init__(self, inputs: Tensor, labels: Tensor, positions: Tensor | None = None) -> None:
        self.inputs, self.labels = inputs, labels
        self.positions = torch.arange(len(labels)) if positions is None else positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: Any) -> tuple[Tensor, Tensor]:
        rows = self.positions[torch.as_tensor(key, dtype=torch.long)]
        return self.inputs[rows], self.labels[rows]


@dataclass
class _Features:
    """CLS features behind one fixed prompt: the splits that fit the budget, and those streamed."""

    cached: dict[str, Tensor] = field(default_factory=dict)
    streamed: set[str] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.cached.values())


def _positions(keep: Keep) -> Tensor | None:
    if keep is None:
        return None
    return torch.as_tensor(np.asarray(keep), dtype=torch.long).reshape(-1)


def _prompt_key(backbone: PromptedViT, prompt: Tensor | None) -> tuple:
    digest = None
    if prompt is not None:
        values = prompt.detach().cpu().float().contiguous().numpy()
        digest = hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest()
    return id(backbone), backbone.layout, digest


@dataclass
class TargetData:
    """A target task's splits for training: cached tokens where they fit, streamed batches elsewhere.

    ``tokens`` holds the cached splits (embedding-layer output, CPU, fp32) and ``labels`` the
    labels of every split prepared so far. Built by :func:`prepare_target`; constructing it
    from precomputed ``tokens`` and ``labels`` (no backbone) gives a fully cached target.
    ``cache_bytes`` bounds cached tokens and cached features together.
    """

    task: ImageTask
    tokens: dict[str, Tensor]
    labels: dict[str, Tensor]
    backbone: PromptedViT | None = field(default=None, repr=False)
    device: torch.device | str = "cpu"
    cache_bytes: int = DEFAULT_CACHE_BYTES
    workers: int = 0  # DataLoader worker processes decoding streamed images
    #: splits decided to be streamed (their tokens did not fit)
    streamed: set[str] = field(default_factory=set)
    #: CLS features per (backbone, fixed prompt), the last few kept, so head-only runs on training
    #: subsets go through the backbone once
    features: dict[tuple, _Features] = field(default_factory=dict, repr=False)
    keep_features: int = field(default=4, repr=False)

    # -- budget ------------------------------------------------------------------------------

    @property
    def cached_bytes(self) -> int:
        """Bytes held by cached tokens and cached features."""
        return sum(t.nbytes for t in self.tokens.values()) + sum(f.nbytes for f in self.features.values())

    def token_bytes(self, n: int) -> int:
        """Bytes of the embedded tokens of ``n`` images."""
        backbone = self._backbone()
        return n * (1 + backbone.num_patches) * backbone.width * _FLOAT_BYTES

    def _backbone(self) -> PromptedViT:
        if self.backbone is None:
            raise InputError("this TargetData holds precomputed tokens only; build it with "
                             "cmpt.target_data.prepare_target to stream splits that are not cached")
        return self.backbone

    # -- token splits ------------------------------------------------------------------------

    def prepare(self, split: str) -> None:
        """Decide, once per split, whether it is cached (embedded now) or streamed."""
        if split in self.tokens or split in self.streamed:
            return
        self._backbone()  # a target of precomputed tokens has nothing to embed or stream from
        if split not in self.labels:
            self.labels[split] = torch.as_tensor(self.task.labels[self.task.indices(split)], dtype=torch.long)
        n = len(self.labels[split])
        if self.token_bytes(n) > self.cache_bytes - self.cached_bytes:
            self.streamed.add(split)
            return
        desc = f"{self.task.name} {split}: embedding" if n >= 16 * EMBED_BATCH_SIZE else None
        self.tokens[split] = embed_batches(self._backbone(), self._images(split, EMBED_BATCH_SIZE), n, self.device,
                                           desc=desc)

    def is_cached(self, split: str) -> bool:
        """True when ``split``'s tokens are held in memory (preparing the split if needed)."""
        self.prepare(split)
        return split in self.tokens

    def _images(self, split: str, batch_size: int, positions: Tensor | None = None,
                shuffle_seed: int | None = None) -> DataLoader:
        backbone = self._backbone()
        pin = torch.device(self.device).type == "cuda"
        return self.task.loader(split, backbone.preprocess, batch_size, positions=positions,
                                shuffle_seed=shuffle_seed, workers=self.workers, pin_memory=pin)

    def split(self, name: str, keep: Keep = None, shuffle_seed: int | None = None,
              batch_size: int | None = None) -> Data:
        """One split as :func:`cmpt.train.fit` takes it: cached ``(tokens, labels)`` or a DataLoader.

        ``keep`` (positions within the split) restricts it to a training subset. A streamed
        split yields ``(tokens [B, T, D] on the device, labels)`` batches of ``batch_size``
        (default :data:`EVAL_BATCH_SIZE`), shuffled every pass when ``shuffle_seed`` is given
        (pass the run's seed and batch size for the training split: the batches are then those
        ``fit`` draws from a cached split). Cached splits are returned unshuffled; ``fit``
        shuffles them.
        """
        self.prepare(name)
        positions = _positions(keep)
        labels = self.labels[name]
        if name in self.tokens:
            tokens = self.tokens[name]
            return (tokens, labels) if positions is None else (tokens[positions], labels[positions])
        images = self._images(name, batch_size or EVAL_BATCH_SIZE, positions, shuffle_seed)
        return token_stream(self._backbone(), images, self.device)

    @torch.no_grad()
    def patch_embeddings(self, name: str, keep: Keep = None) -> Tensor:
        """Patch-projection tokens ``[N, P, D]`` (no CLS, no position embedding; CPU fp32) of a split."""
        backbone = self._backbone()
        device = next(backbone.parameters()).device
        chunks = [backbone.patch_embeddings(images.to(device)).to("cpu", torch.float32)
                  for images, _ in self._images(name, EMBED_BATCH_SIZE, _positions(keep))]
        return torch.cat(chunks)

    def splits(self, keep: Keep = None, seed: int = 0, batch_size: int = 64, names: Sequence[str] = HEAD_SPLITS,
               eval_batch_size: int = EVAL_BATCH_SIZE) -> list[Data]:
        """``fit``'s splits for a model on tokens: the first of ``names`` trains (subset ``keep``, shuffled by ``seed``).

        Pass ``fit``'s ``batch_size`` and ``seed`` (and its ``eval_batch_size`` for the other
        splits) so that streamed splits are batched as cached ones.
        """
        return [self.split(name, keep, seed, batch_size) if i == 0 else self.split(name, batch_size=eval_batch_size)
                for i, name in enumerate(names)]

    # -- head-only features ------------------------------------------------------------------

    def _entry(self, backbone: PromptedViT, prompt: Tensor | None) -> tuple[tuple, _Features]:
        key = _prompt_key(backbone, prompt)
        if key not in self.features:
            while len(self.features) >= self.keep_features:
                self.features.pop(next(iter(self.features)))  # the oldest
            self.features[key] = _Features()
        return key, self.features[key]

    def _make_room(self, need: int, current: tuple) -> bool:
        """Evict older feature entries until ``need`` bytes fit; False if they never will."""
        while need > self.cache_bytes - self.cached_bytes:
            older = next((k for k in self.features if k != current), None)
            if older is None:
                return False
            self.features.pop(older)
        return True

    def _feature_source(self, name: str, batch_size: int, positions: Tensor | None = None,
                        shuffle_seed: int | None = None) -> DataLoader:
        """Batches of the backbone's input for ``name``: cached tokens, or images decoded per batch."""
        if name in self.tokens:
            return batch_loader(_TensorBatches(self.tokens[name], self.labels[name], positions), batch_size,
                                shuffle_seed)
        return self._images(name, batch_size, positions, shuffle_seed)

    def _features(self, backbone: PromptedViT, prompt: Tensor | None, device: torch.device | str,
                  name: str) -> Tensor | None:
        """Cached features of one split (computed now if they fit), or None when it is streamed."""
        self.prepare(name)
        key, entry = self._entry(backbone, prompt)
        if name in entry.cached:
            return entry.cached[name]
        if name in entry.streamed:
            return None
        n = len(self.labels[name])
        if not self._make_room(n * backbone.width * _FLOAT_BYTES, key):
            entry.streamed.add(name)
            return None
        if name in self.tokens:
            feats = cls_features(backbone, self.tokens[name], prompt, batch_size=EMBED_BATCH_SIZE, device=device)
        else:
            feats = torch.empty((n, backbone.width), dtype=torch.float32)
            start = 0
            for out, _ in feature_stream(backbone, self._feature_source(name, EMBED_BATCH_SIZE), prompt, device):
                feats[start:start + len(out)] = out.cpu()
                start += len(out)
        entry.cached[name] = feats
        return feats

    def head_split(self, backbone: PromptedViT, prompt: Tensor | None, device: torch.device | str, name: str,
                   keep: Keep = None, shuffle_seed: int | None = None, batch_size: int | None = None) -> Data:
        """One split's final-norm CLS features behind a fixed ``prompt``, as ``fit`` takes them.

        Cached ``(features [N, D], labels)`` when they fit the budget, else a DataLoader
        computing ``(features, labels)`` batches through the backbone on ``device`` (shuffled
        by ``shuffle_seed`` like :meth:`split`).
        """
        feats = self._features(backbone, prompt, device, name)
        positions = _positions(keep)
        labels = self.labels[name]
        if feats is not None:
            return (feats, labels) if positions is None else (feats[positions], labels[positions])
        source = self._feature_source(name, batch_size or EVAL_BATCH_SIZE, positions, shuffle_seed)
        return feature_stream(backbone, source, prompt, device)

    def head_splits(self, backbone: PromptedViT, prompt: Tensor | None, device: torch.device | str,
                    keep: Keep = None, seed: int = 0, batch_size: int = 64, names: Sequence[str] = HEAD_SPLITS,
                    eval_batch_size: int = EVAL_BATCH_SIZE) -> list[Data]:
        """``fit``'s splits for a head on CLS features: the first of ``names`` trains (``keep``, ``seed``)."""
        return [self.head_split(backbone, prompt, device, name, keep, seed, batch_size) if i == 0
                else self.head_split(backbone, prompt, device, name, batch_size=eval_batch_size)
                for i, name in enumerate(names)]

    def head_features(self, backbone: PromptedViT, prompt: Tensor | None,
                      device: torch.device | str = "cpu") -> list[Tensor | DataLoader]:
        """Features of train, val and test: tensors where cached, unshuffled feature streams elsewhere."""
        out: list[Tensor | DataLoader] = []
        for name in HEAD_SPLITS:
            data = self.head_split(backbone, prompt, device, name)
            out.append(data[0] if isinstance(data, tuple) else data)
        return out


def prepare_target(name: str, profile: Profile, backbone: PromptedViT, device: torch.device | str | None = None,
                   cache_bytes: int = DEFAULT_CACHE_BYTES, workers: int = 0, splits: Sequence[str] = HEAD_SPLITS,
                   vtab_root: str | None = None, seed: int = SPLIT_SEED) -> TargetData:
    """Load target ``name`` of ``profile`` and embed each of ``splits`` that fits ``cache_bytes``.

    Embedding runs on ``device`` (default: the profile's, ``auto`` meaning CUDA when there is
    one); the backbone is moved there. Splits are considered in order, so with a tight budget
    the training split is the one kept. Other splits (``trainval``) are prepared on first use.
    """
    task = load_image_task(name, profile, seed=seed, vtab_root=vtab_root)
    where = resolve_device(profile.device if device is None else str(device))
    backbone.to(where)
    data = TargetData(task, {}, {}, backbone=backbone, device=where, cache_bytes=cache_bytes, workers=workers)
    for split in splits:
        data.prepare(split)
    return data
