import json
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from cmpt.errors import CmptError, InputError
from cmpt.jsonable import NonFiniteError, to_jsonable
from cmpt.results import CorruptRecordError, ResultsStore, RunFailedError, canonical_config, config_hash, run_missing


def _configs(n: int) -> list[dict]:
    return [{"setting": "projection", "source": "sst2", "target": f"t{i}", "seed": 42, "lr": 0.005} for i in range(n)]


def _ok(config: dict) -> dict:
    return {"final": {"test_acc": 0.5 + 0.01 * int(config["target"][1:])},
            "metrics_per_epoch": [{"epoch": 1, "val_acc": 0.4}]}


def test_config_hash_stable_across_key_order_and_sequence_type():
    a = {"seed": 42, "lr": 0.005, "grid": (1, 2), "nested": {"x": 1, "y": [0.1, 0.2]}}
    b = {"nested": {"y": (0.1, 0.2), "x": 1}, "grid": [1, 2], "lr": 0.005, "seed": 42}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash({"lr": 1}) == config_hash({"lr": 1.0})
    assert config_hash({"lr": 0.1}) != config_hash({"lr": 0.1 + 1e-12})
    assert config_hash({"flag": True}) != config_hash({"flag": 1})
    # pinned: a change of canonical form would orphan every stored result
    assert config_hash({"a": 1}) == "015abd7f5cc57a2d"


def test_config_may_be_a_dataclass():
    @dataclass(frozen=True)
    class Cfg:
        seed: int
        sizes: tuple[int, ...]

    assert canonical_config(Cfg(1, (2, 3))) == {"seed": 1, "sizes": [2, 3]}
    assert config_hash(Cfg(1, (2, 3))) == config_hash({"sizes": [2, 3], "seed": 1})
    with pytest.raises(TypeError):
        config_hash({"f": object()})


def test_put_is_atomic_and_get_roundtrips(tmp_path):
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]
    assert store.get(config) is None and not store.has(config)
    record = store.put(config, {"final": {"test_acc": 0.75}, "metrics_per_epoch": [{"epoch": 1}]})
    assert not list(tmp_path.glob("*.part")) and [p.name for p in tmp_path.iterdir()] == [f"{record['hash']}.json"]
    got = store.get(config)
    assert store.has(config) and got == record
    assert got["status"] == "done" and got["final"] == {"test_acc": 0.75}
    assert set(got["versions"]) == {"python", "torch", "timm", "transformers", "cmpt", "numpy"}
    assert got["finished_at"] and got["attempts"] == 1


