"""The book runner as a reader meets it: reading mode, the run box, partial builds, clear errors, the back matter.

Fast tests check the pieces (``-p`` parsing, cell tags, the run box, the build-log summary, SVG
figures). One slow test module fixture builds a partial book once, ``cmpt book --profile smoke
--only baselines --out TMP`` (about a minute: the chapter executes, every other chapter becomes
a stub page), and the slow tests read its pages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from cmpt.book import BookError, build_html, build_problems, parse_parameter, plan_book
from cmpt.book_pages import RUN_BOX_TITLE, fold_code, insert_run_box, number_figures, run_box
from cmpt.chapter_values import ENV_VAR
from cmpt.profiles import ProfileError

ROOT = Path(__file__).resolve().parents[1]
#: the chapter the partial build executes: quick at the smoke profile
CHAPTER = "baselines"
BIB_KEYS = ("zhang2025cmpt", "oymak2023attention", "jia2022vpt", "wang2024spt", "su2022transferability",
            "vu2022spot", "oquab2024dinov2", "wang2020minilm", "zhai2019vtab", "lester2021prompt",
            "dosovitskiy2021vit", "gretton2012mmd", "holm1979", "schuirmann1987tost", "liu2019roberta")


def _cmpt(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "MPLBACKEND")}
    return subprocess.run([sys.executable, "-m", "cmpt", *args], cwd=ROOT, capture_output=True, text=True, env=env)


# --- -p values: what is malformed, before anything runs ---------------------------------------------------------

def test_malformed_parameter_says_what_is_malformed(tmp_path):
    proc = _cmpt("book", "--profile", "smoke", "--only", CHAPTER, "--out", str(tmp_path), "-p", "seeds", "[42,44")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith('cmpt book: -p seeds: "[42,44" is not valid (expected a list of ints such as [')
    assert "parse error: '[' was never closed)" in lines[0]
    assert not (tmp_path / "_build" / "executed").exists(), "nothing may run on a malformed value"


def test_parameter_values_are_checked_against_their_field_or_default():
    assert parse_parameter("seeds", "[42, 44]", ROOT) == [42, 44]
    assert parse_parameter("seeds", "42", ROOT) == 42  # one seed: the profile makes it a tuple
    assert parse_parameter("text_backbone", "roberta-base@/models/rb", ROOT) == "roberta-base@/models/rb"
    assert parse_parameter("include_deep", "True", ROOT) is True
    assert parse_parameter("shots", "[1, 4, 16]", ROOT) == [1, 4, 16]
    assert parse_parameter("no_such_name", "[1", ROOT) == "[1"  # left for plan_book to call unknown
    cases = {
        ("image_size", "big"): r'-p image_size: "big" is not valid \(expected an integer such as \d+; parse error',
        ("image_size", "4.5"): r'-p image_size: "4\.5" is not valid \(expected an integer',
        ("include_deep", "maybe"): r'-p include_deep: "maybe" is not valid \(expected True or False',
        ("shots", "3"): r'-p shots: "3" is not valid \(expected a list of ints such as \[1, 4\]\)',
        ("text_tasks", "[sst2, imdb]"): r"expected a list of names .*names inside a list need quotes",
    }
    for (name, text), message in cases.items():
        with pytest.raises(ProfileError, match=message):
            parse_parameter(name, text, ROOT)
    with pytest.raises(ProfileError, match="choose the profile with --profile"):
        plan_book(ROOT, ROOT, "smoke", {"profile": "smoke"})
    with pytest.raises(ProfileError, match=r'-p include_deep: "yes" is not valid \(expected True or False\)'):
        plan_book(ROOT, ROOT, "smoke", {"include_deep": "yes"})


# --- reading mode and the run box, on a notebook made here ------------------------------------------------------

def _chapter_notebook() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell
    nb.cells = [
        nbformat.v4.new_markdown_cell("# A chapter\n\nWhat it shows."),
        code("profile = 'default'\noverrides = {}\nshots = [1, 4]", metadata={"tags": ["parameters"]}),
        code("# Parameters\nprofile = 'smoke'", metadata={"tags": ["injected-parameters"]}),
        code("cfg = 1"),
        code("secret()", metadata={"tags": ["remove-input"]}),
        code("shown()", metadata={"tags": ["hide-cell"]}),
        nbformat.v4.new_markdown_cell("## More"),
        code("plot()"),
    ]
    return nb


def test_reading_mode_folds_code_and_keeps_what_authors_tagged():
    nb = _chapter_notebook()
    assert fold_code(nb) == 3  # the injected cell and the two untagged cells
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert "remove-cell" in tags[1]  # the notebook's defaults leave the page (the run box lists them)
    assert tags[2] == ["injected-parameters", "hide-input"]
    assert tags[3] == ["hide-input"] and tags[7] == ["hide-input"]
    assert tags[4] == ["remove-input"] and tags[5] == ["hide-cell"]  # the author's choice stands
    assert tags[0] == [] and tags[6] == []  # markdown untouched
    fold_code(nb)
    assert [c.metadata.get("tags", []) for c in nb.cells] == tags  # idempotent


def test_figures_become_numbered_figure_cells_in_the_order_they_were_shown(monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmpt.plotting import FIGURE_KEY, show_figure

    shown = []
    monkeypatch.setattr("IPython.display.display", lambda data, raw, metadata: shown.append((data, metadata)))
    plt.close("all")  # other tests may leave figures open
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    show_figure(fig, "fig-test-line", "A falling line.")
    (data, meta), = shown
    assert data["image/svg+xml"].lstrip().startswith(("<?xml", "<svg")) and not plt.get_fignums()  # closed
    assert meta == {FIGURE_KEY: {"name": "fig-test-line", "caption": "A falling line."}}
    with pytest.raises(ValueError, match="must look like 'fig-chapter-what'"):
        show_figure(plt.figure(), "Figure 1", "x")
    with pytest.raises(ValueError, match="needs a caption"):
        show_figure(plt.figure(), "fig-empty", " ")

    def figure_output(name):
        return nbformat.v4.new_output("display_data", data={"image/svg+xml": "<svg/>"},
                                      metadata={FIGURE_KEY: {"name": name, "caption": f"Caption of {name}."}})

    def text(value):
        return nbformat.v4.new_output("stream", name="stdout", text=value)

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("plot()")
    cell.outputs = [text("before"), figure_output("fig-a"), text("between"), figure_output("fig-b"), text("after")]
    nb.cells = [nbformat.v4.new_markdown_cell("See {numref}`fig-a`."), cell, nbformat.v4.new_code_cell("x = 1")]
    assert number_figures(nb) == ["fig-a", "fig-b"]
    kinds = [([o.get("text") or o["metadata"][FIGURE_KEY]["name"] for o in c.get("outputs", [])],
              c.metadata.get("mystnb", {}).get("figure", {}).get("name")) for c in nb.cells[1:]]
    assert kinds == [(["before"], None), (["fig-a"], "fig-a"), (["between"], None),
                     (["fig-b"], "fig-b"), (["after"], None), ([], None)]
    assert nb.cells[1].source == "plot()" and nb.cells[-1].source == "x = 1"
    assert all(c.source.startswith("# ") for c in nb.cells[2:6])  # MyST-NB drops a code cell without source
    assert all(c.metadata["tags"] == ["remove-input"] for c in nb.cells[2:6])
    assert nb.cells[2].metadata["mystnb"]["figure"]["caption"] == "Caption of fig-a."
    nbformat.validate(nb)
    twice = nbformat.v4.new_notebook()
    twice.cells = [nbformat.v4.new_code_cell("a", outputs=[figure_output("fig-a"), figure_output("fig-a")])]
    with pytest.raises(ValueError, match="'fig-a' is used twice"):
        number_figures(twice)


def test_run_box_follows_the_title_with_both_commands_parameters_and_time(tmp_path):
    nb = _chapter_notebook()
    declared = {"shots": {"default": "[1, 4]", "help": "training sets per class"}}
    text = run_box(root=ROOT, out=ROOT, entry="book/data_scarcity", profile="smoke",
                   given={"image_size": 48, "shots": [1]}, profile_fields={"image_size"}, declared=declared,
                   values={"profile": "smoke", "shots": [1]}, seconds=83.4, results=ROOT / "_build" / "results")
    insert_run_box(nb, text)
    insert_run_box(nb, text)  # again: replaced, not doubled
    assert [c.source for c in nb.cells].count(text) == 1 and nb.cells[1].source == text
    assert text.startswith(f"````{{admonition}} {RUN_BOX_TITLE}\n:class: tip\n")
    code = text[text.index("```bash"):text.index("```", text.index("```bash") + 3)]
    assert max(len(line) for line in code.splitlines()) <= 70  # broken with \ to fit the column
    joined = text.replace(" \\\n    ", " ")
    assert "cmpt book --profile smoke --only data_scarcity -p image_size 48 -p shots '[1]'" in joined
    assert ("papermill book/data_scarcity.ipynb /tmp/data_scarcity.ipynb --cwd book -p profile smoke "
            "-p image_size 48 -y 'shots: [1]'") in joined
    assert "in 1 min 23 s" in text and "_build/results/smoke/" in text and "not retrained" in text
    assert "| `shots` | `[1, 4]` | `[1]` | training sets per class |" in text
    assert "`_build/executed/book/data_scarcity.ipynb`" in text
    elsewhere = run_box(root=ROOT, out=tmp_path, entry="book/inputs", profile="smoke", given={},
                        profile_fields=set(), declared={}, values={}, seconds=5.0, results=tmp_path / "r")
    elsewhere = elsewhere.replace(" \\\n    ", " ")
    assert f"--out {tmp_path}" in elsewhere and f"CMPT_RESULTS={tmp_path / 'r'} papermill" in elsewhere
    assert "no parameters of its own" in elsewhere


# --- a failed HTML build, summarised --------------------------------------------------------------------------

def test_build_problems_name_the_page_and_the_cell_without_colour_codes(tmp_path):
    staging = tmp_path / "_build" / "executed"
    log = (f"\x1b[01mreading sources... \x1b[39;49;00m[ 50%] book/baselines\n"
           f"\x1b[91m{staging}/book/intro.md:24: WARNING: 'myst' cross-reference target not found: 'x' "
           f"[myst.xref_missing]\x1b[39;49;00m\n"
           f"{staging}/book/baselines.ipynb:70008: WARNING: undefined label: 'no-such-label'\n"
           f"{staging}/book/baselines.ipynb:70008: WARNING: undefined label: 'no-such-label'\n"
           "WARNING: html_static_path entry '_offline' does not exist\n")
    assert build_problems(log, staging) == [
        "book/intro.md, line 24: warning: 'myst' cross-reference target not found: 'x' [myst.xref_missing]",
        "book/baselines.ipynb, cell 7 line 8 of the executed copy: warning: undefined label: 'no-such-label'",
        "the book: warning: html_static_path entry '_offline' does not exist",
    ]
    crash = ("Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
             "pybtex.plugin.PluginGroupNotFound: plugin group x not found\n\nRuntimeError: \n=====\n")
    assert build_problems(crash, staging) == ["pybtex.plugin.PluginGroupNotFound: plugin group x not found"]


# --- figures ------------------------------------------------------------------------------------------------------

def test_book_figures_are_small_svgs_sized_for_the_column():
    import matplotlib as mpl
    import numpy as np
    from matplotlib.figure import Figure

    from cmpt.plotting import COLUMN_PX, FIGURE_DPI, figure_svg, use_book_style

    with mpl.rc_context():
        use_book_style()
        assert mpl.rcParams["svg.fonttype"] == "none"
        assert min(mpl.rcParams[k] for k in ("font.size", "xtick.labelsize", "legend.fontsize")) >= 9
        fig = Figure(figsize=(7.5, 3.0))
        left, right = fig.subplots(1, 2)
        points = np.random.default_rng(0).normal(size=(20_000, 2))
        left.scatter(points[:, 0], points[:, 1], s=2)  # dense: drawn as pixels inside the SVG
        right.plot([0, 1, 2], [1, 0, 2], label="a line")
        right.set_xlabel("accuracy")
        right.legend()
        svg = figure_svg(fig)
    root = re.search(r"<svg [^>]*>", svg)[0]
    width = float(re.search(r'width="([0-9.]+)px"', root)[1])
    assert 6.0 * FIGURE_DPI < width <= COLUMN_PX, root  # shown at the size a PNG at FIGURE_DPI had (tight box)
    assert "<image" in svg and len(svg) < 200_000, len(svg)  # the scatter is one embedded image
    assert ">accuracy</text>" in svg  # text stays text


# --- one partial build, read as a reader would ---------------------------------------------------------------

@pytest.fixture(scope="module")
def partial_book(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """``cmpt book --profile smoke --only baselines --out TMP`` on a fresh folder (slow: about a minute)."""
    out = tmp_path_factory.mktemp("partial-book")
    return out, _cmpt("book", "--profile", "smoke", "--only", CHAPTER, "--out", str(out))


def _page(out: Path, entry: str) -> str:
    return (out / "_build" / "html" / f"{entry}.html").read_text()


def _text(html: str) -> str:
    """The page's text: tags dropped (a highlighted command reads as typed), whitespace collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).replace("&#8217;", "'").replace("&quot;", '"')


