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
