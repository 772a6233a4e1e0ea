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

from cmpt.assets import cache_dir, checkout_root
from cmpt.atomic import write_atomic
from cmpt.errors import CmptError, InputError
from cmpt.jsonable import NonFiniteError, to_jsonable

__all__ = ["RESULTS_ENV", "results_root", "CorruptRecordError", "ResultsStore", "RunConfig", "RunFailedError",
           "canonical_config", "config_hash", "run_missing"]

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


class RunFailedError(CmptError):
    """A run that finished without a usable result (a final metric that is NaN or infinite).

    It is recorded in the store as a failed run, like any exception of the run function, so a
    sweep counts it as failed and runs it again next time.
    """


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
    project = checkout_root(Path.cwd())
    if project is not None:
        return project / "_build" / "results"
    return cache_dir() / "results"



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
            record = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant,
                                parse_float=_finite_float)
        except _NonFiniteNumber as err:
            raise CorruptRecordError(path, str(err)) from None
        except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, bytes that are not UTF-8
            raise CorruptRecordError(path, f"not valid JSON ({' '.join(str(err).split())[:160]})") from None
        problem = _schema_problem(record)
        if problem:
            raise CorruptRecordError(path, problem)
        try:
            actual = config_hash(record["config"])
        except (TypeError, RecursionError) as err:
            raise CorruptRecordError(path, f"unreadable config ({err})") from None
        if record["hash"] != actual or path.stem != actual:
            raise CorruptRecordError(
                path, f"hash mismatch: file {path.stem}, stored {_short(record['hash'])}, config hashes to {actual}"
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
        """Store a finished run. ``record`` needs ``final``; other fields are filled in.

        A final metric that is NaN or infinite is no result: the run is recorded as failed,
        with the metric named in its ``error``, and :class:`RunFailedError` is raised. In
        ``metrics_per_epoch`` such a number is kept as null (an epoch may diverge and recover).
        """
        if not isinstance(record.get("final"), Mapping):
            raise TypeError("a finished run's record needs a 'final' dict of metrics")
        canon = canonical_config(config)
        try:
            final = to_jsonable(dict(record["final"]), nonfinite="raise")
        except NonFiniteError as err:
            reason = f"final metric {err.where!r} is {err.value}"
            self.mark_failed(canon, f"{RunFailedError.__name__}: {reason}", int(record.get("attempts") or 1))
            raise RunFailedError(f"run {config_hash(canon)} failed: {reason} (did training diverge?); "
                                 f"recorded as failed in {self.path(canon)}, so the next sweep runs it again") from None
        full = {
            "metrics_per_epoch": [],
            "wall_time_s": None,
            "attempts": 1,
            "error": None,
            **to_jsonable(dict(record)),
            "final": final,
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

        ``fn`` returns ``{"final": {...}, "metrics_per_epoch": [...]}``. An exception, or a final
        metric that is NaN or infinite (:class:`RunFailedError`), is recorded (status ``failed``,
        traceback) and ``fn`` is tried up to ``retries`` more times before the exception is
        re-raised. ``attempts`` counts tries across invocations. A KeyboardInterrupt is
        re-raised at once and recorded nowhere: the run is just missing.
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
                    **({"clock": dict(out["clock"])} if isinstance(out.get("clock"), Mapping) else {}),
                    "wall_time_s": time.perf_counter() - start,
                    "attempts": attempts,
                })
            except Exception:
                self.mark_failed(config, _traceback.format_exc(), attempts)
                if attempt == retries:
                    raise
        raise AssertionError("unreachable")


class _NonFiniteNumber(ValueError):
    """A record holding NaN or an infinite number (the store never writes one)."""


def _refuse_constant(text: str) -> float:
    raise _NonFiniteNumber(f"holds the non-finite number {text}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFiniteNumber(f"holds the number {text[:40]}, which is out of range")
    return value


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, cut to about ``limit`` characters (a message stays one line)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


#: fields of a record besides config/hash/status: (check, what it must be); a missing field is fine
RECORD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "metrics_per_epoch": (lambda v: isinstance(v, list) and all(isinstance(row, dict) for row in v),
                          "a list of objects"),
    "wall_time_s": (lambda v: v is None or (_is_number(v) and v >= 0), "null or a number >= 0"),
    "attempts": (lambda v: v is None or _is_count(v), "null or a count"),
    "error": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "finished_at": (lambda v: v is None or isinstance(v, str), "null or a string"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
    "clock": (lambda v: isinstance(v, dict) and all(_is_number(x) and x >= 0 for x in v.values()),
              "an object of numbers >= 0"),
}

#: the final metrics that later steps read back, and what each must be when present
FINAL_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{name: (lambda v: v is None or _is_number(v), "null or a number")
       for name in ("test_acc", "val_acc", "val_loss", "train_loss", "retrained_test_acc")},
    **{name: (_is_count, "a count") for name in ("best_epoch", "n_trainable", "n_train")},
    **{name: (lambda v: isinstance(v, str), "a string") for name in ("prompt_file", "group", "selection", "protocol")},
    "query_attention": (lambda v: isinstance(v, list), "a list"),
}


def _schema_problem(record: Any) -> str | None:
    """What is wrong with a parsed record, or None when it has the store's schema."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in ("config", "hash", "status") if k not in record]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    if record["status"] not in STATUSES:
        return f"status {_short(record['status'])} is not one of {', '.join(STATUSES)}"
    if not isinstance(record["config"], dict):
        return "'config' is not an object"
    if not isinstance(record["hash"], str):
        return "'hash' is not a string"
    final = record.get("final")
    if record["status"] == "done" and not isinstance(final, dict):
        return "a finished run without a 'final' object"
    if final is not None and not isinstance(final, dict):
        return "'final' is neither an object nor null"
    for name, (ok, what) in RECORD_FIELDS.items():
        if name in record and not ok(record[name]):
            return f"{name!r} is {_short(record[name])}, not {what}"
    for name, (ok, what) in FINAL_FIELDS.items():
        if final and name in final and not ok(final[name]):
            return f"final metric {name!r} is {_short(final[name])}, not {what}"
    return None


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
        row["finished_at"] = record.get("finished_at")
        for key, value in (record.get("clock") or {}).items():  # the fit's train_s, eval_s, train_images
            row[key] = value
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
