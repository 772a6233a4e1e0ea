"""The chapters' entry points: the source-prompt bank, trained models and target prompts, by profile.

Data flows one way: profile -> configs (:mod:`cmpt.run_config`) -> runs (:mod:`cmpt.runner`,
executed by :mod:`cmpt.sweep`) -> the results store -> these functions -> the analyses and the
notebooks. Every run is skipped when its record exists, so chapters share work (the transfer
chapter reuses the baselines' linear-probe runs, the transferability chapter their VPT prompts)
and an interrupted build resumes. The analyses (:mod:`cmpt.gaps`, :mod:`cmpt.attention_maps`)
never train: they take what these functions return.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from cmpt.backbones import PromptedTextEncoder, load_text_backbone
from cmpt.backbones.text import TEXT_SHAPES
from cmpt.backbones.vision_zoo import VISION_SHAPES, split_location
from cmpt.data import load_text_task
from cmpt.errors import check_names
from cmpt.model_files import ModelFileError, load_trained
from cmpt.profiles import Profile
from cmpt.prompts import Prompt, load_prompt, save_prompt
from cmpt.results import ResultsStore, run_missing
from cmpt.calibration import resolve_rates
from cmpt.run_config import SourceConfig, TargetConfig, setting_configs
from cmpt.runner import TargetRunner
from cmpt.source_training import train_source_prompt
from cmpt.sweep import target_sweep
from cmpt.settings import accepts_width
from cmpt.transfer import PromptedClassifier

__all__ = ["SOURCE_BANKS", "TargetPrompts", "TrainedRun", "bank_width", "source_bank", "vision_width", "target_vpt_prompts", "trained_models",
           "usable_sources"]

#: where a profile's source prompts come from (``Profile.source_bank``)
SOURCE_BANKS = ("trained", "su2022")


def source_bank(profile: Profile, seed: int | None = None, encoder: PromptedTextEncoder | None = None,
                store: ResultsStore | None = None) -> dict[str, Prompt]:
    """One source prompt per source task of ``profile``.

    ``trained``: tuned here on the profile's text backbone (once, then read from the store);
    ``su2022``: the 13 published RoBERTa-base prompts of Su et al. (2022), shipped with cmpt.
    """
    check_names("source bank", profile.source_bank, SOURCE_BANKS)
    if profile.source_bank == "su2022":
        from cmpt.published_prompts import su2022_prompts

        return su2022_prompts(profile.text_tasks)
    seed = profile.seeds[0] if seed is None else seed
    store = store or ResultsStore.for_profile(profile)
    state: dict[str, Any] = {"encoder": encoder}

    def train(config: SourceConfig) -> dict[str, Any]:
        if state["encoder"] is None:
            state["encoder"] = load_text_backbone(profile.text_backbone, readout=profile.text_readout,
                                                  max_length=profile.text_max_length)
        task = load_text_task(config.task, profile)
        prompt, result = train_source_prompt(state["encoder"], task, config.length, config.epochs, config.lr,
                                             config.batch_size, config.seed, profile.text_backbone,
                                             device=profile.device)
        path = save_prompt(prompt, store.prompt_path(config, f"{config.task}-{config.seed}"))
        record = result.to_record()
        record["final"]["prompt_file"] = store.relative(path)
        record["final"]["group"] = task.group
        record["final"]["moved"] = prompt.training["moved"]
        return record

    configs = [SourceConfig.of(profile, task, seed) for task in profile.text_tasks]
    run_missing(store, configs, train, desc="source prompts")
    return {c.task: load_prompt(store.resolve(store.get(c)["final"]["prompt_file"])) for c in configs}


def bank_width(profile: Profile) -> int:
    """The width of ``profile``'s source prompts, known before any prompt is loaded or trained."""
    check_names("source bank", profile.source_bank, SOURCE_BANKS)
    backbone = "roberta-base" if profile.source_bank == "su2022" else split_location(profile.text_backbone)[0]
    check_names("text backbone", backbone, TEXT_SHAPES)
    return TEXT_SHAPES[backbone][0]


def vision_width(profile: Profile) -> int:
    """The width of ``profile``'s vision backbone, known before it is loaded."""
    base = split_location(profile.vision_backbone)[0]
    check_names("vision backbone", base, VISION_SHAPES)
    return VISION_SHAPES[base][0]


