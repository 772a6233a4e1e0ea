import json
import os
import pickle

import pytest
import torch

from cmpt.prompts import (Prompt, PromptError, check_width, export_peft, import_peft, import_su2022, load_prompt,
                          save_prompt)


def test_save_load_round_trip_is_exact(tmp_path):
    tensor = torch.randn(7, 24, dtype=torch.float32)
    prompt = Prompt(tensor, source_backbone="tiny-bert", task="keywords", group="smoke", layout="prepend",
                    training={"val_accuracy": 0.91, "epochs": 3})
    path = save_prompt(prompt, tmp_path / "p.safetensors")
    back = load_prompt(path)
    assert torch.equal(back.tensor, tensor)
    assert back.metadata() == prompt.metadata()
    assert back.metadata()["length"] == 7 and back.metadata()["width"] == 24


@pytest.mark.parametrize("bad,message", [
    (torch.randn(2, 3, 4), "non-empty \\[length, width\\]"),
    (torch.zeros(0, 8), "non-empty"),
    (torch.ones(3, 4, dtype=torch.long), "must hold floats"),
    (torch.tensor([[float("nan"), 1.0]]), "NaN"),
])
def test_malformed_prompts_are_refused(bad, message):
    with pytest.raises(PromptError, match=message):
        Prompt(bad)


def test_width_check_says_what_to_do():
    with pytest.raises(PromptError, match="prompt width 768 does not fit backbone 'dinov2-s14' \\(width 384\\).*projection"):
        check_width(Prompt(torch.zeros(2, 768)), 384, "dinov2-s14")
    check_width(Prompt(torch.zeros(2, 384)), 384, "dinov2-s14")


def test_published_prompts_import(su2022_dir):
    prompts = import_su2022(su2022_dir)
    assert len(prompts) == 13
    for p in prompts.values():
        assert (p.length, p.width) == (100, 768) and p.source_backbone == "roberta-base"
    norms = {t: p.tensor.norm(dim=1).mean().item() for t, p in prompts.items()}
    assert norms["mnli"] == pytest.approx(32.5, abs=0.1)
    assert norms["movierationales"] == pytest.approx(1.1, abs=0.1)
    assert 25 < max(norms.values()) / min(norms.values()) < 35
    assert prompts["qqp"].group == "paraphrase"


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch EVIL_MARKER",))


def test_hostile_pickle_is_refused_and_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"prompt": _Evil()}, f)
    with pytest.raises(PromptError, match="refusing to unpickle"):
        import_su2022(path)
    assert not (tmp_path / "EVIL_MARKER").exists()


