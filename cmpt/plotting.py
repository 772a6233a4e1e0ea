"""The book's figure style and its Markdown tables.

Every chapter calls :func:`use_book_style` in its first code cell, so figures share one look
and fit the HTML book's text column (about 690 px wide): at :data:`FIGURE_DPI` a figure of
the default size is narrower than the column, and its 9-11 pt text stays readable without
the browser scaling the image down. Inline figures are SVG (:func:`figure_svg`): text stays
text (``svg.fonttype`` "none"), the file is sized in CSS pixels at :data:`FIGURE_DPI` so it
shows at the width a PNG of the same figure had, and an artist with thousands of elements (a
dense scatter, a large mesh) is drawn as pixels at :data:`RASTER_DPI` inside the SVG, which keeps
the file small. :func:`markdown_table` shows a result table as Markdown,
which the book renders like its own tables (and JupyterLab renders too), and
:func:`print_wrapped` prints text that fits the column without scrolling sideways.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["COLUMN_PX", "FIGURE_DPI", "FIGURE_SIZE", "RASTER_ABOVE", "RASTER_DPI", "SVG_BUDGET", "TEXT_WIDTH",
           "FIGURE_KEY", "figure_svg",
           "interval_bars", "show_figure", "markdown_table", "markdown_text", "print_wrapped", "takeaways", "use_book_style"]

#: the width, in CSS pixels, of the HTML book's output column at a usual window size
COLUMN_PX = 676
#: characters of printed text that fit that column without scrolling sideways
TEXT_WIDTH = 74
#: pixels per inch of inline figures (and of saved ones)
FIGURE_DPI = 80
#: the default figure size in inches: 8 in at 80 dpi is 640 px, leaving room for labels outside the axes
FIGURE_SIZE = (8.0, 4.0)
#: pixels per inch of the parts of an SVG figure drawn as pixels (see :data:`RASTER_ABOVE`)
RASTER_DPI = 200
#: an artist drawing more elements than this (markers, mesh cells, line vertices / 10) is rasterised in the SVG
RASTER_ABOVE = 1000
#: bytes an SVG figure may take before its pixel parts (images, rasterised artists) are drawn at a lower
#: resolution: 2 px per CSS px, then 1 (a photo shown large is most of a figure's bytes)
SVG_BUDGET = 400_000


def use_book_style(context: str = "notebook") -> None:
    """Seaborn's white grid with the book's sizes: fonts of 9 pt and more, figures that fit the column.

    ``context`` is seaborn's (``"notebook"``, ``"paper"``, ``"talk"``); the font sizes are set
    after it, so every context keeps the same readable minimum.
    """
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(style="whitegrid", context=context)
    mpl.rcParams.update({
        "svg.fonttype": "none",  # text as text: small files, crisp and searchable
        "svg.hashsalt": "cmpt",  # the same figure gives the same file (ids are otherwise random)
        "figure.figsize": FIGURE_SIZE,
        "figure.dpi": FIGURE_DPI,
        "savefig.dpi": FIGURE_DPI,
        "savefig.bbox": "tight",
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "xtick.labelsize": 9,
        "ytick.labelsize": 9,
        "legend.fontsize": 9,
        "legend.title_fontsize": 10,
        "figure.titlesize": 11,
    })
    _show_figures_as_svg()


def _elements(artist: Any) -> int:
    """How many things ``artist`` draws: markers, paths or mesh cells (line vertices count a tenth)."""
    from matplotlib.collections import Collection, QuadMesh
    from matplotlib.lines import Line2D

    if isinstance(artist, QuadMesh):
        array = artist.get_array()
        return int(np.size(array)) if array is not None else 0
    if isinstance(artist, Collection):
        return max(len(artist.get_offsets()), len(artist.get_paths()))
    if isinstance(artist, Line2D):
        return len(artist.get_xydata()) // 10
    return 0


def figure_svg(fig: Any) -> str | None:
    """``fig`` as the SVG the book shows: sized at :data:`FIGURE_DPI` px per inch, dense artists rasterised.

    Text and lines stay vectors; an artist with more than :data:`RASTER_ABOVE` elements is drawn
    as pixels at :data:`RASTER_DPI`, like the figure's images. Where that would make the file
    larger than :data:`SVG_BUDGET`, the pixel parts are drawn at 2 and then 1 pixel per CSS
    pixel instead. The inline formatter of :func:`use_book_style`; None for a figure with
    nothing drawn.
    """
    from IPython.core.pylabtools import print_figure

    for ax in fig.axes:
        for artist in [*ax.collections, *ax.lines]:
            if _elements(artist) > RASTER_ABOVE:
                artist.set_rasterized(True)
    for dpi in (RASTER_DPI, 2 * FIGURE_DPI, FIGURE_DPI):
        svg = print_figure(fig, "svg", bbox_inches="tight", dpi=dpi, metadata={"Date": None})
        if svg is None:
            return None
        if isinstance(svg, bytes):
            svg = svg.decode("utf-8")
        if len(svg) <= SVG_BUDGET:
            break

    def px(match: Any) -> str:  # matplotlib sizes the SVG in points (72 per inch); the page wants CSS px
        return f'{match[1]}="{float(match[2]) * FIGURE_DPI / 72:.1f}px"'

    head, sep, rest = svg.partition("<svg ")
    tag, close, body = rest.partition(">")
    tag = re.sub(r'\b(width|height)="([0-9.]+)pt"', px, tag)
    return head + sep + tag + close + body


#: output metadata key under which :func:`show_figure` leaves a figure's caption and name for the book runner
FIGURE_KEY = "cmpt_figure"
_FIGURE_NAME = re.compile(r"^fig-[a-z0-9]+(?:-[a-z0-9]+)*$")


def show_figure(fig: Any, name: str, caption: str) -> None:
    """Show ``fig`` as a numbered figure of the book, with ``caption`` under it; closes ``fig``.

    ``name`` (``fig-chapter-what``, unique in the book) is the label the chapter's text
    refers to with ``{numref}`fig-chapter-what```. The figure is displayed as :func:`figure_svg`
    with the caption and name in its output metadata (:data:`FIGURE_KEY`); the book runner
    turns it into a MyST figure (:func:`cmpt.book_pages.number_figures`), so the page numbers
    it. In JupyterLab it shows as a plain figure.
    """
    from IPython.display import display

    if not _FIGURE_NAME.match(name):
        raise ValueError(f"figure name {name!r} must look like 'fig-chapter-what' (lower case, digits, dashes)")
    if not caption.strip():
        raise ValueError(f"figure {name!r} needs a caption")
    import matplotlib.pyplot as plt

    svg = figure_svg(fig)
    plt.close(fig)
    if svg is None:
        raise ValueError(f"figure {name!r} has nothing drawn")
    display({"image/svg+xml": svg, "text/plain": f"<Figure {name}>"}, raw=True,
            metadata={FIGURE_KEY: {"name": name, "caption": caption.strip()}})


def _show_figures_as_svg() -> None:
    """In an IPython kernel: show every matplotlib figure as :func:`figure_svg` (and nothing else)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None or not hasattr(shell, "display_formatter"):
        return
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    # pyplot loads its backend at the first figure, and the inline backend then selects its own
    # formats (PNG): load it now, so that happens before, not after, the formatter below
    load = getattr(plt, "_get_backend_mod", None)
    if load is not None:
        load()
    else:
        plt.switch_backend(matplotlib.get_backend())

    formatters = shell.display_formatter.formatters
    for mime in ("image/png", "image/jpeg", "application/pdf", "image/svg+xml"):
        if mime in formatters:
            formatters[mime].pop(Figure, None)
    formatters["image/svg+xml"].for_type(Figure, figure_svg)


