"""cmpt: Cross-Modality Prompt Transfer, reproduced and extended.

Soft prompts trained on a frozen text transformer, carried into a frozen vision
transformer. See the book (``make book``) for the experiments.
"""

from cmpt.profiles import PROFILES, Profile, ProfileError, get_profile
from cmpt.chapter_values import record

__version__ = "0.1.0"
__all__ = ["PROFILES", "Profile", "ProfileError", "get_profile", "record", "__version__"]
