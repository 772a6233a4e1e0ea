"""Every file loader returns a valid object or raises a one-line CmptError that names the file.

Hypothesis damages valid files of each kind (a prompt, a PEFT adapter folder in both weight
formats, a Su et al. checkpoint, a results record, a saved model): truncation at any offset,
flipped bytes, and structural edits of the JSON and tensors inside (fields removed, types
changed, sizes changed). Any exception that is not a :class:`~cmpt.errors.CmptError` fails.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from cmpt.errors import CmptError, InputError, UnknownNameError
from cmpt.model_files import ModelFileError, load_trained, read_trained, save_trained
from cmpt.prompts import Prompt, PromptError, export_peft, import_peft, import_su2022, load_prompt, save_prompt
from cmpt.results import STATUSES, ResultsStore
from cmpt.settings import SETTINGS, make_prompt_source
from cmpt.transfer import PromptedClassifier

# damaged pickles make torch warn about the protocol byte before it refuses them
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")

#: examples per property; raise it (e.g. CMPT_FUZZ_EXAMPLES=2000) to search harder
FUZZ = settings(max_examples=int(os.environ.get("CMPT_FUZZ_EXAMPLES", "100")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
IMAGE = 16  # tiny-vit at 16 px: 4 patches, width 32, 2 blocks
CONFIG = {"setting": "vpt", "target": "t0", "seed": 1, "lr": 0.01}


# ----------------------------------------------------------------------------- valid files

@lru_cache(maxsize=1)
def _vit():
    from cmpt.backbones import load_vision_backbone

    return load_vision_backbone("tiny-vit", IMAGE)


def _prompt() -> Prompt:
    torch.manual_seed(0)
    return Prompt(torch.randn(3, 8), source_backbone="tiny-bert", task="keywords", group="smoke",
                  training={"val_acc": 0.5, "epochs": 2})


@contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmpt-fuzz-") as folder:
        yield Path(folder)


@lru_cache(maxsize=None)
def _bytes_of(kind: str) -> bytes:
    """The bytes of one valid file of ``kind``."""
    with _scratch() as folder:
        if kind == "prompt":
            path = save_prompt(_prompt(), folder / "p.safetensors")
        elif kind == "peft.safetensors":
            path = export_peft(_prompt(), folder / "a") / "adapter_model.safetensors"
        elif kind == "peft.config":
            path = export_peft(_prompt(), folder / "a") / "adapter_config.json"
        elif kind in ("peft.bin", "su2022"):
            path = folder / "x.pt"
            obj = {"prompt_embeddings": _prompt().tensor} if kind == "peft.bin" else _prompt().tensor
            torch.save(obj, path)
        elif kind == "record":
            store = ResultsStore(folder)
            store.put(CONFIG, {"final": {"test_acc": 0.5, "val_acc": 0.25, "best_epoch": 2, "n_trainable": 10},
                               "metrics_per_epoch": [{"epoch": 1, "train_loss": 1.5, "val_acc": None}],
                               "wall_time_s": 1.0})
            path = store.path(CONFIG)
        elif kind.startswith("model."):
            setting = kind.split(".", 1)[1]
            torch.manual_seed(0)
            model = PromptedClassifier(_vit(), make_prompt_source(setting, _vit(), 2), num_classes=3)
            path = save_trained(model, folder / "m.safetensors")
        else:
            raise AssertionError(kind)
        return path.read_bytes()


# ----------------------------------------------------------------------------- damage

@st.composite
def damaged_bytes(draw: st.DrawFn, data: bytes, hot: int = 0) -> bytes:
    """``data`` cut at any offset, or with a few bytes flipped or overwritten.

    ``hot`` bytes at the start (a safetensors header) are hit more often than the rest.
    """
    position = st.integers(0, len(data) - 1)
    if hot:
        position = st.one_of(st.integers(0, min(hot, len(data)) - 1), position)
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    if kind == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    if kind == "flip":
        for index in draw(st.lists(position, min_size=1, max_size=8)):
            out[index] ^= draw(st.integers(1, 255))
        return bytes(out)
    start = draw(position)
    patch = draw(st.binary(min_size=1, max_size=16))
    out[start:start + len(patch)] = patch
    return bytes(out[:len(data)])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def _locations(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """The path (keys and indices) of every node of a JSON document, the root included."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _locations(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            out += _locations(value, (*prefix, index))
    return out