def print_wrapped(*paragraphs: str, width: int = TEXT_WIDTH) -> None:
    """Print each paragraph wrapped to ``width`` columns (continuation lines indented), so it fits the page."""
    for paragraph in paragraphs:
        for line in str(paragraph).splitlines() or [""]:
            print(textwrap.fill(line, width=width, subsequent_indent="    ", break_on_hyphens=False,
                                break_long_words=False) if line.strip() else line)


def takeaways(lines: Any, title: str = "What this run shows") -> Any:
    """A chapter's closing points as an IPython ``Markdown`` admonition: a box on the page, a list in Lab."""
    from IPython.display import Markdown

    body = "\n".join(f"- {line}" for line in lines)
    return Markdown(f"```{{admonition}} {title}\n:class: important\n{body}\n```")


def _cell_text(value: Any) -> Any:
    """A cell as Markdown table text: pipes escaped, so a value cannot split a column."""
    if isinstance(value, str):
        return value.replace("|", "\\|")
    return value


def markdown_table(frame: Any, floatfmt: str = ".3f", index: bool = True, missing: str = "–") -> Any:
    """``frame`` (a DataFrame or Series) as an IPython ``Markdown`` table (see :func:`markdown_text`)."""
    from IPython.display import Markdown

    return Markdown(markdown_text(frame, floatfmt, index, missing))


