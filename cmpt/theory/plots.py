"""The chapter's figure conventions: one colour per model, min-max bands over seeds, legends below.

Figures are sized for a narrow book column (at most 6.4 inches wide) and keep their legend
outside the axes, under them, so that no curve is hidden.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from cmpt.theory.sweeps import MODEL_LABELS

__all__ = ["BAND", "FIGSIZE", "PALETTE", "model_lines", "legend_below", "log_axis", "new_axes"]

#: seaborn ``errorbar`` for the shaded band: min to max over seeds
BAND = ("pi", 100)
#: one panel: width, height in inches
FIGSIZE = (6.4, 3.6)
PALETTE = {MODEL_LABELS[k]: c for k, c in
           (("prompt", "C0"), ("linear", "C4"), ("self", "C1"), ("uniform", "C2"), ("oracle", "0.35"))}


def new_axes(figsize: tuple[float, float] = FIGSIZE) -> tuple[plt.Figure, plt.Axes]:
    """One figure with one axes."""
    return plt.subplots(figsize=figsize)


def legend_below(ax: plt.Axes, ncol: int = 2, title: str | None = None) -> None:
    """Move the axes' legend under the plot, outside the data."""
    sns.move_legend(ax, "upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False, title=title)


def log_axis(ax: plt.Axes, values: list[int] | tuple[int, ...]) -> None:
    """Log-scaled x axis ticked at exactly ``values`` (plain numbers, no minor ticks)."""
    ax.set_xscale("log")
    ax.set_xticks(list(values), [str(v) for v in values])
    ax.minorticks_off()


def model_lines(data: pd.DataFrame, x: str, ax: plt.Axes, y: str = "error", log_x: bool = False) -> plt.Axes:
    """Mean of ``y`` against ``x`` per model (oracle dashed), band min-max over seeds, legend below."""
    models = [m for m in PALETTE if m in set(data.model)]
    sns.lineplot(data=data, x=x, y=y, hue="model", hue_order=models, style="model", style_order=models,
                 dashes={m: (2, 2) if "oracle" in m else "" for m in models}, errorbar=BAND, marker="o",
                 palette=PALETTE, ax=ax)
    if log_x:
        log_axis(ax, sorted(data[x].unique()))
    legend_below(ax, ncol=2)
    return ax