def test_corrupt_and_non_tensor_checkpoints_are_refused(tmp_path):
    truncated = tmp_path / "cut.pt"
    torch.save(torch.randn(4, 8), truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(PromptError, match="could not be read|not a plain tensor"):
        import_su2022(truncated)
    listy = tmp_path / "list.pt"
    torch.save([1, 2, 3], listy)
    with pytest.raises(PromptError, match="holds a list"):
        import_su2022(listy)
    garbage = tmp_path / "x.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(PromptError, match="not a valid safetensors"):
        load_prompt(garbage)


def test_peft_round_trip(tmp_path):
    prompt = Prompt(torch.randn(5, 16), source_backbone="roberta-base", task="sst2")
    folder = export_peft(prompt, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 5 and config["token_dim"] == 16
    back = import_peft(folder, task="sst2")
    assert torch.equal(back.tensor, prompt.tensor) and back.source_backbone == "roberta-base"
    config["peft_type"] = "LORA"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(PromptError, match="not PROMPT_TUNING"):
        import_peft(folder)


# ----------------------------------------------------------------------------- damaged files name the file

def _raw_prompt_file(path, tensor, meta_text):
    from safetensors.torch import save_file

    save_file({"prompt": tensor}, str(path), metadata=None if meta_text is None else {"cmpt_prompt": meta_text})
    return path


def test_truncated_prompt_file_is_refused_with_its_path(tmp_path):
    path = save_prompt(Prompt(torch.randn(4, 8)), tmp_path / "p.safetensors")
    data = path.read_bytes()
    for cut in (0, 7, 20, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(PromptError, match=f"{path}.*not a valid safetensors"):
            load_prompt(path)


def test_metadata_that_disagrees_with_the_tensor_is_refused(tmp_path):
    meta = Prompt(torch.zeros(50, 512)).metadata()
    path = _raw_prompt_file(tmp_path / "p.safetensors", torch.randn(100, 768), json.dumps(meta))
    with pytest.raises(PromptError, match=f"{path}: its metadata says length 50 but the tensor is 100 x 768"):
        load_prompt(path)
    meta["length"] = 100
    _raw_prompt_file(path, torch.randn(100, 768), json.dumps(meta))
    with pytest.raises(PromptError, match="says width 512 but the tensor is 100 x 768"):
        load_prompt(path)
    meta["width"] = 768
    _raw_prompt_file(path, torch.randn(100, 768), json.dumps(meta))
    assert load_prompt(path).width == 768


@pytest.mark.parametrize("meta_text,message", [
    ('{"task": "sst2", "length": 4', "cmpt_prompt metadata is not valid JSON"),
    ("[1, 2]", "metadata is a list, not an object"),
    ('{"task": 7}', "task must be a string"),
    ('{"training": "fast"}', "training summary must be a dict"),
    ('{"format_version": 99}', "format version 99 is not one this cmpt reads"),
])
def test_broken_metadata_is_refused_with_its_path(tmp_path, meta_text, message):
    path = _raw_prompt_file(tmp_path / "p.safetensors", torch.randn(4, 8), meta_text)
    with pytest.raises(PromptError, match=message) as info:
        load_prompt(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("tensor,message", [
    (torch.randn(2, 3, 4), "non-empty \\[length, width\\]"),
    (torch.ones(3, 4, dtype=torch.int32), "must hold floats"),
    (torch.tensor([[1.0, float("inf")]]), "NaN or infinite"),
    (torch.full((2, 2), 1e300, dtype=torch.float64), "NaN or infinite"),  # overflows float32
])
def test_a_file_with_a_bad_tensor_is_refused_with_its_path(tmp_path, tensor, message):
    path = _raw_prompt_file(tmp_path / "p.safetensors", tensor, None)
    with pytest.raises(PromptError, match=message) as info:
        load_prompt(path)
    assert str(path) in str(info.value)


def _peft_folder(tmp_path, length=5, width=16):
    return export_peft(Prompt(torch.randn(length, width), source_backbone="roberta-base"), tmp_path / "adapter")


def _edit_config(folder, **changes):
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))


def test_peft_token_dim_must_match_the_tensor(tmp_path):
    folder = _peft_folder(tmp_path, length=4, width=768)
    _edit_config(folder, token_dim=512)
    expected = f"{folder}: the prompt is 768 wide but adapter_config.json says token_dim 512"
    with pytest.raises(PromptError, match=expected):
        import_peft(folder)


def test_peft_token_count_must_match_the_tensor(tmp_path):
    folder = _peft_folder(tmp_path)
    _edit_config(folder, num_virtual_tokens=6)
    with pytest.raises(PromptError, match="the prompt has 5 tokens but adapter_config.json says 6"):
        import_peft(folder)
    _edit_config(folder, num_virtual_tokens="5")
    with pytest.raises(PromptError, match="num_virtual_tokens is '5', not a positive integer"):
        import_peft(folder)


def test_broken_peft_config_is_refused_with_its_path(tmp_path):
    folder = _peft_folder(tmp_path)
    config_path = folder / "adapter_config.json"
    text = config_path.read_text()
    config_path.write_text(text[: len(text) // 2])
    with pytest.raises(PromptError, match=f"{config_path} is not valid JSON"):
        import_peft(folder)
    config_path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(PromptError, match="is not valid JSON"):
        import_peft(folder)
    config_path.write_text("[1, 2, 3]")
    with pytest.raises(PromptError, match="holds a JSON list, not an object"):
        import_peft(folder)


def test_truncated_peft_safetensors_is_refused_with_its_path(tmp_path):
    folder = _peft_folder(tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:60])
    with pytest.raises(PromptError, match=f"{weights} is not a valid safetensors file"):
        import_peft(folder)


def test_peft_bin_adapters_import_and_are_checked(tmp_path):
    folder = _peft_folder(tmp_path)
    tensor = import_peft(folder).tensor
    (folder / "adapter_model.safetensors").unlink()
    torch.save({"prompt_embeddings": tensor}, folder / "adapter_model.bin")
    assert torch.equal(import_peft(folder).tensor, tensor)
    for obj, message in [(tensor, "holds a Tensor, not a dict of tensors"),
                         ({"prompt_embeddings": tensor.tolist()}, "a prompt must be a torch.Tensor, got list"),
                         ({"other": tensor}, "holds no 'prompt_embeddings' \\(keys: 'other'\\)")]:
        torch.save(obj, folder / "adapter_model.bin")
        with pytest.raises(PromptError, match=message) as info:
            import_peft(folder)
        assert str(folder) in str(info.value)
    (folder / "adapter_model.bin").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PromptError, match="could not be read as a torch checkpoint"):
        import_peft(folder)


def test_su2022_refusals_name_the_file(tmp_path):
    path = tmp_path / "SST2.pt"
    torch.save(torch.zeros(3, 4, 5), path)
    with pytest.raises(PromptError, match=f"{path}: a prompt must be a non-empty"):
        import_su2022(path)
    with pytest.raises(PromptError, match="no checkpoint file at"):
        import_su2022(tmp_path / "missing.pt")
