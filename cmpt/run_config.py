"""What determines one run, as frozen dataclasses; their dict form is what the store hashes.

A :class:`SourceConfig` fixes a tuned source prompt, a :class:`TargetConfig` one target-side
run (setting, target, source, seed, sizes, hyper-parameters, protocol stage). Both come from a
profile (:meth:`TargetConfig.of`, :func:`setting_configs`) and go to the results store as
:meth:`as_config` dicts. Fields added after records were first stored (``train_subset``,
``source_bank``, ``stage``, ``train_split``) are left out of that dict while they hold their
default, so the hashes of earlier runs do not change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cmpt.devices import chosen_precision, resolve_device
from cmpt.errors import InputError
from cmpt.profiles import Profile
from cmpt.settings import REGISTRY, get_setting

__all__ = ["STAGES", "SUBSET_KINDS", "SourceConfig", "TargetConfig", "check_subset", "default_concentrated",
           "epochs_for", "recipe", "run_precision", "setting_configs", "setting_grid", "warmup_for"]

#: protocol stages: ``None`` is one run per seed (train split, epoch chosen by ``selection``);
#: ``search`` a grid point (train800, chosen on val200); ``final`` the run at the chosen values
STAGES = (None, "search", "final")
SUBSET_KINDS = {"kshot": "k", "fraction": "fraction"}


def check_subset(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A training-subset spec (``{"kind": "kshot", "k", "seed"}`` or ``{"kind": "fraction", "fraction", "seed"}``)."""
    if not isinstance(spec, Mapping) or spec.get("kind") not in SUBSET_KINDS \
            or set(spec) != {"kind", SUBSET_KINDS[spec["kind"]], "seed"}:
        raise InputError(f"train_subset must be {{'kind': 'kshot', 'k', 'seed'}} or "
                         f"{{'kind': 'fraction', 'fraction', 'seed'}}, got {spec!r}")
    return dict(spec)


@dataclass(frozen=True)
class SourceConfig:
    """Everything that determines a tuned source prompt."""

    text_backbone: str
    readout: str
    task: str
    length: int
    epochs: int
    lr: float
    batch_size: int
    max_length: int
    sizes: tuple[int, int, int]
    seed: int
    #: how the prompt starts: vocabulary tokens drawn from a seed of task and seed (records from
    #: before this field started every task from the same tokens, so their hashes differ on purpose)
    init: str = "vocab-per-task"

    kind: ClassVar[str] = "source_prompt"

    @classmethod
    def of(cls, profile: Profile, task: str, seed: int) -> "SourceConfig":
        return cls(text_backbone=profile.text_backbone, readout=profile.text_readout, task=task,
                   length=profile.prompt_length, epochs=profile.source_epochs, lr=profile.source_lr,
                   batch_size=profile.source_batch_size, max_length=profile.text_max_length,
                   sizes=(profile.text_train, profile.text_val, profile.text_test), seed=seed)

    def as_config(self) -> dict[str, Any]:
        return {"kind": self.kind, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}


