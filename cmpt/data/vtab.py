"""VTAB-1k from the usual on-disk export (the paper profile's 19 image targets).

Layout (as written by NOAH's ``data/vtab-source/get_vtab1k.py``, used by the paper's code)::

    ROOT/<task folder>/train800.txt         "<relative image path> <label>" per line
    ROOT/<task folder>/val200.txt
    ROOT/<task folder>/train800val200.txt   the 1,000 training images of final runs
    ROOT/<task folder>/test.txt
    ROOT/<task folder>/images/...

``ROOT`` is the ``vtab_root`` argument or ``$CMPT_VTAB_ROOT``. Task folders may use our names
or the export's (``cifar``, ``oxford_flowers102``, ``oxford_iiit_pet``, ``kitti``).

The grid search trains on ``train800`` and selects on ``val200``; final runs train on
``train800val200`` (1,000 images) at the chosen hyper-parameters and report ``test``. The
loader reads all four lists: ``train800val200.txt`` becomes the task's ``trainval`` split,
checked to hold exactly the images and labels of train800 plus val200 (the export may list
them under file names of their own; those are used as listed). Without the file, ``trainval``
is train800 followed by val200.

Images are not decoded at load: the task's pool is an :class:`~cmpt.data.task.ImageFiles`
(the file names only), and batches are decoded when they are drawn.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmpt.assets import AssetError
from cmpt.data.splits import SPLIT_SEED, split_indices
from cmpt.data.task import ImageFiles, ImageTask
from cmpt.errors import check_names

__all__ = ["TRAINVAL_LIST", "VTAB_ENV", "VTAB_LISTS", "VTAB_TASKS", "VtabTask", "load_vtab_folder",
           "read_vtab_list", "vtab_task_folder"]

VTAB_ENV = "CMPT_VTAB_ROOT"
#: the lists of the train, val and test splits
VTAB_LISTS = ("train800.txt", "val200.txt", "test.txt")
#: the list of the trainval split (train800 + val200)
TRAINVAL_LIST = "train800val200.txt"


@dataclass(frozen=True)
class VtabTask:
    group: str
    num_classes: int
    folders: tuple[str, ...]  # accepted folder names under the root, first = ours


VTAB_TASKS: dict[str, VtabTask] = {
    "cifar100": VtabTask("Natural", 100, ("cifar100", "cifar")),
    "caltech101": VtabTask("Natural", 102, ("caltech101",)),
    "dtd": VtabTask("Natural", 47, ("dtd",)),
    "flowers102": VtabTask("Natural", 102, ("flowers102", "oxford_flowers102")),
    "pets": VtabTask("Natural", 37, ("pets", "oxford_iiit_pet")),
    "svhn": VtabTask("Natural", 10, ("svhn",)),
    "sun397": VtabTask("Natural", 397, ("sun397",)),
    "patch_camelyon": VtabTask("Specialized", 2, ("patch_camelyon",)),
    "eurosat": VtabTask("Specialized", 10, ("eurosat",)),
    "resisc45": VtabTask("Specialized", 45, ("resisc45",)),
    "diabetic_retinopathy": VtabTask("Specialized", 5, ("diabetic_retinopathy",)),
    "clevr_count": VtabTask("Structured", 8, ("clevr_count",)),
    "clevr_dist": VtabTask("Structured", 6, ("clevr_dist",)),
    "dmlab": VtabTask("Structured", 6, ("dmlab",)),
    "kitti_dist": VtabTask("Structured", 4, ("kitti_dist", "kitti")),
    "dsprites_loc": VtabTask("Structured", 16, ("dsprites_loc",)),
    "dsprites_ori": VtabTask("Structured", 16, ("dsprites_ori",)),
    "smallnorb_azi": VtabTask("Structured", 18, ("smallnorb_azi",)),
    "smallnorb_ele": VtabTask("Structured", 9, ("smallnorb_ele",)),
}

_HOWTO = (
    "The paper profile reads VTAB-1k from an export folder: ROOT/<task>/ with the image files and "
    "the lists train800.txt, val200.txt, train800val200.txt and test.txt ('<relative path> <label>' "
    "per line). Make it once with the tfds-based export script of the NOAH repository "
    "(github.com/ZhangYuanhan-AI/NOAH, data/vtab-source/get_vtab1k.py; VPT's VTAB_SETUP.md describes "
    f"the tfds downloads it needs), then pass vtab_root=ROOT or set {VTAB_ENV}=ROOT."
)


def _root(vtab_root: str | os.PathLike | None) -> Path:
    value = vtab_root if vtab_root is not None else os.environ.get(VTAB_ENV)
    if not value:
        raise AssetError(f"no VTAB-1k root given (argument vtab_root, environment variable {VTAB_ENV}). {_HOWTO}")
    root = Path(value).expanduser()
    if not root.is_dir():
        raise AssetError(f"VTAB-1k root {root} is not a folder. {_HOWTO}")
    return root


def vtab_task_folder(vtab_root: str | os.PathLike | None, task: str) -> Path:
    """The folder of ``task`` under the VTAB-1k root (any accepted folder name)."""
    check_names("VTAB-1k task", task, VTAB_TASKS)
    root = _root(vtab_root)
    for name in VTAB_TASKS[task].folders:
        if (root / name).is_dir():
            return root / name
    raise AssetError(f"VTAB-1k task {task!r} not found under {root} (looked for "
                     f"{' or '.join(VTAB_TASKS[task].folders)}). {_HOWTO}")


def read_vtab_list(folder: Path, list_name: str, num_classes: int) -> list[tuple[str, int]]:
    """Parse one list file into ``(relative path, label)`` pairs.

    Every path must stay inside ``folder`` (checked after resolving links) and every label
    must be in range; the files themselves are not opened.
    """
    path = folder / list_name
    if not path.is_file():
        raise AssetError(f"VTAB-1k list {path} is missing. {_HOWTO}")
    base = folder.resolve()
    entries = []
    with path.open() as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            where = f"{path}:{lineno}"
            if len(parts) != 2:
                raise AssetError(f"{where}: expected '<relative path> <label>', got {line.strip()!r}")
            rel, label_text = parts
            try:
                label = int(label_text)
            except ValueError:
                raise AssetError(f"{where}: label {label_text!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise AssetError(f"{where}: label {label} is out of range for {num_classes} classes")
            rel_path = Path(rel.strip())
            if rel_path.is_absolute() or ".." in rel_path.parts or not (base / rel_path).resolve().is_relative_to(base):
                raise AssetError(f"{where}: image path {rel.strip()!r} points outside the task folder {folder}")
            entries.append((rel_path.as_posix(), label))
    if not entries:
        raise AssetError(f"VTAB-1k list {path} is empty")
    return entries


def _subsample(labels: np.ndarray, n: int | None, seed: int, key: str) -> np.ndarray:
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    return split_indices(labels, n, 0, 0, seed=seed, task=key)["train"]


def _trainval(folder: Path, num_classes: int, train: list[tuple[str, int]], val: list[tuple[str, int]]
              ) -> list[tuple[str, int]] | None:
    """The trainval list, checked against train + val; None when the export has no such file."""
    if not (folder / TRAINVAL_LIST).is_file():
        return None
    entries = read_vtab_list(folder, TRAINVAL_LIST, num_classes)
    known = dict(train + val)
    clash = next(((name, label) for name, label in entries if known.get(name, label) != label), None)
    if clash is not None:
        raise AssetError(f"{folder / TRAINVAL_LIST}: {clash[0]} has label {clash[1]} but {known[clash[0]]} in "
                         f"train800/val200; re-export the task folder")
    if len(entries) != len(train) + len(val) or Counter(y for _, y in entries) != Counter(y for _, y in train + val):
        raise AssetError(f"{folder / TRAINVAL_LIST} does not hold train800 + val200 ({len(entries)} images, "
                         f"{len(train) + len(val)} expected with the same labels); re-export the task folder")
    return entries


def load_vtab_folder(vtab_root: str | os.PathLike | None, task: str, n_train: int | None = None,
                     n_val: int | None = None, n_test: int | None = None, image_size: int | None = None,
                     seed: int = SPLIT_SEED) -> ImageTask:
    """A VTAB-1k task folder as an :class:`ImageTask` whose images are decoded on demand.

    Splits come from the lists. ``n_train`` / ``n_val`` / ``n_test`` below a list's length take
    a class-stratified subset (fixed by ``seed``); by default the lists are used whole
    (800 / 200 / full test). ``trainval`` is ``train800val200.txt`` when train and val are whole,
    else the chosen train and val subsets. ``image_size`` resizes mixed-size images when a
    split is stacked into one array (:meth:`ImageTask.split`); batches for a backbone resize
    each image themselves.
    """
    folder = vtab_task_folder(vtab_root, task)
    spec = VTAB_TASKS[task]
    lists, whole = {}, True
    full = {split: read_vtab_list(folder, name, spec.num_classes) for split, name in zip(("train", "val", "test"),
                                                                                          VTAB_LISTS)}
    trainval = _trainval(folder, spec.num_classes, full["train"], full["val"])
    for split, n in zip(("train", "val", "test"), (n_train, n_val, n_test)):
        entries = full.pop(split)
        labels = np.array([label for _, label in entries], dtype=np.int64)
        keep = _subsample(labels, n, seed, f"vtab-{task}-{split}")
        whole = whole and (split == "test" or len(keep) == len(entries))
        lists[split] = entries if len(keep) == len(entries) else [entries[i] for i in keep]
    names = [name for split in lists.values() for name, _ in split]
    labels = np.array([label for split in lists.values() for _, label in split], dtype=np.int64)
    bounds = np.cumsum([0] + [len(v) for v in lists.values()])
    splits = {name: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, name in enumerate(lists)}
    meta = {"folder": str(folder), "trainval": "train + val"}
    if trainval is not None and whole:
        index = {name: i for i, name in enumerate(names[:bounds[2]])}  # train and val only
        tv_index = []
        extra_names, extra_labels = [], []
        for name, label in trainval:
            if name not in index:  # listed under a file name of its own: a pool entry of its own
                index[name] = len(names) + len(extra_names)
                extra_names.append(name)
                extra_labels.append(label)
            tv_index.append(index[name])
        names += extra_names
        labels = np.concatenate([labels, np.array(extra_labels, dtype=np.int64)])
        splits["trainval"] = np.array(tv_index, dtype=np.int64)
        meta["trainval"] = TRAINVAL_LIST
    return ImageTask(name=task, group=spec.group, classes=tuple(str(c) for c in range(spec.num_classes)),
                     images=ImageFiles(folder, names, image_size), labels=labels, splits=splits,
                     description=f"VTAB-1k {task} ({spec.num_classes} classes)", source=f"VTAB-1k export at {folder}",
                     meta=meta)
