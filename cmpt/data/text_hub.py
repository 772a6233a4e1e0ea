"""The paper's 13 source tasks, read from the Hugging Face hub with ``datasets``.

:data:`HUB_TASKS` is the whole recipe, one row per task: hub id, config, the text field(s),
the label field and how raw labels map to class indices, and which hub split plays train,
validation and test. Rules applied to every row:

* Rows whose label is missing from the map (``-1`` = unlabelled in GLUE/SNLI; ``conflict`` in
  SemEval-2014) are dropped.
* GLUE hides its test labels, so its validation split is our test split and our validation
  split is carved out of train (``val=None``). The same happens for any task without a
  validation split.
* Pair tasks (NLI, paraphrase, aspect sentiment) are stored as one string per example:
  ``first + PAIR_SEPARATOR + second``. The separator is RoBERTa's ``</s>``, which the RoBERTa
  tokenizer (the paper's source model) turns back into its separator token; other tokenizers
  see it as plain text.

Where Su et al. (2022) do not pin a choice down (which SemEval-2014 copy, MNLI matched or
mismatched, how ETHICS is split) the row says what we chose.

``datasets`` is imported only when a hub task is loaded. Without the hub (or a warm local
cache) loading fails with :class:`cmpt.assets.AssetError` saying how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cmpt.assets import AssetError

__all__ = ["DATASETS_PIN", "HUB_TASKS", "PAIR_SEPARATOR", "HubTask", "hub_pools"]

PAIR_SEPARATOR = " </s> "
DATASETS_PIN = "datasets==5.2.0"


@dataclass(frozen=True)
class HubTask:
    """One hub dataset and how to read it as a classification task."""

    hub_id: str
    config: str | None
    fields: tuple[str, ...]  # one text field, or two for a pair task
    classes: tuple[str, ...]
    group: str
    train: str = "train"
    val: str | None = None  # None: carve validation out of train
    test: str = "test"
    label_field: str = "label"
    label_map: dict = field(default_factory=dict)  # raw label -> class index; {} = already 0..K-1
    revision: str | None = None
    note: str = ""

    @property
    def pair(self) -> bool:
        return len(self.fields) == 2


_GLUE = "nyu-mll/glue"
_ABSA = {"negative": 0, "neutral": 1, "positive": 2}  # "conflict" dropped
HUB_TASKS: dict[str, HubTask] = {
    "imdb": HubTask("stanfordnlp/imdb", None, ("text",), ("negative", "positive"), "sentiment"),
    "sst2": HubTask(_GLUE, "sst2", ("sentence",), ("negative", "positive"), "sentiment", test="validation"),
    "laptop": HubTask("tomaarsen/setfit-absa-semeval-laptops", None, ("text", "span"),
                      ("negative", "neutral", "positive"), "sentiment", label_map=_ABSA,
                      note="SemEval-2014 Task 4 laptops, aspect-level: sentence </s> aspect term"),
    "restaurant": HubTask("tomaarsen/setfit-absa-semeval-restaurants", None, ("text", "span"),
                          ("negative", "neutral", "positive"), "sentiment", label_map=_ABSA,
                          note="SemEval-2014 Task 4 restaurants, aspect-level: sentence </s> aspect term"),
    "movierationales": HubTask("eraser-benchmark/movie_rationales", None, ("review",), ("negative", "positive"),
                               "sentiment", val="validation"),
    "tweetevalsentiment": HubTask("cardiffnlp/tweet_eval", "sentiment", ("text",),
                                  ("negative", "neutral", "positive"), "sentiment", val="validation"),
    "mnli": HubTask(_GLUE, "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "NLI",
                    test="validation_matched"),
    "qnli": HubTask(_GLUE, "qnli", ("question", "sentence"), ("entailment", "not_entailment"), "NLI",
                    test="validation"),
    "snli": HubTask("stanfordnlp/snli", None, ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
                    "NLI", val="validation"),
    "ethicsdeontology": HubTask("hendrycks/ethics", "deontology", ("scenario", "excuse"),
                                ("unreasonable", "reasonable"), "ethics", revision="refs/convert/parquet",
                                note="the main branch is a loading script; the hub's parquet conversion is read"),
    "ethicsjustice": HubTask("hendrycks/ethics", "justice", ("scenario",), ("unreasonable", "reasonable"), "ethics",
                             revision="refs/convert/parquet",
                             note="the main branch is a loading script; the hub's parquet conversion is read"),
    "qqp": HubTask(_GLUE, "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), "paraphrase",
                   test="validation"),
    "mrpc": HubTask(_GLUE, "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "paraphrase",
                    test="validation"),
}

_FIX = ("Fix: run where the Hugging Face hub is reachable (with HF_DATASETS_OFFLINE and HF_HUB_OFFLINE unset), "
        "or load it once there so it lands in the datasets cache (HF_HOME / HF_DATASETS_CACHE) and run here "
        "with that cache and HF_DATASETS_OFFLINE=1.")


def _label(raw, spec: HubTask) -> int:
    if spec.label_map:
        return spec.label_map.get(raw, -1)
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool) and 0 <= raw < len(spec.classes):
        return int(raw)
    return -1


def _read_split(data, spec: HubTask, name: str, split: str) -> tuple[list[str], np.ndarray]:
    columns = list(data.column_names)
    missing = [f for f in (*spec.fields, spec.label_field) if f not in columns]
    if missing:
        raise AssetError(f"hub dataset {spec.hub_id} ({spec.config}) split {split!r} lacks field(s) "
                         f"{', '.join(missing)}; it has {', '.join(columns)}")
    texts, labels = [], []
    for *parts, raw in zip(*(list(data[f]) for f in spec.fields), list(data[spec.label_field])):
        label = _label(raw, spec)
        if label < 0 or any(p is None for p in parts):
            continue
        texts.append(PAIR_SEPARATOR.join(" ".join(str(p).split()) for p in parts))
        labels.append(label)
    if not texts:
        raise AssetError(f"{name}: split {split!r} of {spec.hub_id} has no labelled examples")
    return texts, np.asarray(labels, dtype=np.int64)


def hub_pools(name: str) -> dict[str, tuple[list[str], np.ndarray] | None]:
    """``{"train", "val", "test"}`` -> (texts, labels) of a hub task; ``val`` is None if carved from train."""
    spec = HUB_TASKS[name]
    try:
        import datasets
    except ImportError:
        raise AssetError(f"task {name!r} is read from the Hugging Face hub with the 'datasets' package, which "
                         f"is not installed. Fix: pip install {DATASETS_PIN}") from None
    where = spec.hub_id + (f" (config {spec.config!r})" if spec.config else "")
    try:
        kwargs = {"revision": spec.revision} if spec.revision else {}
        loaded = datasets.load_dataset(spec.hub_id, spec.config, **kwargs)
    except Exception as err:  # datasets raises many types (ConnectionError, FileNotFoundError, ...)
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
        raise AssetError(f"could not load text task {name!r} from the Hugging Face hub dataset {where}: "
                         f"{reason}. {_FIX}") from err
    pools: dict[str, tuple[list[str], np.ndarray] | None] = {}
    for role in ("train", "val", "test"):
        split = getattr(spec, role)
        if split is None:
            pools[role] = None
        elif split not in loaded:
            if role == "val":  # tolerate a copy without a validation split: carve it from train
                pools[role] = None
                continue
            raise AssetError(f"hub dataset {where} has no split {split!r} (it has {', '.join(loaded)})")
        else:
            pools[role] = _read_split(loaded[split], spec, name, split)
    return pools
