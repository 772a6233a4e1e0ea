"""Turning what experiments compute into values :mod:`json` can write.

Results and notebook records hold numpy and torch scalars and arrays, tuples and nested dicts.
:func:`to_jsonable` turns them into plain Python values. JSON has no NaN or infinity, so the
caller says what a non-finite number means: ``nonfinite="none"`` writes it as ``null`` (a value
that was not computed, e.g. an epoch that was not evaluated), ``nonfinite="raise"`` refuses it
with :class:`NonFiniteError` naming where it sits (a metric that must be a real number).
"""

from __future__ import annotations

import math
from typing import Any, Literal

__all__ = ["NONFINITE", "NonFiniteError", "to_jsonable"]

#: what :func:`to_jsonable` may do with a NaN or infinite float
NONFINITE = ("none", "raise")


class NonFiniteError(ValueError):
    """A NaN or infinite number where ``to_jsonable(..., nonfinite="raise")`` wants a real one."""

    def __init__(self, where: str, value: float) -> None:
        self.where = where
        self.value = value
        super().__init__(f"{where or 'the value'} is {value}")


def to_jsonable(value: Any, nonfinite: Literal["none", "raise"] = "none") -> Any:
    """``value`` as plain dicts (string keys), lists, strings, numbers, booleans and None.

    Anything with ``tolist`` (numpy and torch scalars and arrays) is converted first; tuples
    become lists. A non-finite float becomes None, or raises :class:`NonFiniteError` with
    ``nonfinite="raise"`` (its ``where`` is the dotted path, e.g. ``"test_acc"`` or
    ``"per_class[2]"``). Other values are returned unchanged.
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    return _convert(value, nonfinite == "raise", "")


def _convert(value: Any, strict: bool, where: str) -> Any:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _convert(v, strict, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_convert(v, strict, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        if strict:
            raise NonFiniteError(where, value)
        return None
    return value
