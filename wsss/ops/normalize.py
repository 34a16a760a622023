"""Per-class min-max normalisation of CAMs (methods.md section 2.3), with flat and
non-finite maps handled explicitly."""

from __future__ import annotations

import torch

FLAT_RTOL = 1e-4
"""A map whose spread (max - min) is at most this fraction of its magnitude is flat.

Rounding alone gives a constant map a spread of a few float32 ulps (about 1e-7 of its
value) after bilinear resizing and summing scales; 1e-4 leaves a margin of about 1000x
above that, and a map that varies by less than 0.01 % holds no localisation."""

FLAT_ATOL = 1e-12
"""A map whose spread is at most this is flat whatever its magnitude: maps of
(near-)denormal values, which the relative rule cannot judge."""


class NonFiniteCamError(ValueError):
    """A CAM holds NaN or an infinity. ``index``: the leading indices of the first such
    map (``(batch, class)`` for a B x C x H x W tensor), so that a caller that knows the
    batch's image ids and the class names can name them."""

    def __init__(self, index: tuple[int, ...], message: str | None = None) -> None:
        self.index = tuple(int(i) for i in index)
        super().__init__(
            message or f"CAM map at index {self.index} holds a non-finite value (NaN or inf)"
        )


def flat_maps(
    low: torch.Tensor,
    high: torch.Tensor,
    spread: torch.Tensor,
    rtol: float = FLAT_RTOL,
    atol: float = FLAT_ATOL,
) -> torch.Tensor:
    """Which maps are flat: ``spread <= rtol * max(|high|, |low|)`` or ``spread <= atol``.

    ``low``/``high``: each map's minimum and maximum, ``spread``: its max - min (any
    broadcastable shapes). Returns a bool tensor.
    """
    magnitude = torch.maximum(high.abs(), low.abs())
    return (spread <= rtol * magnitude) | (spread <= atol)


def minmax_per_class(
    cams: torch.Tensor,
    eps: float = 1e-8,
    inplace: bool = False,
    rtol: float = FLAT_RTOL,
    atol: float = FLAT_ATOL,
) -> torch.Tensor:
    """``... x H x W`` maps -> each map shifted to minimum 0 and divided by (its new maximum + eps).

    One function for every method; the official codes differ only in ``eps``
    (AReAM's ``camutils``: 1e-6; ClusterCAM's ``multi_scale_cam2``: 1e-5; the
    pipeline's CAM extraction: 1e-8). ``inplace=True`` overwrites ``cams``.
    Values are in [0, 1) for eps > 0.

    A flat map (:func:`flat_maps`: spread at most ``rtol`` of its magnitude, or at most
    ``atol``) becomes all zeros: the official formula would stretch its rounding noise to
    the full range (a constant 0.7 map, bilinearly upsampled to 32 x 48, ended with 97 %
    of its pixels above 0.3). Every other map is computed exactly as by the official
    formula (bitwise: the same operations in the same order), so the rule changes flat
    maps only.

    Raises :class:`NonFiniteCamError` (a ValueError) with the leading indices of the
    first map holding NaN or an infinity; nothing is written to ``cams`` then.
    """
    low = cams.amin(dim=(-2, -1), keepdim=True)
    top = cams.amax(dim=(-2, -1), keepdim=True)
    # amin/amax propagate NaN, and an infinity is an extreme: the reductions find them all.
    finite = torch.isfinite(low) & torch.isfinite(top)
    if not bool(finite.all()):
        first = torch.nonzero(~finite.reshape(finite.shape[:-2]))[0]
        raise NonFiniteCamError(tuple(first.tolist()))
    cams = cams.sub_(low) if inplace else cams - low
    spread = cams.amax(dim=(-2, -1), keepdim=True)
    flat = flat_maps(low, top, spread, rtol, atol)
    high = spread + eps
    cams = cams.div_(high) if inplace else cams / high
    return cams.masked_fill_(flat, 0.0)
