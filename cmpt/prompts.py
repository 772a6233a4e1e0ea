"""Soft prompts as portable files, independent of any model.

A prompt is a ``[length, width]`` float tensor plus metadata (source backbone, task,
layout, training summary). On disk it is one safetensors file: the tensor under the key
``prompt`` and the metadata as JSON in the header, so loading never runs a pickle.

Importers cover the published Su et al. (2022) RoBERTa prompts (``torch.save``d plain
tensors, read with ``weights_only=True``) and the PEFT prompt-tuning layout
(``adapter_model.safetensors`` with ``prompt_embeddings`` + ``adapter_config.json``).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from cmpt.atomic import write_atomic
from cmpt.errors import InputError

__all__ = [
    "Prompt",
    "PromptError",
    "SU2022_TASKS",
    "check_width",
    "export_peft",
    "import_peft",
    "import_su2022",
    "load_prompt",
    "save_prompt",
]

FORMAT_VERSION = 1

#: file stem of each published Su et al. (2022) RoBERTa prompt -> (task name, task group)
SU2022_TASKS: dict[str, tuple[str, str]] = {
    "IMDB": ("imdb", "sentiment"),
    "SST2": ("sst2", "sentiment"),
    "laptop": ("laptop", "sentiment"),
    "restaurant": ("restaurant", "sentiment"),
    "movierationales": ("movierationales", "sentiment"),
    "tweetevalsentiment": ("tweetevalsentiment", "sentiment"),
    "MNLI": ("mnli", "nli"),
    "QNLI": ("qnli", "nli"),
    "snli": ("snli", "nli"),
    "ethicsdeontology": ("ethicsdeontology", "ethics"),
    "ethicsjustice": ("ethicsjustice", "ethics"),
    "QQP": ("qqp", "paraphrase"),
    "MRPC": ("mrpc", "paraphrase"),
}


class PromptError(InputError):
    """A prompt file that cannot be used: malformed, hostile, or the wrong width."""


@dataclass
class Prompt:
    """A soft prompt and where it came from."""

    tensor: torch.Tensor
    source_backbone: str = "unknown"
    task: str = "unknown"
    group: str = ""
    layout: str = "prepend"
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.tensor, torch.Tensor):
            raise PromptError(f"a prompt must be a torch.Tensor, got {type(self.tensor).__name__}")
        if self.tensor.dim() != 2 or 0 in self.tensor.shape:
            raise PromptError(f"a prompt must be a non-empty [length, width] tensor, got shape {tuple(self.tensor.shape)}")
        if not self.tensor.is_floating_point():
            raise PromptError(f"a prompt must hold floats, got {self.tensor.dtype}")
        if not torch.isfinite(self.tensor).all():
            raise PromptError("the prompt holds NaN or infinite values")
        self.tensor = self.tensor.detach().to(torch.float32).contiguous()

    @property
    def length(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def width(self) -> int:
        return int(self.tensor.shape[1])

    def metadata(self) -> dict[str, Any]:
        meta = {k: v for k, v in asdict(self).items() if k != "tensor"}
        meta.update(length=self.length, width=self.width, format_version=FORMAT_VERSION)
        return meta


def check_width(prompt: Prompt | torch.Tensor, width: int, backbone: str) -> None:
    """Refuse a prompt whose width does not fit a backbone, saying what to do instead."""
    got = prompt.width if isinstance(prompt, Prompt) else int(prompt.shape[-1])
    if got != width:
        raise PromptError(
            f"prompt width {got} does not fit backbone {backbone!r} (width {width}). Inserting it as is "
            f"(frozen transfer) needs equal widths; projection or attention transfer map {got} -> {width}."
        )


def save_prompt(prompt: Prompt, path: str | Path) -> Path:
    """Write ``prompt`` as one safetensors file (atomically)."""
    from safetensors.torch import save_file

    metadata = {"cmpt_prompt": json.dumps(prompt.metadata())}
    return write_atomic(path, lambda tmp: save_file({"prompt": prompt.tensor}, str(tmp), metadata=metadata))


def load_prompt(path: str | Path) -> Prompt:
    """Read a prompt written by :func:`save_prompt`."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise PromptError(f"no prompt file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta_text = (handle.metadata() or {}).get("cmpt_prompt")
            if "prompt" not in handle.keys():
                raise PromptError(f"{path} holds no 'prompt' tensor (keys: {list(handle.keys())})")
            tensor = handle.get_tensor("prompt")
    except SafetensorError as err:
        raise PromptError(f"{path} is not a valid safetensors file: {err}") from err
    meta = json.loads(meta_text) if meta_text else {}
    fields = {k: meta[k] for k in ("source_backbone", "task", "group", "layout", "training") if k in meta}
    return Prompt(tensor, **fields)


