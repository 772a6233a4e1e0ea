"""Data: text source tasks, image target tasks, VTAB-1k folders, generated sets, fixed splits.

Task names are the contract with :mod:`cmpt.profiles`; every loader takes a profile for sizes.
Submodules import one another one way only: ``task`` (the image task type and its batches)
<- ``vtab`` <- ``image_tasks``.
"""

from cmpt.data.generated import render_generated, sprite_mask
from cmpt.data.image_tasks import IMAGE_GROUPS, IMAGE_TASKS, load_image_task
from cmpt.data.splits import (MIN_TEST_FRACTION, SPLIT_SEED, fraction_indices, kshot_indices, split_indices,
                              split_sizes)
from cmpt.data.task import SPLITS, ImageBatches, ImageFiles, ImageTask, SeededShuffle, batch_loader, to_tensor
from cmpt.data.text_hub import HUB_TASKS, PAIR_SEPARATOR
from cmpt.data.text_tasks import SENTIMENT_THRESHOLD, TEXT_TASKS, TextTask, load_text_task
from cmpt.data.vtab import VTAB_ENV, VTAB_TASKS, load_vtab_folder

__all__ = [
    "HUB_TASKS", "IMAGE_GROUPS", "IMAGE_TASKS", "MIN_TEST_FRACTION", "PAIR_SEPARATOR", "SENTIMENT_THRESHOLD",
    "SPLITS", "SPLIT_SEED", "TEXT_TASKS", "VTAB_ENV", "VTAB_TASKS", "ImageBatches", "ImageFiles", "ImageTask",
    "SeededShuffle", "TextTask", "batch_loader", "fraction_indices", "kshot_indices", "load_image_task",
    "load_text_task", "load_vtab_folder", "render_generated", "split_indices", "split_sizes", "sprite_mask",
    "to_tensor",
]
