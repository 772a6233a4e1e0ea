"""The book runner: execute every chapter with papermill, then build the HTML.

Sources stay clean: each notebook in ``_toc.yml`` order is executed into a staging copy
of the book (``OUT/_build/executed``), with the profile, the overrides and every chapter
parameter injected after its ``parameters`` cell, and Jupyter Book (1.x, execution off)
renders that copy into ``OUT/_build/html`` with warnings as errors.

The built book reads offline, also from ``file://``: MathJax comes from an installed
package and is copied into the book's ``_static`` (:func:`stage_mathjax`), and widgets are
frozen into the static outputs they showed (:func:`freeze_widgets`), so no page loads
anything from the network.

Each executed copy is put in reading mode (:mod:`cmpt.book_pages`): code cells are folded with
their outputs shown, unless a cell's own tags decide otherwise; the notebook's ``parameters``
cell leaves the page and papermill's injected cell, which holds the values the page was
computed with, is folded; and a "Re-run this chapter" box after the title gives the
``cmpt book --only`` and papermill commands, the chapter's parameters, its execution time and
where the executed copy lives; every figure a chapter shows with :func:`cmpt.show_figure` becomes
a numbered figure with its caption (:func:`~cmpt.book_pages.number_figures`). A build that
executes only some chapters (``--only``) gives every chapter without an executed copy a stub
page, so the book's links still resolve. A failed
HTML build is reported as a few lines naming page, cell and problem; the whole log is kept in
``OUT/_build/html-build.log``. ``cmpt book -p`` values are checked against what each name takes
(:func:`parse_parameter`) before anything runs.

Chapters call :func:`notebook_profile` in their first code cell: it turns the parameters
into the chapter's :class:`~cmpt.profiles.Profile`, whether they came from this runner,
from plain papermill (``-p image_size 48`` works there too) or from JupyterLab.

A chapter is re-executed only when its notebook, its parameters, or the ``cmpt`` package
changed: the key of each finished execution is stored beside it, and its execution time in
``OUT/_build/chapter_times.json`` (:func:`chapter_times`; the performance chapter reads it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cmpt.atomic import write_atomic
from cmpt.book_chapters import (BOOK_PARAMETERS, PACKAGE_DIR, BookError, Chapter, chapter_parameters, chapters,
                                check_chapter_value, find_root, literal_defaults, notebook_parameters,
                                parameters_help, parse_parameter, plain_value)
from cmpt.book_kernel import notebook_profile
from cmpt.book_pages import (SUMMARY_MARKER, chapter_title, findings_summary, fold_code, insert_run_box, is_stub,
                             number_figures, run_box, stub_notebook)
from cmpt.book_widgets import freeze_widgets
from cmpt.chapter_values import ENV_VAR, load_records
from cmpt.profiles import PROFILE_FIELDS, ProfileError, get_profile
from cmpt.results import RESULTS_ENV, results_root

#: ``Chapter``, ``chapters``, ``find_root``, ``parse_parameter`` and the other chapter helpers live in
#: :mod:`cmpt.book_chapters`, ``notebook_profile`` in :mod:`cmpt.book_kernel` and ``freeze_widgets`` in
#: :mod:`cmpt.book_widgets`; they are importable from here too, as the runner's interface
__all__ = ["BUILD_LOG", "CHAPTER_TIMES", "BookError", "BookPlan", "Chapter", "build_book", "build_problems",
           "chapter_parameters", "chapter_times", "chapters", "find_root", "freeze_widgets", "notebook_profile",
           "parameters_help", "parse_parameter", "plan_book", "prepare_for_reading", "stage_mathjax"]

CHAPTER_TIMES = "chapter_times.json"  # under OUT/_build: {chapter: {"seconds", "profile", "finished"}}
#: under OUT/_build: the whole output of the last HTML build (Jupyter Book and Sphinx), without colour codes
BUILD_LOG = "html-build.log"
@dataclass
class BookPlan:
    """What a build will do: the chapters to execute and the parameters of each."""

    root: Path
    out: Path
    profile: str
    chapters: list[Chapter]
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the ``-p`` overrides as given (profile fields and chapter parameters)
    overrides: dict[str, Any] = field(default_factory=dict)
    #: each selected notebook's own parameters as papermill inspects them (name -> default, help, ...)
    declared: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.out / "_build" / "executed"

    @property
    def html(self) -> Path:
        return self.out / "_build" / "html"

    @property
    def records(self) -> Path:
        return self.out / "_build" / "records"

    @property
    def results(self) -> Path:
        """The results root the chapters use: ``OUT/_build/results``.

        With ``OUT`` the checkout (the default) this is where :func:`~cmpt.results.results_root`
        points plain papermill and JupyterLab run inside the checkout, so all three share runs.
        """
        return results_root(self.out / "_build" / "results")


def plan_book(root: Path, out: Path, profile: str, overrides: dict[str, Any],
              only: list[str] | None = None) -> BookPlan:
    """Check profile, overrides and chapter names, and say what each notebook receives.

    An override whose name is a profile field goes to every notebook (inside ``overrides``);
    any other name must be a parameter of at least one notebook and goes to those.
    """
    all_chapters = chapters(root)
    notebooks = [c for c in all_chapters if c.is_notebook]
    overrides = {k: plain_value(v) for k, v in overrides.items()}  # papermill would inject a tuple as its text
    profile_overrides = {k: v for k, v in overrides.items() if k in PROFILE_FIELDS}
    get_profile(profile, profile_overrides)  # raises ProfileError with the valid names
    declared = {c.entry: notebook_parameters(c.source) for c in notebooks}
    for chapter, params in declared.items():
        missing = {"profile", "overrides"} - set(params)
        if missing:
            raise BookError(f"{chapter}.ipynb: its parameters cell must define {', '.join(sorted(missing))}")
    chapter_names = sorted({n for params in declared.values() for n in params} - {"profile", "overrides"})
    if "profile" in overrides:
        raise ProfileError("-p profile: choose the profile with --profile NAME, not with -p")
    if "overrides" in overrides:
        raise ProfileError("-p overrides: give each override as its own -p NAME VALUE")
    unknown = sorted(set(overrides) - set(PROFILE_FIELDS) - set(chapter_names))
    if unknown:
        raise ProfileError(
            f"unknown parameter(s) {', '.join(unknown)}. Profile parameters: {', '.join(PROFILE_FIELDS)}; "
            f"chapter parameters: {', '.join(chapter_names) or 'none'}"
        )
    selected = all_chapters
    if only:
        names = {c.entry: c for c in all_chapters} | {c.stem: c for c in all_chapters}
        bad = [o for o in only if o not in names]
        if bad:
            raise BookError(f"unknown chapter(s) {', '.join(bad)}; chapters: {', '.join(c.stem for c in all_chapters)}")
        wanted = {names[o].entry for o in only}
        selected = [c for c in all_chapters if c.entry in wanted]
    for name, value in overrides.items():  # a chapter parameter must fit the type of its default
        if name not in PROFILE_FIELDS:
            check_chapter_value(name, value, declared.values())
    parameters, own_declared = {}, {}
    for chapter in selected:
        if chapter.is_notebook:
            # every parameter is injected, defaults included, so the injected cell shows all the page used
            mine = {k: v for k, v in declared[chapter.entry].items() if k not in BOOK_PARAMETERS}
            defaults = literal_defaults(mine)
            own = {k: v for k, v in overrides.items() if k in declared[chapter.entry] and k not in PROFILE_FIELDS}
            parameters[chapter.entry] = {"profile": profile, "overrides": profile_overrides, **defaults, **own}
            own_declared[chapter.entry] = mine
    return BookPlan(root=root, out=out, profile=profile, chapters=selected, parameters=parameters,
                    overrides=dict(overrides), declared=own_declared)


def package_fingerprint() -> str:
    """Hash of every source file of the ``cmpt`` package (part of each chapter's cache key)."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        digest.update(str(path.relative_to(PACKAGE_DIR)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cache_key(chapter: Chapter, params: dict[str, Any], fingerprint: str) -> str:
    digest = hashlib.sha256()
    digest.update(chapter.source.read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(fingerprint.encode())
    return digest.hexdigest()


def _execute(plan: BookPlan, chapter: Chapter, params: dict[str, Any]) -> float:
    """Run one chapter with papermill into its executed copy, prepared for reading; returns papermill's seconds."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    target = plan.staging / (chapter.entry + ".ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    records = plan.records / (chapter.stem + ".json")
    records.parent.mkdir(parents=True, exist_ok=True)
    records.unlink(missing_ok=True)
    env = {
        ENV_VAR: str(records),
        RESULTS_ENV: str(plan.results),  # run records, shared by chapters (and by papermill and Lab in the checkout)
        "TQDM_DISABLE": "1",  # progress bars are widgets that mean nothing on a page
        "MPLBACKEND": None,  # Agg would stop figures being captured
    }
    env_before = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    partial = target.with_name(target.name + ".part.ipynb")
    failed = plan.out / "_build" / "failed" / (chapter.stem + ".ipynb")
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(chapter.source), str(partial), parameters=params, kernel_name="python3",
                                   cwd=str(chapter.source.parent), progress_bar=False)
    except PapermillExecutionError as err:
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(partial), failed)
        raise BookError(
            f"chapter {chapter.entry}.ipynb failed in cell [{err.exec_count}] with {err.ename}: {err.evalue}\n"
            f"  the executed notebook, with the traceback, is at {failed}"
        ) from None
    except Exception as err:  # papermill could not start or finish the notebook (kernel, parameters, I/O)
        kept = ""
        if partial.exists():
            failed.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(partial), failed)
            kept = f"; what ran is kept at {failed}"
        message = (str(err).strip().splitlines() or [""])[0]
        raise BookError(f"chapter {chapter.entry}.ipynb: papermill could not run it: "
                        f"{type(err).__name__}: {message}{kept}") from None
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    seconds = time.perf_counter() - start
    nb = nbformat.read(str(partial), as_version=4)
    prepare_for_reading(nb)
    number_figures(nb)
    fold_code(nb)
    insert_run_box(nb, _run_box(plan, chapter, params, seconds))
    nbformat.write(nb, str(partial))
    os.replace(partial, target)
    return seconds


def _run_box(plan: BookPlan, chapter: Chapter, params: dict[str, Any], seconds: float) -> str:
    declared = plan.declared.get(chapter.entry)
    if declared is None:
        declared = chapter_parameters(chapter)
    given = {k: v for k, v in plan.overrides.items() if k in PROFILE_FIELDS or k in declared}
    return run_box(root=plan.root, out=plan.out, entry=chapter.entry, profile=plan.profile, given=given,
                   profile_fields=set(PROFILE_FIELDS), declared=declared, values=params, seconds=seconds,
                   results=plan.results)


def prepare_for_reading(nb: Any) -> None:
    """Make an executed notebook read well as a page (in place).

    The notebook's own ``parameters`` cell is folded (tag ``hide-cell``: the defaults and
    their comments are one click away) and papermill's injected cell stays visible, so the
    page shows the values it was computed with once; widgets are frozen (:func:`freeze_widgets`).
    """
    for cell in nb.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if "parameters" in tags and "hide-cell" not in tags:
            cell.setdefault("metadata", {})["tags"] = [*tags, "hide-cell"]
    freeze_widgets(nb)


def chapter_times(build: Path) -> dict[str, dict[str, Any]]:
    """Execution time of each chapter's last execution under ``build`` (``OUT/_build``); {} if none."""
    path = Path(build) / CHAPTER_TIMES
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_time(plan: BookPlan, chapter: Chapter, seconds: float) -> None:
    build = plan.out / "_build"
    times = chapter_times(build)
    times[chapter.entry] = {"seconds": round(seconds, 2), "profile": plan.profile,
                            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(times, indent=1, sort_keys=True)
    write_atomic(build / CHAPTER_TIMES, lambda part: part.write_text(text))


#: the staged folder that _config.yml names in ``html_static_path``: its files land in the book's _static
OFFLINE_STATIC = "_offline"
#: what the book needs of MathJax 3 (the SVG renderer needs no font files, so it also works from file://)
MATHJAX_PARTS = ("tex-svg.js", "input/tex/extensions", "output/svg", "ui", "a11y", "sre")


def _mathjax_release() -> Path:
    """The MathJax 3 release folder of the installed ``django-static-mathjax`` package (import name ``mathjax``)."""
    spec = importlib.util.find_spec("mathjax")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        release = Path(location) / "static" / "mathjax"
        if (release / "es5" / "tex-svg.js").is_file() and (release / "LICENSE").is_file():
            return release
    raise BookError("MathJax is not installed (the book renders its math offline with it): "
                    "pip install -r requirements.txt brings it as django-static-mathjax")


def stage_mathjax(folder: Path) -> Path:
    """Copy MathJax's SVG renderer, with its licence, into ``folder/mathjax``; returns that folder."""
    release = _mathjax_release()
    dest = folder / "mathjax"
    dest.mkdir(parents=True, exist_ok=True)
    for part in MATHJAX_PARTS:
        src = release / "es5" / part
        if src.is_dir():
            shutil.copytree(src, dest / part, dirs_exist_ok=True)
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    shutil.copy2(release / "LICENSE", dest / "LICENSE")
    version = json.loads((release / "package.json").read_text()).get("version", "?")
    (dest / "README.txt").write_text(f"MathJax {version}, under the Apache License 2.0 (LICENSE beside this "
                                     f"file); copied from the installed django-static-mathjax package.\n")
    return dest


def _stage_static(plan: BookPlan, all_chapters: list[Chapter]) -> None:
    """Copy config and non-notebook pages; write a toc naming only chapters present."""
    plan.staging.mkdir(parents=True, exist_ok=True)
    shutil.copy2(plan.root / "_config.yml", plan.staging / "_config.yml")
    stage_mathjax(plan.staging / OFFLINE_STATIC)
    for chapter in all_chapters:
        if not chapter.is_notebook:
            dest = plan.staging / (chapter.entry + ".md")
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = chapter.source.read_text(encoding="utf-8")
            if SUMMARY_MARKER in text:
                findings = plan.records / "findings.json"
                summary = findings_summary(load_records(findings) if findings.is_file() else None, plan.profile)
                text = text.replace(SUMMARY_MARKER, summary)
            dest.write_text(text, encoding="utf-8")
    for extra in ("book/figures", "book/references.bib"):
        src = plan.root / extra
        if src.is_dir():
            shutil.copytree(src, plan.staging / extra, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, plan.staging / extra)
    present = {c.entry for c in all_chapters if (plan.staging / (c.entry + c.source.suffix)).exists()}
    toc = yaml.safe_load((plan.root / "_toc.yml").read_text())

    def keep(items: list) -> list:
        kept = []
        for item in items or []:
            item = dict(item)
            for key in ("sections", "chapters"):
                if key in item:
                    item[key] = keep(item[key])
                    if not item[key]:
                        del item[key]
            if ("file" in item and item["file"] in present) or "file" not in item and item.get("chapters"):
                kept.append(item)
        return kept

    if "parts" in toc:
        toc["parts"] = keep(toc["parts"])
        if not toc["parts"]:
            del toc["parts"]
    if "chapters" in toc:
        toc["chapters"] = keep(toc["chapters"])
    (plan.staging / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))


def _stage_stubs(plan: BookPlan, all_chapters: list[Chapter], keys_dir: Path) -> list[Chapter]:
    """A stub page for every notebook chapter with no executed copy yet, so a partial book builds.

    The book's links to such a chapter then lead to a page that says how to build it. A stub is
    never taken for an executed chapter: its cache key is removed, and the chapter's next
    selected build executes it over the stub. Returns the chapters stubbed.
    """
    import nbformat

    stubbed = []
    for chapter in all_chapters:
        target = plan.staging / (chapter.entry + ".ipynb")
        if not chapter.is_notebook or (target.exists() and not is_stub(target)):
            continue
        title = chapter_title(nbformat.read(str(chapter.source), as_version=4), chapter.stem.replace("_", " "))
        command = ["cmpt", "book", "--profile", plan.profile, "--only", chapter.stem]
        if plan.out != plan.root:
            command += ["--out", str(plan.out)]
        target.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(stub_notebook(title, chapter.stem, " ".join(command)), str(target))
        (keys_dir / (chapter.stem + ".key")).unlink(missing_ok=True)
        stubbed.append(chapter)
    return stubbed


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
#: a Sphinx or docutils problem: ``PATH[:LINE]: LEVEL: MESSAGE`` (the path may be missing)
_PROBLEM = re.compile(r"^(?:(?P<path>.+?):(?:(?P<line>\d+):)?\s+)?(?P<level>WARNING|ERROR|SEVERE|CRITICAL):\s*"
                      r"(?P<message>.+)$")
#: the last line of a Python traceback: ``package.module.SomeError: what went wrong``
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|NotFound|Exit|Warning): \S")
#: myst-nb numbers a notebook's lines as (cell index + 1) * 10000 + line in that cell
_CELL_LINES = 10_000
#: characters of one problem's message shown (a message can quote a whole cell)
_MESSAGE_CHARS = 240
#: problems a failed build lists before "and N more"
SHOWN_PROBLEMS = 8


