"""Optimizer parameter groups for fine-tuning a ViT: weight decay, layer-wise lr decay, frozen blocks.

Layer-wise learning-rate decay (BEiT, Bao et al. 2022, section 2.6; MAE
fine-tuning, He et al. 2022, appendix A) gives layer ``l`` of an ``L``-block
ViT the rate ``lr * decay ** (L + 1 - l)``: the patch and position embeddings
are layer 0, block i is layer i + 1, and everything after the blocks (heads,
final norm) is layer L + 1 at the full rate. Freezing the first k blocks (and
the embeddings below them) is the limit ``decay -> 0`` for those layers.

Parameters that do not exist in the pretrained backbone are new and train at
the full rate, whatever their position: here the multi-class-token model's
class tokens and their position embeddings (copies of the pretrained class
token, but trained to become class-specific) and the PatchCAM head.

Works on any module whose parameter names follow timm's ViT layout
(``patch_embed.*``, ``pos_embed``, ``cls_token``, ``blocks.<i>.*``), including
``wsss.models.MultiClassTokenViT``.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

EMBEDDING_PREFIXES = ("patch_embed.", "pos_embed", "patch_pos_embed", "cls_token", "norm_pre.")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, ``depth + 1`` for everything else."""
    if name.startswith(EMBEDDING_PREFIXES):
        return 0
    match = _BLOCK.match(name)
    if match:
        return int(match.group(1)) + 1
    return depth + 1


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms, tokens and position embeddings take no weight decay (timm/DeiT practice)."""
    return param.ndim <= 1 or name.endswith(("tokens", "pos_embed")) or "token" in name


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    freeze_blocks: int = 0,
) -> list[dict[str, Any]]:
    """AdamW-ready parameter groups, each with an ``lr_scale`` to multiply the scheduled lr by.

    ``layer_decay`` in (0, 1]: 1 is the plain recipe (every ``lr_scale`` 1).
    ``freeze_blocks`` k in 0..depth: the embeddings and blocks 0..k-1 get
    ``requires_grad = False`` and appear in no group (0 freezes nothing).
    The model's depth is ``len(model.blocks)``. Groups are split by layer and
    by weight decay (see :func:`no_weight_decay`); an empty group is dropped.
    The training loop must set ``group["lr"] = scheduled_lr * group["lr_scale"]``.
    Raises ValueError for a model without ``blocks`` or an out-of-range option.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks; cannot assign layers")
    depth = len(blocks)
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"train.layer_decay must be in (0, 1], got {layer_decay}")
    if not 0 <= freeze_blocks <= depth:
        raise ValueError(f"train.freeze_blocks must be in 0..{depth}, got {freeze_blocks}")
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        layer = layer_id(name, depth)
        if freeze_blocks and layer <= freeze_blocks:
            param.requires_grad_(False)
            continue
        if not param.requires_grad:
            continue
        decay = not no_weight_decay(name, param)
        group = groups.setdefault(
            (layer, decay),
            {
                "params": [],
                "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (depth + 1 - layer),
                "layer": layer,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return [groups[key] for key in sorted(groups)]
