"""Atomic file writes: a temporary name beside the target, then :func:`os.replace`.

A reader (another chapter, another Ray worker, a rerun after a crash) sees a whole file or
none. The temporary name carries host, process id and a random token, because process ids
alone repeat across the machines or containers of a cluster that share one folder.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["partial_path", "write_atomic"]


def partial_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (``NAME.HOST.PID.TOKEN.part``)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file, then move it onto ``path``.

    The parent folder is created; a failing ``write`` leaves no temporary file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
