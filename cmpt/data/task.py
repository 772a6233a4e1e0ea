"""The image task type every loader returns, and batches of its splits for a backbone.

An :class:`ImageTask` is a pool of images with labels and fixed splits (index arrays into
the pool). The pool is either

- an in-memory uint8 array ``[N, H, W, 3]`` (the embedded default's tasks: a few hundred
  small images), or
- an :class:`ImageFiles`: a list of file names under a folder, decoded only when an image is
  asked for (VTAB-1k export folders, whose test splits run to tens of thousands of images).

Either way :meth:`ImageTask.loader` gives ``(images, labels)`` batches of any split, each
batch decoded and preprocessed (:func:`to_tensor`) when it is drawn, so memory does not grow
with the split. :class:`SeededShuffle` reproduces the order in which :func:`cmpt.train.fit`
shuffles a tensor split, so a streamed split trains on exactly the batches a cached one would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from cmpt.assets import AssetError
from cmpt.backbones.vision import VisionPreprocess
from cmpt.errors import check_names

__all__ = ["SPLITS", "ImageBatches", "ImageFiles", "ImageTask", "SeededShuffle", "batch_loader", "read_image",
           "to_tensor"]

#: the splits every task offers; ``trainval`` is what final runs train on (train followed by val)
SPLITS = ("train", "val", "test", "trainval")


def to_tensor(images: np.ndarray, preprocess: VisionPreprocess, chunk: int = 256) -> torch.Tensor:
    """uint8 ``[N, H, W(, C)]`` -> float ``[N, 3, S, S]``: resized, scaled to [0, 1], normalised.

    Grayscale (no channel axis, or one channel) is replicated to three channels. Resizing uses
    ``preprocess.interpolation`` (bicubic by default, antialiased when shrinking) and clamps
    the overshoot of bicubic back to [0, 1] before normalising, as a uint8 resize would.
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [N, H, W], [N, H, W, 1] or [N, H, W, 3], got {arr.shape}")
    size = preprocess.image_size
    mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1)
    scale = 255.0 if arr.dtype == np.uint8 else 1.0
    out = torch.empty((len(arr), 3, size, size), dtype=torch.float32)
    for start in range(0, len(arr), chunk):
        x = torch.from_numpy(np.ascontiguousarray(arr[start:start + chunk])).permute(0, 3, 1, 2).float() / scale
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        if x.shape[-2:] != (size, size):
            mode = preprocess.interpolation
            kwargs = {"align_corners": False, "antialias": True} if mode in ("bicubic", "bilinear") else {}
            x = torch.nn.functional.interpolate(x, size=(size, size), mode=mode, **kwargs).clamp_(0.0, 1.0)
        out[start:start + len(x)] = (x - mean) / std
    return out


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 ``[H, W, 3]`` (grayscale and palette images converted to RGB)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy
    except OSError as err:
        raise AssetError(f"cannot read image {path}: {err}; re-export the file or drop its line from the list"
                         ) from err


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


class ImageFiles(Sequence):
    """Images stored as files under ``folder``, decoded on access.

    ``files[i]`` is one uint8 ``[H, W, 3]`` image; ``files[indices]`` (a slice, list or index
    array) decodes those images and stacks them, resizing every image to ``image_size``
    (PIL bicubic) when their sizes differ. Only the names are held in memory.
    """

    def __init__(self, folder: str | Path, names: Sequence[str], image_size: int | None = None) -> None:
        self.folder = Path(folder)
        self.names = list(names)
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.names)

    def path(self, index: int) -> Path:
        return self.folder / self.names[index]

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, (int, np.integer)):
            return read_image(self.path(int(key)))
        picked = range(len(self))[key] if isinstance(key, slice) else np.asarray(key, dtype=np.int64).reshape(-1)
        arrays = [read_image(self.path(int(i))) for i in picked]
        return stack_images(arrays, self.image_size, str(self.folder))

    def __repr__(self) -> str:
        return f"ImageFiles({str(self.folder)!r}, {len(self)} files)"


def stack_images(arrays: list[np.ndarray], image_size: int | None, where: str) -> np.ndarray:
    """Stack decoded images into ``[N, H, W, 3]``; mixed sizes are resized to ``image_size``."""
    if not arrays:
        return np.zeros((0, image_size or 1, image_size or 1, 3), np.uint8)
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    if image_size is None:
        raise AssetError(f"images under {where} have different sizes; pass image_size to resize them "
                         "when they are stacked")
    return np.stack([a if a.shape[:2] == (image_size, image_size) else _resize(a, image_size) for a in arrays])


Images = Union[np.ndarray, ImageFiles]


