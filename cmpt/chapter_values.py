"""Values a notebook records for tests and for the book runner.

A chapter calls :func:`record` for the numbers it reports. When the runner (or a test)
sets ``$CMPT_RECORDS`` to a JSON file path, every value is merged into that file, so the
caller can assert on what the notebook computed without parsing its outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cmpt.atomic import write_atomic
from cmpt.jsonable import to_jsonable

__all__ = ["ENV_VAR", "load_records", "record"]

ENV_VAR = "CMPT_RECORDS"
_memory: dict[str, Any] = {}


def record(name: str, value: Any) -> Any:
    """Record ``value`` under ``name`` (and return it, so a cell can display it)."""
    plain = to_jsonable(value)  # NaN is written as null
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