@dataclass(frozen=True)
class TargetConfig:
    """Everything that determines one target-side run."""

    setting: str
    target: str
    seed: int
    source: str | None  # the source task whose prompt the run starts from (a name, never a tensor)
    vision_backbone: str
    text_backbone: str | None
    image_size: int
    layout: str
    length: int
    sizes: tuple[int, int, int]
    epochs: int
    batch_size: int
    optimizer: str
    lr: float | None  # base learning rate of the trained parameters; None: chosen on validation from ``rates``
    weight_decay: float
    concentrated: int | None = None
    scaled: bool = False
    selection: str = "val"
    source_epochs: int | None = None
    #: a fixed training subset of the train split (k-shot or a fraction), see :func:`check_subset`
    train_subset: Mapping[str, Any] | None = field(default=None, hash=False)
    #: where the source prompt comes from: None (prompts trained by cmpt) or "su2022" (published)
    source_bank: str | None = None
    stage: str | None = None
    #: the split the run trains on: None (train) or "trainval" (train + val, for final runs)
    train_split: str | None = None
    #: the recipe (None: the papers' code, as records before these fields): the head's own base
    #: learning rate, its initialisation ("zero" / "default"), the schedule's unit ("step" /
    #: "epoch"), warm-up epochs, attention's query initialisation, the grid ``lr`` was chosen from
    #: on validation (:mod:`cmpt.calibration`) and the epoch a final run stops at
    head_lr: float | None = None
    head_init: str | None = None
    schedule: str | None = None
    warmup: int | None = None
    query_init: str | None = None
    rates: tuple[float, ...] | None = None
    stop_epoch: int | None = None
    #: the precision the run computes in: None (fp32, as every record before this field) or "bf16" /
    #: "fp16" autocast, from the profile's ``precision`` (:func:`cmpt.devices.chosen_precision`)
    precision: str | None = None

    kind: ClassVar[str] = "target"
    #: fields left out of :meth:`as_config` while they are None (they came after the first records)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("train_subset", "source_bank", "stage", "train_split", "head_lr",
                                           "head_init", "schedule", "warmup", "query_init", "rates", "stop_epoch",
                                           "precision")

    def __post_init__(self) -> None:
        takes_source = get_setting(self.setting).takes_source
        if takes_source != (self.source is not None):
            need = "needs a source prompt" if takes_source else "takes no source prompt"
            raise InputError(f"setting {self.setting!r} {need} (source={self.source!r})")
        if self.stage not in STAGES:
            raise InputError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.train_split not in (None, "trainval"):
            raise InputError(f"train_split must be None (train) or 'trainval', got {self.train_split!r}")
        if self.precision not in (None, "bf16", "fp16"):
            raise InputError(f"precision must be None (fp32), 'bf16' or 'fp16', got {self.precision!r}")
        if self.train_subset is not None:
            object.__setattr__(self, "train_subset", check_subset(self.train_subset))
        if self.rates is not None:
            object.__setattr__(self, "rates", tuple(float(r) for r in self.rates))
        if self.lr is None and not self.rates:
            raise InputError(f"a {self.setting!r} config without a learning rate needs the grid (rates) to choose it from")

    @classmethod
    def of(cls, profile: Profile, setting: str, target: str, seed: int, source: str | None = None,
           lr: float = 0.005, weight_decay: float = 0.0, epochs: int | None = None,
           concentrated: int | None = None, optimizer: str = "adam", scaled: bool = False,
           train_subset: Mapping[str, Any] | None = None, stage: str | None = None,
           train_split: str | None = None, selection: str | None = None, **more: Any) -> "TargetConfig":
        """The run of ``setting`` on ``target`` at ``profile``'s sizes, with these hyper-parameters.

        ``more``: the recipe fields (``head_lr``, ``head_init``, ``schedule``, ``warmup``,
        ``query_init``, ``rates``, ``stop_epoch``), as :func:`recipe` gives them.
        """
        trained_bank = profile.source_bank == "trained"
        return cls(setting=setting, target=target, seed=seed, source=source,
                   vision_backbone=profile.vision_backbone,
                   text_backbone=profile.text_backbone if source else None,
                   image_size=profile.image_size, layout=profile.prompt_layout, length=profile.prompt_length,
                   sizes=(profile.n_train, profile.n_val, profile.n_test),
                   epochs=epochs or epochs_for(profile, setting, target),
                   batch_size=profile.batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                   concentrated=concentrated, scaled=scaled, selection=selection or profile.selection,
                   source_epochs=profile.source_epochs if source and trained_bank else None,
                   train_subset=train_subset,
                   source_bank=None if not source or trained_bank else profile.source_bank,
                   stage=stage, train_split=train_split, **more)

    def replace(self, **changes: Any) -> "TargetConfig":
        return dataclasses.replace(self, **changes)

    def as_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = dict(value) if isinstance(value, Mapping) else list(value) if f.name == "rates" else value
        return out

    @property
    def head_only(self) -> bool:
        return get_setting(self.setting).head_only


