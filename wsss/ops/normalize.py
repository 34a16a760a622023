"""Per-class min-max normalisation of CAMs (methods.md section 2.3)."""

from __future__ import annotations

import torch


def minmax_per_class(cams: torch.Tensor, eps: float = 1e-8, inplace: bool = False) -> torch.Tensor:
    """``... x H x W`` maps -> each map shifted to minimum 0 and divided by (its new maximum + eps).

    One function for every method; the official codes differ only in ``eps``
    (AReAM's ``camutils``: 1e-6; ClusterCAM's ``multi_scale_cam2``: 1e-5; the
    pipeline's CAM extraction: 1e-8). ``inplace=True`` overwrites ``cams``.
    Values are in [0, 1) for eps > 0.
    """
    low = cams.amin(dim=(-2, -1), keepdim=True)
    cams = cams.sub_(low) if inplace else cams - low
    high = cams.amax(dim=(-2, -1), keepdim=True) + eps
    return cams.div_(high) if inplace else cams / high
