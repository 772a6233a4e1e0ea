"""The run plans several chapters share: made here once, so every page asks the store for the same runs.

Projection transfer of every source to every target is the ground truth of transferability,
the runs that choose each target's source, and part of the transfer comparison. The findings
page (executed first) and the chapters (executed later, or alone) build their configs with
these functions, so each run trains once.

Seeds: comparisons between settings use every seed of the profile; projection transfer from
*every* source runs on the first ``Profile.truth_replicates`` seeds only (independent replicates
of the ground truth; two give its noise ceiling), and from the source chosen for a target (best
mean validation accuracy over those replicates) on every seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from cmpt.profiles import Profile
from cmpt.run_config import TargetConfig, default_concentrated, setting_configs
from cmpt.scarcity import choose_sources

__all__ = ["attention_configs", "chosen_configs", "chosen_source", "projection_configs", "truth_seeds"]


def truth_seeds(profile: Profile) -> list[int]:
    """The seeds of the ground-truth replicates: the profile's first ``truth_replicates`` seeds."""
    return list(profile.seeds[:profile.truth_replicates])


def projection_configs(profile: Profile, sources: Sequence[str], targets: Sequence[str] | None = None
                       ) -> list[TargetConfig]:
    """Projection transfer of every source to every target, on the :func:`truth_seeds`."""
    return setting_configs(profile, "projection", list(targets or profile.image_tasks), list(sources),
                           seeds=truth_seeds(profile))


def chosen_source(projection: pd.DataFrame) -> pd.Series:
    """target -> the source with the best mean validation accuracy of projection transfer."""
    return choose_sources(projection)["val"].rename("source")


def chosen_configs(profile: Profile, setting: str, chosen: Mapping[str, str], **extra: Any) -> list[TargetConfig]:
    """``setting`` from each target's chosen source, on every seed of the profile."""
    return [c for target, source in chosen.items()
            for c in setting_configs(profile, setting, [target], [source], **extra)]


def attention_configs(profile: Profile, chosen: Mapping[str, str], concentrated: int | None = None,
                      scaled: bool = False) -> list[TargetConfig]:
    """Attention transfer from each target's chosen source at ``concentrated`` (default: half the prompt)."""
    return chosen_configs(profile, "attention", chosen, concentrated=concentrated or default_concentrated(profile),
                          scaled=scaled)