def _resized(draw: st.DrawFn, value: Any) -> Any:
    """A value of the same type and another size: a number moved, a string or list cut or grown."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return draw(st.sampled_from([value + 1, value - 1, value * 2, 0, -value, value * 10**6]))
    if isinstance(value, str):
        return draw(st.sampled_from([value[:-1], value * 2, ""]))
    if isinstance(value, list):
        return draw(st.sampled_from([value[:-1], value + value[:1], []]))
    if isinstance(value, dict):
        return {}
    return value


@st.composite
def mutated_json(draw: st.DrawFn, doc: Any) -> Any:
    """``doc`` with one to three fields removed, replaced by any JSON value, or resized."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(_locations(doc)))
        action = draw(st.sampled_from(["remove", "replace", "resize"]))
        if not where:
            doc = draw(JSON_VALUES) if action == "replace" else _resized(draw, doc)
            continue
        parent = doc
        for step in where[:-1]:
            parent = parent[step]
        if action == "remove":
            del parent[where[-1]]
        elif action == "replace":
            parent[where[-1]] = draw(JSON_VALUES)
        else:
            parent[where[-1]] = _resized(draw, parent[where[-1]])
    return doc


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + size]), data[8 + size:]


def _join_safetensors(header: Any, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def _header_size(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


@st.composite
def mutated_header(draw: st.DrawFn, data: bytes) -> bytes:
    """A safetensors file whose JSON header (shapes, dtypes, offsets, metadata) was edited."""
    header, body = _split_safetensors(data)
    return _join_safetensors(draw(mutated_json(header)), body)


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                  torch.uint8, torch.bool]))
    fill = draw(st.sampled_from(["normal", "nan", "inf", "zero"]))
    value = {"normal": torch.randn(shape), "nan": torch.full(shape, float("nan")),
             "inf": torch.full(shape, float("inf")), "zero": torch.zeros(shape)}[fill]
    return value.to(dtype)


@st.composite
def mutated_tensors(draw: st.DrawFn, content: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict:
    """``content`` with tensors dropped, replaced, added (under ``names``) or given another size."""
    content = dict(content)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["drop", "replace", "add", "resize"]))
        if action in ("drop", "replace", "resize") and not content:
            action = "add"
        if action == "drop":
            del content[draw(st.sampled_from(sorted(content)))]
        elif action == "resize":
            name = draw(st.sampled_from(sorted(content)))
            shape = list(content[name].shape) or [1]
            axis = draw(st.integers(0, len(shape) - 1))
            shape[axis] = max(0, shape[axis] + draw(st.sampled_from([-1, 1, 5])))
            content[name] = torch.randn(shape)
        else:
            name = draw(st.sampled_from(names)) if action == "add" else draw(st.sampled_from(sorted(content)))
            content[name] = draw(tensors())
    return content


def _saved_safetensors(content: dict[str, torch.Tensor]) -> bytes:
    with _scratch() as folder:
        save_file({k: v.contiguous() for k, v in content.items()}, str(folder / "x.safetensors"))
        return (folder / "x.safetensors").read_bytes()


def _torch_bytes(obj: Any) -> bytes:
    with _scratch() as folder:
        torch.save(obj, folder / "x.pt")
        return (folder / "x.pt").read_bytes()


def damaged_safetensors(kind: str, names: tuple[str, ...]) -> st.SearchStrategy[bytes]:
    """A valid safetensors file of ``kind`` damaged at the byte, header or tensor level."""
    data = _bytes_of(kind)
    return st.one_of(
        damaged_bytes(data, hot=_header_size(data)),
        mutated_header(data),
        mutated_tensors(_load_safetensors_bytes(data), names).map(_saved_safetensors),
    )