@pytest.mark.slow
def test_partial_build_executes_one_chapter_and_builds_its_page_with_run_box_and_folded_code(partial_book):
    out, proc = partial_book
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert f"book/{CHAPTER}: executing (profile=smoke)" in proc.stdout
    page = _page(out, f"book/{CHAPTER}")
    text = _text(page)
    assert RUN_BOX_TITLE in text and re.search(r'<div class="[^"]*\btip\b[^"]*admonition', page)
    assert page.index(RUN_BOX_TITLE) < page.index("tag_injected-parameters")  # right after the title
    commands = text.replace(" \\ ", " ")  # the run box breaks long commands with \ to fit the column
    assert f"cmpt book --profile smoke --only {CHAPTER} --out {out}" in commands
    assert (f"CMPT_RESULTS={out}/_build/results papermill book/{CHAPTER}.ipynb /tmp/{CHAPTER}.ipynb --cwd book "
            "-p profile smoke") in commands
    assert re.search(r"executed at profile smoke in \d+(\.\d)? s", text), text[:2000]
    assert "not retrained" in text and f"{out}/_build/executed/book/{CHAPTER}.ipynb" in text
    assert "include_deep" in text  # the chapter's own parameter, with its default
    # reading mode: code folded, outputs shown, the notebook's parameters cell gone from the page
    assert page.count("tag_hide-input") >= 5 and "Show code cell source" in page
    assert "tag_parameters" not in page
    assert re.search(r'<img [^>]*src="[^"]+\.svg"', page), "figures are SVG"
    assert page.count('<span class="caption-number">Fig. ') == page.count('<img ') >= 2, "every figure numbered"
    assert 'href="#fig-baselines-curves"' in page, "the text cites a figure by its number"
    # the chapter ends with what its run shows, in a box
    assert re.search(r'<div class="important admonition">\s*<p class="admonition-title">What this run shows</p>', page)
    executed = nbformat.read(out / "_build" / "executed" / "book" / f"{CHAPTER}.ipynb", as_version=4)
    assert all(c.metadata.get("tags") for c in executed.cells if c.cell_type == "code")
    # the chapters this build did not execute are stub pages, so the book's links resolve
    assert "The findings page was not executed in this build" in _text(_page(out, "book/intro"))
    stub = _text(_page(out, "book/findings"))
    assert "Not built in this run" in stub and f"cmpt book --profile smoke --only findings --out {out}" in stub
    assert (out / "_build" / "html-build.log").is_file()


