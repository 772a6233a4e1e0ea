"""TargetData: cached and streamed splits give the same runs; memory stays within the budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cmpt.backbones import load_vision_backbone
from cmpt.data import load_image_task, to_tensor
from cmpt.errors import InputError
from cmpt.features import embed_tokens
from cmpt.profiles import PAPER, SMOKE
from cmpt.target_data import DEFAULT_CACHE_BYTES, TargetData, prepare_target
from cmpt.train import TrainConfig, fit
from cmpt.settings import HEAD_ONLY, make_prompt_source
from cmpt.transfer import PromptedClassifier

LENGTH = 4


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CMPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def vit():
    return load_vision_backbone("tiny-vit", SMOKE.image_size)


def _run(setting: str, data: TargetData, backbone, seed: int = 3, epochs: int = 3, keep=None,
         source: torch.Tensor | None = None):
    """One target run the way cmpt.experiments.run_target does it, on ``data``'s splits."""
    torch.manual_seed(seed)
    prompt_source = make_prompt_source(setting, backbone, LENGTH, source_prompt=source, reference_norm=2.0, seed=seed)
    model = PromptedClassifier(backbone, prompt_source, data.task.num_classes)
    cfg = TrainConfig(base_lr=0.4 if setting in HEAD_ONLY else 0.1, batch_size=16, epochs=epochs, warmup_epochs=1,
                      seed=seed, device="cpu")
    if setting in HEAD_ONLY:
        splits = data.head_splits(backbone, prompt_source().get("prompt"), "cpu", keep=keep, seed=seed, batch_size=16)
        return fit(model.head, *splits, cfg), splits
    splits = data.splits(keep=keep, seed=seed, batch_size=16)
    return fit(model, *splits, cfg), splits


def test_default_sized_splits_are_cached_with_the_tokens_of_before(vit, tmp_cache):
    data = prepare_target("dsprites_loc", SMOKE, vit, device="cpu")
    assert set(data.tokens) == {"train", "val", "test"} and not data.streamed
    assert data.cached_bytes <= DEFAULT_CACHE_BYTES
    task = load_image_task("dsprites_loc", SMOKE)
    for split in ("train", "val", "test"):
        images, labels = task.split(split)
        before = embed_tokens(vit, to_tensor(images, vit.preprocess))  # the whole split at once, as before
        assert torch.equal(data.tokens[split], before)
        tokens, y = data.split(split)
        assert tokens is data.tokens[split] and torch.equal(y, torch.as_tensor(labels))


@pytest.mark.parametrize("setting", ["linear", "frozen", "vpt"])
def test_cached_and_streamed_runs_agree(setting, vit, tmp_cache):
    cached = prepare_target("dsprites_loc", SMOKE, vit, device="cpu")
    streamed = prepare_target("dsprites_loc", SMOKE, vit, device="cpu", cache_bytes=0)
    assert not streamed.tokens and streamed.streamed == {"train", "val", "test"}
    source = torch.randn(LENGTH, vit.width, generator=torch.Generator().manual_seed(1)) if setting == "frozen" else None
    keep = np.arange(0, 64, 2)  # a training subset: every other image of the train split
    for subset in (None, keep):
        a, splits_a = _run(setting, cached, vit, keep=subset, source=source)
        b, splits_b = _run(setting, streamed, vit, keep=subset, source=source)
        assert all(isinstance(s, tuple) for s in splits_a) and all(isinstance(s, DataLoader) for s in splits_b)
        assert a.final["test_acc"] == pytest.approx(b.final["test_acc"], abs=1e-9)
        assert a.final["val_acc"] == pytest.approx(b.final["val_acc"], abs=1e-9)
        assert a.final["best_epoch"] == b.final["best_epoch"]
        for row_a, row_b in zip(a.history, b.history):
            assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], rel=1e-5)
            assert row_a["train_acc"] == pytest.approx(row_b["train_acc"], abs=1e-9)
        for name, value in a.state.items():
            torch.testing.assert_close(value, b.state[name], rtol=1e-4, atol=1e-5)


def test_streamed_training_split_is_shuffled_as_fit_shuffles_tensors(vit, tmp_cache):
    cached = prepare_target("clevr_count", SMOKE, vit, device="cpu")
    streamed = prepare_target("clevr_count", SMOKE, vit, device="cpu", cache_bytes=0)
    tokens, labels = cached.split("train")
    loader = streamed.split("train", shuffle_seed=7, batch_size=24)
    generator = torch.Generator().manual_seed(7)  # what fit does with a tensor split
    for _epoch in range(2):
        order = torch.randperm(len(labels), generator=generator)
        got = list(loader)
        assert [len(y) for _, y in got] == [24, 24, 16]
        torch.testing.assert_close(torch.cat([x for x, _ in got]), tokens[order])
        assert torch.equal(torch.cat([y for _, y in got]), labels[order])