def _where(path: str, line: str | None, staging: Path) -> str:
    """A problem's place as a reader knows it: ``book/intro.md, line 24`` or ``book/baselines, cell 3``."""
    try:
        shown = str(Path(path).resolve().relative_to(staging.resolve()))
    except (ValueError, OSError):
        shown = path
    if line is None:
        return shown
    number = int(line)
    if shown.endswith(".ipynb") and number >= _CELL_LINES:
        cell, in_cell = divmod(number, _CELL_LINES)  # cell counts from 1, as a reader counts
        return f"{shown}, cell {cell}" + (f" line {in_cell}" if in_cell else "") + " of the executed copy"
    return f"{shown}, line {number}"


def build_problems(log: str, staging: Path) -> list[str]:
    """The problems a failed Jupyter Book build reports, one readable line each (colour codes removed).

    Sphinx and docutils warnings and errors come first, each with its page (and cell, for a
    notebook); a build that failed without one gives the last error lines it printed.
    """
    seen, found = set(), []
    lines = _ANSI.sub("", log).splitlines()
    for raw in lines:
        match = _PROBLEM.match(raw.strip())
        if not match:
            continue
        where = _where(match["path"], match["line"], staging) if match["path"] else "the book"
        message = match["message"].strip()
        if len(message) > _MESSAGE_CHARS:
            message = message[:_MESSAGE_CHARS].rstrip() + " …"
        problem = f"{where}: {match['level'].lower()}: {message}"
        if problem not in seen:
            seen.add(problem)
            found.append(problem)
    if found:
        return found
    errors = []  # a Python exception's last line, root cause first; Sphinx puts its message on the next line
    for i, raw in enumerate(lines):
        line = raw.strip()
        if _EXCEPTION.match(line):
            problem = line
        elif line in ("Sphinx error:", "Extension error:", "Configuration error:") and i + 1 < len(lines):
            problem = f"{line} {lines[i + 1].strip()}"
        else:
            continue
        if problem not in errors:
            errors.append(problem[:_MESSAGE_CHARS])
    if errors:
        return errors[:3]
    return [line.strip() for line in lines if line.strip()][-5:]


