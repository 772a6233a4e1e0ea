"""The experiments the chapters run, as functions of a profile, through the results store.

Data flows one way: profile -> backbones and tasks -> runs (each a config dict hashed into
the :class:`~cmpt.results.ResultsStore`) -> tables for the chapters. Every run is skipped
when its record exists, so chapters share work (the transfer chapter reuses the baselines'
linear-probe runs) and an interrupted build resumes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from cmpt.assets import cache_dir
from cmpt.backbones import PromptedTextEncoder, PromptedViT, load_text_backbone, load_vision_backbone
from cmpt.data import ImageTask, load_image_task, load_text_task, to_tensor
from cmpt.features import cls_features, embed_tokens
from cmpt.profiles import Profile
from cmpt.prompts import Prompt, load_prompt, save_prompt
from cmpt.results import ResultsStore, sweep
from cmpt.source_training import train_source_prompt
from cmpt.train import TrainConfig, fit, resolve_device
from cmpt.transfer import HEAD_ONLY, PromptedClassifier, make_prompt_source

__all__ = ["RESULTS_ENV", "SETTING_HPARAMS", "TargetData", "prepare_target", "results_store", "run_target",
           "setting_configs", "source_bank", "source_config", "target_config", "target_sweep"]

RESULTS_ENV = "CMPT_RESULTS"  # the book runner points it at OUT/_build/results


def results_store(cfg: Profile) -> ResultsStore:
    """The store for ``cfg``: ``$CMPT_RESULTS/<profile>`` (the book runner sets it) or the cache."""
    root = Path(os.environ.get(RESULTS_ENV) or cache_dir() / "results")
    return ResultsStore(root / cfg.name)


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
        path = store.root / "prompts" / f"{config['task']}-{seed}-{store.path(config).stem}.safetensors"
        save_prompt(prompt, path)
        record = result.to_record()
        record["final"]["prompt_file"] = str(path.relative_to(store.root))
        record["final"]["group"] = task.group
        return record

    configs = [source_config(cfg, task, seed) for task in cfg.text_tasks]
    sweep(store, configs, train, desc="source prompts")
    return {c["task"]: load_prompt(store.root / store.get(c)["final"]["prompt_file"]) for c in configs}


# ----------------------------------------------------------------------------- target side

@dataclass
class TargetData:
    """A target task's embedded tokens and labels per split (the prompt never changes them)."""

    task: ImageTask
    tokens: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens[name], self.labels[name]


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
                  concentrated: int | None = None, optimizer: str = "adam", scaled: bool = False) -> dict[str, Any]:
    """Everything that determines one target-side run."""
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


def run_target(config: dict[str, Any], backbone: PromptedViT, data: TargetData, source: Prompt | None,
               reference_norm: float = 1.0, device: str = "auto", cache_features: bool = True) -> dict[str, Any]:
    """Train one setting on one target; head-only settings train on cached CLS features."""
    torch.manual_seed(config["seed"])
    prompt_source = make_prompt_source(config["setting"], backbone, config["length"],
                                       source=None if source is None else source.tensor,
                                       concentrated=config.get("concentrated"), scaled=config.get("scaled", False),
                                       reference_norm=reference_norm,
                                       seed=config["seed"])
    model = PromptedClassifier(backbone, prompt_source, data.task.num_classes)
    train_cfg = _train_config(config, device)
    splits = [data.split(s) for s in ("train", "val", "test")]
    if cache_features and config["setting"] in HEAD_ONLY:
        fixed = prompt_source().get("prompt")
        run_device = resolve_device(device)
        feats = [(cls_features(backbone, x, fixed, device=run_device), y) for x, y in splits]
        result = fit(model.head, *feats, train_cfg)
    else:
        result = fit(model, *splits, train_cfg)
    record = result.to_record()
    if config["setting"] == "attention":
        record["final"]["query_attention"] = prompt_source.attention().detach().cpu().tolist()  # type: ignore[operator]
    return record


def target_sweep(cfg: Profile, configs: list[dict[str, Any]], prompts: dict[str, Prompt] | None = None,
                 desc: str = "target runs") -> pd.DataFrame:
    """Run every missing config (loading backbone and targets lazily) and return their table."""
    store = results_store(cfg)
    state: dict[str, Any] = {"backbone": None, "data": {}}
    prompts = prompts or {}
    norms = [p.tensor.norm(dim=1).mean().item() for p in prompts.values()]
    reference_norm = sum(norms) / len(norms) if norms else 1.0

    def run(config: dict[str, Any]) -> dict[str, Any]:
        if state["backbone"] is None:
            state["backbone"] = load_vision_backbone(cfg.vision_backbone, cfg.image_size, layout=cfg.prompt_layout,
                                                     mean=cfg.image_mean, std=cfg.image_std)
        if config["target"] not in state["data"]:
            state["data"][config["target"]] = prepare_target(config["target"], cfg, state["backbone"])
        source = prompts.get(config["source"]) if config["source"] else None
        return run_target(config, state["backbone"], state["data"][config["target"]], source,
                          reference_norm=reference_norm, device=cfg.device)

    return sweep(store, configs, run, desc=desc)


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