def usable_sources(setting: str, bank: Mapping[str, Prompt], target_width: int) -> list[str]:
    """The sources of ``bank`` that ``setting`` can carry into a backbone of ``target_width``.

    Frozen transfer inserts a prompt as it is, so it needs the backbone's width; projection and
    attention transfer map any width.
    """
    return [name for name, prompt in bank.items() if accepts_width(setting, prompt.width, target_width)]


@dataclass
class TrainedRun:
    """A trained model of one target-run config, with its stored record.

    ``trained_here``: no saved model existed, so it was trained by this call; when the run
    itself was already stored (before models were kept), the record's ``final`` carries the
    re-run's ``retrained_test_acc`` next to the stored ``test_acc``.
    """

    config: TargetConfig
    model: PromptedClassifier
    record: dict[str, Any]
    trained_here: bool


def trained_models(profile: Profile, configs: Sequence[TargetConfig], prompts: Mapping[str, Prompt] | None = None,
                   runner: TargetRunner | None = None) -> list[TrainedRun]:
    """The trained model of every config, through the results store.

    A config whose run and saved model exist is loaded; one without a run is trained and stored
    (as :func:`~cmpt.sweep.target_sweep` would); one whose run predates saved models is trained
    again and its model saved. Pass a ``runner`` to share its loaded backbone and targets.
    """
    store = ResultsStore.for_profile(profile)
    runner = runner or TargetRunner(profile, store, prompts)
    configs = resolve_rates(profile, configs, store, run=lambda calibration: [store.run(c, runner) for c in calibration
                                                                           if not store.has(c)])
    out = []
    for config in configs:
        path = store.model_path(config)
        if store.has(config) and path.exists():
            runner.target(config.target)  # loads the backbone once
            try:
                model = load_trained(path, runner.backbone, setting=config.setting)
            except ModelFileError as err:  # damaged: train it again, saying so
                warnings.warn(f"{err} Training it again.", stacklevel=2)
            else:
                out.append(TrainedRun(config, model, store.get(config), False))
                continue
        if store.has(config):  # the stored run stays the reference; say what the re-run gave
            previous = store.get(config)
            fresh = runner(config)
            record = {**previous, "final": {**previous["final"], "retrained_test_acc": fresh["final"]["test_acc"]}}
        else:
            record = store.run(config, runner)
        out.append(TrainedRun(config, load_trained(path, runner.backbone, setting=config.setting), record, True))
    return out


@dataclass
class TargetPrompts:
    """The chosen VPT prompt per target (best validation accuracy over seeds) and every VPT run."""

    prompts: dict[str, Prompt]
    runs: pd.DataFrame = field(repr=False)

    @property
    def seconds(self) -> float:
        """Wall time of every run behind the prompts (all seeds): what the task gap needs first."""
        return float(self.runs["wall_time_s"].sum())

    def moved(self) -> pd.DataFrame:
        """Per target, the chosen run: seed, last-epoch train accuracy, how far its prompt moved from its start.

        ``moved`` is ||P_t - P_init|| / ||P_init||; the token norms are the means before and after.
        """
        chosen = self.runs[self.runs["chosen"]].set_index("target")
        columns = {"seed": "seed", "last_train_acc": "train_acc", "prompt_moved.relative": "moved",
                   "prompt_moved.start_norm": "norm_start", "prompt_moved.end_norm": "norm_end"}
        present = {k: v for k, v in columns.items() if k in chosen}
        return chosen[list(present)].rename(columns=present)


def target_vpt_prompts(profile: Profile, targets: Sequence[str] | None = None,
                       seeds: Sequence[int] | None = None) -> TargetPrompts:
    """One trained VPT prompt per target: the baselines' VPT runs (reused), the best seed on validation."""
    targets = list(targets or profile.image_tasks)
    configs = setting_configs(profile, "vpt", targets, seeds=seeds)
    runs = target_sweep(profile, configs, desc="target VPT prompts")
    best = runs.sort_values(["target", "val_acc", "seed"], ascending=[True, False, True]).groupby("target").head(1)
    runs["chosen"] = runs["hash"].isin(best["hash"])
    chosen = [c for c in configs if ((best.target == c.target) & (best.seed == c.seed)).any()]
    prompts = {}
    for run in trained_models(profile, chosen):
        tensor = run.model.prompt_source()["prompt"].detach()
        prompts[run.config.target] = Prompt(tensor, source_backbone=profile.vision_backbone, task=run.config.target,
                                            layout=profile.prompt_layout,
                                            training={"setting": "vpt", "seed": run.config.seed,
                                                      "run": run.record["hash"]})
    return TargetPrompts({t: prompts[t] for t in targets}, runs)
