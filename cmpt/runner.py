"""Executing one run: a :class:`~cmpt.run_config.TargetConfig` in, a record (and a trained model) out.

:func:`run_target` builds the untrained classifier of a config, trains it with
:func:`cmpt.train.fit` (head-only settings on cached CLS features) and returns the record the
results store keeps. :class:`TargetRunner` is the run function of a sweep: it saves each trained
model beside its record. The vision backbone and each target's embedded data are loaded once per
process (:func:`loaded_backbone`, :func:`loaded_target`) and shared by every runner and sweep of the
same profile that follows, so a chapter that runs ten sweeps embeds its targets once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from cmpt.backbones import PromptedViT, load_vision_backbone
from cmpt.data import ImageTask, fraction_indices, kshot_indices
from cmpt.errors import InputError, UnknownNameError
from cmpt.model_files import save_trained
from cmpt.profiles import Profile
from cmpt.prompts import Prompt
from cmpt.results import ResultsStore
from cmpt.run_config import TargetConfig, check_subset
from cmpt.settings import get_setting, make_prompt_source
from cmpt.target_data import TargetData, prepare_target
from cmpt.train import TrainConfig, fit, resolve_device
from cmpt.transfer import AttentionPrompt, PromptedClassifier

__all__ = ["SHARED_TARGETS", "TargetRunner", "build_classifier", "forget_loaded", "loaded_backbone", "loaded_target", "reference_norm",
           "run_target", "subset_indices", "train_config"]

#: embedded targets a process keeps for later runners (the least recently used beyond this are dropped)
SHARED_TARGETS = 8
_BACKBONES: dict[tuple[Any, ...], PromptedViT] = {}
_TARGETS: OrderedDict[tuple[Profile, str], TargetData] = OrderedDict()


def loaded_backbone(profile: Profile) -> PromptedViT:
    """The vision backbone of ``profile``, loaded once per process (frozen: every run shares it)."""
    key = (profile.vision_backbone, profile.image_size, profile.prompt_layout, profile.image_mean, profile.image_std)
    if key not in _BACKBONES:
        _BACKBONES[key] = load_vision_backbone(profile.vision_backbone, profile.image_size, layout=profile.prompt_layout,
                                               mean=profile.image_mean, std=profile.image_std)
    return _BACKBONES[key]


def forget_loaded() -> None:
    """Drop the backbones and targets this process shares (after their files or the data registry changed)."""
    _BACKBONES.clear()
    _TARGETS.clear()


def loaded_target(profile: Profile, name: str) -> TargetData:
    """Target ``name`` of ``profile``, embedded by :func:`loaded_backbone` once per process.

    Its cached features (per fixed prompt, :class:`~cmpt.target_data.TargetData`) are shared too:
    a frozen prompt's features computed for one sweep serve the next. The last
    :data:`SHARED_TARGETS` targets are kept.
    """
    key = (profile, name)
    if key in _TARGETS:
        _TARGETS.move_to_end(key)
        return _TARGETS[key]
    data = _TARGETS[key] = prepare_target(name, profile, loaded_backbone(profile))
    while len(_TARGETS) > SHARED_TARGETS:
        _TARGETS.popitem(last=False)
    return data


def subset_indices(task: ImageTask, spec: Mapping[str, Any], sizes: tuple[int, ...] | list[int]) -> np.ndarray:
    """Pool indices of the training subset ``spec`` of ``task`` (saved; nested across k / fraction).

    ``sizes`` are the requested (train, val, test) sizes of the run; they name the saved file.
    """
    spec = check_subset(spec)
    key = f"image-{task.name}-{'-'.join(str(int(n)) for n in sizes)}"
    if spec["kind"] == "kshot":
        return kshot_indices(task.labels, task.indices("train"), int(spec["k"]), int(spec["seed"]), task=key)
    return fraction_indices(task.labels, task.indices("train"), float(spec["fraction"]), int(spec["seed"]), task=key)


def train_config(config: TargetConfig, device: str = "auto") -> TrainConfig:
    """The training-loop settings of a run (warm-up: ``config.warmup``, else a tenth of the epochs, at least one).

    A run whose selection is ``"last"`` is validated once, after its last epoch (the value a
    calibration grid chooses on), not every epoch.
    """
    if config.lr is None:
        raise InputError(f"the {config.setting!r} run on {config.target!r} has no learning rate yet: it is chosen "
                         "on validation first (cmpt.calibration.resolve_rates; cmpt's sweeps do this)")
    warmup = config.warmup if config.warmup is not None else max(1, config.epochs // 10)
    return TrainConfig(optimizer=config.optimizer, base_lr=config.lr, weight_decay=config.weight_decay,
                       batch_size=config.batch_size, epochs=config.epochs, warmup_epochs=warmup, seed=config.seed,
                       selection=config.selection, device=device, head_lr=config.head_lr,
                       schedule=config.schedule or "epoch", stop_epoch=config.stop_epoch,
                       eval_every=config.epochs if config.selection == "last" else 1,
                       precision=config.precision or "fp32")


def build_classifier(config: TargetConfig, backbone: PromptedViT, num_classes: int, source_prompt: Prompt | None,
                     reference_norm: float = 1.0, train_tokens: torch.Tensor | None = None,
                     train_patches: torch.Tensor | None = None) -> PromptedClassifier:
    """The untrained model of ``config`` (seeded by its seed, so frozen parts are reproducible).

    SPT starts from the images the run trains on: ``train_patches`` (their patch-projection
    tokens, before the position embedding) for ``spt``, ``train_tokens`` (embedding-layer tokens,
    CLS first) for ``spt_kmeans``.
    """
    torch.manual_seed(config.seed)
    prompt_source = make_prompt_source(config.setting, backbone, config.length,
                                       source_prompt=None if source_prompt is None else source_prompt.tensor,
                                       concentrated=config.concentrated, scaled=config.scaled,
                                       reference_norm=reference_norm, seed=config.seed,
                                       query_init=config.query_init or "randn", train_tokens=train_tokens,
                                       train_patches=train_patches)
    return PromptedClassifier(backbone, prompt_source, num_classes, head_init=config.head_init or "default")


def _prompt_tensor(model: PromptedClassifier) -> torch.Tensor:
    """The prompt the model inserts (shallow or deep), detached on the CPU."""
    with torch.no_grad():
        out = model.prompt_source()
    return next(iter(out.values())).detach().float().cpu().clone()


def prompt_moved(start: torch.Tensor, end: torch.Tensor) -> dict[str, float]:
    """How far a trained prompt moved: ||end - start|| / ||start||, and the mean token norm before and after."""
    return {"relative": float((end - start).norm() / start.norm().clamp_min(1e-12)),
            "start_norm": float(start.norm(dim=-1).mean()), "end_norm": float(end.norm(dim=-1).mean())}


def run_target(config: TargetConfig, backbone: PromptedViT, data: TargetData, source_prompt: Prompt | None,
               reference_norm: float = 1.0, device: str = "auto", cache_features: bool = True,
               return_model: bool = False) -> dict[str, Any] | tuple[dict[str, Any], PromptedClassifier]:
    """Train one setting on one target; head-only settings train on CLS features (cached where they fit).

    With ``config.train_subset`` the train split is cut to that subset (its size is recorded as
    ``n_train``); with ``config.train_split == "trainval"`` (a final run) the run trains on
    train + val and its last epoch counts; a run whose selection is ``"last"`` is not validated
    (no validation passes); a search run (``stage == "search"``) is never tested.
    With ``return_model`` the trained :class:`PromptedClassifier` (holding the selected epoch's
    state) is returned too, as ``(record, model)``.
    """
    keep = None
    if config.train_subset is not None:
        chosen = subset_indices(data.task, config.train_subset, config.sizes)
        keep = np.flatnonzero(np.isin(data.task.indices("train"), chosen))
    train_name = "trainval" if config.train_split == "trainval" else "train"
    train_cfg = train_config(config, device)
    train_tokens = train_patches = None
    if config.setting == "spt":  # the prompt sees exactly the images the run trains on
        train_patches = data.patch_embeddings(train_name, keep)
    elif get_setting(config.setting).needs_train_tokens:
        split = data.split(train_name, keep)
        if not isinstance(split, tuple):
            raise InputError(f"{config.setting} needs the training tokens of {data.task.name!r} in memory; "
                             "raise the cache budget")
        train_tokens = split[0]
    model = build_classifier(config, backbone, data.task.num_classes, source_prompt, reference_norm, train_tokens,
                             train_patches)
    start_entropy = model.prompt_source.entropy() if isinstance(model.prompt_source, AttentionPrompt) else None
    start_prompt = None if config.head_only else _prompt_tensor(model)
    kwargs = {"keep": keep, "seed": config.seed, "batch_size": config.batch_size,
              "names": (train_name, "val", "test"), "eval_batch_size": train_cfg.eval_batch_size}
    if cache_features and config.head_only:
        splits = data.head_splits(backbone, model.prompt_source().get("prompt"), resolve_device(device), **kwargs)
        trained: torch.nn.Module = model.head
    else:
        splits = data.splits(**kwargs)
        trained = model
    if config.train_split == "trainval":  # val is training data
        splits[1] = None  # type: ignore[call-overload]
    if config.stage == "search":  # a grid point is chosen on val: it never sees the test split
        splits[2] = None  # type: ignore[call-overload]
    result = fit(trained, *splits, train_cfg)
    record = result.to_record()
    if keep is not None:
        record["final"]["n_train"] = len(keep)
    if isinstance(model.prompt_source, AttentionPrompt):
        record["final"]["query_attention"] = model.prompt_source.attention().detach().cpu().tolist()
        record["final"]["attention_entropy"] = {"start": start_entropy, "end": model.prompt_source.entropy()}
    if start_prompt is not None:
        record["final"]["prompt_moved"] = prompt_moved(start_prompt, _prompt_tensor(model))
    if config.rates:
        record["final"]["rate_choice"] = {"grid": list(config.rates), "chosen": config.lr,
                                          "how": "best mean last-epoch validation accuracy at the first seed "
                                                 "(cmpt.calibration)"}
    return (record, model) if return_model else record


def reference_norm(prompts: Mapping[str, Prompt]) -> float:
    """Mean token norm over a bank of prompts: the random reference prompt's norm (1 if none)."""
    norms = [p.norm for p in prompts.values()]
    return sum(norms) / len(norms) if norms else 1.0