def _load_plain_tensor(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PromptError(
            f"{path} is not a plain tensor checkpoint; refusing to unpickle it "
            f"(it may run code). Save prompts with cmpt.prompts.save_prompt. Detail: {str(err)[:200]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise PromptError(f"{path} could not be read as a torch checkpoint (corrupt or truncated?): {err}") from err
    if isinstance(obj, dict) and len(obj) == 1:  # {"prompt": tensor}-style wrappers
        (obj,) = obj.values()
    if not isinstance(obj, torch.Tensor):
        raise PromptError(f"{path} holds a {type(obj).__name__}, not a [length, width] tensor")
    return obj


def import_su2022(path: str | Path, backbone: str = "roberta-base") -> Prompt | dict[str, Prompt]:
    """Import one published Su et al. prompt file, or every ``*.pt`` in a folder (by task)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.pt"))
        if not files:
            raise PromptError(f"no *.pt prompt files in {path}")
        prompts = [import_su2022(f, backbone) for f in files]
        return {p.task: p for p in prompts}  # type: ignore[union-attr]
    task, group = SU2022_TASKS.get(path.stem, (path.stem.lower(), ""))
    return Prompt(_load_plain_tensor(path), source_backbone=backbone, task=task, group=group,
                  layout="prepend", training={"origin": "Su et al. 2022 (published)", "file": path.name})


def export_peft(prompt: Prompt, folder: str | Path, base_model: str | None = None) -> Path:
    """Write the PEFT prompt-tuning layout: ``adapter_model.safetensors`` + ``adapter_config.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"prompt_embeddings": prompt.tensor}, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": "SEQ_CLS",
        "num_virtual_tokens": prompt.length,
        "token_dim": prompt.width,
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "base_model_name_or_path": base_model or prompt.source_backbone,
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def import_peft(folder: str | Path, task: str = "unknown") -> Prompt:
    """Read a PEFT prompt-tuning adapter folder (safetensors or a plain-tensor ``.bin``)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    if not config_path.exists():
        raise PromptError(f"{folder} has no adapter_config.json: not a PEFT adapter folder")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "PROMPT_TUNING":
        raise PromptError(f"{folder} is a {config.get('peft_type')!r} adapter, not PROMPT_TUNING")
    if (folder / "adapter_model.safetensors").exists():
        tensors = load_file(str(folder / "adapter_model.safetensors"))
    elif (folder / "adapter_model.bin").exists():
        loaded = torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
        tensors = loaded if isinstance(loaded, dict) else {}
    else:
        raise PromptError(f"{folder} holds no adapter_model.safetensors or adapter_model.bin")
    if "prompt_embeddings" not in tensors:
        raise PromptError(f"{folder} adapter holds no 'prompt_embeddings' (keys: {sorted(tensors)})")
    tensor = tensors["prompt_embeddings"]
    if tensor.shape[0] != config.get("num_virtual_tokens", tensor.shape[0]):
        raise PromptError(f"{folder}: prompt has {tensor.shape[0]} tokens, config says {config['num_virtual_tokens']}")
    return Prompt(tensor, source_backbone=str(config.get("base_model_name_or_path", "unknown")), task=task,
                  training={"origin": "peft", "config": config})