@dataclass
class ImageTask:
    """An image classification task with fixed splits (index arrays into the pool ``images``).

    ``splits`` holds ``train``, ``val`` and ``test``, and ``trainval`` where the source lists
    it separately (VTAB-1k's ``train800val200.txt``); otherwise ``trainval`` is train then val.
    """

    name: str
    group: str
    classes: tuple[str, ...]
    images: Images  # uint8 [N, H, W, 3] in memory, or files decoded on access
    labels: np.ndarray  # int64 [N]
    splits: dict[str, np.ndarray]  # split name -> int64 indices into images / labels
    description: str = ""
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        """True when the pool is an array (no decoding needed)."""
        return isinstance(self.images, np.ndarray)

    def indices(self, split: str) -> np.ndarray:
        """Pool indices of ``split`` (one of :data:`SPLITS`)."""
        check_names("split", split, SPLITS)
        if split in self.splits:
            return np.asarray(self.splits[split], dtype=np.int64)
        if split == "trainval":
            return np.concatenate([self.splits["train"], self.splits["val"]]).astype(np.int64)
        raise AssetError(f"task {self.name!r} has no {split!r} split (it has {', '.join(self.splits)})")

    def size(self, split: str) -> int:
        return len(self.indices(split))

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images, labels)`` of one split as arrays, all decoded now (for small splits and figures)."""
        idx = self.indices(name)
        return np.asarray(self.images[idx]), self.labels[idx]

    def dataset(self, split: str, preprocess: VisionPreprocess, positions: Sequence[int] | None = None
                ) -> "ImageBatches":
        """The split (or the ``positions`` within it) as a dataset of preprocessed batches."""
        idx = self.indices(split)
        if positions is not None:
            idx = idx[np.asarray(positions, dtype=np.int64)]
        return ImageBatches(self.images, self.labels, idx, preprocess)

    def loader(self, split: str, preprocess: VisionPreprocess, batch_size: int = 128,
               positions: Sequence[int] | None = None, shuffle_seed: int | None = None, workers: int = 0,
               pin_memory: bool = False) -> DataLoader:
        """``(images [B, 3, S, S], labels [B])`` batches of a split, decoded and preprocessed per batch.

        ``positions`` restricts it to those positions of the split (a training subset);
        ``shuffle_seed`` shuffles every pass as :func:`cmpt.train.fit` shuffles a tensor split
        seeded the same (:class:`SeededShuffle`); ``workers`` decode in background processes.
        """
        return batch_loader(self.dataset(split, preprocess, positions), batch_size, shuffle_seed, workers, pin_memory)


class ImageBatches(Dataset):
    """Images of a pool at ``indices``; ``dataset[positions]`` is one preprocessed batch.

    Indexing with a list of positions (what :func:`batch_loader` does) returns
    ``(float [B, 3, S, S], int64 [B])``; an int returns one ``([3, S, S], label)`` pair.
    """

    def __init__(self, images: Images, labels: np.ndarray, indices: np.ndarray, preprocess: VisionPreprocess) -> None:
        self.images, self.labels = images, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            x, y = self[[int(key)]]
            return x[0], y[0]
        idx = self.indices[np.asarray(key, dtype=np.int64)]
        if isinstance(self.images, np.ndarray):
            x = to_tensor(self.images[idx], self.preprocess)
        else:  # one by one: files may differ in size, and each is resized by to_tensor itself
            x = torch.cat([to_tensor(self.images[int(i)][None], self.preprocess) for i in idx]) if len(idx) else \
                torch.empty((0, 3, self.preprocess.image_size, self.preprocess.image_size))
        return x, torch.as_tensor(self.labels[idx], dtype=torch.long)


class SeededShuffle(Sampler[int]):
    """A fresh permutation of ``range(n)`` every pass, from one generator seeded with ``seed``.

    :func:`cmpt.train.fit` shuffles a tensor split with ``torch.randperm(n, generator=g)``
    once per epoch, ``g`` seeded with the run's seed; this draws the same permutations in the
    same order, so a DataLoader built on it yields the same batches as the cached split.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n = int(n)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=self.generator).tolist())


def batch_loader(dataset: Dataset, batch_size: int, shuffle_seed: int | None = None, workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader that asks ``dataset`` for whole batches (``dataset[list of positions]``).

    Batches are built by the dataset itself (one resize call per batch for in-memory images),
    in order or shuffled by :class:`SeededShuffle`. The loader's own generator is seeded, so
    iterating it never draws from torch's global random state.
    """
    n = len(dataset)  # type: ignore[arg-type]
    order: Sampler[int] = SequentialSampler(range(n)) if shuffle_seed is None else SeededShuffle(n, shuffle_seed)
    return DataLoader(dataset, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(0 if shuffle_seed is None else shuffle_seed))