def test_interrupted_sweep_keeps_finished_runs_and_resumes(tmp_path):
    store = ResultsStore(tmp_path)
    configs = _configs(5)
    calls: list[str] = []

    def interrupted(config):
        calls.append(config["target"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _ok(config)

    with pytest.raises(KeyboardInterrupt):
        run_missing(store, configs, interrupted)
    assert calls == ["t0", "t1", "t2"]
    assert [store.has(c) for c in configs] == [True, True, False, False, False]
    assert store.get(configs[2]) is None  # an interrupt is not a failure: the run is just missing

    calls.clear()
    table = run_missing(store, configs, lambda c: (calls.append(c["target"]), _ok(c))[1])
    assert calls == ["t2", "t3", "t4"]
    assert list(table["target"]) == ["t0", "t1", "t2", "t3", "t4"]

    calls.clear()
    run_missing(store, configs, lambda c: (calls.append(c["target"]), _ok(c))[1])
    assert calls == []


def test_failures_are_recorded_and_retried_a_bounded_number_of_times(tmp_path):
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]
    calls = []

    def broken(cfg):
        calls.append(1)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        store.run(config, broken, retries=2)
    assert len(calls) == 3
    record = store.get(config)
    assert record["status"] == "failed" and record["attempts"] == 3
    assert "Traceback" in record["error"] and "ValueError: boom" in record["error"]
    assert not store.has(config) and store.table().empty

    # a flaky run succeeds on its second try; attempts keep counting across invocations
    flaky = iter([RuntimeError("once"), None])

    def sometimes(cfg):
        err = next(flaky)
        if err:
            raise err
        return _ok(cfg)

    record = store.run(config, sometimes, retries=1)
    assert record["status"] == "done" and record["attempts"] == 5 and record["wall_time_s"] >= 0
    assert store.run(config, broken) == record and len(calls) == 3  # done: fn not called again


def test_sweep_can_continue_past_failures(tmp_path):
    store = ResultsStore(tmp_path)

    def half(cfg):
        if cfg["target"] == "t1":
            raise RuntimeError("bad target")
        return _ok(cfg)

    with pytest.warns(UserWarning, match="bad target"):
        table = run_missing(store, _configs(3), half, on_error="continue")
    assert list(table["target"]) == ["t0", "t2"]
    assert [r["status"] for r in store.records()].count("failed") == 1


def test_truncated_record_is_reported_with_its_file_name(tmp_path):
    store = ResultsStore(tmp_path)
    configs = _configs(2)
    for config in configs:
        store.put(config, _ok(config))
    bad = store.path(configs[1])
    bad.write_text(bad.read_text()[:40])
    with pytest.raises(CorruptRecordError, match=bad.name) as info:
        store.records()
    assert "Delete this file" in str(info.value)
    with pytest.raises(CorruptRecordError, match=bad.name):
        store.has(configs[1])
    with pytest.warns(UserWarning, match=bad.name):
        assert len(store.records(on_corrupt="warn")) == 1


@pytest.mark.parametrize("damage", ["schema", "hash"])
def test_wrong_schema_or_hash_is_reported(tmp_path, damage):
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]
    path = tmp_path / f"{store.put(config, _ok(config))['hash']}.json"
    data = json.loads(path.read_text())
    if damage == "schema":
        del data["final"]
    else:
        data["config"]["seed"] = 7
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptRecordError, match="final" if damage == "schema" else "hash mismatch"):
        store.records()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert store.table(on_corrupt="warn").empty


def test_table_columns(tmp_path):
    store = ResultsStore(tmp_path)
    store.put({"setting": "vpt", "seed": 42, "opt": {"lr": 0.1, "wd": 0}, "sizes": (1, 2)},
              {"final": {"test_acc": 0.8, "val_acc": 0.7, "seed": 3}, "clock": {"train_s": 1.5, "eval_s": 0.5}})
    table = store.table()
    assert set(table.columns) == {"hash", "setting", "seed", "opt.lr", "opt.wd", "sizes", "test_acc", "val_acc",
                                  "final.seed", "wall_time_s", "finished_at", "train_s", "eval_s"}
    assert table.loc[0, "sizes"] == (1, 2) and table.loc[0, "final.seed"] == 3 and table.loc[0, "train_s"] == 1.5
    assert set(store.table(flatten=False).columns) == {"hash", "setting", "seed", "opt", "sizes", "test_acc",
                                                       "val_acc", "final.seed", "wall_time_s", "finished_at",
                                                       "train_s", "eval_s"}


# ----------------------------------------------------------------------------- non-finite results

def test_a_nan_final_metric_makes_a_failed_run(tmp_path):
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]

    def diverged(cfg):
        return {"final": {"test_acc": float("nan"), "val_acc": 0.5},
                "metrics_per_epoch": [{"epoch": 1, "train_loss": float("nan")}]}

    with pytest.raises(RunFailedError, match="final metric 'test_acc' is nan") as info:
        store.run(config, diverged, retries=1)
    assert isinstance(info.value, CmptError) and not isinstance(info.value, InputError)
    record = store.get(config)
    assert record["status"] == "failed" and record["final"] is None and record["attempts"] == 2
    assert "final metric 'test_acc' is nan" in record["error"]
    assert not store.has(config) and store.table().empty
    # the next try that gives a number is a finished run
    assert store.run(config, _ok)["status"] == "done"


def test_put_refuses_infinite_and_nested_non_finite_metrics(tmp_path):
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]
    with pytest.raises(RunFailedError, match="final metric 'val_loss' is inf"):
        store.put(config, {"final": {"test_acc": 0.5, "val_loss": float("inf")}})
    assert store.get(config)["status"] == "failed"
    assert "final metric 'val_loss' is inf" in store.get(config)["error"]
    with pytest.raises(RunFailedError, match=r"final metric 'per_class\[1\]' is -inf"):
        store.put(config, {"final": {"per_class": [0.5, -math.inf]}})
    with pytest.raises(RunFailedError, match="final metric 'losses.val' is nan"):
        store.put(config, {"final": {"losses": {"val": np.float32("nan")}}})


