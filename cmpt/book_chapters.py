"""The book's chapters and their parameters: ``_toc.yml`` read in order, and ``-p`` values checked.

:func:`chapters` resolves every ``_toc.yml`` entry to its notebook or Markdown file;
:func:`chapter_parameters` reads a notebook's own parameters (papermill's inspection of its
``parameters`` cell) and :func:`parse_parameter` turns a ``cmpt book -p NAME VALUE`` text into
the value that name takes (a profile field's type, or the type of the chapter parameter's
default), so a malformed value is one clear line before anything runs.
"""

from __future__ import annotations

import ast
import textwrap
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cmpt.assets import checkout_root
from cmpt.book_pages import cli_text
from cmpt.errors import CmptError
from cmpt.profiles import PROFILE_FIELDS, ProfileError, get_profile

__all__ = ["BOOK_PARAMETERS", "INJECTED_HEADER", "BookError", "Chapter", "chapter_parameters", "chapters",
           "check_chapter_value", "find_root", "literal_defaults", "notebook_parameters", "parameters_help",
           "parse_parameter", "plain_value"]

PACKAGE_DIR = Path(__file__).resolve().parent

#: the first line of the cell papermill injects after a notebook's ``parameters`` cell
INJECTED_HEADER = "# Parameters"
#: the two parameters every chapter declares; the rest are the chapter's own
BOOK_PARAMETERS = ("profile", "overrides")



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


def find_root(start: Path | None = None) -> Path:
    """The project root: the checkout holding ``start`` (default: the current folder), else the package's."""
    for base in (start or Path.cwd(), PACKAGE_DIR.parent):
        if (found := checkout_root(base.resolve())) is not None:
            return found
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


def notebook_parameters(path: Path) -> dict[str, Any]:
    import papermill

    return papermill.inspect_notebook(str(path))


def chapter_parameters(chapter: Chapter) -> dict[str, dict[str, Any]]:
    """A notebook's own parameters (not ``profile``/``overrides``): name -> papermill's inspection.

    Each entry has ``default`` (the source text), ``inferred_type_name`` and ``help`` (the
    comment on the line).
    """
    return {name: info for name, info in notebook_parameters(chapter.source).items() if name not in BOOK_PARAMETERS}


def literal_defaults(declared: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The declared defaults that are Python literals, as values (the rest stay in the notebook)."""
    values = {}
    for name, info in declared.items():
        try:
            values[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError, TypeError):
            continue
    return values


def parameters_help(root: Path) -> str:
    """What ``cmpt book --help`` lists: each chapter's own parameters, then the profile fields."""
    lines = ["chapters, in the book's order, and their own parameters",
             "(-p NAME VALUE reaches the chapters that declare NAME):"]
    for chapter in chapters(root):
        if not chapter.is_notebook:
            continue
        own = chapter_parameters(chapter)
        lines.append(f"  {chapter.stem}" + ("" if own else " (no parameters of its own)"))
        for name, info in own.items():
            note = f"  # {info['help']}" if info.get("help") else ""
            lines.append(f"      {name} = {info['default']}{note}")
    lines.append("")
    lines.append("profile fields (-p NAME VALUE reaches every chapter; `cmpt profiles -v` shows their values):")
    lines.append(textwrap.fill(", ".join(PROFILE_FIELDS), width=78, initial_indent="  ", subsequent_indent="  "))
    return "\n".join(lines)


# --------------------------------------------------------------------------- -p values, checked before any work

def plain_value(value: Any) -> Any:
    """``value`` with every tuple a list (papermill writes a tuple into the notebook as a string)."""
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value


def _hint_of(value: Any) -> Any:
    """A type hint for a chapter parameter's literal default (None: anything goes)."""
    if value is None:
        return Any
    if isinstance(value, (bool, int, float, str, dict)):
        return type(value)
    if isinstance(value, (list, tuple)):
        kinds = {type(v) for v in value}
        element = _hint_of(value[0]) if len(kinds) == 1 else Any
        return list[element]  # type: ignore[valid-type]
    return Any


def _chapter_hint(name: str, declared: typing.Iterable[Mapping[str, Mapping[str, Any]]]) -> tuple[Any, Any]:
    """(type hint, example) of chapter parameter ``name`` from the first literal default declared; (None, None)."""
    for params in declared:
        info = params.get(name)
        if info is None:
            continue
        try:
            default = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError, TypeError):
            continue
        return _hint_of(default), default
    return None, None


