"""The book runner: execute every chapter with papermill, then build the HTML.

Sources stay clean: each notebook in ``_toc.yml`` order is executed into a staging copy
of the book (``OUT/_build/executed``), with the profile and overrides injected into its
``parameters`` cell, and Jupyter Book (1.x, execution off) renders that copy into
``OUT/_build/html`` with warnings as errors.

A chapter is re-executed only when its notebook, its parameters, or the ``cmpt`` package
changed: the key of each finished execution is stored beside it, and its execution time in
``OUT/_build/chapter_times.json`` (:func:`chapter_times`; the performance chapter reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
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
from cmpt.errors import CmptError
from cmpt.profiles import PROFILE_FIELDS, ProfileError, get_profile
from cmpt.chapter_values import ENV_VAR
from cmpt.results import RESULTS_ENV


__all__ = ["CHAPTER_TIMES", "BookError", "BookPlan", "Chapter", "build_book", "chapter_times", "chapters", "find_root",
           "plan_book"]

PACKAGE_DIR = Path(__file__).resolve().parent
CHAPTER_TIMES = "chapter_times.json"  # under OUT/_build: {chapter: {"seconds", "profile", "finished"}}


class BookError(CmptError):
    """A chapter failed, or the book could not be built."""


@dataclass(frozen=True)
class Chapter:
    """One entry of ``_toc.yml``: its path relative to the root, without suffix."""

    entry: str
    source: Path

    @property
    def is_notebook(self) -> bool:
        return self.source.suffix == ".ipynb"

    @property
    def stem(self) -> str:
        return Path(self.entry).name


@dataclass
class BookPlan:
    """What a build will do: the chapters to execute and the parameters of each."""

    root: Path
    out: Path
    profile: str
    chapters: list[Chapter]
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def staging(self) -> Path:
        return self.out / "_build" / "executed"

    @property
    def html(self) -> Path:
        return self.out / "_build" / "html"

    @property
    def records(self) -> Path:
        return self.out / "_build" / "records"


def find_root(start: Path | None = None) -> Path:
    """The project root: the first folder upwards holding ``_toc.yml`` (cwd, then the package's)."""
    for base in (start or Path.cwd(), PACKAGE_DIR.parent):
        for folder in (base, *base.parents):
            if (folder / "_toc.yml").exists() and (folder / "_config.yml").exists():
                return folder
    raise BookError("no _toc.yml/_config.yml found above the current folder; run from the cmpt checkout")


def _toc_entries(toc: dict) -> list[str]:
    entries = [toc["root"]]

    def walk(items: list) -> None:
        for item in items or []:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections", []))
            walk(item.get("chapters", []))

    walk(toc.get("parts", []))
    walk(toc.get("chapters", []))
    return entries


def chapters(root: Path) -> list[Chapter]:
    """Every ``_toc.yml`` entry in order, resolved to its source file."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found = []
    for entry in _toc_entries(toc):
        for suffix in (".ipynb", ".md"):
            path = root / (entry + suffix)
            if path.exists():
                found.append(Chapter(entry, path))
                break
        else:
            raise BookError(f"_toc.yml names {entry!r} but neither {entry}.ipynb nor {entry}.md exists")
    return found


def _notebook_parameters(path: Path) -> dict[str, Any]:
    import papermill

    return papermill.inspect_notebook(str(path))


def plan_book(root: Path, out: Path, profile: str, overrides: dict[str, Any],
              only: list[str] | None = None) -> BookPlan:
    """Check profile, overrides and chapter names, and say what each notebook receives.

    An override whose name is a profile field goes to every notebook (inside ``overrides``);
    any other name must be a parameter of at least one notebook and goes to those.
    """
    all_chapters = chapters(root)
    notebooks = [c for c in all_chapters if c.is_notebook]
    profile_overrides = {k: v for k, v in overrides.items() if k in PROFILE_FIELDS}
    get_profile(profile, profile_overrides)  # raises ProfileError with the valid names
    declared = {c.entry: _notebook_parameters(c.source) for c in notebooks}
    for chapter, params in declared.items():
        missing = {"profile", "overrides"} - set(params)
        if missing:
            raise BookError(f"{chapter}.ipynb: its parameters cell must define {', '.join(sorted(missing))}")
    chapter_names = sorted({n for params in declared.values() for n in params} - {"profile", "overrides"})
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
    parameters = {}
    for chapter in selected:
        if chapter.is_notebook:
            own = {k: v for k, v in overrides.items() if k in declared[chapter.entry] and k not in PROFILE_FIELDS}
            parameters[chapter.entry] = {"profile": profile, "overrides": profile_overrides, **own}
    return BookPlan(root=root, out=out, profile=profile, chapters=selected, parameters=parameters)


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


def _execute(plan: BookPlan, chapter: Chapter, params: dict[str, Any]) -> None:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    target = plan.staging / (chapter.entry + ".ipynb")
    target.parent.mkdir(parents=True, exist_ok=True)
    records = plan.records / (chapter.stem + ".json")
    records.parent.mkdir(parents=True, exist_ok=True)
    records.unlink(missing_ok=True)
    env_before = {k: os.environ.get(k) for k in (ENV_VAR, RESULTS_ENV, "MPLBACKEND")}
    os.environ[ENV_VAR] = str(records)
    os.environ[RESULTS_ENV] = str(plan.out / "_build" / "results")  # run records, shared by chapters
    os.environ.pop("MPLBACKEND", None)  # Agg would stop figures being captured
    partial = target.with_name(target.name + ".part.ipynb")
    try:
        papermill.execute_notebook(str(chapter.source), str(partial), parameters=params, kernel_name="python3",
                                   cwd=str(chapter.source.parent), progress_bar=False)
    except PapermillExecutionError as err:
        failed = plan.out / "_build" / "failed" / (chapter.stem + ".ipynb")
        failed.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(partial), failed)
        raise BookError(
            f"chapter {chapter.entry}.ipynb failed in cell [{err.exec_count}] with {err.ename}: {err.evalue}\n"
            f"  the executed notebook, with the traceback, is at {failed}"
        ) from None
    finally:
        for key, value in env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    os.replace(partial, target)


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


def _stage_static(plan: BookPlan, all_chapters: list[Chapter]) -> None:
    """Copy config and non-notebook pages; write a toc naming only chapters present."""
    plan.staging.mkdir(parents=True, exist_ok=True)
    shutil.copy2(plan.root / "_config.yml", plan.staging / "_config.yml")
    for chapter in all_chapters:
        if not chapter.is_notebook:
            dest = plan.staging / (chapter.entry + ".md")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(chapter.source, dest)
    for extra in ("book/figures", "references.bib"):
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


def build_html(plan: BookPlan) -> Path:
    """Render the staged, executed book with Jupyter Book; warnings are errors."""
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(plan.staging), "--path-output", str(plan.out),
           "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}")
    index = plan.html / "index.html"
    if not index.exists():
        raise BookError(f"jupyter-book finished but {index} is missing")
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
        if done.exists() and key_file.exists() and key_file.read_text() == key:
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
    _stage_static(plan, chapters(root))
    if html:
        index = build_html(plan)
        log(f"book: {index}")
    return plan