def _load_safetensors_bytes(data: bytes) -> dict[str, torch.Tensor]:
    with _scratch() as folder:
        (folder / "x.safetensors").write_bytes(data)
        return load_file(str(folder / "x.safetensors"))


# ----------------------------------------------------------------------------- the property
# (strategies that need a valid file are deferred: collecting the tests writes nothing)

def _settles(call: Callable[[], Any], folder: Path) -> Any:
    """``call()``'s value, or the CmptError it raised, checked to be one line naming a file in ``folder``."""
    try:
        out = call()
    except CmptError as err:
        reason = getattr(err, "reason", None) or str(err).replace(str(folder), "")
        event(f"refused: {type(err).__name__}: {reason[:36]}")
        message = str(err)
        assert "\n" not in message, message
        assert str(folder) in message, message
        assert isinstance(err, InputError), f"a damaged file is bad input, got {type(err).__name__}"
        return err
    event("accepted")
    return out


def _valid_prompt(prompt: Prompt, folder: Path) -> None:
    """An accepted prompt is well formed and saves and loads back the same."""
    assert isinstance(prompt, Prompt) and prompt.tensor.dtype == torch.float32 and prompt.tensor.dim() == 2
    assert prompt.length >= 1 and prompt.width >= 1 and torch.isfinite(prompt.tensor).all()
    back = load_prompt(save_prompt(prompt, folder / "again.safetensors"))
    assert torch.equal(back.tensor, prompt.tensor)
    assert json.dumps(back.metadata(), sort_keys=True) == json.dumps(prompt.metadata(), sort_keys=True)


@FUZZ
@given(data=st.deferred(lambda: st.one_of(damaged_safetensors("prompt", ("prompt", "other")), st.just(b""))))
def test_damaged_prompt_files(data):
    with _scratch() as folder:
        path = folder / "p.safetensors"
        path.write_bytes(data)
        out = _settles(lambda: load_prompt(path), folder)
        if not isinstance(out, CmptError):
            _valid_prompt(out, folder)


def _with_metadata(doc: Any) -> bytes:
    header, body = _split_safetensors(_bytes_of("prompt"))
    header["__metadata__"]["cmpt_prompt"] = json.dumps(doc)
    return _join_safetensors(header, body)


def _prompt_metadata() -> dict:
    header, _ = _split_safetensors(_bytes_of("prompt"))
    return json.loads(header["__metadata__"]["cmpt_prompt"])


@FUZZ
@given(data=st.deferred(lambda: mutated_json(_prompt_metadata()).map(_with_metadata)))
def test_prompt_files_with_mutated_metadata(data):
    with _scratch() as folder:
        path = folder / "p.safetensors"
        path.write_bytes(data)
        out = _settles(lambda: load_prompt(path), folder)
        if not isinstance(out, CmptError):
            _valid_prompt(out, folder)
            assert out.metadata()["length"] == 3 and out.metadata()["width"] == 8


def _peft_weights(fmt: str) -> st.SearchStrategy[bytes]:
    if fmt == "safetensors":
        return damaged_safetensors("peft.safetensors", ("prompt_embeddings", "other"))
    plain = {"prompt_embeddings": _prompt().tensor}
    objects = st.one_of(
        mutated_tensors(plain, ("prompt_embeddings", "other")),
        st.dictionaries(st.sampled_from(["prompt_embeddings", "x"]), JSON_VALUES, max_size=2),
        JSON_VALUES,
        tensors(),
    )
    return st.one_of(damaged_bytes(_bytes_of("peft.bin")), objects.map(_torch_bytes))


def _peft_config() -> st.SearchStrategy[bytes]:
    text = _bytes_of("peft.config")
    return st.one_of(damaged_bytes(text), mutated_json(json.loads(text)).map(lambda d: json.dumps(d).encode()))


