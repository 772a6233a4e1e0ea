"""Experiments on the smoke profile: source prompts, target runs, caching and resuming."""

import pytest
import torch

from cmpt.backbones import load_vision_backbone
from cmpt.experiments import source_bank
from cmpt.run_config import SourceConfig, TargetConfig
from cmpt.runner import run_target
from cmpt.target_data import prepare_target
from cmpt.sweep import target_sweep
from cmpt.profiles import get_profile
from cmpt.results import ResultsStore

SMOKE = get_profile("smoke")


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("CMPT_RESULTS", str(tmp_path))
    return tmp_path


def test_source_bank_trains_once_and_beats_chance(results):
    bank = source_bank(SMOKE)
    assert set(bank) == set(SMOKE.text_tasks)
    for task, prompt in bank.items():
        assert (prompt.length, prompt.width) == (SMOKE.prompt_length, 32)
        assert prompt.task == task and prompt.training["selection"] == "val"
    store = ResultsStore.for_profile(SMOKE)
    keywords = store.get(SourceConfig.of(SMOKE, "keywords", SMOKE.seeds[0]))["final"]
    assert keywords["test_acc"] > 0.6  # binary task, chance 0.5
    again = source_bank(SMOKE)  # read back from the store, not retrained
    assert all(torch.equal(again[t].tensor, bank[t].tensor) for t in bank)