def test_budget_keeps_the_training_split_and_streams_the_rest(vit, tmp_cache):
    data = prepare_target("dsprites_loc", SMOKE, vit, device="cpu", cache_bytes=0)
    per_image = data.token_bytes(1)
    assert per_image == (1 + vit.num_patches) * vit.width * 4
    budget = per_image * 64 + 64 * vit.width * 4  # train tokens, plus train features for one prompt
    tight = prepare_target("dsprites_loc", SMOKE, vit, device="cpu", cache_bytes=budget)
    assert set(tight.tokens) == {"train"} and tight.streamed == {"val", "test"}
    feats = tight.head_features(vit, None, "cpu")
    assert isinstance(feats[0], torch.Tensor) and all(isinstance(f, DataLoader) for f in feats[1:])
    assert tight.cached_bytes <= budget
    prompt = torch.randn(LENGTH, vit.width)
    tight.head_features(vit, prompt, "cpu")  # a second prompt: the first one's features make room
    assert len(tight.features) == 1 and tight.cached_bytes <= budget
    streamed_test = torch.cat([f for f, _ in tight.head_features(vit, prompt, "cpu")[2]])
    full = prepare_target("dsprites_loc", SMOKE, vit, device="cpu").head_features(vit, prompt, "cpu")[2]
    torch.testing.assert_close(streamed_test, full, rtol=1e-5, atol=1e-6)


def test_trainval_is_prepared_on_first_use(vit, tmp_cache):
    data = prepare_target("dsprites_loc", SMOKE, vit, device="cpu")
    assert "trainval" not in data.tokens
    tokens, labels = data.split("trainval")
    assert torch.equal(tokens, torch.cat([data.tokens["train"], data.tokens["val"]]))
    assert torch.equal(labels, torch.cat([data.labels["train"], data.labels["val"]]))


def test_precomputed_tokens_stay_usable_without_a_backbone(vit):
    gen = torch.Generator().manual_seed(0)
    tokens = {s: vit.embed(torch.randn(6, 3, 32, 32, generator=gen)).detach() for s in ("train", "val", "test")}
    labels = {s: torch.arange(6) % 2 for s in tokens}
    data = TargetData(type("T", (), {"num_classes": 2, "name": "t"})(), tokens, labels)  # type: ignore[arg-type]
    assert data.split("val")[0] is tokens["val"]
    assert [f.shape for f in data.head_features(vit, None)] == [(6, vit.width)] * 3
    with pytest.raises(InputError, match="prepare_target"):
        data.split("trainval")


def test_vtab_target_streams_its_test_split_from_disk(vit, tmp_path, tmp_cache, monkeypatch):
    from PIL import Image

    import cmpt.data.task as task_module

    root = tmp_path / "vtab"
    folder = root / "dsprites_loc"
    (folder / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lists = {"train800.txt": 16, "val200.txt": 8, "test.txt": 40}
    lines = {}
    for name, n in lists.items():
        lines[name] = []
        for i in range(n):
            rel = f"images/{name[:-4]}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / rel)
            lines[name].append(f"{rel} {i % 16}")
    lines["train800val200.txt"] = lines["train800.txt"] + lines["val200.txt"]
    for name, entries in lines.items():
        (folder / name).write_text("\n".join(entries) + "\n")
    profile = PAPER.replace(image_size=SMOKE.image_size, n_train=16, n_val=8, n_test=40)
    reads = []
    real = task_module.read_image
    monkeypatch.setattr(task_module, "read_image", lambda path: reads.append(path) or real(path))
    budget = (16 + 8) * (1 + vit.num_patches) * vit.width * 4  # train and val tokens
    data = prepare_target("dsprites_loc", profile, vit, device="cpu", cache_bytes=budget, vtab_root=str(root))
    assert set(data.tokens) == {"train", "val"} and data.streamed == {"test"}
    assert len(reads) == 16 + 8  # the test images are not read yet
    result, splits = _run("vpt", data, vit, epochs=1)
    assert isinstance(splits[2], DataLoader) and len(reads) == 16 + 8 + 40
    reference = prepare_target("dsprites_loc", profile, vit, device="cpu", vtab_root=str(root))
    assert set(reference.tokens) == {"train", "val", "test"}
    assert result.final["test_acc"] == pytest.approx(_run("vpt", reference, vit, epochs=1)[0].final["test_acc"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_embedding_and_streams_run_on_the_given_device(tmp_cache):
    vit = load_vision_backbone("tiny-vit", SMOKE.image_size)
    data = prepare_target("dsprites_loc", SMOKE, vit, device="cuda", cache_bytes=data_budget(vit))
    assert next(vit.parameters()).device.type == "cuda"
    assert data.tokens["train"].device.type == "cpu" and data.streamed == {"val", "test"}
    tokens, _ = next(iter(data.split("test")))
    assert tokens.device.type == "cuda"
    cpu = prepare_target("dsprites_loc", SMOKE, load_vision_backbone("tiny-vit", SMOKE.image_size), device="cpu")
    torch.testing.assert_close(data.tokens["train"], cpu.tokens["train"], rtol=1e-4, atol=1e-4)


def data_budget(vit) -> int:
    return 64 * (1 + vit.num_patches) * vit.width * 4  # the smoke train split's tokens