def build_html(plan: BookPlan) -> Path:
    """Render the staged, executed book with Jupyter Book; warnings are errors.

    The whole output goes to ``OUT/_build/html-build.log`` (:data:`BUILD_LOG`); a failed build
    raises :class:`BookError` with its problems as a few readable lines and the log's path.
    """
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(plan.staging),
           "--path-output", str(plan.out), "-W", "-n", "--keep-going"]
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "PY_COLORS")}
    env.update(NO_COLOR="1", TERM="dumb")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    log = _ANSI.sub("", proc.stdout + ("\n" + proc.stderr if proc.stderr else ""))
    log_file = plan.out / "_build" / BUILD_LOG
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text(log)
    if proc.returncode != 0:
        problems = build_problems(log, plan.staging)
        shown = [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
        if len(problems) > SHOWN_PROBLEMS:
            shown.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        raise BookError("\n".join([f"the HTML build failed (jupyter-book exit {proc.returncode}), {count}:", *shown,
                                   f"  full log: {log_file}"]))
    index = plan.html / "index.html"
    if not index.exists():
        raise BookError(f"jupyter-book finished but {index} is missing (full log: {log_file})")
    return index


def _say(message: str) -> None:
    print(message, flush=True)


def build_book(root: Path, out: Path, profile: str = "default", overrides: dict[str, Any] | None = None,
               only: list[str] | None = None, html: bool = True,
               log: Callable[[str], None] = _say) -> BookPlan:
    """Execute the selected chapters (skipping those whose cache key matches), then build HTML."""
    plan = plan_book(root, out, profile, overrides or {}, only)
    fingerprint = package_fingerprint()
    keys_dir = plan.out / "_build" / "cache"
    keys_dir.mkdir(parents=True, exist_ok=True)
    notebooks = [c for c in plan.chapters if c.is_notebook]
    for i, chapter in enumerate(notebooks, 1):
        params = plan.parameters[chapter.entry]
        key = _cache_key(chapter, params, fingerprint)
        key_file = keys_dir / (chapter.stem + ".key")
        done = plan.staging / (chapter.entry + ".ipynb")
        if done.exists() and key_file.exists() and key_file.read_text() == key and not is_stub(done):
            log(f"[{i}/{len(notebooks)}] {chapter.entry}: unchanged, cached")
            continue
        log(f"[{i}/{len(notebooks)}] {chapter.entry}: executing (profile={profile})")
        start = time.perf_counter()
        key_file.unlink(missing_ok=True)
        _execute(plan, chapter, params)
        key_file.write_text(key)
        seconds = time.perf_counter() - start
        _save_time(plan, chapter, seconds)
        log(f"    done in {seconds:.1f} s")
    _stage_stubs(plan, chapters(root), keys_dir)  # first: the staged toc names what is there
    _stage_static(plan, chapters(root))
    if html:
        index = build_html(plan)
        log(f"book: {index}")
    return plan