def _expected(name: str, root: Path | None) -> tuple[Any, Any]:
    """(type hint, example) that ``-p name`` must fit; (None, None) for a name no one declares."""
    if name in PROFILE_FIELDS:
        from cmpt.profiles import Profile

        return typing.get_type_hints(Profile)[name], getattr(get_profile("default"), name)
    if root is None:
        return None, None
    try:
        notebooks = [c for c in chapters(root) if c.is_notebook]
    except BookError:
        return None, None
    return _chapter_hint(name, (notebook_parameters(c.source) for c in notebooks))


def _scalar_ok(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a nested hint: left to the profile's own check


def _accepts(value: Any, hint: Any) -> bool:
    """Whether a parsed ``-p`` value fits ``hint`` (a profile field's ``tuple[X, ...]`` also takes one X)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = value if isinstance(value, (list, tuple)) else [value]
        return all(_scalar_ok(v, args[0]) for v in items)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args)
    if origin is list:
        return isinstance(value, (list, tuple)) and all(_scalar_ok(v, args[0] if args else Any) for v in value)
    return _scalar_ok(value, hint)


_PLURAL = {int: "ints", float: "numbers", str: "names", bool: "True/False values"}


def _describe(hint: Any, example: Any) -> str:
    """What ``-p`` expects, in words, with an example where one is at hand."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(example, (list, tuple)) and len(example) > 3:
        example = list(example[:2])  # an example, not the whole default
    such = f" such as {cli_text(example)}" if example not in (None, (), [], "") else ""
    if hint is bool:
        return "True or False"
    if hint is int:
        return f"an integer{such}"
    if hint is float:
        return f"a number{such}"
    if hint is str:
        return f"a string{such}"
    if hint is dict:
        return f"a dict{such or ' such as {}'}"
    if (origin is tuple and len(args) == 2 and args[1] is Ellipsis) or origin is list:
        element = args[0] if args else Any
        if typing.get_origin(element) is None and element in _PLURAL:
            return f"a list of {_PLURAL[element]}{such}"
        return f"a list{such}"
    if origin is tuple:
        return f"a list of {len(args)} items{such}"
    return "a Python literal"


def _parse_error(err: Exception, text: str) -> str:
    if isinstance(err, SyntaxError):
        return err.msg
    if text.strip()[:1] in ("[", "(", "{"):
        return "not a Python literal (names inside a list need quotes, e.g. ['a', 'b'])"
    return "not a Python literal"


def parse_parameter(name: str, text: str, root: Path | None = None) -> Any:
    """The value of ``cmpt book -p NAME TEXT``: a Python literal where it is one, else the string.

    The text is checked against what ``name`` takes (a profile field's type, or the type of the
    default a chapter declares): a malformed or mistyped value is a :class:`ProfileError` that
    says what is wrong, e.g. ``-p seeds: "[42,44" is not valid (expected a list of ints such
    as [42, 44, 100]; parse error: '[' was never closed)``. A name nothing declares is parsed
    the same way and left for :func:`plan_book` to report.
    """
    try:
        value, problem = ast.literal_eval(text), None
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as err:
        value, problem = text, _parse_error(err, text)
    hint, example = _expected(name, root)
    if hint is None:
        return value
    broken = problem is not None and text.strip()[:1] in ("[", "(", "{", "'", '"')
    if _accepts(value, hint) and not broken:
        return value
    detail = f"; parse error: {problem}" if problem else ""
    raise ProfileError(f'-p {name}: "{text}" is not valid (expected {_describe(hint, example)}{detail})')


def check_chapter_value(name: str, value: Any, declared: typing.Iterable[Mapping[str, Mapping[str, Any]]]) -> None:
    """Raise :class:`ProfileError` when ``value`` does not fit the type of chapter parameter ``name``'s default."""
    hint, example = _chapter_hint(name, declared)
    if hint is not None and not _accepts(value, hint):
        raise ProfileError(f'-p {name}: "{cli_text(value)}" is not valid (expected {_describe(hint, example)})')