@pytest.mark.slow
def test_bibliography_lists_every_entry_and_the_glossary_its_terms(partial_book):
    out, proc = partial_book
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = _page(out, "book/bibliography")
    entries = re.findall(r'<div class="citation" id="id\d+"', page)
    assert len(entries) >= 10, "the bibliography lists too few entries"
    text = _text(page)
    for title in ("Release the powers of prompt tuning", "Visual prompt tuning", "A kernel two-sample test",
                  "A simple sequentially rejective multiple test procedure", "Roberta"):
        assert title.lower() in text.lower(), title
    # a chapter's citation links to its entry: (Jia et al., 2022) on the baselines page
    cited = re.search(r'\(<a class="reference internal" href="bibliography\.html#id\d+" title="([^"]+)"', _page(out,
                      f"book/{CHAPTER}"))
    assert cited and "Visual prompt tuning" in cited[1], "the chapter's citations do not link to the bibliography"
    bib = (ROOT / "book" / "references.bib").read_text()
    assert all(f"{{{key}," in bib for key in BIB_KEYS)
    glossary = _page(out, "book/glossary")
    for term in ("VPT", "VPT-deep", "SPT", "SPoT", "ON", "MMD", "modality gap", "task gap", "l_s", "LOTO",
                 "linear probing", "frozen transfer", "projection transfer", "attention transfer", "soft prompt",
                 "TOST", "Holm correction", "noise ceiling", "concentrated length"):
        assert f'id="term-{term.replace(" ", "-")}"' in glossary, term


