"""The project's errors: one base class, and which ones are the user's input.

Every error cmpt raises on purpose derives from :class:`CmptError`, so a caller (the CLI, a
notebook, a sweep driver) can tell a problem cmpt diagnosed from a bug. Its message is one
line that says what is wrong and how to fix it, naming the file where there is one.

:class:`InputError` marks bad input: an unknown name, a malformed parameter, a corrupt or
hostile file, a prompt of the wrong width. The CLI exits with 2 on those and with 1 on every
other :class:`CmptError` (a run that failed, a book that did not build).
"""

from __future__ import annotations

__all__ = ["CmptError", "InputError", "UnknownNameError", "check_names"]


class CmptError(Exception):
    """An error cmpt diagnosed; its message is one line meant for the user."""

    exit_code = 1


class InputError(CmptError, ValueError):
    """Bad input: a name, a parameter, a file. The CLI exits with 2."""

    exit_code = 2


class UnknownNameError(InputError, KeyError):
    """A task, backbone, setting or source that does not exist (the message lists the valid ones)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def check_names(kind: str, names: object, valid: object, hint: str = "") -> None:
    """Raise :class:`UnknownNameError` if any of ``names`` is not in ``valid``."""
    names = [names] if isinstance(names, str) else list(names)  # type: ignore[call-overload]
    valid = list(valid)  # type: ignore[call-overload]
    unknown = [n for n in names if n not in valid]
    if unknown:
        plural = "s" if len(unknown) > 1 else ""
        extra = f"; {hint}" if hint else ""
        raise UnknownNameError(f"unknown {kind}{plural} {', '.join(map(repr, unknown))}; "
                               f"valid: {', '.join(map(str, valid)) or 'none'}{extra}")
