"""Building the named vision backbones (tiny random, embedded default, paper)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from cmpt.assets import AssetError
from cmpt.errors import check_names
from cmpt.backbones.vision import PromptedViT, VisionPreprocess

__all__ = ["VISION_BACKBONES", "VISION_SHAPES", "load_vision_backbone", "split_location"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def split_location(name: str) -> tuple[str, str | None]:
    """``"vit-b16-in21k@/data/w.safetensors"`` -> ``("vit-b16-in21k", "/data/w.safetensors")``."""
    if "@" in name:
        base, _, where = name.partition("@")
        return base, where
    return name, None


def _tiny_vit(image_size: int, local: str | None) -> tuple[torch.nn.Module, VisionPreprocess]:
    from timm.models.vision_transformer import VisionTransformer

    patch = 8 if image_size % 8 == 0 else 4
    if image_size % patch:
        raise ValueError(f"tiny-vit needs an image size divisible by 4, got {image_size}")
    torch.manual_seed(0)
    vit = VisionTransformer(img_size=image_size, patch_size=patch, embed_dim=32, depth=2, num_heads=2,
                            mlp_ratio=2.0, num_classes=0)
    return vit, VisionPreprocess(image_size, IMAGENET_MEAN, IMAGENET_STD)


def _dinov2_s14(image_size: int, local: str | None) -> tuple[torch.nn.Module, VisionPreprocess]:
    import timm
    from safetensors.torch import load_file
    from timm.layers import resample_abs_pos_embed

    from cmpt.backbones.dinov2_onnx import converted_weights

    if image_size % 14:
        raise ValueError(f"dinov2-s14 has 14-pixel patches: image_size must be a multiple of 14, got {image_size}")
    weights = Path(local) if local else converted_weights()
    sd = load_file(str(weights))
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=image_size, num_classes=0)
    grid = image_size // 14
    # plain bicubic (no antialias), as the Hugging Face Dinov2 graph resizes it
    sd["pos_embed"] = resample_abs_pos_embed(sd["pos_embed"], new_size=(grid, grid), num_prefix_tokens=1,
                                             interpolation="bicubic", antialias=False)
    vit.load_state_dict(sd, strict=True)
    return vit, VisionPreprocess(image_size, IMAGENET_MEAN, IMAGENET_STD)


def _vit_b16_in21k(image_size: int, local: str | None) -> tuple[torch.nn.Module, VisionPreprocess]:
    import timm

    model_name = "vit_base_patch16_224.orig_in21k"
    kwargs: dict = {"pretrained": True, "num_classes": 0, "img_size": image_size}
    if local:
        if not Path(local).exists():
            raise AssetError(f"vit-b16-in21k weights file {local!r} does not exist")
        kwargs["pretrained_cfg_overlay"] = {"file": str(local)}
    try:
        vit = timm.create_model(model_name, **kwargs)
    except Exception as err:  # hub unreachable, file missing, ...
        raise AssetError(
            f"could not load {model_name} (ViT-B/16 in21k): {type(err).__name__}: {str(err)[:300]}. "
            "The paper profile needs the Hugging Face hub, or a local copy: download the file "
            "model.safetensors of the hub repository 'timm/vit_base_patch16_224.orig_in21k' and set "
            "vision_backbone='vit-b16-in21k@/path/to/model.safetensors'."
        ) from err
    pretrained = vit.pretrained_cfg
    mean = tuple(pretrained.get("mean", (0.5, 0.5, 0.5)))
    std = tuple(pretrained.get("std", (0.5, 0.5, 0.5)))
    return vit, VisionPreprocess(image_size, mean, std)  # type: ignore[arg-type]


#: what a cost model needs of each backbone: width, depth, patch size, MLP ratio (tiny-vit's patch
#: is 8 pixels, or 4 where the image size is not a multiple of 8)
VISION_SHAPES: dict[str, tuple[int, int, int, float]] = {
    "tiny-vit": (32, 2, 8, 2.0),
    "dinov2-s14": (384, 12, 14, 4.0),
    "vit-b16-in21k": (768, 12, 16, 4.0),
}

VISION_BACKBONES: dict[str, Callable[[int, str | None], tuple[torch.nn.Module, VisionPreprocess]]] = {
    "tiny-vit": _tiny_vit,
    "dinov2-s14": _dinov2_s14,
    "vit-b16-in21k": _vit_b16_in21k,
}


def load_vision_backbone(name: str, image_size: int, layout: str = "before_cls",
                         mean: tuple[float, ...] | None = None,
                         std: tuple[float, ...] | None = None,
                         sdpa: bool | None = None, cls_shortcut: bool = True) -> PromptedViT:
    """A frozen, prompt-ready vision backbone.

    ``mean``/``std`` override the backbone's own normalisation (the paper's in21k ViT was
    used with ImageNet statistics while its own config says 0.5/0.5). ``sdpa`` and
    ``cls_shortcut`` are :class:`PromptedViT`'s speed-up switches (see there).
    """
    base, local = split_location(name)
    check_names("vision backbone", base, VISION_BACKBONES)
    vit, prep = VISION_BACKBONES[base](image_size, local)
    if mean is not None or std is not None:
        prep = VisionPreprocess(prep.image_size, tuple(mean or prep.mean), tuple(std or prep.std))  # type: ignore[arg-type]
    return PromptedViT(vit, prep, layout=layout, name=base, sdpa=sdpa, cls_shortcut=cls_shortcut)