def test_cached_head_only_training_equals_training_behind_the_backbone(results):
    backbone = load_vision_backbone(SMOKE.vision_backbone, SMOKE.image_size)
    data = prepare_target("dsprites_loc", SMOKE, backbone)
    source = type("P", (), {"tensor": torch.randn(SMOKE.prompt_length, 32)})()
    config = TargetConfig.of(SMOKE, "frozen", "dsprites_loc", seed=3, source="x", lr=0.05)
    cached = run_target(config, backbone, data, source, cache_features=True)
    direct = run_target(config, backbone, data, source, cache_features=False)
    assert cached["final"]["test_acc"] == pytest.approx(direct["final"]["test_acc"], abs=1e-6)
    for a, b in zip(cached["metrics_per_epoch"], direct["metrics_per_epoch"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_interrupted_target_sweep_resumes_without_redoing_runs(results, monkeypatch):
    import cmpt.runner as runner

    configs = [TargetConfig.of(SMOKE, "linear", t, seed=s) for t in SMOKE.image_tasks for s in (1, 2)]
    calls = []
    real = runner.run_target

    def flaky(config, *args, **kwargs):
        calls.append(config.target + str(config.seed))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(config, *args, **kwargs)

    monkeypatch.setattr(runner, "run_target", flaky)
    with pytest.raises(KeyboardInterrupt):
        target_sweep(SMOKE, configs)
    assert len(ResultsStore(results / "smoke").records()) == 2
    table = target_sweep(SMOKE, configs)
    assert len(table) == 4 and len(calls) == 3 + 2  # only the two missing runs ran again


def test_target_vpt_prompts_are_the_baselines_best_vpt_runs(results):
    from cmpt.experiments import target_vpt_prompts, trained_models
    from cmpt.run_config import setting_configs

    profile = SMOKE.replace(seeds=(42, 44))
    chosen = target_vpt_prompts(profile, ["clevr_count"])
    runs = chosen.runs
    assert len(runs) == 2 and runs["chosen"].sum() == 1
    best = runs.loc[runs["val_acc"].idxmax()]
    assert runs.loc[runs["chosen"], "seed"].item() == best.seed
    config = next(c for c in setting_configs(profile, "vpt", ["clevr_count"]) if c.seed == best.seed)
    (run,) = trained_models(profile, [config])
    assert torch.equal(chosen.prompts["clevr_count"].tensor, run.model.prompt_source()["prompt"])
    assert chosen.seconds == pytest.approx(runs["wall_time_s"].sum())


def test_target_config_hash_is_that_of_the_dict_it_replaced():
    from cmpt.results import config_hash

    config = TargetConfig.of(SMOKE, "attention", "clevr_count", seed=42, source="keywords", lr=0.02,
                             concentrated=2)
    legacy = {"kind": "target", "setting": "attention", "target": "clevr_count", "source": "keywords", "seed": 42,
              "vision_backbone": SMOKE.vision_backbone, "text_backbone": SMOKE.text_backbone,
              "image_size": SMOKE.image_size, "layout": SMOKE.prompt_layout, "length": SMOKE.prompt_length,
              "sizes": [SMOKE.n_train, SMOKE.n_val, SMOKE.n_test], "epochs": SMOKE.target_epochs,
              "batch_size": SMOKE.batch_size, "optimizer": "adam", "lr": 0.02, "weight_decay": 0.0,
              "concentrated": 2, "scaled": False, "selection": SMOKE.selection, "source_epochs": SMOKE.source_epochs}
    assert config_hash(config) == config_hash(legacy)
    subset = config.replace(train_subset={"kind": "kshot", "k": 2, "seed": 42})
    assert config_hash(subset) == config_hash({**legacy, "train_subset": {"kind": "kshot", "k": 2, "seed": 42}})
    assert config_hash(config.replace(stage="final")) != config_hash(legacy)
    source = SourceConfig.of(SMOKE, "keywords", 42)
    assert config_hash(source) == config_hash({
        "kind": "source_prompt", "text_backbone": SMOKE.text_backbone, "readout": SMOKE.text_readout,
        "task": "keywords", "length": SMOKE.prompt_length, "epochs": SMOKE.source_epochs, "lr": SMOKE.source_lr,
        "batch_size": SMOKE.source_batch_size, "max_length": SMOKE.text_max_length,
        "sizes": [SMOKE.text_train, SMOKE.text_val, SMOKE.text_test], "seed": 42, "init": "vocab-per-task"})


def test_source_prompts_start_from_their_own_tokens_and_record_how_far_they_moved(results):
    from cmpt.backbones import load_text_backbone
    from cmpt.source_training import TextPromptClassifier, init_seed

    encoder = load_text_backbone(SMOKE.text_backbone, readout=SMOKE.text_readout, max_length=SMOKE.text_max_length)
    starts = {task: TextPromptClassifier(encoder, 4, 2, seed=init_seed(task, 42)).prompt for task in ("a", "b")}
    assert not torch.equal(starts["a"], starts["b"])  # same run seed, other task: another start
    again = TextPromptClassifier(encoder, 4, 2, seed=init_seed("a", 42)).prompt
    assert torch.equal(starts["a"], again) and init_seed("a", 42) != init_seed("a", 44)
    bank = source_bank(SMOKE, encoder=encoder)
    store = ResultsStore.for_profile(SMOKE)
    for task in bank:
        final = store.get(SourceConfig.of(SMOKE, task, SMOKE.seeds[0]))["final"]
        assert final["moved"] > 0 and final["moved"] == pytest.approx(bank[task].training["moved"])


def test_spt_starts_from_patch_embeddings_of_exactly_the_training_images_and_trains_prompt_and_head(results):
    from cmpt.runner import build_classifier
    from cmpt.spt import prototypes

    backbone = load_vision_backbone(SMOKE.vision_backbone, SMOKE.image_size)
    data = prepare_target("clevr_count", SMOKE, backbone)
    config = TargetConfig.of(SMOKE, "spt", "clevr_count", seed=5, lr=0.1)
    patches = data.patch_embeddings("train")  # before the position embedding, as the SPT authors build it
    tokens = data.split("train")[0]  # after it (embedding-layer output, CLS first)
    assert patches.shape == (tokens.shape[0], tokens.shape[1] - 1, backbone.width)
    assert not torch.allclose(patches, tokens[:, 1:])
    model = build_classifier(config, backbone, data.task.num_classes, None, train_patches=patches)
    prompt = model.prompt_source()["prompt"].detach()
    assert torch.equal(prompt, prototypes(patches, SMOKE.prompt_length, "sample", seed=5))
    flat = patches.reshape(-1, backbone.width)
    assert all((flat == token).all(dim=1).any() for token in prompt)  # each token is one training patch
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_source.prompt", "head.weight", "head.bias"}
    record = run_target(config, backbone, data, None)
    assert 0.0 <= record["final"]["test_acc"] <= 1.0
    assert record["final"]["prompt_moved"]["relative"] > 0  # the prompt trained


def test_spt_kmeans_variant_starts_from_centres_of_the_embedded_training_tokens(results):
    from cmpt.runner import build_classifier
    from cmpt.spt import prototypes

    backbone = load_vision_backbone(SMOKE.vision_backbone, SMOKE.image_size)
    data = prepare_target("clevr_count", SMOKE, backbone)
    config = TargetConfig.of(SMOKE, "spt_kmeans", "clevr_count", seed=5, lr=0.1)
    tokens = data.split("train")[0]
    model = build_classifier(config, backbone, data.task.num_classes, None, train_tokens=tokens)
    expected = prototypes(tokens[:, 1:], SMOKE.prompt_length, "kmeans", seed=5)
    assert torch.equal(model.prompt_source()["prompt"].detach(), expected)


def test_text_linear_probe_is_sklearn_on_the_frozen_features_chosen_on_val():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cmpt.backbones import load_text_backbone
    from cmpt.data import load_text_task
    from cmpt.errors import InputError
    from cmpt.source_training import text_features, text_linear_probe

    encoder = load_text_backbone(SMOKE.text_backbone, max_length=SMOKE.text_max_length)
    task = load_text_task("keywords", SMOKE)
    probe = text_linear_probe(encoder, task, strengths=(0.01, 1.0))
    assert probe["C"] in (0.01, 1.0) and 0.0 <= probe["val_acc"] <= 1.0
    feats = {n: text_features(encoder, task.split(n)[0]).numpy() for n in ("train", "test")}
    assert feats["train"].shape == (len(task.train_texts), encoder.width)
    again = make_pipeline(StandardScaler(), LogisticRegression(C=probe["C"], max_iter=2000, random_state=0))
    again.fit(feats["train"], task.train_labels)
    assert probe["test_acc"] == pytest.approx(again.score(feats["test"], task.test_labels))
    with pytest.raises(InputError):
        text_linear_probe(encoder, task, strengths=())
