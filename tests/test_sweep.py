"""Sweeps through one results store, in-process and on a two-worker Ray cluster on 127.0.0.1.

Ray is a test requirement (``make test`` installs requirements-ray.txt): without it the Ray
tests fail rather than skip. The run functions defined here reach the Ray workers pickled by
value (this test module is not importable there).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from cmpt.calibration import resolve_rates
from cmpt.cli import main
from cmpt.experiments import source_bank
from cmpt.profiles import get_profile
from cmpt.results import ResultsStore, config_hash
from cmpt.run_config import setting_configs
from cmpt.sweep import SweepError, run_sweep, target_job, target_sweep

ROOT = Path(__file__).resolve().parents[1]
SMOKE = get_profile("smoke")
EXECUTORS = ["local", "ray"]


# ----------------------------------------------------------------------------- run functions

def toy(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("fail"):
        raise ValueError(f"boom {config['x']}")
    return {"final": {"y": config["x"] * 2}}


@dataclass(frozen=True)
class Logged:
    """``fn`` that leaves a file ``<hash>-<pid>-<n>`` in ``log`` per call.

    The first call of the config hashed ``hold`` waits (to be killed) before it runs; call
    number ``interrupt`` (from 1) is a Ctrl-C instead.
    """

    fn: Callable[[dict[str, Any]], dict[str, Any]]
    log: str
    hold: str = ""
    interrupt: int = 0

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        h = config_hash(config)
        first = not any(Path(self.log).glob(f"{h}-*"))
        if len(list(Path(self.log).iterdir())) + 1 == self.interrupt:
            raise KeyboardInterrupt
        (Path(self.log) / f"{h}-{os.getpid()}-{time.monotonic_ns()}").touch()
        if h == self.hold and first:
            time.sleep(60)
        return self.fn(config)


def calls(log: Path) -> dict[str, list[int]]:
    """config hash -> pids of the processes that ran it, one per call, in call order."""
    out: dict[str, list[int]] = {}
    for h, pid, _ in sorted((path.name.split("-") for path in log.iterdir()), key=lambda parts: int(parts[2])):
        out.setdefault(h, []).append(int(pid))
    return out


def toy_configs(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"kind": "toy", "x": x, **extra} for x in range(n)]


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head (no CPUs: it schedules nothing) and two one-CPU worker nodes, all on 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's single-machine mode: every address 127.0.0.1
        import ray  # a missing Ray fails these tests: CI installs it
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
        workers = [cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1") for _ in range(2)]
        ray.init(address=cluster.address, include_dashboard=False)
        cluster.wait_for_nodes()
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
        try:
            yield cluster, workers
        finally:
            ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture()
def executor(request) -> str:
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


@pytest.fixture()
def one_thread():
    """Torch on one thread, as in a one-CPU Ray task (and much faster for tiny models on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- both executors

@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
def test_failed_run_is_recorded_with_its_traceback_retried_and_reported(tmp_path, executor):
    store, log = ResultsStore(tmp_path / "store"), tmp_path / "log"
    log.mkdir()
    configs = toy_configs(3) + toy_configs(1, fail=True)
    bad = config_hash(configs[-1])
    fn = Logged(toy, str(log))
    with pytest.warns(UserWarning, match=bad):
        table = run_sweep(store, configs, fn, executor=executor, retries=2, on_error="continue")
    assert sorted(table["y"]) == [0, 2, 4]
    assert table.attrs["sweep"] == {"executor": executor, "total": 4, "ran": 3, "skipped": 0, "failed": [bad]}
    record = store.get(configs[-1])
    assert record["status"] == "failed" and record["attempts"] == 3
    assert "Traceback" in record["error"] and "ValueError: boom 0" in record["error"]
    assert len(calls(log)[bad]) == 3 and all(len(v) == 1 for h, v in calls(log).items() if h != bad)

    # a later sweep tries the failed run again (attempts count on) and, by default, raises
    expected = ValueError if executor == "local" else SweepError
    with pytest.raises(expected, match="boom 0" if executor == "local" else bad):
        run_sweep(store, configs, fn, executor=executor, retries=0)
    assert store.get(configs[-1])["attempts"] == 4 and len(calls(log)[bad]) == 4
    assert sum(map(len, calls(log).values())) == 7  # the finished runs were not redone


@pytest.mark.parametrize("executor", EXECUTORS, indirect=True)
def test_relaunch_after_an_interrupted_driver_runs_only_what_is_missing(tmp_path, executor):
    store, first, log = ResultsStore(tmp_path / "store"), tmp_path / "first", tmp_path / "log"
    first.mkdir()
    log.mkdir()
    configs = toy_configs(6)
    with pytest.raises(KeyboardInterrupt):  # the driver is stopped during the 4th run
        run_sweep(store, configs, Logged(toy, str(first), interrupt=4))
    assert [store.has(c) for c in configs] == [True] * 3 + [False] * 3
    assert not list(store.root.glob("*.part"))

    table = run_sweep(store, configs, Logged(toy, str(log)), executor=executor)
    assert sorted(calls(log)) == sorted(config_hash(c) for c in configs[3:])
    assert all(len(pids) == 1 for pids in calls(log).values())
    assert table.attrs["sweep"]["ran"] == 3 and table.attrs["sweep"]["skipped"] == 3
    assert list(table["y"]) == [0, 2, 4, 6, 8, 10]
    again = run_sweep(store, configs, Logged(toy, str(log)), executor=executor)
    assert again.attrs["sweep"]["ran"] == 0 and sum(map(len, calls(log).values())) == 3


def test_unknown_executor_and_missing_ray_are_clear(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="local, ray"):
        run_sweep(ResultsStore(tmp_path), toy_configs(1), toy, executor="dask")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(SweepError, match="pip install -r requirements-ray.txt"):
        run_sweep(ResultsStore(tmp_path), toy_configs(1), toy, executor="ray")
    assert main(["sweep", "--profile", "smoke", "--executor", "ray", "--results", str(tmp_path)]) == 1
    assert "needs Ray, an optional extra: pip install -r requirements-ray.txt" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing trained before the check


# ----------------------------------------------------------------------------- the command

def test_cli_sweep_runs_the_grid_once(tmp_path, capsys):
    command = [sys.executable, "-m", "cmpt", "sweep", "--profile", "smoke", "--executor", "local",
               "--results", str(tmp_path), "--settings", "linear", "projection", "--targets", "dsprites_loc"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # the command sets its own
    env["OMP_NUM_THREADS"] = "1"  # tiny models: one thread is fastest on a busy machine
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    # each setting's rate is chosen first: 2 rates x the profile's 2 targets at its first seed, from its
    # first source; the grid's runs at the chosen rate on dsprites_loc from that source are among them
    assert "8 calibration runs: 8 ran, 0 already done, 0 failed" in first.stdout
    assert "3 runs: 1 ran, 2 already done, 0 failed" in first.stdout
    store = ResultsStore(tmp_path / "smoke")
    kinds = sorted(r["config"]["kind"] for r in store.records())
    assert kinds == ["source_prompt"] * 2 + ["target"] * 9  # the bank first, then the rates, then the grid
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 calibration runs: 0 ran, 8 already done" in second.stdout
    assert "3 runs: 0 ran, 3 already done, 0 failed" in second.stdout
    # the same store through Ray (a private instance on 127.0.0.1): only the new setting runs
    third = subprocess.run(command[:-2] + ["vpt", "--targets", "dsprites_loc", "--executor", "ray"], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "12 calibration runs: 4 ran, 8 already done, 0 failed" in third.stdout
    assert "4 runs: 0 ran, 4 already done, 0 failed" in third.stdout  # vpt's run is its calibration run
    assert main(command[3:-5] + ["--settings", "nope"]) == 2
    assert "unknown setting 'nope'; valid: linear" in capsys.readouterr().err


def test_cli_checks_every_name_before_any_work_and_says_it_in_one_line(tmp_path, capsys):
    base = ["sweep", "--profile", "default", "--results", str(tmp_path)]
    for extra, expected in ((["--targets", "no_such_task"], "unknown target task 'no_such_task'; valid: animals"),
                            (["--sources", "nope"], "unknown source 'nope'; valid: rotten_tomatoes"),
                            (["-p", "image_size", "big"], "image_size must be int"),
                            (["-p", "colour", "1"], "unknown profile parameter(s) colour")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())  # nothing fetched, trained or written


def test_cli_reports_a_corrupt_record_in_one_line(tmp_path, capsys):
    store = ResultsStore(tmp_path / "smoke")
    from cmpt.calibration import calibration_configs

    unresolved = setting_configs(SMOKE, "linear", ["dsprites_loc"])[0]
    config = next(c for c in calibration_configs(SMOKE, "linear", unresolved.rates) if c.target == "dsprites_loc")
    store.path(config).write_text("{not json")  # a calibration run: read before anything trains
    args = ["sweep", "--profile", "smoke", "--results", str(tmp_path), "--settings", "linear", "--targets",
            "dsprites_loc"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(store.path(config)) in err and "Delete this file" in err


def test_cli_plan_prints_search_and_final_runs_and_runs_nothing(tmp_path, capsys):
    assert main(["sweep", "--profile", "paper", "--plan", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "grid search on train800" in out and "GPU hours" in out
    vpt = next(line for line in out.splitlines() if line.startswith("vpt "))
    assert "spt " in out and "random_xavier " in out
    assert vpt.split()[1:3] == ["684", "57"]  # 19 targets x 36 grid points; 19 x 3 seeds
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- a lost worker

def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def test_ray_sweep_loses_nothing_to_a_killed_worker_and_matches_local(tmp_path, monkeypatch, ray_cluster, one_thread):
    configs = (setting_configs(SMOKE, "linear", SMOKE.image_tasks) + setting_configs(SMOKE, "vpt", SMOKE.image_tasks)
               + setting_configs(SMOKE, "random", SMOKE.image_tasks))
    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path / "local"))
    bank = source_bank(SMOKE)
    configs += [c for s in ("projection", "attention") for c in setting_configs(SMOKE, s, SMOKE.image_tasks, list(bank))]
    local = ResultsStore.for_profile(SMOKE)
    target_sweep(SMOKE, configs, prompts=bank)
    configs = resolve_rates(SMOKE, configs, local)  # the rates the local sweep chose: the same runs, through Ray

    store, log = ResultsStore(tmp_path / "ray" / "smoke"), tmp_path / "log"
    log.mkdir()
    victim = config_hash(configs[2])  # a VPT run
    killed: list[int] = []

    def kill_victim() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for path in log.glob(f"{victim}-*"):
                killed.append(int(path.name.split("-")[1]))
                os.kill(killed[0], signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_victim, daemon=True)
    killer.start()
    fn = Logged(target_job(SMOKE, store, bank), str(log), hold=victim)
    table = run_sweep(store, configs, fn, executor="ray", retries=1)
    killer.join(timeout=1)

    assert killed, "the victim run never started"
    ran = calls(log)
    assert len(ran[victim]) == 2 and killed[0] == ran[victim][0] != ran[victim][1]  # re-executed elsewhere
    assert sorted(ran) == sorted(config_hash(c) for c in configs)
    assert all(len(pids) == 1 for h, pids in ran.items() if h != victim)
    assert table.attrs["sweep"] == {"executor": "ray", "total": len(configs), "ran": len(configs),
                                    "skipped": 0, "failed": []}

    # every run recorded exactly once, finished, with its model; nothing half-written is left
    records = store.records()
    assert sorted(r["hash"] for r in records) == sorted(config_hash(c) for c in configs)
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in records)
    assert len(list((store.root / "models").glob("*.safetensors"))) == len(configs)
    assert not list(store.root.rglob("*.part"))
    # the same numbers as the in-process sweep: same seeds, same data, same prompts (loaded from disk)
    for config in configs:
        here, there = local.get(config), store.get(config)
        assert _close(there["final"], here["final"]), config
        assert _close(there["metrics_per_epoch"], here["metrics_per_epoch"]), config

    # the notebooks' path: target_sweep(..., executor="ray") skips all of that and runs only the new
    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path / "ray"))
    more = setting_configs(SMOKE, "linear", SMOKE.image_tasks, seeds=(7,))
    table = target_sweep(SMOKE, configs + more, prompts=bank, executor="ray")
    assert table.attrs["sweep"]["ran"] == 2 and table.attrs["sweep"]["skipped"] == len(configs)
    assert len(table) == len(configs) + 2
    assert len(list((store.root / "prompts" / "staged").iterdir())) == len(bank)  # the bank lives in the other store


def test_sweeps_of_one_profile_load_the_backbone_and_embed_each_target_once(tmp_path, monkeypatch):
    import cmpt.runner
    from cmpt.profiles import get_profile
    from cmpt.results import ResultsStore
    from cmpt.run_config import setting_configs
    from cmpt.sweep import target_sweep

    profile = get_profile("smoke")
    loads, embeds = [], []
    real_load, real_prepare = cmpt.runner.load_vision_backbone, cmpt.runner.prepare_target
    monkeypatch.setattr(cmpt.runner, "load_vision_backbone", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    monkeypatch.setattr(cmpt.runner, "prepare_target", lambda *a, **k: embeds.append(a[0]) or real_prepare(*a, **k))
    store = ResultsStore(tmp_path / "smoke")
    target = profile.image_tasks[0]
    for setting in ("linear", "random"):  # two sweeps, as a chapter runs them
        table = target_sweep(profile, setting_configs(profile, setting, [target]), store=store, save_models=False)
        assert len(table) == len(profile.seeds)
    # the rate calibration visits every target of the profile; each is embedded once over both sweeps
    assert len(loads) == 1 and sorted(embeds) == sorted(profile.image_tasks)