@pytest.mark.slow
def test_a_broken_page_fails_in_a_few_lines_naming_page_cell_and_log(partial_book):
    out, proc = partial_book
    assert proc.returncode == 0, proc.stderr[-3000:]
    copy = out / "_build" / "executed" / "book" / f"{CHAPTER}.ipynb"
    original = copy.read_bytes()
    nb = nbformat.read(copy, as_version=4)
    at = max(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown")
    nb.cells[at].source += "\n\nSee {ref}`no-such-label`."
    nbformat.write(nb, copy)
    try:
        with pytest.raises(BookError) as caught:
            build_html(plan_book(ROOT, out, "smoke", {}, only=[CHAPTER]))
    finally:
        copy.write_bytes(original)
    lines = str(caught.value).splitlines()
    assert 3 <= len(lines) <= 10 and "\x1b[" not in str(caught.value)
    assert lines[0].startswith("the HTML build failed")
    assert f"  book/{CHAPTER}.ipynb, cell {at + 1} " in lines[1] and "undefined label: 'no-such-label'" in lines[1]
    assert lines[-1] == f"  full log: {out / '_build' / 'html-build.log'}"


def test_findings_summary_states_each_claim_in_its_units():
    from cmpt.book_pages import findings_summary

    records = {"findings/b/verdict": "supported", "findings/b/effect": 0.034, "findings/b/ci_these": [0.01, 0.058],
               "findings/b/mde": 0.02, "findings/f/verdict": "inconclusive", "findings/f/effect": -0.2,
               "findings/f/ci_these": [None, None], "findings/f/mde": None}
    box = findings_summary(records, "default")
    assert box.startswith("```{admonition} What this build found (profile default)") and box.endswith("```")
    assert "(b) Projection transfer beats linear probing: **supported**, +3.4 points [+1.0, +5.8]; detectable 2.0" in box
    assert "(f) " in box and "**inconclusive**, -0.20" in box and "2 claims (1 supported, 1 inconclusive)" in box
    assert "was not executed" in findings_summary(None, "smoke")