def test_nan_in_the_history_is_kept_as_null(tmp_path):
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]
    record = store.run(config, lambda c: {"final": {"test_acc": 0.5},
                                          "metrics_per_epoch": [{"epoch": 1, "train_loss": float("nan")}]})
    assert record["status"] == "done" and store.get(config)["metrics_per_epoch"] == [{"epoch": 1, "train_loss": None}]


def test_a_sweep_counts_a_nan_run_as_failed(tmp_path):
    store = ResultsStore(tmp_path)

    def half(cfg):
        return {"final": {"test_acc": float("nan") if cfg["target"] == "t1" else 0.5}}

    with pytest.warns(UserWarning, match="final metric 'test_acc' is nan"):
        table = run_missing(store, _configs(3), half, on_error="continue")
    assert list(table["target"]) == ["t0", "t2"]


def test_to_jsonable():
    value = {"a": np.float64(0.5), "b": torch.tensor([1.0, float("nan")]), 3: (1, np.int64(2)), "c": "x"}
    assert to_jsonable(value) == {"a": 0.5, "b": [1.0, None], "3": [1, 2], "c": "x"}
    with pytest.raises(NonFiniteError, match=r"b\[1\] is nan") as info:
        to_jsonable(value, nonfinite="raise")
    assert info.value.where == "b[1]" and math.isnan(info.value.value)
    assert to_jsonable(float("inf")) is None
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        to_jsonable(1.0, nonfinite="zero")


# ----------------------------------------------------------------------------- a damaged record: CorruptRecordError

def _damaged(tmp_path, edit):
    """A store whose one record was edited: ``edit(record)`` changes it in place or returns the new text."""
    store = ResultsStore(tmp_path)
    config = _configs(1)[0]
    path = store.path(config)
    store.put(config, _ok(config))
    data = json.loads(path.read_text())
    text = edit(data)
    if text is None:
        text = json.dumps(data)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return store, config, path


@pytest.mark.parametrize("edit,reason", [
    (lambda d: b"\xff\xfe" + json.dumps(d).encode(), "not valid JSON"),
    (lambda d: json.dumps(d)[:-3], "not valid JSON"),
    (lambda d: json.dumps(d).replace("0.5", "NaN"), "non-finite number NaN"),
    (lambda d: json.dumps(d).replace("0.5", "1e999"), "number 1e999, which is out of range"),
    (lambda d: d["final"].update(test_acc="high"), "final metric 'test_acc' is 'high', not null or a number"),
    (lambda d: d["final"].update(best_epoch=1.5), "final metric 'best_epoch' is 1.5, not a count"),
    (lambda d: d.update(final=[0.5]), "without a 'final' object"),
    (lambda d: d.update(status="failed", final="x"), "'final' is neither an object nor null"),
    (lambda d: d.update(config=["a"]), "'config' is not an object"),
    (lambda d: d.update(hash=7), "'hash' is not a string"),
    (lambda d: d.update(status=["done"]), "status \\['done'\\] is not one of done, failed"),
    (lambda d: d.update(attempts="3"), "'attempts' is '3', not null or a count"),
    (lambda d: d.update(wall_time_s=-1), "'wall_time_s' is -1"),
    (lambda d: d.update(metrics_per_epoch=[1, 2]), "'metrics_per_epoch' is \\[1, 2\\], not a list of objects"),
    (lambda d: d.update(error=["boom"]), "'error' is \\['boom'\\], not null or a string"),
    (lambda d: "[" * 100_000, "not valid JSON"),
])
def test_every_damaged_record_is_a_corrupt_record(tmp_path, edit, reason):
    store, config, path = _damaged(tmp_path, edit)
    for read in (lambda: store.get(config), store.records, store.table, lambda: store.run(config, _ok)):
        with pytest.raises(CorruptRecordError, match=reason) as info:
            read()
        assert path.name in str(info.value) and "\n" not in str(info.value)
