"""Trained target models on disk: the prompt a model feeds its backbone and its head.

A trained :class:`~cmpt.transfer.PromptedClassifier` is fixed by what its prompt source
produces (``prompt`` or ``deep_prompts``) and its head; the frozen backbone is rebuilt from
the profile. One safetensors file holds both (``head.weight``, ``head.bias``), so loading
never runs a pickle, and a later chapter can inspect a model without training it again.

A file that cannot be used (missing, truncated, altered, or saved for another backbone) raises
:class:`ModelFileError`; the fix is always to delete it, so the run is trained and saved again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from cmpt.atomic import write_atomic
from cmpt.backbones.vision import PromptedViT
from cmpt.errors import InputError, check_names
from cmpt.settings import REGISTRY, get_setting
from cmpt.transfer import PromptedClassifier, PromptSource

__all__ = ["PROMPT_KEYS", "ModelFileError", "SavedPrompt", "load_trained", "read_trained", "save_trained"]

#: the prompt tensors a saved model may hold (at most one): what its prompt source fed the backbone
PROMPT_KEYS = ("prompt", "deep_prompts")
HEAD_KEYS = ("head.weight", "head.bias")
#: the prompt tensor each setting's source produces where it is not ``prompt`` (see cmpt.transfer)


class ModelFileError(InputError):
    """A saved trained model that cannot be used; delete the file and the run trains again."""

    def __init__(self, path: str | os.PathLike, reason: str,
                 fix: str = "Delete this file so the run is trained again") -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"saved model {self.path}: {reason}. {fix}.")


class SavedPrompt(PromptSource):
    """The prompt arguments a trained prompt source produced, as fixed buffers (for inspection)."""

    def __init__(self, kwargs: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.names = tuple(kwargs)
        for name, value in kwargs.items():
            self.register_buffer(name, value.detach().clone().float())

    def forward(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in self.names}


def save_trained(model: PromptedClassifier, path: str | os.PathLike) -> Path:
    """Save the prompt ``model`` feeds its backbone (``prompt`` or ``deep_prompts``) and its head, atomically."""
    from safetensors.torch import save_file

    with torch.no_grad():
        tensors = {name: value.detach().cpu().float().contiguous() for name, value in model.prompt_source().items()}
    tensors.update({f"head.{name}": value.detach().cpu().float().contiguous()
                    for name, value in model.head.state_dict().items()})
    return write_atomic(path, lambda part: save_file(tensors, str(part)))


def read_trained(path: str | os.PathLike, setting: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a file written by :func:`save_trained`, checked to make one model.

    Returns ``head.weight`` ``[classes, width]``, ``head.bias`` ``[classes]`` and at most one
    of ``prompt`` ``[length, width]`` or ``deep_prompts`` ``[depth, length, width]``, all
    finite float32. ``setting`` (e.g. ``"vpt_deep"``) also checks that its kind of prompt is
    there. Raises :class:`ModelFileError`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if setting is not None:
        check_names("setting", setting, REGISTRY)
    if not path.is_file():
        raise ModelFileError(path, "no such file", "Run its configuration again to train and save it")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        detail = " ".join(str(err).split())[:160]
        raise ModelFileError(path, f"not a valid safetensors file, truncated or corrupt ({detail})") from None
    problem = _problem(tensors, setting)
    if problem:
        raise ModelFileError(path, problem)
    return {name: value.float().contiguous() for name, value in tensors.items()}


def _problem(tensors: Mapping[str, torch.Tensor], setting: str | None) -> str | None:
    """What keeps ``tensors`` from being one saved model, or None."""
    unknown = sorted(set(tensors) - set(PROMPT_KEYS) - set(HEAD_KEYS))
    if unknown:
        return f"unexpected tensor(s) {', '.join(map(repr, unknown[:5]))}"
    missing = [name for name in HEAD_KEYS if name not in tensors]
    if missing:
        return f"no {' or '.join(missing)}"
    for name, value in tensors.items():
        if not value.is_floating_point() or 0 in value.shape:
            return f"{name} is an empty or {value.dtype} tensor, not floats"
        if not torch.isfinite(value.float()).all():
            return f"{name} holds NaN or infinite values"
    weight, bias = tensors["head.weight"], tensors["head.bias"]
    if weight.dim() != 2 or bias.shape != weight.shape[:1]:
        return f"head.weight {tuple(weight.shape)} and head.bias {tuple(bias.shape)} are not a linear head"
    prompts = [name for name in PROMPT_KEYS if name in tensors]
    if len(prompts) > 1:
        return "both a shallow and a deep prompt"
    found = prompts[0] if prompts else None
    expected = get_setting(setting).saves if setting in REGISTRY else found
    if found != expected:
        return f"a {setting!r} model saves {expected or 'no prompt'}, the file holds {found or 'none'}"
    if found is not None:
        deep = found == "deep_prompts"
        prompt = tensors[found]
        if prompt.dim() != (3 if deep else 2) or prompt.shape[-1] != weight.shape[1]:
            return (f"{found} {tuple(prompt.shape)} does not fit the head {tuple(weight.shape)} "
                    f"(it should be [{'depth, ' if deep else ''}length, {weight.shape[1]}])")
    return None


def load_trained(path: str | os.PathLike, backbone: PromptedViT, setting: str | None = None) -> PromptedClassifier:
    """A :class:`PromptedClassifier` whose forward equals the saved trained model's (prompt fixed).

    Raises :class:`ModelFileError` for a file that :func:`read_trained` refuses or that was
    saved for a backbone of another width or depth.
    """
    tensors = read_trained(path, setting)
    width, classes = tensors["head.weight"].shape[1], tensors["head.weight"].shape[0]
    if width != backbone.width:
        raise ModelFileError(path, f"its head and prompt are {width} wide but backbone {backbone.name!r} "
                                   f"is {backbone.width} wide")
    deep = tensors.get("deep_prompts")
    if deep is not None and deep.shape[0] != backbone.depth:
        raise ModelFileError(path, f"its deep prompts are for {deep.shape[0]} blocks but backbone "
                                   f"{backbone.name!r} has {backbone.depth}")
    prompt = {k: v for k, v in tensors.items() if k in PROMPT_KEYS}
    model = PromptedClassifier(backbone, SavedPrompt(prompt), num_classes=classes)
    model.head.load_state_dict({name[len("head."):]: tensors[name] for name in HEAD_KEYS})
    return model.eval()