def default_concentrated(profile: Profile) -> int:
    """The concentrated length l_s attention transfer uses when none is searched or given: half the prompt."""
    return max(1, profile.prompt_length // 2)


def epochs_for(profile: Profile, setting: str, target: str | None = None) -> int:
    """Epochs of a full-data run of ``setting`` on ``target``: ``head_epochs`` for a head-only setting,
    else the target's entry in ``target_epochs_for`` or ``target_epochs``."""
    if get_setting(setting).head_only:
        return profile.head_epochs
    return dict(profile.target_epochs_for).get(target or "", profile.target_epochs)


def warmup_for(profile: Profile, epochs: int) -> int | None:
    """Warm-up epochs of an ``epochs``-long run at ``profile`` (None: the papers' tenth, left out of the config)."""
    return None if profile.warmup_fraction == 0.1 else max(1, round(epochs * profile.warmup_fraction))


def recipe(profile: Profile, setting: str, fixed_rate: bool = False, target: str | None = None) -> dict[str, Any]:
    """The training recipe of ``setting`` on ``target`` at ``profile`` (see :mod:`cmpt.settings`), as config fields.

    With ``profile.calibrate`` every setting gets ``lr=None`` and its grid in ``rates``: the rate
    is chosen on validation before the runs (:mod:`cmpt.calibration`). Without it (the paper
    profile, whose protocol searches) ``lr`` is a fixed rate. A setting that trains more than its
    head trains the head at ``profile.head_lr`` (where that is set). ``fixed_rate`` takes the grid's
    first rate instead of choosing (for timing runs, whose accuracy nobody reads).
    """
    record = get_setting(setting)
    epochs = epochs_for(profile, setting, target)
    out: dict[str, Any] = {"optimizer": "adam", "weight_decay": record.weight_decay, "epochs": epochs}
    if profile.head_lr > 0 and not record.head_only:  # 0: the head shares the body's rate (the papers' code)
        out["head_lr"] = profile.head_lr
    if profile.calibrate and not fixed_rate:
        out.update(lr=None, rates=tuple(record.rates))
    elif profile.calibrate:
        out["lr"] = record.rates[0]
    else:  # the paper profile: its protocol searches; this is the rate of a setting it does not search
        out["lr"] = 0.4 if record.head_only else record.rates[0]
    if profile.head_init != "default":
        out["head_init"] = profile.head_init
    if profile.schedule != "epoch":
        out["schedule"] = profile.schedule
    if warmup_for(profile, epochs) is not None:
        out["warmup"] = warmup_for(profile, epochs)
    if setting == "attention" and profile.query_init != "randn":
        out["query_init"] = profile.query_init
    precision = run_precision(profile)
    if precision != "fp32":  # fp32 stays out of the config, as in every record before the field
        out["precision"] = precision
    return out


def run_precision(profile: Profile) -> str:
    """The precision ``profile``'s target runs compute in on this machine (its ``precision``, "auto" resolved)."""
    return chosen_precision(profile.precision, resolve_device(profile.device))


def setting_configs(profile: Profile, setting: str, targets: Sequence[str],
                    sources: Sequence[str | None] = (None,), seeds: Sequence[int] | None = None,
                    **extra: Any) -> list[TargetConfig]:
    """Configs for ``setting`` over targets x sources x seeds, at its :func:`recipe` unless overridden."""
    return [TargetConfig.of(profile, setting, target, seed, source=source, **{**recipe(profile, setting, target=target),
                                                                                **extra})
            for target in targets for source in sources for seed in (seeds or profile.seeds)]


def setting_grid(profile: Profile, settings: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                 sources: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[TargetConfig]:
    """The target-side grid: settings x targets x seeds, times sources for the settings that take one.

    Defaults: every setting but the named variants, the profile's image tasks, its source tasks and seeds.
    """
    settings = list(settings or [name for name, s in REGISTRY.items() if s.variant_of is None])
    targets = list(targets or profile.image_tasks)
    sources = list(sources or profile.text_tasks)
    return [c for s in settings
            for c in setting_configs(profile, s, targets, sources if get_setting(s).takes_source else (None,), seeds)]
