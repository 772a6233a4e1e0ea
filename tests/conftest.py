"""Shared test set-up.

Tests that need the real default assets (a one-off ~180 MB fetch from PyPI into the cmpt
cache) or build a whole book are marked ``slow``; they run in CI too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: a folder of Su et al.'s original prompt files (``<task>.pt``, as the authors publish them); the tests that
#: compare the shipped safetensors copies with those originals run only where it is set
SU2022_ENV = "CMPT_SU2022_PT"

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Runs the tests make go to a store of their own, never to the book's _build/results.
os.environ["CMPT_RESULTS"] = tempfile.mkdtemp(prefix="cmpt-test-results-")


@pytest.fixture(autouse=True)
def _fresh_shared_targets():
    """Each test loads its own backbones and targets (a test may register data or move the cache)."""
    yield
    from cmpt.runner import forget_loaded

    forget_loaded()


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def su2022_dir() -> Path:
    folder = os.environ.get(SU2022_ENV)
    if not folder or not Path(folder).is_dir():
        pytest.skip(f"set {SU2022_ENV} to a folder of Su et al.'s original <task>.pt prompt files to compare with them")
    return Path(folder)


@pytest.fixture(scope="session")
def smoke_book(tmp_path_factory) -> tuple[Path, str]:
    """The whole book built once at the smoke profile: (output folder, runner's stdout)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("smoke-book")
    env = {k: v for k, v in os.environ.items() if k not in ("CMPT_RECORDS", "MPLBACKEND")}
    proc = subprocess.run([sys.executable, "-m", "cmpt", "book", "--profile", "smoke", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"smoke book failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, proc.stdout
