"""Frozen text and vision backbones, by name.

Vision: ``tiny-vit`` (random, tests), ``dinov2-s14`` (embedded default),
``vit-b16-in21k`` (paper). Text: ``tiny-bert`` (random, tests), ``minilm-l6`` (embedded
default), ``roberta-base`` (paper).

A hub-backed name may carry a local copy as ``NAME@PATH`` (a model folder for text, a
weights file for vision), which is how the paper profile runs without the hub.
"""

from __future__ import annotations

from cmpt.backbones.text import (
    TEXT_BACKBONES,
    PromptedTextEncoder,
    load_text_backbone,
)
from cmpt.backbones.vision import LAYOUTS, PromptedViT, VisionPreprocess, record_attention
from cmpt.backbones.vision_zoo import VISION_BACKBONES, load_vision_backbone

__all__ = [
    "LAYOUTS",
    "PromptedTextEncoder",
    "PromptedViT",
    "TEXT_BACKBONES",
    "VISION_BACKBONES",
    "VisionPreprocess",
    "load_text_backbone",
    "load_vision_backbone",
    "record_attention",
]