@FUZZ
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@given(data=st.data())
def test_damaged_peft_folders(fmt, data):
    weights = _bytes_of(f"peft.{fmt}")
    config = _bytes_of("peft.config")
    if data.draw(st.booleans(), label="damage the config"):
        config = data.draw(_peft_config(), label="config")
    else:
        weights = data.draw(_peft_weights(fmt), label="weights")
    with _scratch() as folder:
        (folder / "adapter_config.json").write_bytes(config)
        (folder / f"adapter_model.{fmt}").write_bytes(weights)
        out = _settles(lambda: import_peft(folder, task="sst2"), folder)
        if not isinstance(out, CmptError):
            _valid_prompt(out, folder)
            assert out.task == "sst2" and out.training["origin"] == "peft"


@FUZZ
@given(data=st.deferred(lambda: st.one_of(
    damaged_bytes(_bytes_of("su2022")),
    st.one_of(tensors(), JSON_VALUES, st.dictionaries(st.text(max_size=3), tensors(), max_size=2)).map(_torch_bytes),
)))
def test_damaged_su2022_checkpoints(data):
    with _scratch() as folder:
        path = folder / "SST2.pt"
        path.write_bytes(data)
        out = _settles(lambda: import_su2022(path), folder)
        if not isinstance(out, CmptError):
            _valid_prompt(out, folder)
            assert out.task == "sst2" and out.group == "sentiment"
        many = _settles(lambda: import_su2022(folder), folder)  # the folder form: same outcome
        assert isinstance(many, CmptError) == isinstance(out, CmptError)


def _record_bytes() -> st.SearchStrategy[bytes]:
    text = _bytes_of("record")
    return st.one_of(
        damaged_bytes(text),
        mutated_json(json.loads(text)).map(lambda d: json.dumps(d, allow_nan=True).encode()),
        # a mutated record whose hash still matches, so the checks past the hash are reached
        mutated_json(json.loads(text)).map(_rehashed),
    )


def _rehashed(doc: Any) -> bytes:
    if isinstance(doc, dict):
        doc["config"], doc["hash"] = dict(CONFIG), json.loads(_bytes_of("record"))["hash"]
    return json.dumps(doc, allow_nan=True).encode()


@FUZZ
@given(data=st.deferred(_record_bytes))
def test_damaged_results_records(data):
    with _scratch() as folder:
        store = ResultsStore(folder)
        store.path(CONFIG).write_bytes(data)
        got = _settles(lambda: store.get(CONFIG), folder)
        listed = _settles(store.records, folder)
        assert isinstance(got, CmptError) == isinstance(listed, CmptError)
        if isinstance(got, CmptError):
            return
        assert got["status"] in STATUSES and got["config"] == CONFIG and listed == [got]
        # what a sweep does with a record it found: the table, and resuming the run
        table = store.table()
        assert len(table) == (got["status"] == "done")
        record = store.run(CONFIG, lambda c: {"final": {"test_acc": 0.75}})
        assert record["status"] == "done"


MODEL_KEYS = ("prompt", "deep_prompts", "head.weight", "head.bias", "head.extra")


@FUZZ
@pytest.mark.parametrize("saved", ["linear", "vpt", "vpt_deep"])
@given(data=st.data())
def test_damaged_saved_models(saved, data):
    damaged = data.draw(damaged_safetensors(f"model.{saved}", MODEL_KEYS), label="file")
    setting = data.draw(st.sampled_from([None, saved, *SETTINGS]), label="setting")
    with _scratch() as folder:
        path = folder / "m.safetensors"
        path.write_bytes(damaged)
        tensors_ = _settles(lambda: read_trained(path, setting), folder)
        model = _settles(lambda: load_trained(path, _vit(), setting), folder)
        if isinstance(tensors_, CmptError):
            assert isinstance(model, ModelFileError)
        if isinstance(model, CmptError):
            assert isinstance(model, ModelFileError) and "Delete this file" in str(model)
            return
        assert isinstance(model, PromptedClassifier)
        with torch.no_grad():
            logits = model(torch.randn(2, 3, IMAGE, IMAGE))
        # (finite weights may still overflow in a forward, so only the shape is asserted)
        assert logits.shape == (2, tensors_["head.weight"].shape[0])


# ----------------------------------------------------------------------------- the named cases, one by one

def _model_file(folder: Path, content: dict[str, torch.Tensor]) -> Path:
    path = folder / "m.safetensors"
    save_file(content, str(path))
    return path


