"""Geometry of multi-scale / flip inference, shared by CAM extraction, the methods'
online pseudo-labels and the segmentation decoders.

A pass rescales the batch, zero-pads it to a multiple of the patch size (zero is
the mean colour after normalisation; AReAM's code does the same, the official
MCTformer and ClusterCAM scripts instead drop the remainder, see
``docs/methods/*.md``), runs the network, and maps the output back: upsample to
the padded size, crop the padding, resize to the image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def scaled_size(height: int, width: int, scale: float, rounding: str = "round") -> tuple[int, int]:
    """The size of an ``height x width`` image at ``scale``: ``round`` (at least 1 px, the
    pipeline's CAM extraction and decoders) or ``floor`` (``int(s * size)``, ClusterCAM's code)."""
    if rounding == "round":
        return max(1, round(height * scale)), max(1, round(width * scale))
    if rounding == "floor":
        return max(1, int(height * scale)), max(1, int(width * scale))
    raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")


def resize(images: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of B x K x H x W to ``size`` (align_corners=False); the input when equal."""
    if tuple(size) == tuple(images.shape[-2:]):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)


def pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad bottom/right of B x 3 x H x W to multiples of ``multiple``."""
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    return F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images


def to_image(
    maps: torch.Tensor, padded: Sequence[int], valid: Sequence[int], out: Sequence[int]
) -> torch.Tensor:
    """Grid maps of a padded input -> upsampled to ``padded``, the padding cropped to
    ``valid``, resized to ``out`` (all bilinear, align_corners=False)."""
    maps = F.interpolate(maps, size=tuple(padded), mode="bilinear", align_corners=False)
    return resize(maps[..., : valid[0], : valid[1]], out)


def max_softmax_over_scales(
    x: torch.Tensor,
    scales: Sequence[float],
    logits_at: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
) -> torch.Tensor:
    """Normalised B x 3 x H x W -> B x K x H x W: element-wise max over scales of the
    softmax (methods.md 1.3; no flip, as the official scripts). ``logits_at(scaled, (H, W))``
    returns the logits of the rescaled batch resized back to the image size."""
    if not scales:
        raise ValueError("segmentation inference needs at least one scale")
    height, width = x.shape[-2:]
    best = None
    for scale in scales:
        scaled = resize(x, scaled_size(height, width, scale))
        probs = logits_at(scaled, (height, width)).float().softmax(1)
        best = probs if best is None else torch.maximum(best, probs)
    return best


def padded_logits_at(
    forward: Callable[[torch.Tensor], torch.Tensor], patch_size: int
) -> Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]:
    """A ``logits_at`` for :func:`max_softmax_over_scales` around a patch-grid network:
    pad to the patch multiple, run ``forward``, map the logits back to the image."""

    def logits_at(scaled: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        padded = pad_to_multiple(scaled, patch_size)
        logits = forward(padded).float()
        return F.interpolate(
            to_image(logits, padded.shape[-2:], scaled.shape[-2:], scaled.shape[-2:]),
            size=image_size,
            mode="bilinear",
            align_corners=False,
        )

    return logits_at
