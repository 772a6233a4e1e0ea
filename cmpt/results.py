"""A resumable results store: one JSON file per finished (or failed) run.

A run is named by its full configuration: :func:`config_hash` turns the configuration into a
short stable id and :class:`ResultsStore` keeps ``ROOT/<hash>.json``. Re-running a sweep only
runs what is missing, so a long experiment can be interrupted (Ctrl-C, a crash, a lost machine)
and resumed without losing anything that finished.

A configuration is a plain mapping (or a dataclass, e.g. a :class:`~cmpt.profiles.Profile`)
that names *everything* the result depends on: setting, source, target, seed,
hyper-parameters, profile name, data sizes... Leave nothing out, or two different runs will
share one record.

Record files are written atomically (a ``*.part`` file named for this host, process and a random
token, then :func:`os.replace`), so workers on several machines sharing one store never write
into each other's temporary files and a reader sees a whole record or none. A record that cannot
be read (truncated JSON, wrong schema, hash that does not match its configuration) is
reported, never silently dropped: delete the file to re-run that configuration.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import math
import os
import platform
import re
import time
import traceback as _traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Union

import pandas as pd
from tqdm.auto import tqdm

from cmpt.assets import cache_dir
from cmpt.atomic import write_atomic
from cmpt.errors import InputError
from cmpt.records import _plain

__all__ = ["RESULTS_ENV", "results_root", "CorruptRecordError", "ResultsStore", "RunConfig", "canonical_config", "config_hash", "run_missing"]

#: What a configuration may be: a mapping of names to JSON-like values, or a dataclass.
RunConfig = Union[Mapping[str, Any], Any]

HASH_LENGTH = 16
#: environment variable naming the folder of per-profile stores (see :func:`results_root`)
RESULTS_ENV = "CMPT_RESULTS"
STATUSES = ("done", "failed")


class CorruptRecordError(InputError):
    """A record file in the store cannot be trusted."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(
            f"corrupt results record {self.path}: {reason}. "
            f"Delete this file to re-run that configuration (or read with on_corrupt='warn' to skip it)."
        )


