"""Soft prompts as portable files, independent of any model.

A prompt is a ``[length, width]`` float tensor plus metadata (source backbone, task,
layout, training summary). On disk it is one safetensors file: the tensor under the key
``prompt`` and the metadata as JSON in the header, so loading never runs a pickle.

Importers cover the published Su et al. (2022) RoBERTa prompts (``torch.save``d plain
tensors, read with ``weights_only=True``) and the PEFT prompt-tuning layout
(``adapter_model.safetensors`` with ``prompt_embeddings`` + ``adapter_config.json``).

Every loader either returns a well-formed :class:`Prompt` or raises one :class:`PromptError`
whose one-line message names the file: truncated or corrupt bytes, metadata or a config that
disagrees with the tensor, a pickle that is not plain tensors.
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
        # convert first: isfinite has no kernel for the float8 types, and a float64 value may overflow float32
        tensor = self.tensor.detach().to(torch.float32).contiguous()
        if not torch.isfinite(tensor).all():
            raise PromptError("the prompt holds NaN or infinite values")
        for name in ("source_backbone", "task", "group", "layout"):
            if not isinstance(getattr(self, name), str):
                raise PromptError(f"a prompt's {name} must be a string, got {getattr(self, name)!r:.60}")
        if not isinstance(self.training, dict):
            raise PromptError(f"a prompt's training summary must be a dict, got {type(self.training).__name__}")
        self.tensor = tensor

    @property
    def length(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def width(self) -> int:
        return int(self.tensor.shape[1])

    @property
    def norm(self) -> float:
        """The mean L2 norm of its tokens (the paper's "prompt norm")."""
        return float(self.tensor.float().norm(dim=-1).mean())

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
    """Read a prompt written by :func:`save_prompt`; :class:`PromptError` for any file that is not one."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PromptError(f"no prompt file at {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta_text = (handle.metadata() or {}).get("cmpt_prompt")
            if "prompt" not in handle.keys():
                raise PromptError(f"{path} holds no 'prompt' tensor (keys: {_keys(handle.keys())}); "
                                  "write prompts with cmpt.prompts.save_prompt")
            tensor = handle.get_tensor("prompt")
    except (SafetensorError, OSError) as err:
        raise PromptError(f"{path} is not a valid safetensors file (truncated or corrupt?): {_detail(err)}; "
                          "write it again with cmpt.prompts.save_prompt") from None
    meta = _prompt_metadata(path, meta_text)
    fields = {k: meta[k] for k in ("source_backbone", "task", "group", "layout", "training") if k in meta}
    prompt = _prompt(path, tensor, **fields)
    for key, actual in (("length", prompt.length), ("width", prompt.width)):
        if key in meta and (not _is_int(meta[key]) or meta[key] != actual):
            raise PromptError(f"{path}: its metadata says {key} {meta[key]!r:.40} but the tensor is "
                              f"{prompt.length} x {prompt.width}; the file was altered, write it again")
    return prompt


def _prompt_metadata(path: Path, text: str | None) -> dict[str, Any]:
    """The ``cmpt_prompt`` metadata of a prompt file (empty when it has none)."""
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PromptError(f"{path}: its cmpt_prompt metadata is not valid JSON ({_detail(err)}); "
                          "write the file again with cmpt.prompts.save_prompt") from None
    if not isinstance(meta, dict):
        raise PromptError(f"{path}: its cmpt_prompt metadata is a {type(meta).__name__}, not an object")
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        raise PromptError(f"{path}: prompt format version {version!r:.40} is not one this cmpt reads "
                          f"(1..{FORMAT_VERSION}); update cmpt or write the file again")
    return meta


def _prompt(path: Path, tensor: Any, **fields: Any) -> Prompt:
    """A :class:`Prompt` from a file's contents; a refusal names the file."""
    try:
        return Prompt(tensor, **fields)
    except PromptError as err:
        raise PromptError(f"{path}: {err}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _keys(keys: Any) -> str:
    names = sorted(map(repr, keys))  # repr: a key may hold any character, a newline too
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") if names else "none"


def _detail(err: BaseException) -> str:
    """An exception's message on one short line (library messages can span several)."""
    return " ".join(str(err).split())[:200] or type(err).__name__


def _torch_load(path: Path) -> Any:
    """``torch.load(path, weights_only=True)``; :class:`PromptError` when the file is hostile or unreadable.

    ``weights_only`` only rebuilds tensors and plain containers, never arbitrary objects.
    """
    if not path.is_file():
        raise PromptError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise PromptError(
            f"{path} is not a plain tensor checkpoint; refusing to unpickle it "
            f"(it may run code). Save prompts with cmpt.prompts.save_prompt. Detail: {_detail(err)}"
        ) from None
    except Exception as err:  # noqa: BLE001 - torch's reader fails on a damaged file with many types
        raise PromptError(f"{path} could not be read as a torch checkpoint (corrupt or truncated?): "
                          f"{type(err).__name__}: {_detail(err)}") from None


def _load_plain_tensor(path: Path) -> torch.Tensor:
    obj = _torch_load(path)
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
    return _prompt(path, _load_plain_tensor(path), source_backbone=backbone, task=task, group=group,
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
    """Read a PEFT prompt-tuning adapter folder (safetensors or a plain-tensor ``.bin``).

    The tensor must agree with the config: ``num_virtual_tokens`` (times
    ``num_transformer_submodules``) rows of ``token_dim`` columns.
    """
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise PromptError(f"{folder} has no adapter_config.json: not a PEFT adapter folder")
    config = _peft_config(config_path)
    if (folder / "adapter_model.safetensors").exists():
        weights = folder / "adapter_model.safetensors"
        tensors = _peft_safetensors(weights)
    elif (folder / "adapter_model.bin").exists():
        weights = folder / "adapter_model.bin"
        tensors = _torch_load(weights)
        if not isinstance(tensors, dict):
            raise PromptError(f"{weights} holds a {type(tensors).__name__}, not a dict of tensors; "
                              "export the adapter again with PEFT's save_pretrained")
    else:
        raise PromptError(f"{folder} holds no adapter_model.safetensors or adapter_model.bin")
    if "prompt_embeddings" not in tensors:
        raise PromptError(f"{weights} holds no 'prompt_embeddings' (keys: {_keys(tensors)}); "
                          "is it a prompt-tuning adapter?")
    backbone = config.get("base_model_name_or_path")
    prompt = _prompt(weights, tensors["prompt_embeddings"], task=task,
                     source_backbone="unknown" if backbone is None else str(backbone),
                     training={"origin": "peft", "config": config})
    tokens = config.get("num_virtual_tokens", prompt.length) * config.get("num_transformer_submodules", 1)
    if "num_virtual_tokens" in config and prompt.length != tokens:
        raise PromptError(f"{folder}: the prompt has {prompt.length} tokens but adapter_config.json says "
                          f"{tokens} (num_virtual_tokens x num_transformer_submodules); "
                          "the two files do not belong together")
    if prompt.width != config.get("token_dim", prompt.width):
        raise PromptError(f"{folder}: the prompt is {prompt.width} wide but adapter_config.json says token_dim "
                          f"{config['token_dim']}; the two files do not belong together")
    return prompt


def _peft_config(path: Path) -> dict[str, Any]:
    """A PEFT prompt-tuning ``adapter_config.json``, its sizes checked to be counts."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, bytes that are not UTF-8
        raise PromptError(f"{path} is not valid JSON (truncated or corrupt?): {_detail(err)}; "
                          "export the adapter again") from None
    if not isinstance(config, dict):
        raise PromptError(f"{path} holds a JSON {type(config).__name__}, not an object: not a PEFT adapter config")
    if config.get("peft_type") != "PROMPT_TUNING":
        raise PromptError(f"{path} is a {config.get('peft_type')!r:.40} adapter, not PROMPT_TUNING")
    for key in ("num_virtual_tokens", "token_dim", "num_transformer_submodules"):
        if key in config and not (_is_int(config[key]) and config[key] >= 1):
            raise PromptError(f"{path}: {key} is {config[key]!r:.40}, not a positive integer")
    return config


def _peft_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise PromptError(f"{path} is not a valid safetensors file (truncated or corrupt?): {_detail(err)}; "
                          "export the adapter again") from None