def markdown_text(frame: Any, floatfmt: str = ".3f", index: bool = True, missing: str = "–") -> str:
    """``frame`` (a DataFrame or Series) as Markdown table text, to display or to put inside a sentence.

    Floats use ``floatfmt``, missing values show ``missing``, and column levels of a
    MultiIndex are joined with " / ".
    """
    import pandas as pd

    if isinstance(frame, pd.Series):
        frame = frame.to_frame()
    frame = frame.copy()
    if isinstance(frame.columns, pd.MultiIndex):
        frame.columns = [" / ".join(str(level) for level in col) for col in frame.columns]
    if isinstance(frame.index, pd.MultiIndex):
        frame.index = pd.Index([" / ".join(map(str, row)) for row in frame.index],
                               name=" / ".join(str(n) for n in frame.index.names if n is not None) or None)
    frame.columns = [_cell_text(str(c)) for c in frame.columns]
    frame.index = pd.Index([_cell_text(str(i)) for i in frame.index], name=frame.index.name)
    frame = frame.map(_cell_text)
    frame = frame.astype(object).where(frame.notna(), None)  # tabulate shows None as `missing`
    return frame.to_markdown(index=index, floatfmt=floatfmt, missingval=missing)


def interval_bars(ax: Any, table: Any, x: str = "target", hue: str = "setting", metric: str = "test_acc",
                  order: Sequence[str] | None = None, hue_order: Sequence[str] | None = None) -> Any:
    """Grouped bars of ``metric`` with whiskers from an :func:`cmpt.stats.interval_table` (``{metric}_low/_high``).

    Groups without an interval (one value) get a bar and no whisker.
    """
    order = list(order or dict.fromkeys(table[x]))
    hue_order = list(hue_order or dict.fromkeys(table[hue]))
    width = 0.8 / max(1, len(hue_order))
    for j, name in enumerate(hue_order):
        part = table[table[hue] == name].set_index(x).reindex(order)
        pos = np.arange(len(order)) - 0.4 + width * (j + 0.5)
        est = part[metric].to_numpy(float)
        low, high = part[f"{metric}_low"].to_numpy(float), part[f"{metric}_high"].to_numpy(float)
        ax.bar(pos, est, width, label=name)
        err = np.vstack([est - low, high - est])
        ok = np.isfinite(err).all(axis=0)
        ax.errorbar(pos[ok], est[ok], yerr=err[:, ok], fmt="none", ecolor="black", elinewidth=1, capsize=2)
    ax.set_xticks(np.arange(len(order)), order)
    ax.legend(bbox_to_anchor=(1.0, 1.0), loc="upper left", fontsize=9)
    return ax
