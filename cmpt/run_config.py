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

from cmpt.errors import InputError, check_names
from cmpt.profiles import Profile
from cmpt.transfer import HEAD_ONLY, SETTINGS, SOURCE_SETTINGS

__all__ = ["SETTING_HPARAMS", "STAGES", "SUBSET_KINDS", "SourceConfig", "TargetConfig", "check_subset",
           "default_concentrated", "setting_configs", "setting_grid"]

#: optimiser, base learning rate (scaled by batch/256) and weight decay per setting when no search
#: chooses them. Head-only settings train a linear head on LayerNorm-ed features and take a larger
#: rate; projection transfer uses the paper's Adam with wd 1e-3 (lr 0.005 at batch 64 after scaling).
SETTING_HPARAMS: dict[str, dict[str, Any]] = {
    "linear": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "frozen": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "random": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "random_xavier": {"optimizer": "adam", "lr": 0.4, "weight_decay": 0.0},
    "vpt": {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0},
    "vpt_deep": {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0},
    "spt": {"optimizer": "adam", "lr": 0.1, "weight_decay": 0.0},  # tuned like VPT
    "projection": {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.001},
    "attention": {"optimizer": "adam", "lr": 0.02, "weight_decay": 0.0},
}
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
    lr: float
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

    kind: ClassVar[str] = "target"
    #: fields left out of :meth:`as_config` while they are None (they came after the first records)
    OPTIONAL: ClassVar[tuple[str, ...]] = ("train_subset", "source_bank", "stage", "train_split")

    def __post_init__(self) -> None:
        check_names("setting", self.setting, SETTINGS)
        if (self.setting in SOURCE_SETTINGS) != (self.source is not None):
            need = "needs a source prompt" if self.setting in SOURCE_SETTINGS else "takes no source prompt"
            raise InputError(f"setting {self.setting!r} {need} (source={self.source!r})")
        if self.stage not in STAGES:
            raise InputError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.train_split not in (None, "trainval"):
            raise InputError(f"train_split must be None (train) or 'trainval', got {self.train_split!r}")
        if self.train_subset is not None:
            object.__setattr__(self, "train_subset", check_subset(self.train_subset))

    @classmethod
    def of(cls, profile: Profile, setting: str, target: str, seed: int, source: str | None = None,
           lr: float = 0.005, weight_decay: float = 0.0, epochs: int | None = None,
           concentrated: int | None = None, optimizer: str = "adam", scaled: bool = False,
           train_subset: Mapping[str, Any] | None = None, stage: str | None = None,
           train_split: str | None = None, selection: str | None = None) -> "TargetConfig":
        """The run of ``setting`` on ``target`` at ``profile``'s sizes, with these hyper-parameters."""
        trained_bank = profile.source_bank == "trained"
        return cls(setting=setting, target=target, seed=seed, source=source,
                   vision_backbone=profile.vision_backbone,
                   text_backbone=profile.text_backbone if source else None,
                   image_size=profile.image_size, layout=profile.prompt_layout, length=profile.prompt_length,
                   sizes=(profile.n_train, profile.n_val, profile.n_test),
                   epochs=epochs or (profile.head_epochs if setting in HEAD_ONLY else profile.target_epochs),
                   batch_size=profile.batch_size, optimizer=optimizer, lr=lr, weight_decay=weight_decay,
                   concentrated=concentrated, scaled=scaled, selection=selection or profile.selection,
                   source_epochs=profile.source_epochs if source and trained_bank else None,
                   train_subset=train_subset,
                   source_bank=None if not source or trained_bank else profile.source_bank,
                   stage=stage, train_split=train_split)

    def replace(self, **changes: Any) -> "TargetConfig":
        return dataclasses.replace(self, **changes)

    def as_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @property
    def head_only(self) -> bool:
        return self.setting in HEAD_ONLY


def default_concentrated(profile: Profile) -> int:
    """The concentrated length l_s attention transfer uses when none is searched or given: half the prompt."""
    return max(1, profile.prompt_length // 2)


def setting_configs(profile: Profile, setting: str, targets: Sequence[str],
                    sources: Sequence[str | None] = (None,), seeds: Sequence[int] | None = None,
                    **extra: Any) -> list[TargetConfig]:
    """Configs for ``setting`` over targets x sources x seeds, with :data:`SETTING_HPARAMS` unless overridden."""
    check_names("setting", setting, SETTING_HPARAMS)
    hp = {**SETTING_HPARAMS[setting], **extra}
    return [TargetConfig.of(profile, setting, target, seed, source=source, **hp)
            for target in targets for source in sources for seed in (seeds or profile.seeds)]


def setting_grid(profile: Profile, settings: Sequence[str] | None = None, targets: Sequence[str] | None = None,
                 sources: Sequence[str] | None = None, seeds: Sequence[int] | None = None) -> list[TargetConfig]:
    """The target-side grid: settings x targets x seeds, times sources for the settings that take one.

    Defaults: every setting with a recipe, the profile's image tasks, its source tasks and seeds.
    """
    settings = list(settings or SETTING_HPARAMS)
    targets = list(targets or profile.image_tasks)
    sources = list(sources or profile.text_tasks)
    return [c for s in settings
            for c in setting_configs(profile, s, targets, sources if s in SOURCE_SETTINGS else (None,), seeds)]