def _tensors_of(setting: str) -> dict[str, torch.Tensor]:
    return _load_safetensors_bytes(_bytes_of(f"model.{setting}"))


def test_saved_model_round_trip_and_setting_check(tmp_path):
    for setting in ("linear", "vpt", "vpt_deep"):
        path = tmp_path / f"{setting}.safetensors"
        path.write_bytes(_bytes_of(f"model.{setting}"))
        model = load_trained(path, _vit(), setting)
        assert set(read_trained(path)) == set(_tensors_of(setting))
        assert isinstance(model, PromptedClassifier)
    with pytest.raises(ModelFileError, match="a 'vpt_deep' model saves deep_prompts, the file holds prompt"):
        load_trained(tmp_path / "vpt.safetensors", _vit(), "vpt_deep")
    with pytest.raises(ModelFileError, match="a 'frozen' model saves prompt, the file holds none"):
        read_trained(tmp_path / "linear.safetensors", "frozen")


@pytest.mark.parametrize("damage,message", [
    ("missing", "no such file. Run its configuration again"),
    ("truncated", "not a valid safetensors file"),
    ("no head.weight", "no head.weight"),
    ("no head.bias", "no head.bias"),
    ("bias of 4 classes", "not a linear head"),
    ("prompt 24 wide", "prompt \\(2, 24\\) does not fit the head \\(3, 32\\)"),
    ("head and prompt 24 wide", "head and prompt are 24 wide but backbone 'tiny-vit' is 32 wide"),
    ("deep prompts for 3 blocks", "deep prompts are for 3 blocks but backbone 'tiny-vit' has 2"),
    ("NaN head", "head.weight holds NaN"),
    ("int prompt", "prompt is an empty or torch.int64 tensor"),
])
def test_unusable_saved_models_say_to_delete_the_file(tmp_path, damage, message):
    vpt, deep = _tensors_of("vpt"), _tensors_of("vpt_deep")
    content = {
        "no head.weight": {k: v for k, v in vpt.items() if k != "head.weight"},
        "no head.bias": {k: v for k, v in vpt.items() if k != "head.bias"},
        "bias of 4 classes": {**vpt, "head.bias": torch.zeros(4)},
        "prompt 24 wide": {**vpt, "prompt": torch.zeros(2, 24)},
        "head and prompt 24 wide": {"prompt": torch.zeros(2, 24), "head.weight": torch.zeros(3, 24),
                                    "head.bias": torch.zeros(3)},
        "deep prompts for 3 blocks": {**deep, "deep_prompts": torch.zeros(3, 2, 32)},
        "NaN head": {**vpt, "head.weight": torch.full((3, 32), float("nan"))},
        "int prompt": {**vpt, "prompt": torch.ones(2, 32, dtype=torch.long)},
    }.get(damage)
    path = tmp_path / "m.safetensors"
    if content is not None:
        path = _model_file(tmp_path, content)
    elif damage == "truncated":
        path.write_bytes(_bytes_of("model.vpt")[:100])
    with pytest.raises(ModelFileError, match=message) as info:
        load_trained(path, _vit())
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    if damage != "missing":
        assert str(info.value).endswith("Delete this file so the run is trained again.")


def test_hostile_bin_adapter_is_refused_and_not_executed(tmp_path, monkeypatch):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'EVIL_MARKER'}",))

    monkeypatch.chdir(tmp_path)
    folder = export_peft(_prompt(), tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    with open(folder / "adapter_model.bin", "wb") as fh:
        pickle.dump({"prompt_embeddings": Evil()}, fh)
    with pytest.raises(PromptError, match="refusing to unpickle") as info:
        import_peft(folder)
    assert str(folder / "adapter_model.bin") in str(info.value)
    assert not (tmp_path / "EVIL_MARKER").exists()


def test_read_trained_knows_the_settings(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_bytes_of("model.vpt"))
    with pytest.raises(UnknownNameError, match="unknown setting 'vtp'; valid: linear, vpt"):
        read_trained(path, "vtp")