def canonical_config(config: RunConfig) -> dict[str, Any]:
    """The JSON-ready form of ``config`` that :func:`config_hash` hashes and the store keeps.

    Tuples become lists, dataclasses dicts, paths strings, numpy/torch scalars Python numbers.
    A float equal to an integer becomes that integer, so values equal in Python (``1 == 1.0``)
    hash equal; booleans stay booleans.
    """
    if hasattr(config, "as_config"):
        config = config.as_config()
    elif dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(f"a run configuration must be a mapping or a dataclass, got {type(config).__name__}")
    return _canonical(config)


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"configuration keys must be strings, got {key!r}")
            out[str(key)] = _canonical(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalar
    elif hasattr(value, "tolist"):
        return _canonical(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return int(value)
        return value  # json writes the shortest repr that round-trips: stable
    raise TypeError(f"configuration value {value!r} ({type(value).__name__}) is not JSON-like")


def config_hash(config: RunConfig) -> str:
    """A short (16 hex) sha256 of the canonical JSON of ``config``; key order does not matter."""
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


@lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    """Versions of what a result depends on (read from package metadata: nothing is imported)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "timm", "transformers", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    from cmpt import __version__

    out["cmpt"] = __version__
    return out


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def results_root(root: str | os.PathLike | None = None) -> Path:
    """The folder that holds one store per profile.

    ``root`` when given; else ``$CMPT_RESULTS``; else the book's own store, ``_build/results``
    of the project checkout when the current folder is inside one (so ``cmpt book``, plain
    papermill and JupyterLab share their runs); else ``results/`` of the cmpt cache.
    """
    if root is not None:
        return Path(root).expanduser().resolve()
    if os.environ.get(RESULTS_ENV):
        return Path(os.environ[RESULTS_ENV]).expanduser().resolve()
    project = _project_root(Path.cwd())
    if project is not None:
        return project / "_build" / "results"
    return cache_dir() / "results"


def _project_root(start: Path) -> Path | None:
    """The cmpt checkout holding ``start`` (a folder with ``_toc.yml`` and ``cmpt/``), if any."""
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file() and (folder / "cmpt" / "__init__.py").is_file():
            return folder
    return None


class ResultsStore:
    """One JSON record per run under ``root``, keyed by :func:`config_hash`.

    The store owns its layout: ``<hash>.json`` records, trained models in ``models/``
    (:meth:`model_path`), source prompts in ``prompts/`` (:meth:`prompt_path`) and prompts
    staged for workers in ``prompts/staged/`` (:meth:`staged_prompt_path`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def for_profile(cls, profile: str | Any, root: str | os.PathLike | None = None) -> "ResultsStore":
        """The store of a profile (a name or a :class:`~cmpt.profiles.Profile`) under :func:`results_root`."""
        name = profile if isinstance(profile, str) else profile.name
        return cls(results_root(root) / name)

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    def path(self, config: RunConfig) -> Path:
        """The record file of ``config``."""
        return self.root / f"{config_hash(config)}.json"

    def model_path(self, config: RunConfig) -> Path:
        """Where the trained prompt and head of the run ``config`` are kept."""
        return self.root / "models" / f"{config_hash(config)}.safetensors"

    def prompt_path(self, config: RunConfig, name: str) -> Path:
        """Where the prompt trained by the run ``config`` is kept; ``name`` leads the file name."""
        return self.root / "prompts" / f"{_safe_stem(name)}-{config_hash(config)}.safetensors"

    def staged_prompt_path(self, name: str, digest: str) -> Path:
        """Where a prompt that is not a run's own output is staged for workers (named by content)."""
        return self.root / "prompts" / "staged" / f"{_safe_stem(name)}-{digest}.safetensors"

    def relative(self, path: str | os.PathLike) -> str:
        """``path`` relative to the store (how records refer to the store's files)."""
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def resolve(self, relative: str) -> Path:
        """A file a record names, relative to the store."""
        return self.root / relative

    # -- reading ---------------------------------------------------------------------------
    def _load(self, path: Path) -> dict[str, Any]:
        """Read and check one record; raises :class:`CorruptRecordError`."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CorruptRecordError(path, f"not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise CorruptRecordError(path, "not a JSON object")
        missing = [k for k in ("config", "hash", "status") if k not in record]
        if missing:
            raise CorruptRecordError(path, f"missing field(s) {', '.join(missing)}")
        if record["status"] not in STATUSES:
            raise CorruptRecordError(path, f"status {record['status']!r} is not one of {', '.join(STATUSES)}")
        if not isinstance(record["config"], dict):
            raise CorruptRecordError(path, "'config' is not an object")
        if record["status"] == "done" and not isinstance(record.get("final"), dict):
            raise CorruptRecordError(path, "a finished run without a 'final' object")
        if not isinstance(record.get("metrics_per_epoch", []), list):
            raise CorruptRecordError(path, "'metrics_per_epoch' is not a list")
        try:
            actual = config_hash(record["config"])
        except TypeError as err:
            raise CorruptRecordError(path, f"unreadable config ({err})") from None
        if record["hash"] != actual or path.stem != actual:
            raise CorruptRecordError(
                path, f"hash mismatch: file {path.stem}, stored {record['hash']}, config hashes to {actual}"
            )
        return record

    def get(self, config: RunConfig) -> dict[str, Any] | None:
        """The record of ``config`` (done or failed), or None when it never ran."""
        path = self.path(config)
        return self._load(path) if path.exists() else None

    def has(self, config: RunConfig) -> bool:
        """Whether ``config`` finished (a failed run does not count)."""
        record = self.get(config)
        return record is not None and record["status"] == "done"

    def records(self, on_corrupt: str = "raise") -> list[dict[str, Any]]:
        """Every record (done and failed), in file-name order.

        ``on_corrupt``: ``"raise"`` (default) raises :class:`CorruptRecordError` at the first
        bad file; ``"warn"`` warns and skips it.
        """
        if on_corrupt not in ("raise", "warn"):
            raise ValueError(f"on_corrupt must be 'raise' or 'warn', got {on_corrupt!r}")
        out = []
        for path in sorted(self.root.glob("*.json")):
            try:
                out.append(self._load(path))
            except CorruptRecordError as err:
                if on_corrupt == "raise":
                    raise
                warnings.warn(str(err), stacklevel=2)
        return out

    def table(self, flatten: bool = True, on_corrupt: str = "raise") -> pd.DataFrame:
        """One row per finished run: ``hash``, the config fields, the final metrics, ``wall_time_s``.

        With ``flatten`` nested dicts become dotted columns (``opt.lr``) and lists tuples (so
        they can be grouped on). A final metric whose name is also a config field gets a
        ``final.`` prefix.
        """
        return _frame([r for r in self.records(on_corrupt) if r["status"] == "done"], flatten)

    def table_of(self, configs: Iterable[RunConfig], flatten: bool = True) -> pd.DataFrame:
        """Like :meth:`table`, but only the finished runs among ``configs`` (each once, in order)."""
        records: dict[str, dict[str, Any]] = {}
        for config in configs:
            record = self.get(config)
            if record is not None and record["status"] == "done":
                records.setdefault(record["hash"], record)
        return _frame(records.values(), flatten)

    # -- writing ---------------------------------------------------------------------------
    def _write(self, path: Path, record: dict[str, Any]) -> None:
        text = json.dumps(record, indent=1, sort_keys=True, allow_nan=False)

        def write(part: Path) -> None:
            with open(part, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())

        write_atomic(path, write)

    def put(self, config: RunConfig, record: Mapping[str, Any]) -> dict[str, Any]:
        """Store a finished run. ``record`` needs ``final``; other fields are filled in."""
        if not isinstance(record.get("final"), Mapping):
            raise TypeError("a finished run's record needs a 'final' dict of metrics")
        canon = canonical_config(config)
        full = {
            "metrics_per_epoch": [],
            "wall_time_s": None,
            "attempts": 1,
            "error": None,
            **_plain(dict(record)),
            "config": canon,
            "hash": config_hash(canon),
            "status": "done",
            "versions": _versions(),
            "finished_at": _now(),
        }
        self._write(self.path(canon), full)
        return full

    def mark_failed(self, config: RunConfig, traceback: str, attempts: int = 1) -> dict[str, Any]:
        """Record that ``config`` failed (``traceback`` is the formatted exception)."""
        canon = canonical_config(config)
        full = {
            "config": canon,
            "hash": config_hash(canon),
            "status": "failed",
            "metrics_per_epoch": [],
            "final": None,
            "wall_time_s": None,
            "versions": _versions(),
            "finished_at": _now(),
            "error": traceback,
            "attempts": int(attempts),
        }
        self._write(self.path(canon), full)
        return full

    def run(self, config: RunConfig, fn: Callable[[Any], Mapping[str, Any]], retries: int = 0) -> dict[str, Any]:
        """The stored record of ``config`` if it finished, else run ``fn(config)`` and store it.

        ``fn`` returns ``{"final": {...}, "metrics_per_epoch": [...]}``. An exception is recorded
        (status ``failed``, traceback) and ``fn`` is tried up to ``retries`` more times before
        the exception is re-raised. ``attempts`` counts tries across invocations. A
        KeyboardInterrupt is re-raised at once and recorded nowhere: the run is just missing.
        """
        previous = self.get(config)
        if previous is not None and previous["status"] == "done":
            return previous
        attempts = int(previous.get("attempts") or 0) if previous is not None else 0
        for attempt in range(retries + 1):
            attempts += 1
            start = time.perf_counter()
            try:
                out = fn(config)
                if not isinstance(out, Mapping) or not isinstance(out.get("final"), Mapping):
                    raise TypeError(f"the run function must return a dict with a 'final' dict, got {out!r:.200}")
                return self.put(config, {
                    "final": out["final"],
                    "metrics_per_epoch": out.get("metrics_per_epoch", []),
                    "wall_time_s": time.perf_counter() - start,
                    "attempts": attempts,
                })
            except Exception:
                self.mark_failed(config, _traceback.format_exc(), attempts)
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(name)) or "_"


def _flat(prefix: str, value: Any, flatten: bool, out: dict[str, Any]) -> None:
    """Spread ``value`` into ``out``: the top level always, nested dicts only with ``flatten``."""
    if isinstance(value, dict) and (flatten or not prefix):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else key, item, flatten, out)
    else:
        out[prefix] = tuple(value) if flatten and isinstance(value, list) else value


def _frame(records: Iterable[dict[str, Any]], flatten: bool) -> pd.DataFrame:
    rows = []
    for record in records:
        row: dict[str, Any] = {"hash": record["hash"]}
        _flat("", record["config"], flatten, row)
        final: dict[str, Any] = {}
        _flat("", record["final"], flatten, final)
        for key, value in final.items():
            row[f"final.{key}" if key in row else key] = value
        row["wall_time_s"] = record.get("wall_time_s")
        rows.append(row)
    return pd.DataFrame(rows)


def run_missing(store: ResultsStore, configs: Iterable[RunConfig], fn: Callable[[Any], Mapping[str, Any]],
          desc: str = "runs", retries: int = 0, on_error: str = "raise", flatten: bool = True) -> pd.DataFrame:
    """Run every configuration not yet done, in order; the table of all of ``configs``.

    Finished runs are skipped, so an interrupted sweep resumes where it stopped and loses
    nothing finished. ``on_error="raise"`` (default) stops at the first run that still fails
    after ``retries``; ``"continue"`` records it, warns and goes on (the failed configs are
    missing from the table).
    """
    if on_error not in ("raise", "continue"):
        raise ValueError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    configs = list(configs)
    ran = skipped = failed = 0
    bar = tqdm(configs, desc=desc, unit="run")
    try:
        for config in bar:
            if store.has(config):
                skipped += 1
            else:
                try:
                    store.run(config, fn, retries=retries)
                    ran += 1
                except Exception as err:
                    if on_error == "raise":
                        raise
                    failed += 1
                    warnings.warn(f"run {config_hash(config)} failed: {err!r}; "
                                  f"its traceback is in {store.path(config)}", stacklevel=2)
            bar.set_postfix(ran=ran, skipped=skipped, failed=failed, refresh=False)
    finally:
        bar.close()
    return store.table_of(configs, flatten)
