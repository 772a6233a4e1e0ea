"""The kernel side of the book: a chapter's first cell turns its parameters into its profile.

:func:`notebook_profile` runs inside the chapter's kernel (papermill's, the book runner's or
JupyterLab's) and reads what papermill injected from the kernel's own input history, since a
kernel cannot see cell tags.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any

from cmpt.book_chapters import BOOK_PARAMETERS, INJECTED_HEADER
from cmpt.chapter_values import record
from cmpt.profiles import PROFILE_FIELDS, Profile, ProfileError, get_profile
from cmpt.results import results_root

__all__ = ["notebook_profile"]


def _assigned_names(source: str) -> list[str] | None:
    """Names a cell assigns at top level, in order; None if it is not Python."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        names.extend(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _parameter_cells(history: list[str]) -> tuple[list[str], list[str] | None] | None:
    """From a kernel's input history: (names papermill injected, the notebook's own parameter names).

    The kernel cannot see cell tags, but it remembers what it ran: papermill's cell starts with
    ``# Parameters`` and directly follows the notebook's ``parameters`` cell (the last cell that
    assigns both ``profile`` and ``overrides``). None when the parameters cell ran after any
    injected cell, or no injected cell ran: then nothing was injected (JupyterLab).
    """
    for i in range(len(history) - 1, -1, -1):
        source = history[i]
        names = _assigned_names(source)
        if names is None:
            continue
        if source.lstrip().startswith(INJECTED_HEADER + "\n") or source.strip() == INJECTED_HEADER:
            for earlier in reversed(history[:i]):
                declared = _assigned_names(earlier)
                if declared and set(BOOK_PARAMETERS) <= set(declared):
                    return names, declared
            return names, None
        if set(BOOK_PARAMETERS) <= set(names):
            return None
    return None


def _kernel() -> tuple[list[str], Mapping[str, Any]]:
    """The IPython kernel's input history (the running cell last) and its user namespace."""
    try:
        from IPython import get_ipython
    except ImportError:
        return [], {}
    shell = get_ipython()
    if shell is None:
        return [], {}
    return list(shell.history_manager.input_hist_raw), shell.user_ns


def notebook_profile(profile: str | Profile, overrides: Mapping[str, Any] | None = None,
                     namespace: Mapping[str, Any] | None = None) -> Profile:
    """A chapter's profile: ``profile`` with ``overrides`` and the profile fields papermill injected.

    The first code cell of every chapter calls ``cmpt.notebook_profile(profile, overrides,
    globals())``. A profile field passed as a parameter of its own (``papermill ... -p
    image_size 48``) counts like ``overrides={"image_size": 48}`` (``cmpt book -p`` sends it
    inside ``overrides``); a name papermill injected that is neither a profile field nor one of
    the chapter's parameters is an error, as is one given both ways with different values. Only
    names in papermill's injected cell are read from ``namespace``: a variable of the same name
    defined in a later cell does not change the profile when the first cell runs again.

    Prints the overrides applied, if any; records the profile as ``profile`` and the results
    root the chapter uses as ``results_root``.
    """
    given = dict(overrides or {})
    history, user_ns = _kernel()
    namespace = namespace if namespace is not None else user_ns
    found = _parameter_cells(history)
    passed: dict[str, Any] = {}
    if found is not None:
        injected, declared = found
        passed = {n: namespace[n] for n in injected if n in PROFILE_FIELDS and n in namespace}
        own = set(declared or []) - set(BOOK_PARAMETERS)
        unknown = [n for n in injected if n not in PROFILE_FIELDS and n not in BOOK_PARAMETERS and n not in own]
        if unknown and declared is not None:
            raise ProfileError(
                f"unknown parameter(s) {', '.join(unknown)}. Profile parameters: {', '.join(PROFILE_FIELDS)}; "
                f"this chapter's parameters: {', '.join(sorted(own)) or 'none'}")
    clash = sorted(n for n in passed if n in given and given[n] != passed[n])
    if clash:
        raise ProfileError(f"{', '.join(clash)} given both as a parameter and in overrides, with different values")
    applied = {**given, **passed}
    cfg = get_profile(profile, applied)
    if applied:
        from cmpt.plotting import print_wrapped

        print_wrapped(f"profile {cfg.name}, overrides: " + ", ".join(f"{k}={getattr(cfg, k)!r}" for k in applied))
    record("profile", cfg.as_dict())
    record("results_root", str(results_root()))  # where this chapter's runs are read from and written to
    return cfg
