"""VTAB-1k from the usual on-disk export (the paper profile's 19 image targets).

Layout (as written by NOAH's ``data/vtab-source/get_vtab1k.py``, used by the paper's code)::

    ROOT/<task folder>/train800.txt       "<relative image path> <label>" per line
    ROOT/<task folder>/val200.txt
    ROOT/<task folder>/train800val200.txt (not read: it is train800 + val200, often re-exported
                                           as separate image files)
    ROOT/<task folder>/test.txt
    ROOT/<task folder>/images/...

``ROOT`` is the ``vtab_root`` argument or ``$CMPT_VTAB_ROOT``. Task folders may use our names
or the export's (``cifar``, ``oxford_flowers102``, ``oxford_iiit_pet``, ``kitti``).
Grid search trains on train800 and selects on val200; final runs train on both and report
test (``ImageTask.split("trainval")``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmpt.assets import AssetError
from cmpt.data.image_tasks import ImageTask
from cmpt.data.splits import SPLIT_SEED, split_indices

__all__ = ["VTAB_ENV", "VTAB_LISTS", "VTAB_TASKS", "VtabTask", "load_vtab_folder", "read_vtab_list",
           "vtab_task_folder"]

VTAB_ENV = "CMPT_VTAB_ROOT"
VTAB_LISTS = ("train800.txt", "val200.txt", "test.txt")


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
    if task not in VTAB_TASKS:
        raise ValueError(f"unknown VTAB-1k task {task!r}; valid names: {', '.join(VTAB_TASKS)}")
    root = _root(vtab_root)
    for name in VTAB_TASKS[task].folders:
        if (root / name).is_dir():
            return root / name
    raise AssetError(f"VTAB-1k task {task!r} not found under {root} (looked for "
                     f"{' or '.join(VTAB_TASKS[task].folders)}). {_HOWTO}")


def read_vtab_list(folder: Path, list_name: str, num_classes: int) -> list[tuple[Path, int]]:
    """Parse one list file; every path must stay inside ``folder`` and every label in range."""
    path = folder / list_name
    if not path.is_file():
        raise AssetError(f"VTAB-1k list {path} is missing. {_HOWTO}")
    base = folder.resolve()
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        where = f"{path}:{lineno}"
        if len(parts) != 2:
            raise AssetError(f"{where}: expected '<relative path> <label>', got {line!r}")
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise AssetError(f"{where}: label {label_text!r} is not an integer") from None
        if not 0 <= label < num_classes:
            raise AssetError(f"{where}: label {label} is out of range for {num_classes} classes")
        rel_path = Path(rel.strip())
        target = (folder / rel_path).resolve()
        if rel_path.is_absolute() or ".." in rel_path.parts or not target.is_relative_to(base):
            raise AssetError(f"{where}: image path {rel!r} points outside the task folder {folder}")
        entries.append((target, label))
    if not entries:
        raise AssetError(f"VTAB-1k list {path} is empty")
    return entries


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise AssetError(f"cannot read VTAB-1k image {path}: {err}") from err


def _stack(arrays: list[np.ndarray], image_size: int | None, task: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) == 1:
        return np.stack(arrays)
    if image_size is None:
        raise AssetError(f"VTAB-1k task {task!r} has images of {len(shapes)} different sizes; "
                         "pass image_size to resize them on load")
    from PIL import Image

    # mixed sizes cannot share one array: resize once to the model size (bicubic, as VTAB does)
    return np.stack([a if a.shape[:2] == (image_size, image_size) else
                     np.asarray(Image.fromarray(a).resize((image_size, image_size), Image.BICUBIC))
                     for a in arrays])


def _subsample(labels: np.ndarray, n: int | None, seed: int, key: str) -> np.ndarray:
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    return split_indices(labels, n, 0, 0, seed=seed, task=key)["train"]


def load_vtab_folder(vtab_root: str | os.PathLike | None, task: str, n_train: int | None = None,
                     n_val: int | None = None, n_test: int | None = None, image_size: int | None = None,
                     seed: int = SPLIT_SEED) -> ImageTask:
    """Load a VTAB-1k task folder; splits come from its lists.

    ``n_train`` / ``n_val`` / ``n_test`` below a list's length take a class-stratified subset
    (fixed by ``seed``); by default the lists are used whole (800 / 200 / full test).
    Images of mixed sizes are resized to ``image_size`` on load.
    """
    folder = vtab_task_folder(vtab_root, task)
    spec = VTAB_TASKS[task]
    lists = {}
    for split, list_name, n in zip(("train", "val", "test"), VTAB_LISTS, (n_train, n_val, n_test)):
        entries = read_vtab_list(folder, list_name, spec.num_classes)
        labels = np.array([label for _, label in entries], dtype=np.int64)
        keep = _subsample(labels, n, seed, f"vtab-{task}-{split}")
        lists[split] = [entries[i] for i in keep]
    paths = [p for split in lists.values() for p, _ in split]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(_read_image, paths))
    images = _stack(arrays, image_size, task)
    labels = np.array([label for split in lists.values() for _, label in split], dtype=np.int64)
    bounds = np.cumsum([0] + [len(v) for v in lists.values()])
    splits = {name: np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i, name in enumerate(lists)}
    return ImageTask(name=task, group=spec.group, classes=tuple(str(c) for c in range(spec.num_classes)),
                     images=images, labels=labels, splits=splits,
                     description=f"VTAB-1k {task} ({spec.num_classes} classes)", source=f"VTAB-1k export at {folder}",
                     meta={"folder": str(folder)})
