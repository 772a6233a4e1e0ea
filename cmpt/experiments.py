"""The experiments the chapters run, as functions of a profile, through the results store.

Data flows one way: profile -> backbones and tasks -> runs (each a config dict hashed into
the :class:`~cmpt.results.ResultsStore`) -> tables for the chapters. Every run is skipped
when its record exists, so chapters share work (the transfer chapter reuses the baselines'
linear-probe runs) and an interrupted build resumes.

Beside each target run's record, :func:`target_sweep` keeps what the trained model's forward
depends on — the prompt it feeds the backbone and the head (``models/<hash>.safetensors``, a
few tens of KB at the default profile) — so a later chapter can inspect a trained model
(:func:`load_trained`) without training it again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cmpt.assets import cache_dir
from cmpt.atomic import write_atomic
from cmpt.backbones import PromptedTextEncoder, PromptedViT, load_text_backbone, load_vision_backbone
from cmpt.data import ImageTask, fraction_indices, kshot_indices, load_image_task, load_text_task, to_tensor
from cmpt.features import cls_features, embed_tokens
from cmpt.profiles import Profile
from cmpt.prompts import Prompt, load_prompt, save_prompt
from cmpt.results import ResultsStore, config_hash, sweep
from cmpt.source_training import train_source_prompt
from cmpt.train import TrainConfig, fit, resolve_device
from cmpt.model_files import SavedPrompt, load_trained, save_trained
from cmpt.transfer import HEAD_ONLY, PromptedClassifier, make_prompt_source

__all__ = ["SETTING_HPARAMS", "SavedPrompt", "TargetData", "TargetRunner", "build_classifier",
           "load_trained", "prepare_target", "reference_norm", "results_store", "run_target",
           "save_trained", "setting_configs", "source_bank", "source_config", "subset_indices", "target_config",
           "target_sweep"]

def results_store(cfg: Profile) -> ResultsStore:
    """The store of ``cfg`` (see :func:`cmpt.results.results_root` for where it lives)."""
    return ResultsStore.for_profile(cfg)


# ----------------------------------------------------------------------------- source prompts

def source_config(cfg: Profile, task: str, seed: int) -> dict[str, Any]:
    """Everything that determines a tuned source prompt."""
    return {"kind": "source_prompt", "text_backbone": cfg.text_backbone, "readout": cfg.text_readout,
            "task": task, "length": cfg.prompt_length,
            "epochs": cfg.source_epochs, "lr": cfg.source_lr, "batch_size": cfg.source_batch_size,
            "max_length": cfg.text_max_length, "sizes": [cfg.text_train, cfg.text_val, cfg.text_test], "seed": seed}


def source_bank(cfg: Profile, seed: int | None = None, encoder: PromptedTextEncoder | None = None) -> dict[str, Prompt]:
    """One tuned prompt per source task of ``cfg`` (trained once, then read from the store)."""
    seed = cfg.seeds[0] if seed is None else seed
    store = results_store(cfg)
    state: dict[str, Any] = {"encoder": encoder}

    def train(config: dict[str, Any]) -> dict[str, Any]:
        if state["encoder"] is None:
            state["encoder"] = load_text_backbone(cfg.text_backbone, readout=cfg.text_readout,
                                                  max_length=cfg.text_max_length)
        task = load_text_task(config["task"], cfg)
        prompt, result = train_source_prompt(state["encoder"], task, cfg.prompt_length, cfg.source_epochs,
                                             cfg.source_lr, cfg.source_batch_size, seed, cfg.text_backbone,
                                             device=cfg.device)
        path = save_prompt(prompt, store.prompt_path(config, f"{config['task']}-{seed}"))
        record = result.to_record()
        record["final"]["prompt_file"] = store.relative(path)
        record["final"]["group"] = task.group
        return record

    configs = [source_config(cfg, task, seed) for task in cfg.text_tasks]
    sweep(store, configs, train, desc="source prompts")
    return {c["task"]: load_prompt(store.resolve(store.get(c)["final"]["prompt_file"])) for c in configs}


# ----------------------------------------------------------------------------- target side

@dataclass
class TargetData:
    """A target task's embedded tokens and labels per split (the prompt never changes them)."""

    task: ImageTask
    tokens: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    #: CLS features per (backbone, fixed prompt), the last few kept, so head-only runs on training
    #: subsets go through the backbone once
    features: dict[tuple, list[torch.Tensor]] = field(default_factory=dict, repr=False)
    keep_features: int = field(default=4, repr=False)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[name], self.labels[name]

    def head_features(self, backbone: PromptedViT, prompt: torch.Tensor | None,
                      device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """Final-norm CLS features of the train, val and test splits behind a fixed ``prompt`` (cached)."""
        digest = None
        if prompt is not None:
            values = prompt.detach().cpu().float().contiguous().numpy()
            digest = hashlib.sha256(values.tobytes() + str(values.shape).encode()).hexdigest()
        key = (id(backbone), backbone.layout, digest)
        if key not in self.features:
            while len(self.features) >= self.keep_features:
                self.features.pop(next(iter(self.features)))  # the oldest
            self.features[key] = [cls_features(backbone, self.tokens[s], prompt, device=device)
                                  for s in ("train", "val", "test")]
        return self.features[key]


def prepare_target(name: str, cfg: Profile, backbone: PromptedViT) -> TargetData:
    task = load_image_task(name, cfg)
    tokens, labels = {}, {}
    for split in ("train", "val", "test"):
        images, y = task.split(split)
        tokens[split] = embed_tokens(backbone, to_tensor(images, backbone.preprocess))
        labels[split] = torch.as_tensor(y, dtype=torch.long)
    return TargetData(task, tokens, labels)


def target_config(cfg: Profile, setting: str, target: str, seed: int, source: str | None = None,
                  lr: float = 0.005, weight_decay: float = 0.0, epochs: int | None = None,
                  concentrated: int | None = None, optimizer: str = "adam", scaled: bool = False,
                  train_subset: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything that determines one target-side run.

    ``train_subset`` (e.g. ``{"kind": "kshot", "k": 4, "seed": 42}`` or ``{"kind": "fraction",
    "fraction": 0.25, "seed": 42}``) trains on that fixed subset of the train split (see
    :func:`subset_indices`); validation and test stay whole. Without it the config has no
    ``train_subset`` key, so full-data configs (and their stored hashes) are unchanged.
    """
    config = _target_config(cfg, setting, target, seed, source, lr, weight_decay, epochs, concentrated,
                            optimizer, scaled)
    if train_subset is not None:
        config["train_subset"] = _check_subset(train_subset)
    return config


def _check_subset(spec: Mapping[str, Any]) -> dict[str, Any]:
    kinds = {"kshot": "k", "fraction": "fraction"}
    if spec.get("kind") not in kinds or set(spec) != {"kind", kinds[spec["kind"]], "seed"}:
        raise ValueError(f"train_subset must be {{'kind': 'kshot', 'k', 'seed'}} or "
                         f"{{'kind': 'fraction', 'fraction', 'seed'}}, got {dict(spec)!r}")
    return dict(spec)


def subset_indices(task: ImageTask, spec: Mapping[str, Any], sizes: list[int] | tuple[int, ...]) -> np.ndarray:
    """Pool indices of the training subset ``spec`` of ``task`` (saved; nested across k / fraction).

    ``sizes`` are the requested (train, val, test) sizes of the run; they name the saved file.
    """
    spec = _check_subset(spec)
    key = f"image-{task.name}-{'-'.join(str(int(n)) for n in sizes)}"
    if spec["kind"] == "kshot":
        return kshot_indices(task.labels, task.splits["train"], int(spec["k"]), int(spec["seed"]), task=key)
    return fraction_indices(task.labels, task.splits["train"], float(spec["fraction"]), int(spec["seed"]), task=key)


def _target_config(cfg: Profile, setting: str, target: str, seed: int, source: str | None, lr: float,
                   weight_decay: float, epochs: int | None, concentrated: int | None, optimizer: str,
                   scaled: bool) -> dict[str, Any]:
    return {"kind": "target", "setting": setting, "target": target, "source": source, "seed": seed,
            "vision_backbone": cfg.vision_backbone, "text_backbone": cfg.text_backbone if source else None,
            "image_size": cfg.image_size, "layout": cfg.prompt_layout, "length": cfg.prompt_length,
            "sizes": [cfg.n_train, cfg.n_val, cfg.n_test],
            "epochs": epochs or (cfg.head_epochs if setting in HEAD_ONLY else cfg.target_epochs),
            "batch_size": cfg.batch_size, "optimizer": optimizer, "lr": lr, "weight_decay": weight_decay,
            "concentrated": concentrated, "scaled": scaled, "selection": cfg.selection, "source_epochs": cfg.source_epochs if source else None}


def _train_config(config: dict[str, Any], device: str) -> TrainConfig:
    return TrainConfig(optimizer=config["optimizer"], base_lr=config["lr"], weight_decay=config["weight_decay"],
                       batch_size=config["batch_size"], epochs=config["epochs"],
                       warmup_epochs=max(1, config["epochs"] // 10), seed=config["seed"],
                       selection=config["selection"], device=device)


def build_classifier(config: Mapping[str, Any], backbone: PromptedViT, num_classes: int, source: Prompt | None,
                     reference_norm: float = 1.0) -> PromptedClassifier:
    """The untrained model of ``config`` (seeded by its seed, so frozen parts are reproducible)."""
    torch.manual_seed(config["seed"])
    prompt_source = make_prompt_source(config["setting"], backbone, config["length"],
                                       source=None if source is None else source.tensor,
                                       concentrated=config.get("concentrated"), scaled=config.get("scaled", False),
                                       reference_norm=reference_norm,
                                       seed=config["seed"])
    return PromptedClassifier(backbone, prompt_source, num_classes)


def run_target(config: dict[str, Any], backbone: PromptedViT, data: TargetData, source: Prompt | None,
               reference_norm: float = 1.0, device: str = "auto", cache_features: bool = True,
               return_model: bool = False) -> dict[str, Any] | tuple[dict[str, Any], PromptedClassifier]:
    """Train one setting on one target; head-only settings train on cached CLS features.

    With ``config["train_subset"]`` the train split is cut to that subset (its size is recorded
    as ``n_train``). With ``return_model`` the trained :class:`PromptedClassifier` (holding the
    selected epoch's state) is returned too, as ``(record, model)``.
    """
    model = build_classifier(config, backbone, data.task.num_classes, source, reference_norm)
    prompt_source = model.source
    train_cfg = _train_config(config, device)
    keep = None
    if config.get("train_subset") is not None:
        chosen = subset_indices(data.task, config["train_subset"], config["sizes"])
        keep = torch.as_tensor(np.flatnonzero(np.isin(data.task.splits["train"], chosen)), dtype=torch.long)
    labels = [data.labels[s] for s in ("train", "val", "test")]
    if cache_features and config["setting"] in HEAD_ONLY:
        inputs = data.head_features(backbone, prompt_source().get("prompt"), resolve_device(device))
        trained = model.head
    else:
        inputs = [data.tokens[s] for s in ("train", "val", "test")]
        trained = model
    splits = list(zip(inputs, labels))
    if keep is not None:
        splits[0] = (inputs[0][keep], labels[0][keep])
    result = fit(trained, *splits, train_cfg)
    record = result.to_record()
    if keep is not None:
        record["final"]["n_train"] = len(keep)
    if config["setting"] == "attention":
        record["final"]["query_attention"] = prompt_source.attention().detach().cpu().tolist()  # type: ignore[operator]
    return (record, model) if return_model else record


def reference_norm(prompts: Mapping[str, Prompt]) -> float:
    """Mean token norm over a bank of prompts: the random reference prompt's norm (1 if none)."""
    norms = [p.tensor.norm(dim=1).mean().item() for p in prompts.values()]
    return sum(norms) / len(norms) if norms else 1.0


class TargetRunner:
    """The run function of target configs of one profile: ``runner(config) -> record``.

    Loads the vision backbone and each target's embedded data once, on first use, and keeps
    them for the configs that follow (one sweep, or every task a Ray worker process runs).
    With ``save_models`` each run's trained prompt and head go to :meth:`~cmpt.results.ResultsStore.model_path`.
    """

    def __init__(self, cfg: Profile, store: ResultsStore, prompts: Mapping[str, Prompt] | None = None,
                 norm: float | None = None, save_models: bool = True) -> None:
        self.cfg, self.store, self.save_models = cfg, store, save_models
        self.prompts = dict(prompts or {})
        self.norm = reference_norm(self.prompts) if norm is None else norm
        self.backbone: PromptedViT | None = None
        self.data: dict[str, TargetData] = {}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        if self.backbone is None:
            self.backbone = load_vision_backbone(cfg.vision_backbone, cfg.image_size, layout=cfg.prompt_layout,
                                                 mean=cfg.image_mean, std=cfg.image_std)
        if config["target"] not in self.data:
            self.data[config["target"]] = prepare_target(config["target"], cfg, self.backbone)
        source = None
        if config["source"]:
            if config["source"] not in self.prompts:
                raise KeyError(f"no source prompt {config['source']!r} given; have {', '.join(self.prompts) or 'none'}")
            source = self.prompts[config["source"]]
        record, model = run_target(config, self.backbone, self.data[config["target"]], source,
                                   reference_norm=self.norm, device=cfg.device, return_model=True)
        if self.save_models:
            save_trained(model, self.store.model_path(config))
        return record


def target_sweep(cfg: Profile, configs: list[dict[str, Any]], prompts: dict[str, Prompt] | None = None,
                 desc: str = "target runs", save_models: bool = True, executor: str = "local",
                 **options: Any) -> pd.DataFrame:
    """Run every missing config (loading backbone and targets lazily) and return their table.

    With ``save_models`` each new run's trained prompt and head go to :meth:`~cmpt.results.ResultsStore.model_path`.
    ``executor`` is ``"local"`` (in this process) or ``"ray"`` (one Ray task per run, see
    :mod:`cmpt.sweep`); ``options`` (``retries``, ``on_error``, ``address``, ``num_cpus``,
    ``num_gpus``) go to :func:`cmpt.sweep.run_sweep`. The table's ``attrs["sweep"]`` counts
    what ran.
    """
    from cmpt.sweep import run_sweep, target_job

    store = results_store(cfg)
    if executor == "local":
        fn: Any = TargetRunner(cfg, store, prompts, save_models=save_models)
    else:
        fn = target_job(cfg, store, prompts or {}, save_models=save_models)
    return run_sweep(store, configs, fn, executor=executor, desc=desc, **options)


#: optimiser, base learning rate (scaled by batch/256) and weight decay per setting. Head-only
#: settings train a linear head on LayerNorm-ed features and take a larger rate; projection
#: transfer uses the paper's Adam, wd 1e-3 (lr 0.005 at batch 64 after scaling).
SETTING_HPARAMS: dict[str, dict[str, Any]] = {
    "linear": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "frozen": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "random": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "vpt": {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0},
    "vpt_deep": {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0},
    "projection": {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.001},
    "attention": {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.0},
}


def setting_configs(cfg: Profile, setting: str, targets: list[str] | tuple[str, ...],
                    sources: list[str | None] | tuple[str | None, ...] = (None,),
                    seeds: tuple[int, ...] | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Configs for ``setting`` over targets x sources x seeds, with :data:`SETTING_HPARAMS`."""
    hp = {**SETTING_HPARAMS[setting], **extra}
    return [target_config(cfg, setting, target, seed, source=source, **hp)
            for target in targets for source in sources for seed in (seeds or cfg.seeds)]
