"""Plain CAM-attention couplings: the baselines AD-CAM (arXiv 2211.10931) argues against.

AD-CAM's abstract contrasts itself with the naive coupling of a CAM with ViT
attention, the pixel-wise product of activation and attention used by
TS-CAM / TransCAM-style methods, which widens coverage but adds background
false positives (methods.md section 5.1). This module provides that coupling
as a refiner so the comparison runs through the same extraction code:

- ``cam_x_attention`` ("CAM × attention"): M'_c = M_c ⊙ Â_c, where Â_c is
  the head-mean class-token -> patch attention of class c, averaged over the
  blocks in ``layers`` (default ``"all"``), each class map divided by its
  maximum so the product keeps the incoming CAM's scale.

The results table's "CAM × attention" row uses this refiner on the
**PatchCAM** (``cam: {fusion: patchcam}`` in the variant), so that the row is
the pure pixel-wise coupling ReLU(PatchCAM) ⊙ attention and not the
default fused CAM (which already multiplies by the last-3-block attention).

MCTformer's other coupling, the patch-affinity propagation, is the refiner
``affinity`` in :mod:`wsss.methods.mctformer`.
"""

from __future__ import annotations

from typing import Any

import torch

from wsss.methods.base import CamRefiner, Param, register_refiner
from wsss.models.attention import blocks_for, check_layers


def normalized_class_attention(
    attentions: list[torch.Tensor], num_classes: int, grid: tuple[int, int], layers: Any = "all"
) -> torch.Tensor:
    """Head-mean class->patch attention averaged over the chosen blocks, each class map scaled to max 1.

    Returns B x C x h x w float32 (class tokens come first in the B x heads x T x T maps).
    An all-zero map stays zero.
    """
    blocks = blocks_for(len(attentions), layers, "method_params.cam_x_attention.layers")
    total = None
    for i in blocks:
        a = attentions[i][:, :, :num_classes, num_classes:].mean(dim=1, dtype=torch.float32)
        total = a if total is None else total + a
    maps = (total / len(blocks)).reshape(total.shape[0], num_classes, *grid)
    peak = maps.amax(dim=(-2, -1), keepdim=True)
    return maps / torch.where(peak > 0, peak, torch.ones_like(peak))


def couple(cam: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Pixel-wise product of a B x C x h x w CAM with a B x C x h x w attention map (float32)."""
    return cam.float() * attention.float()


@register_refiner
class CamTimesAttention(CamRefiner):
    """CAM ⊙ class-to-patch attention (max-normalised per class): TS-CAM/TransCAM-style coupling."""

    name = "cam_x_attention"
    label = "CAM × attention"
    # blocks for the class->patch attention: "all", k (last k) or indices
    params_spec = {"layers": Param("all", "blocks")}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        super().__init__(params)
        self.params["layers"] = check_layers(
            self.params["layers"], f"method_params.{self.name}.layers"
        )

    def __call__(self, cam, output, method, recipe):
        attention = normalized_class_attention(
            output.attentions, output.num_classes, output.grid, self.params["layers"]
        )
        return couple(cam, attention)