class TargetRunner:
    """The run function of target configs of one profile: ``runner(config) -> record``.

    The vision backbone and each target's embedded data come from :func:`loaded_backbone` and
    :func:`loaded_target`: loaded on first use in this process, then shared with every runner
    of the same profile (the sweeps of a chapter, or every task a Ray worker process runs).
    With ``save_models`` each run's trained prompt and head go to the store's ``model_path``.
    """

    def __init__(self, profile: Profile, store: ResultsStore, prompts: Mapping[str, Prompt] | None = None,
                 norm: float | None = None, save_models: bool = True) -> None:
        self.profile, self.store, self.save_models = profile, store, save_models
        self.prompts = dict(prompts or {})
        self.norm = reference_norm(self.prompts) if norm is None else norm
        self.backbone: PromptedViT | None = None
        self.data: dict[str, TargetData] = {}

    def target(self, name: str) -> TargetData:
        """The data of target ``name``, embedded where it fits the cache budget (loaded once)."""
        if self.backbone is None:
            self.backbone = loaded_backbone(self.profile)
        if name not in self.data:
            self.data[name] = loaded_target(self.profile, name)
        return self.data[name]

    def source_prompt(self, config: TargetConfig) -> Prompt | None:
        if config.source is None:
            return None
        if config.source not in self.prompts:
            raise UnknownNameError(f"no source prompt {config.source!r} was given to this sweep; have "
                                   f"{', '.join(self.prompts) or 'none'}")
        return self.prompts[config.source]

    def __call__(self, config: TargetConfig) -> dict[str, Any]:
        data = self.target(config.target)
        record, model = run_target(config, self.backbone, data, self.source_prompt(config),  # type: ignore[arg-type]
                                   reference_norm=self.norm, device=self.profile.device, return_model=True)
        if self.save_models:
            save_trained(model, self.store.model_path(config))
        return record
