"""What a reader sees of an executed chapter: folded code, the run box, and stub pages.

The book runner (:mod:`cmpt.book`) applies these to its executed copies only; the source
notebooks stay as their authors wrote them.

* :func:`fold_code` puts the book in reading mode: every code cell's source is folded
  (Jupyter Book tag ``hide-input``: one click shows it, the outputs stay in view) unless the
  cell already carries a ``hide-*`` or ``remove-*`` tag of its own, and the notebook's
  ``parameters`` cell leaves the page (its defaults are listed in the run box).
* :func:`number_figures` makes every figure a chapter showed with :func:`cmpt.show_figure` a
  numbered MyST figure with its caption (a cell of its own, with the figure options MyST-NB
  reads from cell metadata), so the text can refer to it as "Figure 3".
* :func:`run_box` writes the "Re-run this chapter" box that :func:`insert_run_box` puts right
  after the chapter's title cell: the ``cmpt book`` and papermill commands that re-run the
  page, the chapter's parameters with their defaults and the values used, the execution time,
  and where the executed copy lives.
* :func:`findings_summary` is the intro page's "what this build found" box, written from the
  findings page's records where :data:`SUMMARY_MARKER` stands in ``book/intro.md``.
* :func:`stub_notebook` stands in for a chapter a partial build (``cmpt book --only X``) did
  not execute, so the book's links to it still resolve.
"""

from __future__ import annotations

import ast
import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["AUTHOR_TAGS", "FOLD_TAG", "RUN_BOX_TITLE", "SUMMARY_MARKER", "chapter_title", "findings_summary",
           "fold_code", "insert_run_box", "is_stub", "number_figures", "run_box", "stub_notebook"]

#: the tag that folds a code cell's source on the page and keeps its outputs shown
FOLD_TAG = "hide-input"
#: tags by which a chapter's author already decided how a cell shows; such cells are left as they are
AUTHOR_TAGS = frozenset({"hide-input", "hide-output", "hide-cell", "remove-input", "remove-output", "remove-cell"})
RUN_BOX_TITLE = "Re-run this chapter"
#: the line of a Markdown page the runner replaces with :func:`findings_summary`
SUMMARY_MARKER = "<!-- findings-summary -->"
#: the metadata key the runner marks its own cells and notebooks with
META_KEY = "cmpt"


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def fold_code(nb: Any) -> int:
    """Reading mode, in place: fold the source of every code cell no tag already decides; returns how many.

    The notebook's own ``parameters`` cell is removed from the page (``remove-cell``; its
    defaults are in the run box). papermill's ``injected-parameters`` cell, which holds the
    values the page was computed with, is folded like any other code cell.
    """
    folded = 0
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        tags = _tags(cell)
        if "parameters" in tags:
            if "remove-cell" not in tags:
                cell.setdefault("metadata", {})["tags"] = [*tags, "remove-cell"]
            continue
        if AUTHOR_TAGS.intersection(tags):
            continue
        cell.setdefault("metadata", {})["tags"] = [*tags, FOLD_TAG]
        folded += 1
    return folded


def _figure_of(output: Any) -> dict[str, str] | None:
    from cmpt.plotting import FIGURE_KEY

    meta = output.get("metadata", {}).get(FIGURE_KEY) if output.get("output_type") == "display_data" else None
    return dict(meta) if isinstance(meta, Mapping) and meta.get("name") and meta.get("caption") else None


def number_figures(nb: Any) -> list[str]:
    """Give each :func:`cmpt.show_figure` output a cell of its own that MyST-NB renders as a numbered figure.

    A code cell's outputs are cut at each such figure: the cell keeps what came before the
    first one, each figure goes to a new output-only cell (``remove-input``) carrying
    ``mystnb.figure`` (its name and caption), and what followed it to another output-only
    cell, so the page keeps the outputs' order. Returns the figure names, in page order; a
    name used twice is an error (Sphinx labels are global to the book). The new cells' source
    is a one-line comment: MyST-NB leaves a code cell without source off the page.
    """
    import nbformat

    names: list[str] = []
    cells: list[Any] = []
    for cell in nb.cells:
        outputs = cell.get("outputs", []) if cell.get("cell_type") == "code" else []
        if not any(_figure_of(o) for o in outputs):
            cells.append(cell)
            continue
        cell["outputs"], rest = [], list(outputs)
        cells.append(cell)
        pending: list[Any] = []
        for output in rest:
            figure = _figure_of(output)
            if figure is None:
                pending.append(output)
                continue
            if figure["name"] in names:
                raise ValueError(f"figure name {figure['name']!r} is used twice; each figure needs its own")
            names.append(figure["name"])
            _flush(cell, cells, pending)
            shown = nbformat.v4.new_code_cell(source=f"# {figure['name']}: shown by the cell above",
                                              outputs=[output])
            shown["metadata"] = {"tags": ["remove-input"], "mystnb": {"figure": figure},
                                 META_KEY: {"figure_of": cell.get("id")}}
            cells.append(shown)
        _flush(cell, cells, pending)
    nb.cells = cells
    return names


