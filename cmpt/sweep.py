"""Sweeps beyond one process: the experiment grid run in-process or as Ray tasks, one results store.

A sweep is a list of run configurations and a *run function* ``fn(config) -> {"final": ...,
"metrics_per_epoch": [...]}``. :func:`run_sweep` executes the configurations that have no
finished record through an *executor*:

``local``
    in this process, one after the other: :func:`cmpt.results.run_missing`. The book's default.
``ray``
    one Ray task per run, each with its own CPU/GPU request, on a cluster that
    ``ray.init(address=...)`` reaches (or a private Ray instance on this machine).

The :class:`~cmpt.results.ResultsStore` is the only state the two share, and the only thing
a worker sends back that matters: the worker itself calls :meth:`ResultsStore.run
<cmpt.results.ResultsStore.run>`, which writes the run's record atomically (a temporary file
unique to host, process and call, then a rename), so the store must sit on a filesystem every
worker sees. From that follow the guarantees:

* the driver dispatches only configurations without a finished record, and a worker checks
  again before it runs one, so a run finished elsewhere is never redone;
* a run that raises is recorded as failed with its traceback and tried again in the same
  worker, ``retries`` more times; the sweep then reports it (:class:`SweepError`, or a warning
  with ``on_error="continue"``);
* a worker process or node that dies mid-run writes nothing (a rename never happened); Ray
  re-executes that task, up to ``retries`` times;
* an interrupted driver cancels what is in flight; everything finished is already on disk,
  and launching the same sweep again runs only what is missing.

Two tasks of one sweep never share a configuration (the driver drops duplicates); should two
sweeps run one configuration at once, each writes a whole record and the last rename wins.

What a Ray worker receives must be picklable and small. For the target-side grid that is a
:class:`TargetJob`: the profile, the store's path, the paths of the source-prompt files (the
bank's own files, see :func:`prompt_files`) and the reference norm. A worker process rebuilds a
:class:`~cmpt.runner.TargetRunner` from it once and keeps it (backbone and embedded
targets) for every later task it is given.

Ray is an optional extra (``pip install -r requirements-ray.txt``), imported only by the ray
executor. Its usage statistics are off, and a Ray instance this module starts itself listens on
127.0.0.1 only and has no dashboard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import traceback as _traceback
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from cmpt.errors import CmptError, InputError
from cmpt.calibration import resolve_rates
from cmpt.profiles import Profile
from cmpt.prompts import Prompt, load_prompt, save_prompt
from cmpt.results import ResultsStore, RunConfig, config_hash, run_missing
from cmpt.run_config import SourceConfig, TargetConfig
from cmpt.runner import TargetRunner, reference_norm

__all__ = ["EXECUTORS", "RAY_INSTALL_HINT", "SweepError", "SweepReport", "TargetJob", "connect_ray",
           "prompt_files", "require_ray", "run_sweep", "target_job", "target_sweep"]

EXECUTORS = ("local", "ray")
RAY_INSTALL_HINT = "pip install -r requirements-ray.txt"


class SweepError(CmptError):
    """Runs that still failed after their retries, or an executor that cannot be used."""

    def __init__(self, message: str, failed: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.failed = list(failed)


@dataclass
class SweepReport:
    """What one :func:`run_sweep` call did (kept in the table's ``attrs["sweep"]`` as a dict)."""

    executor: str
    total: int  # distinct configurations asked for
    ran: int = 0  # finished by this call
    skipped: int = 0  # finished before it
    failed: list[str] = field(default_factory=list)  # hashes of runs with a failed record


def run_sweep(store: ResultsStore, configs: Iterable[RunConfig], fn: Callable[[Any], Mapping[str, Any]],
              executor: str = "local", desc: str = "runs", retries: int = 0, on_error: str = "raise",
              flatten: bool = True, address: str | None = None, num_cpus: float = 1,
              num_gpus: float = 0) -> pd.DataFrame:
    """Run every configuration without a finished record; the table of all of ``configs``.

    ``executor="local"`` is :func:`cmpt.results.run_missing` (``on_error="raise"`` stops at the first
    run that still fails). ``executor="ray"`` submits one task per missing run, each asking for
    ``num_cpus`` CPUs and ``num_gpus`` GPUs, to the cluster at ``address`` (see
    :func:`connect_ray`); ``fn`` must then be picklable (e.g. a :class:`TargetJob`). There a
    failure does not stop the others: with ``on_error="raise"`` a :class:`SweepError` naming
    every failed run is raised once the rest have finished. ``table.attrs["sweep"]`` holds the
    :class:`SweepReport`.
    """
    if executor not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if on_error not in ("raise", "continue"):
        raise InputError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    if retries < 0:
        raise InputError(f"retries must be >= 0, got {retries}")
    configs = list(configs)
    unique: dict[str, RunConfig] = {}
    for config in configs:
        unique.setdefault(config_hash(config), config)
    todo = {h: c for h, c in unique.items() if not store.has(c)}
    report = SweepReport(executor, total=len(unique), skipped=len(unique) - len(todo))
    if executor == "local":
        table = run_missing(store, configs, fn, desc=desc, retries=retries, on_error=on_error, flatten=flatten)
        report.failed = [h for h, c in todo.items() if not store.has(c)]
    else:
        report.failed = _ray_sweep(store, todo, fn, desc, retries, address, num_cpus, num_gpus, report.skipped)
        table = store.table_of(configs, flatten)
    report.ran = len(todo) - len(report.failed)
    if report.failed and executor == "ray":
        message = _failure_message(store, [todo[h] for h in report.failed])
        if on_error == "raise":
            raise SweepError(message, report.failed)
        warnings.warn(message, stacklevel=2)
    table.attrs["sweep"] = dataclasses.asdict(report)
    return table


def _failure_message(store: ResultsStore, configs: list[RunConfig]) -> str:
    lines = [f"{len(configs)} run(s) failed after their retries; each traceback is in its record:"]
    for config in configs[:10]:
        record = store.get(config) or {}
        last = (record.get("error") or "no record").strip().splitlines() or ["?"]
        lines.append(f"  {store.path(config)}: {last[-1]}")
    if len(configs) > 10:
        lines.append(f"  ... and {len(configs) - 10} more")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ray executor

def require_ray(address: str | None = None) -> ModuleType:
    """The ``ray`` module, or a :class:`SweepError` saying how to install it.

    Turns Ray's usage statistics off and, when ``address`` asks for a private instance (None)
    and Ray is not imported yet, makes that instance use 127.0.0.1 for every address.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address in (None, "local") and "ray" not in sys.modules:
        # Ray's switch for single-machine use (read once, at import): off, every address is 127.0.0.1
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as err:
        raise SweepError(f"the ray executor needs Ray, an optional extra: {RAY_INSTALL_HINT}") from err
    return ray


def connect_ray(address: str | None = None) -> ModuleType:
    """The ``ray`` module, initialised.

    ``address``: ``"auto"`` (the cluster ``ray start`` began on this machine), ``"HOST:PORT"``
    of a head node, or None for a private Ray instance on this machine (on 127.0.0.1, without
    a dashboard, gone when this process ends). If Ray is already initialised (by a notebook,
    a test) it is used as it is.
    """
    ray = require_ray(address)
    if not ray.is_initialized():
        ray.init(address=address or "local", include_dashboard=False, logging_level=logging.WARNING)
    return ray


def _run_task(root: str, config: RunConfig, fn: Callable[[Any], Mapping[str, Any]], retries: int) -> dict[str, Any]:
    """One Ray task: the run through the store (which records it); an exception is an outcome here."""
    store = ResultsStore(root)
    if store.has(config):
        return {"status": "skipped"}
    try:
        store.run(config, fn, retries=retries)
    except Exception:
        return {"status": "failed", "error": _traceback.format_exc()}
    return {"status": "done"}


def _ray_sweep(store: ResultsStore, todo: dict[str, RunConfig], fn: Callable[[Any], Mapping[str, Any]], desc: str,
               retries: int, address: str | None, num_cpus: float, num_gpus: float, skipped: int) -> list[str]:
    """Run ``todo`` as Ray tasks; the hashes of the runs that failed."""
    if not todo:
        return []  # nothing to do: no need to reach a cluster
    ray = connect_ray(address)
    task = ray.remote(_run_task)
    fn_ref = ray.put(fn)
    root = str(store.root.resolve())
    pending = {task.options(name=f"cmpt-run-{h}", num_cpus=num_cpus, num_gpus=num_gpus, max_retries=retries,
                            retry_exceptions=False).remote(root, config, fn_ref, retries): h
               for h, config in todo.items()}
    failed: list[str] = []
    bar = tqdm(total=len(todo) + skipped, initial=skipped, desc=desc, unit="run")
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                h = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as err:  # the worker or node died on every try, or fn would not load
                    outcome = {"status": "lost", "error": f"{type(err).__name__}: {err}"}
                if outcome["status"] == "lost" and not store.has(todo[h]):
                    previous = store.get(todo[h]) or {}
                    store.mark_failed(todo[h], outcome["error"], int(previous.get("attempts") or 0) + 1)
                if outcome["status"] in ("failed", "lost"):
                    failed.append(h)
                bar.update(1)
                bar.set_postfix(ran=bar.n - skipped - len(failed), skipped=skipped, failed=len(failed), refresh=False)
    except BaseException:  # Ctrl-C: what finished is on disk; stop the rest
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return failed


# ----------------------------------------------------------------------------- target runs on workers

@dataclass(frozen=True)
class TargetJob:
    """A picklable run function for target configs: what a worker needs to rebuild a TargetRunner.

    ``prompt_files`` are ``(source name, path)`` pairs; workers load the prompts from there.
    """

    profile: Profile
    results: str
    prompt_files: tuple[tuple[str, str], ...] = ()
    reference_norm: float = 1.0
    save_models: bool = True

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        return _worker_runner(self)(config)


#: the runner of the last TargetJob this process ran (its backbone and data stay loaded)
_RUNNERS: dict[TargetJob, TargetRunner] = {}


def _worker_runner(job: TargetJob) -> TargetRunner:
    runner = _RUNNERS.get(job)
    if runner is None:
        _RUNNERS.clear()  # one backbone per worker process
        prompts = {name: load_prompt(path) for name, path in job.prompt_files}
        runner = _RUNNERS[job] = TargetRunner(job.profile, ResultsStore(job.results), prompts,
                                              norm=job.reference_norm, save_models=job.save_models)
    return runner


def prompt_files(profile: Profile, store: ResultsStore, prompts: Mapping[str, Prompt]) -> dict[str, Path]:
    """A file on disk holding each of ``prompts``, for workers to load.

    A prompt of the source bank of ``profile`` (any of its seeds) is its own bank file; any other
    prompt is staged once (:meth:`~cmpt.results.ResultsStore.staged_prompt_path`), named by its content.
    """
    out = {}
    for name, prompt in prompts.items():
        out[name] = _bank_file(profile, store, name, prompt) or _staged_file(store, name, prompt)
    return out


def _bank_file(profile: Profile, store: ResultsStore, name: str, prompt: Prompt) -> Path | None:
    for seed in profile.seeds:
        record = store.get(SourceConfig.of(profile, name, seed))
        if record is None or record["status"] != "done":
            continue
        path = store.resolve(record["final"]["prompt_file"]).resolve()
        if path.exists() and torch.equal(load_prompt(path).tensor, prompt.tensor):
            return path
    return None


def _staged_file(store: ResultsStore, name: str, prompt: Prompt) -> Path:
    values = prompt.tensor.contiguous().numpy()
    meta = json.dumps(prompt.metadata(), sort_keys=True, default=str)
    digest = hashlib.sha256(values.tobytes() + meta.encode()).hexdigest()[:16]
    path = store.staged_prompt_path(name, digest).resolve()
    if not path.exists():
        save_prompt(prompt, path)
    return path


def target_job(profile: Profile, store: ResultsStore, prompts: Mapping[str, Prompt],
               save_models: bool = True) -> TargetJob:
    """The :class:`TargetJob` that runs target configs of ``profile`` into ``store`` with ``prompts``."""
    files = prompt_files(profile, store, prompts)
    return TargetJob(profile, str(store.root.resolve()), tuple((name, str(path)) for name, path in files.items()),
                     reference_norm(prompts), save_models)


def target_sweep(profile: Profile, configs: Iterable[TargetConfig], prompts: Mapping[str, Prompt] | None = None,
                 desc: str = "target runs", save_models: bool = True, executor: str = "local",
                 store: ResultsStore | None = None, **options: Any) -> pd.DataFrame:
    """Run every missing config of ``profile`` (loading backbone and targets lazily) and return their table.

    With ``save_models`` each new run's trained prompt and head are kept in the store.
    ``executor`` is ``"local"`` (in this process) or ``"ray"`` (one Ray task per run);
    ``options`` (``retries``, ``on_error``, ``address``, ``num_cpus``, ``num_gpus``) go to
    :func:`run_sweep`. ``store`` defaults to the profile's (:meth:`ResultsStore.for_profile`).
    Configs whose rate is still to be chosen get it first (:func:`cmpt.calibration.resolve_rates`:
    the calibration runs go through the same executor). The table's ``attrs["sweep"]`` counts what ran,
    ``attrs["calibration"]`` what the rate choice ran (None when no rate was open).
    """
    store = store or ResultsStore.for_profile(profile)
    if executor == "local":
        fn: Any = TargetRunner(profile, store, prompts, save_models=save_models)
    else:
        fn = target_job(profile, store, prompts or {}, save_models=save_models)

    reports = []

    def calibrate(calibration: list[TargetConfig]) -> None:
        done = run_sweep(store, calibration, fn, executor=executor, desc=f"{desc}: choosing rates", **options)
        reports.append(done.attrs["sweep"])

    configs = resolve_rates(profile, configs, store, run=calibrate)
    table = run_sweep(store, configs, fn, executor=executor, desc=desc, **options)
    table.attrs["calibration"] = reports[0] if reports else None
    return table
