"""Values a notebook records for tests and for the book runner.

A chapter calls :func:`record` for the numbers it reports. When the runner (or a test)
sets ``$CMPT_RECORDS`` to a JSON file path, every value is merged into that file, so the
caller can assert on what the notebook computed without parsing its outputs.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from cmpt.atomic import write_atomic

__all__ = ["ENV_VAR", "load_records", "record"]

ENV_VAR = "CMPT_RECORDS"
_memory: dict[str, Any] = {}


def _plain(value: Any) -> Any:
    """Make numpy/torch scalars and arrays JSON-friendly."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def record(name: str, value: Any) -> Any:
    """Record ``value`` under ``name`` (and return it, so a cell can display it)."""
    plain = _plain(value)
    _memory[name] = plain
    path = os.environ.get(ENV_VAR)
    if path:
        target = Path(path)
        data = load_records(target) if target.exists() else {}
        data[name] = plain
        write_atomic(target, lambda tmp: tmp.write_text(json.dumps(data, indent=1, sort_keys=True)))
    return value


def load_records(path: str | Path) -> dict[str, Any]:
    """The values a notebook recorded into ``path``."""
    return json.loads(Path(path).read_text())