def _flush(cell: Any, cells: list[Any], pending: list[Any]) -> None:
    """Put the outputs waiting in ``pending`` on the page: in ``cell`` while nothing came after it, else a cell of their own."""
    import nbformat

    if not pending:
        return
    if cells[-1] is cell:
        cell["outputs"].extend(pending)
    else:
        extra = nbformat.v4.new_code_cell(source="# more output of the cell above", outputs=list(pending))
        extra["metadata"] = {"tags": ["remove-input"], META_KEY: {"outputs_of": cell.get("id")}}
        cells.append(extra)
    pending.clear()


def chapter_title(nb: Any, fallback: str) -> str:
    """The text of the chapter's first level-1 heading (``# Title``), else ``fallback``."""
    for cell in nb.cells:
        if cell.get("cell_type") != "markdown":
            continue
        for line in str(cell.get("source", "")).splitlines():
            if line.startswith("# "):
                return line[2:].strip()
    return fallback


def _title_index(nb: Any) -> int:
    """The index of the cell holding the chapter's title (its first ``# `` heading), or -1."""
    for i, cell in enumerate(nb.cells):
        if cell.get("cell_type") == "markdown" and any(
                line.startswith("# ") for line in str(cell.get("source", "")).splitlines()):
            return i
    return -1


def insert_run_box(nb: Any, text: str) -> None:
    """Put the run box ``text`` right after the chapter's title cell (replacing an earlier box), in place."""
    import nbformat

    nb.cells = [c for c in nb.cells if not c.get("metadata", {}).get(META_KEY, {}).get("run_box")]
    cell = nbformat.v4.new_markdown_cell(text, metadata={META_KEY: {"run_box": True}})
    cell.pop("id", None)
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) >= (4, 5):  # cell ids exist from nbformat 4.5
        cell["id"] = "cmpt-run-box"
    nb.cells.insert(_title_index(nb) + 1, cell)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def cli_text(value: Any) -> str:
    """``value`` as the VALUE of ``cmpt book -p NAME VALUE`` (which parses it as a Python literal)."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value  # a bare word stays a string
        return repr(value)
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


def _papermill_args(name: str, value: Any, profile_field: bool) -> list[str]:
    """How plain papermill receives one parameter: ``-p`` (resolved), ``-r`` (raw text) or ``-y`` (YAML)."""
    if profile_field:  # notebook_profile parses the text of a profile field itself
        return ["-p", name, cli_text(value)]
    if isinstance(value, str):
        return ["-r", name, value]
    if value is None or isinstance(value, (bool, int, float)):
        return ["-p", name, repr(value)]
    plain = json.loads(json.dumps(value))  # tuples as lists
    return ["-y", f"{name}: {json.dumps(plain)}"]


def _shown(path: Path, root: Path) -> str:
    """``path`` relative to the project root when inside it (the commands run there), else absolute."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    text = _cell(text)
    return f"``{text}``" if "`" in text else f"`{text}`"


def shell_lines(words: list[str], prefix: str = "", width: int = 64) -> str:
    """``words`` as one shell command, quoted, broken with ``\\`` into lines of at most about ``width``.

    The run box's code block must fit the page column, where a long line would be cut off.
    """
    lines, line = [], prefix.rstrip()
    for word in map(shlex.quote, words):
        if line and len(line) + 1 + len(word) > width:
            lines.append(line + " \\")
            line = "    " + word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*lines, line])


