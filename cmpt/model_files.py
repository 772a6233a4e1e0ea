"""Trained target models on disk: the prompt a model feeds its backbone and its head.

A trained :class:`~cmpt.transfer.PromptedClassifier` is fixed by what its prompt source
produces (``prompt`` or ``deep_prompts``) and its head; the frozen backbone is rebuilt from
the profile. One safetensors file holds both (``head.weight``, ``head.bias``), so loading
never runs a pickle, and a later chapter can inspect a model without training it again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from cmpt.atomic import write_atomic
from cmpt.backbones.vision import PromptedViT
from cmpt.transfer import PromptedClassifier, PromptSource

__all__ = ["SavedPrompt", "load_trained", "save_trained"]


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


def load_trained(path: str | os.PathLike, backbone: PromptedViT) -> PromptedClassifier:
    """A :class:`PromptedClassifier` whose forward equals the saved trained model's (prompt fixed)."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    head = {name[len("head."):]: value for name, value in tensors.items() if name.startswith("head.")}
    model = PromptedClassifier(backbone, SavedPrompt({k: v for k, v in tensors.items() if not k.startswith("head.")}),
                               num_classes=head["weight"].shape[0])
    model.head.load_state_dict(head)
    return model.eval()
