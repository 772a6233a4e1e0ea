"""cmpt: Cross-Modality Prompt Transfer, reproduced and extended.

Soft prompts trained on a frozen text transformer, carried into a frozen vision
transformer. See the book (``make book``) for the experiments.
"""

from importlib import import_module
from typing import Any

from cmpt.profiles import PROFILES, Profile, ProfileError, get_profile
from cmpt.chapter_values import record

__version__ = "0.1.0"
__all__ = ["PROFILES", "Profile", "ProfileError", "get_profile", "markdown_table", "notebook_profile", "print_wrapped",
           "record", "show_figure", "takeaways", "use_book_style", "__version__"]

#: exports whose modules load pandas, papermill's helpers or matplotlib: imported on first use
_LAZY = {"notebook_profile": "cmpt.book_kernel", "use_book_style": "cmpt.plotting", "markdown_table": "cmpt.plotting",
         "print_wrapped": "cmpt.plotting", "takeaways": "cmpt.plotting", "show_figure": "cmpt.plotting"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cmpt' has no attribute {name!r}")