def run_box(*, root: Path, out: Path, entry: str, profile: str, given: Mapping[str, Any],
            profile_fields: frozenset[str] | set[str], declared: Mapping[str, Mapping[str, Any]],
            values: Mapping[str, Any], seconds: float, results: Path) -> str:
    """The "Re-run this chapter" box (MyST Markdown) for the executed copy of chapter ``entry``.

    ``given``: the ``-p`` overrides of this build that reach the chapter; ``declared``: the
    chapter's own parameters as papermill inspects them (``default``, ``help``); ``values``:
    what the runner injected for each; ``seconds``: how long papermill took; ``results``: the
    results root the chapter read and wrote.
    """
    stem = Path(entry).name
    source = Path(entry + ".ipynb")
    only = ["cmpt", "book", "--profile", profile, "--only", stem]
    for name, value in given.items():
        only += ["-p", name, cli_text(value)]
    if out != root:
        only += ["--out", str(out)]
    paper = ["papermill", str(source), f"/tmp/{stem}.ipynb", "--cwd", str(source.parent), "-p", "profile", profile]
    for name, value in given.items():
        paper += _papermill_args(name, value, name in profile_fields)
    prefix = "" if out == root else f"CMPT_RESULTS={shlex.quote(str(results))} "
    executed = _shown(out / "_build" / "executed" / source, root)
    store = _shown(results / profile, root)
    lines = [
        f"````{{admonition}} {RUN_BOX_TITLE}",
        ":class: tip",
        "",
        f"This page was executed at profile `{profile}` in {_duration(seconds)}. Every run it shows goes "
        f"through the results store (`{store}/`): a stored run is read back, not retrained, so a re-run "
        "trains only what is missing and takes seconds when nothing changed. From the project root:",
        "",
        "```bash",
        "# this chapter alone, its page rebuilt",
        shell_lines(only),
        "# or plain papermill (no page; -k python3 outside the cmpt kernel)",
        shell_lines(paper, prefix),
        "```",
        "",
    ]
    if declared:
        lines += [
            "The chapter's own parameters (`-p NAME VALUE` in either command; any profile field too, "
            "`cmpt profiles -v` lists them):",
            "",
            "| parameter | default | this page | what it sets |",
            "|---|---|---|---|",
        ]
        for name, info in declared.items():
            used = cli_text(values[name]) if name in values else str(info.get("default", ""))
            lines.append(f"| {_code(name)} | {_code(str(info.get('default', '')))} | {_code(used)} "
                         f"| {_cell(str(info.get('help') or '')) or '–'} |")
        lines.append("")
    else:
        lines += ["This chapter has no parameters of its own; `-p NAME VALUE` sets any profile field "
                  "(`cmpt profiles -v` lists them).", ""]
    lines += [f"In JupyterLab (`make lab`), the executed copy of this page, outputs included, is "
              f"`{executed}`.", "````"]
    return "\n".join(lines)


def stub_notebook(title: str, stem: str, command: str) -> Any:
    """A one-cell notebook standing in for a chapter this build did not execute."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata[META_KEY] = {"stub": True}
    nb.cells = [nbformat.v4.new_markdown_cell(
        f"# {title}\n\n"
        "```{admonition} Not built in this run\n:class: warning\n\n"
        f"This chapter was not executed in this build of the book, so its page holds nothing yet. "
        f"Build it with `{command}`.\n```\n")]
    for cell in nb.cells:
        cell["id"] = f"cmpt-stub-{stem}"[:64]
    return nb


def is_stub(path: Path) -> bool:
    """Whether the notebook at ``path`` is a stub page written by :func:`stub_notebook`."""
    try:
        return bool(json.loads(Path(path).read_text()).get("metadata", {}).get(META_KEY, {}).get("stub"))
    except (OSError, ValueError, AttributeError):
        return False


def findings_summary(records: Mapping[str, Any] | None, profile: str) -> str:
    """A MyST box: each claim's verdict, effect and interval from the findings page's records of this build."""
    from cmpt.claims import CLAIMS
    from cmpt.verdicts import VERDICTS

    def fmt(value: float | None, scale: float, digits: int) -> str:
        return "n/a" if value is None else f"{value * scale:+.{digits}f}"

    title = f"```{{admonition}} What this build found (profile {profile})\n:class: important\n"
    if not records or not any(f"findings/{k}/verdict" in records for k in CLAIMS):
        return title + ("The findings page was not executed in this build: `cmpt book --only findings` "
                        "runs it.\n```")
    lines, verdicts = [], []
    for key, spec in CLAIMS.items():
        if f"findings/{key}/verdict" not in records:
            continue
        verdict, effect = records[f"findings/{key}/verdict"], records[f"findings/{key}/effect"]
        low, high = records[f"findings/{key}/ci_these"]
        mde = records.get(f"findings/{key}/mde")
        scale, digits, unit = spec.display
        interval = f" [{fmt(low, scale, digits)}, {fmt(high, scale, digits)}]" if low is not None else ""
        detect = f"; detectable {abs(mde) * scale:.{digits}f}{unit}" if mde is not None else ""
        lines.append(f"- ({key}) {spec.statement}: **{verdict}**, {fmt(effect, scale, digits)}{unit}{interval}"
                     f"{detect}")
        verdicts.append(verdict)
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if verdicts.count(v))
    return (title + f"{len(verdicts)} claims ({counts}); effects over these targets with 95% intervals. "
            "The [findings](findings.ipynb) page shows how each was tested.\n\n" + "\n".join(lines) + "\n```")
