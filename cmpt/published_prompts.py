"""The 13 published Su et al. (2022) RoBERTa-base prompts, shipped with the package.

Su et al., "On Transferability of Prompt Tuning for Natural Language Processing" (NAACL 2022)
released one tuned soft prompt (100 tokens x 768) per source task; the paper profile uses
them as its source bank. They travel inside the package as ``cmpt/published/su2022/<task>.safetensors``
(the tensors unchanged, in :func:`cmpt.prompts.save_prompt`'s format, beside the authors' MIT
licence), so nothing has to be downloaded or trained to use them.

Their scales differ a lot: the mean token L2 norm goes from about 32 (MNLI) down to about 1
(movie rationales), which is why the random reference prompt is matched to the bank's mean
norm. :func:`su2022_norms` (and ``SU2022_NORMS``) computes the norms from the tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from cmpt.assets import AssetError
from cmpt.errors import check_names
from cmpt.prompts import SU2022_TASKS, Prompt, import_su2022, load_prompt, save_prompt

__all__ = ["SU2022_BACKBONE", "SU2022_ORIGIN", "SU2022_TASK_NAMES", "convert_su2022", "published_dir",
           "su2022_norms", "su2022_prompts"]

SU2022_BACKBONE = "roberta-base"
SU2022_ORIGIN = "Su et al. 2022, published"
#: task names in the published order (sentiment, NLI, ethics, paraphrase)
SU2022_TASK_NAMES: tuple[str, ...] = tuple(task for task, _ in SU2022_TASKS.values())
_FOLDER = ("published", "su2022")


def published_dir() -> Path:
    """The installed folder holding the converted prompts, their licence and attribution."""
    root = resources.files("cmpt").joinpath(*_FOLDER)
    folder = Path(str(root))
    if not folder.is_dir():
        raise AssetError(f"the published prompts folder {folder} is missing from the cmpt installation; "
                         "reinstall cmpt (its package data includes cmpt/published/su2022)")
    return folder


def su2022_prompts(tasks: Sequence[str] | None = None) -> dict[str, Prompt]:
    """Task name -> published prompt, in the published order (all 13 by default).

    Raises :class:`~cmpt.errors.UnknownNameError` for a task that is not among them.
    """
    wanted = SU2022_TASK_NAMES if tasks is None else tuple(tasks)
    check_names("Su et al. 2022 prompt task", wanted, SU2022_TASK_NAMES)
    folder = published_dir()
    out = {}
    for task in SU2022_TASK_NAMES:
        if task not in wanted:
            continue
        path = folder / f"{task}.safetensors"
        if not path.is_file():
            raise AssetError(f"published prompt {path} is missing; reinstall cmpt (its package data ships "
                             "all 13 files)")
        out[task] = load_prompt(path)
    return out


def su2022_norms(tasks: Sequence[str] | None = None) -> dict[str, float]:
    """Mean token L2 norm of each published prompt (same order as :func:`su2022_prompts`)."""
    return {task: p.norm for task, p in su2022_prompts(tasks).items()}


def convert_su2022(source: str | Path, out: str | Path) -> list[Path]:
    """Convert the authors' ``<stem>.pt`` files in ``source`` into ``out/<task>.safetensors``.

    This is how the shipped files were made; the tensors are written unchanged.
    """
    source, out = Path(source), Path(out)
    written = []
    for stem, (task, group) in SU2022_TASKS.items():
        path = source / f"{stem}.pt"
        if not path.is_file():
            raise AssetError(f"{path} is missing: the folder must hold all 13 published files ({stem}.pt, ...)")
        loaded = import_su2022(path, SU2022_BACKBONE)
        assert isinstance(loaded, Prompt)
        prompt = Prompt(loaded.tensor, source_backbone=SU2022_BACKBONE, task=task, group=group, layout="prepend",
                        training={"origin": SU2022_ORIGIN, "file": path.name})
        written.append(save_prompt(prompt, out / f"{task}.safetensors"))
    return written


def __getattr__(name: str) -> dict[str, float]:
    # SU2022_NORMS is computed on first use (it reads the 13 files), never written down.
    if name == "SU2022_NORMS":
        global SU2022_NORMS
        SU2022_NORMS = su2022_norms()
        return SU2022_NORMS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
