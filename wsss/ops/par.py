"""Pixel-adaptive refinement (PAR) and the two-threshold pseudo-label rule.

PAR (Ru et al., ToCo / AFA; the version AReAM and ClusterCAM ship) refines a
stack of score maps with the image's own colours: each pixel repeatedly takes
an affinity-weighted sum of its 8 neighbours at several dilations
(methods.md section 1.4). What this module does, read from the official
``networks/PAR.py`` of ``Jessie459/AReAM`` (identical to ToCo's):

* Neighbours: for each dilation d in ``dilations`` the 8 pixels at offsets
  (+-d, +-d), (+-d, 0), (0, +-d), so 8 x len(dilations) = 48 neighbours by
  default. The pixel itself is not one of its neighbours. Borders are
  replicate-padded (a neighbour outside the image is the nearest border
  pixel), i.e. clamped coordinates.
* Colour affinity: for every channel, ``-(|I_i - I_j| / (std_j(I) + eps) / w1)^2``
  where ``std_j`` is the (unbiased) standard deviation of the 48 neighbours'
  values of that channel at pixel i; averaged over the RGB channels, then a
  softmax over the 48 neighbours.
* Positional term (our reading of "a softmax of a positional-distance
  term", which is what the code does): the distance of each neighbour,
  ``d`` for the 4 axis neighbours and ``d * sqrt(2)`` for the 4 diagonal ones,
  scored as ``-(dist / std(dist) / w1)^2`` (the same ``w1``) and
  softmaxed over the 48 neighbours. It is the same for every pixel and favours
  the near neighbours. The final affinity is ``softmax(colour) + w2 * softmax(pos)``.
* Each of ``num_iters`` iterations sets ``mask_i = sum_j affinity_ij mask_j``
  (:meth:`PAR.propagate`: shifted views on GPU, a sparse matrix on CPU).

Matches a transcription of the official module to ~1e-6. Input masks: any
B x K x H x W scores (AReAM passes per-pixel softmax probabilities).

Note the affinity sums to ``1 + w2`` per pixel in the official code, so every
iteration scales all masks by 1.01: harmless for the arg-max the pseudo-labels
take, but a constant mask is returned as ``c * 1.01**10``. ``renormalize=True``
divides by ``1 + w2`` so the refinement is a convex combination (a constant
mask is then returned unchanged); the default keeps the code's behaviour.

Images: B x 3 x H x W in any linear intensity scale. The colour term divides
a difference by a standard deviation of the same channel, so it is invariant
to the scale (denormalised [0, 1] and 0..255 give the same affinity up to the
``eps``). :func:`denormalize` turns the pipeline's ImageNet-normalised
training images back into [0, 1], as the official code does before PAR.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.classification import IMAGENET_MEAN, IMAGENET_STD

# The 8 neighbour offsets (dy, dx) in the order of the official kernel:
# row-major over the 3x3 window, centre skipped. Diagonals are 0, 2, 5, 7.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# neighbour index tables kept per PAR module (image sizes vary at pseudo-label time)
_INDEX_CACHE_SIZE = 8
# CPU chunk size of PAR, in neighbour values (images x 3 x H*W x M): 4 MiB of float32
_CHUNK_VALUES = 1 << 20


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std normalised B x 3 x H x W -> RGB in [0, 1] (float32)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, -1, 1, 1)
    return images.float() * std + mean


class PAR(nn.Module):
    """Pixel-adaptive refinement of B x K x H x W masks guided by B x 3 x H x W images."""

    def __init__(
        self,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        num_iters: int = 10,
        w1: float = 0.3,
        w2: float = 0.01,
        eps: float = 1e-8,
        renormalize: bool = False,
    ) -> None:
        super().__init__()
        if not dilations or any(int(d) < 1 for d in dilations):
            raise ValueError(f"PAR dilations must be positive integers, got {list(dilations)}")
        self.dilations = tuple(int(d) for d in dilations)
        self.num_iters = int(num_iters)
        self.w1 = float(w1)
        self.w2 = float(w2)
        self.eps = float(eps)
        self.renormalize = bool(renormalize)
        self._offsets = [(dy * d, dx * d) for d in self.dilations for dy, dx in _OFFSETS]
        # d for the axis neighbours, d * sqrt(2) for the diagonal ones
        distance = torch.tensor(self._offsets, dtype=torch.float32).norm(dim=1)
        self.register_buffer("distance", distance, persistent=False)
        # neighbour index tables and sparse patterns, least recently used first
        self._index_cache: dict[tuple, Any] = {}

    @property
    def gain(self) -> float:
        """What the refinement multiplies a constant mask by: every pixel's weights sum to
        ``1 + w2`` (1 if renormalised), ``num_iters`` times."""
        return (1.0 if self.renormalize else 1.0 + self.w2) ** self.num_iters

    def positional_weights(self) -> torch.Tensor:
        """The positional part of the affinity: M weights summing to 1, the same at every pixel."""
        distance = self.distance
        return (-((distance / (distance.std() + self.eps) / self.w1) ** 2)).softmax(dim=0)

    @property
    def num_neighbours(self) -> int:
        return len(self._offsets)

    def neighbour_index(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """(H*W) x M flat index of each pixel's M neighbours, border-clamped (cached per size)."""
        key = (height, width, str(device))
        index = self._index_cache.pop(key, None)
        if index is None:
            offsets = torch.tensor(self._offsets, device=device)
            rows = (torch.arange(height, device=device).view(-1, 1, 1) + offsets[:, 0]).clamp(
                0, height - 1
            )
            cols = (torch.arange(width, device=device).view(1, -1, 1) + offsets[:, 1]).clamp(
                0, width - 1
            )
            index = (rows * width + cols).reshape(height * width, self.num_neighbours)
        self._index_cache[key] = index  # most recently used last
        while len(self._index_cache) > _INDEX_CACHE_SIZE:
            self._index_cache.pop(next(iter(self._index_cache)))
        return index

    def _gather_neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """B x K x H x W -> contiguous B x K x (H*W) x M: one gather of every pixel's neighbours.

        Neighbours last keeps the reductions over them contiguous, and the
        weights come out in the row layout the sparse propagation needs.
        """
        batch, channels, height, width = x.shape
        index = self.neighbour_index(height, width, x.device)
        # index_select on a 2-D view: on a 3-D tensor's last dim it is ~50x slower on CPU
        flat = x.reshape(batch * channels, height * width)
        return flat.index_select(1, index.view(-1)).view(
            batch, channels, height * width, self.num_neighbours
        )

    def neighbours(self, x: torch.Tensor) -> torch.Tensor:
        """B x K x H x W values -> B x K x M x H x W values of every pixel's M neighbours."""
        batch, channels, height, width = x.shape
        gathered = self._gather_neighbours(x).view(batch, channels, height, width, -1)
        return gathered.permute(0, 1, 4, 2, 3)

    def affinity(self, images: torch.Tensor) -> torch.Tensor:
        """The B x M x H x W refinement weights (each pixel's weights sum to 1 + w2, or 1 if renormalised).

        Returned as a view of a contiguous B x H x W x M tensor (neighbours last),
        computed :meth:`images_per_chunk` images at a time.
        """
        images = images.float()
        batch, _, height, width = images.shape
        chunk = self.images_per_chunk(images)
        if chunk >= batch:
            weights = self._affinity_rows(images)
        else:
            weights = torch.empty(batch, height * width, self.num_neighbours, device=images.device)
            for start in range(0, batch, chunk):
                self._affinity_rows(
                    images[start : start + chunk], out=weights[start : start + chunk]
                )
        return weights.view(batch, height, width, -1).permute(0, 3, 1, 2)

    def _affinity_rows(self, images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """B x 3 x H x W float images -> B x HW x M weights (into ``out`` if given).

        In place where no gradient reaches the images (the usual case: fewer
        full-size temporaries); out of place, same arithmetic, where one does.
        """
        batch, channels, _, _ = images.shape
        inplace = not (torch.is_grad_enabled() and images.requires_grad)
        neighbours = self._gather_neighbours(images)  # B x 3 x HW x M
        count = neighbours.shape[-1]
        # unbiased std over the neighbours, two-pass
        centred = neighbours - neighbours.mean(dim=-1, keepdim=True)
        squares = centred.square_() if inplace else centred.square()
        spread = (squares.sum(dim=-1, keepdim=True) / (count - 1)).sqrt()
        del centred, squares
        # -(|I_i - I_j| / (std + eps) / w1)^2, with the division done once on the small tensor
        scale = -1.0 / (channels * ((spread + self.eps) * self.w1) ** 2)
        centre = images.reshape(batch, channels, -1, 1)
        if inplace:
            terms = neighbours.sub_(centre).square_().mul_(scale)
        else:
            terms = (neighbours - centre).square() * scale
        colour = terms.sum(dim=1).softmax(dim=-1)  # mean over channels (scale holds the 1/3)
        position = self.w2 * self.positional_weights().to(colour)
        if out is not None:
            weights = torch.add(colour, position, out=out)
        else:
            weights = colour.add_(position) if inplace else colour + position
        if self.renormalize:
            weights = weights.div_(1.0 + self.w2) if inplace else weights / (1.0 + self.w2)
        return weights

    def propagate(
        self, masks: torch.Tensor, weights: torch.Tensor, backend: str = "auto"
    ) -> torch.Tensor:
        """``num_iters`` rounds of ``mask_i <- sum_j weight_ij mask_j`` (weights: B x M x H x W).

        Two equivalent implementations (the tests check they agree):

        * ``"shifts"``: a loop over the M shifted views of one replicate-padded
          tensor, accumulated in place; never holds a B x K x M x H x W tensor.
          Used on GPU and whenever gradients are needed.
        * ``"sparse"``: the weights as one block-diagonal B*H*W x B*H*W CSR
          matrix (M entries a row; clamped border neighbours appear twice and
          are summed), multiplied ``num_iters`` times; 2-7x faster on CPU.

        ``"auto"`` takes ``"sparse"`` on CPU without autograd, else ``"shifts"``.
        """
        if backend == "auto":
            needs_grad = torch.is_grad_enabled() and (masks.requires_grad or weights.requires_grad)
            backend = "sparse" if masks.device.type == "cpu" and not needs_grad else "shifts"
        if backend == "sparse":
            return self._propagate_sparse(masks, weights)
        if backend != "shifts":
            raise ValueError(f"PAR backend must be auto, shifts or sparse, got {backend!r}")
        height, width = masks.shape[-2:]
        pad = max(self.dilations)
        weights = weights.unsqueeze(1)  # B x 1 x M x H x W
        for _ in range(self.num_iters):
            padded = F.pad(masks, [pad] * 4, mode="replicate")
            out = torch.zeros_like(masks)
            for n, (dy, dx) in enumerate(self._offsets):
                view = padded[..., pad + dy : pad + dy + height, pad + dx : pad + dx + width]
                out.addcmul_(view, weights[:, :, n])
            masks = out
        return masks

    def _sparse_pattern(
        self, batch: int, height: int, width: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(crow, columns) of the block-diagonal CSR matrix: M entries a row (cached per shape)."""
        key = ("csr", batch, height, width, str(device))
        pattern = self._index_cache.pop(key, None)
        if pattern is None:
            pixels, neighbours = height * width, self.num_neighbours
            entries = batch * pixels * neighbours
            # 32-bit indices halve the index traffic of every multiplication
            dtype = torch.int32 if entries < 2**31 else torch.int64
            index = self.neighbour_index(height, width, device)  # pixel x neighbour -> source
            offsets = torch.arange(batch, device=device).view(-1, 1, 1) * pixels  # per image
            columns = (index[None] + offsets).reshape(-1).to(dtype)
            crow = torch.arange(0, entries + 1, neighbours, device=device, dtype=dtype)
            pattern = (crow, columns)
        self._index_cache[key] = pattern
        while len(self._index_cache) > _INDEX_CACHE_SIZE:
            self._index_cache.pop(next(iter(self._index_cache)))
        return pattern

    def _propagate_sparse(self, masks: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = masks.shape
        pixels, neighbours = height * width, self.num_neighbours
        crow, columns = self._sparse_pattern(batch, height, width, masks.device)
        # B x M x H x W -> B x (H*W) x M rows; no copy when the weights come from affinity()
        values = weights.float().reshape(batch, neighbours, pixels).transpose(1, 2)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(
                crow, columns, values.reshape(-1), (batch * pixels, batch * pixels)
            )
            x = (
                masks.float()
                .reshape(batch, channels, pixels)
                .transpose(1, 2)
                .reshape(batch * pixels, channels)
            )
            for _ in range(self.num_iters):
                x = matrix @ x
        return (
            x.reshape(batch, pixels, channels)
            .transpose(1, 2)
            .reshape(batch, channels, height, width)
        )

    def images_per_chunk(self, images: torch.Tensor) -> int:
        """How many images :meth:`affinity` processes at once.

        On CPU, chunks of about ``_CHUNK_VALUES`` neighbour values keep the
        passes over the B x 3 x HW x M neighbour tensor in cache (3-4x faster
        than the whole batch at once); each image's weights are computed
        independently, so the result does not depend on the chunking. On GPU
        the whole batch goes at once.
        """
        batch, channels, height, width = images.shape
        if images.device.type != "cpu":
            return max(1, batch)
        per_image = channels * height * width * self.num_neighbours
        return max(1, min(batch, _CHUNK_VALUES // max(1, per_image)))

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if images.shape[0] != masks.shape[0] or images.shape[-2:] != masks.shape[-2:]:
            raise ValueError(
                f"PAR: images {tuple(images.shape)} and masks {tuple(masks.shape)} must share batch and size"
            )
        return self.propagate(masks.float(), self.affinity(images))


def fuse_pseudo_labels(
    high_label: torch.Tensor, low_label: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Two-threshold fusion (methods.md 1.4): keep the high-bg-threshold label where it is
    foreground; background only where both labels are background; 255 where the
    high-threshold label is background but the low-threshold one is foreground.

    Labels are 0 = background, c + 1 = class c.
    """
    fused = high_label.clone()
    high_bg = high_label == 0
    fused[high_bg] = ignore_index
    fused[high_bg & (low_label == 0)] = 0
    return fused


def _half_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, int(height * scale)), max(1, int(width * scale))


def bilinear_weights(
    out_size: int, in_size: int, positions: Sequence[int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """len(positions) x in_size matrix ``R`` such that ``R @ x`` is the 1-D bilinear resize
    of ``x`` (``align_corners=False``, as ``F.interpolate``) to ``out_size``, read only at
    the output ``positions``. Applied on both axes it gives those pixels of a 2-D resize
    without computing the others."""
    scale = in_size / out_size
    weights = torch.zeros(len(positions), in_size, dtype=torch.float64)
    for row, position in enumerate(positions):
        if not 0 <= position < out_size:
            raise ValueError(f"position {position} outside an output of size {out_size}")
        source = max((position + 0.5) * scale - 0.5, 0.0)  # PyTorch clamps below at 0
        low = min(int(source), in_size - 1)
        high = min(low + 1, in_size - 1)
        fraction = source - low
        weights[row, low] += 1.0 - fraction
        weights[row, high] += fraction
    return weights.to(device=device, dtype=torch.float32)


def nearest_indices(out_size: int, in_size: int) -> list[int]:
    """The source index of each output pixel of ``F.interpolate(mode="nearest")``
    from ``in_size`` to ``out_size`` (``floor(i * in / out)``)."""
    scale = in_size / out_size
    return [min(int(i * scale), in_size - 1) for i in range(out_size)]


def refine_cams_to_labels(
    images: torch.Tensor,
    cams: torch.Tensor,
    labels: torch.Tensor,
    bg_low: float,
    bg_high: float,
    par: PAR | None,
    scale: float = 0.5,
    ignore_index: int = 255,
    sample: tuple[Sequence[int], Sequence[int]] | None = None,
) -> torch.Tensor:
    """Pseudo-labels from CAMs, as AReAM's training step 4 (``cam_to_seg`` run twice, then fused).

    ``images``: B x 3 x H x W RGB (denormalised, see :func:`denormalize`);
    ``cams``: B x C x H x W, normalised to [0, 1] per class; ``labels``: B x C
    multi-hot image labels. For each background score t in (bg_low, bg_high):
    a constant channel t is put in front of the CAMs, only background and the
    image's GT classes are kept, the maps are softmaxed over those channels at
    ``scale`` x the resolution, refined with ``par`` (``None``: no refinement),
    upsampled back and arg-maxed. The two labellings are fused with
    :func:`fuse_pseudo_labels`. Returns B x H x W int64 with 0 = background,
    c + 1 = class c, ``ignore_index`` = uncertain.

    ``sample=(rows, cols)``: return only those pixels of the H x W labelling
    (B x len(rows) x len(cols)), reading the upsampled scores there and nowhere
    else. AReAM's loss only looks at the labels nearest-sampled on the patch
    grid, 1 pixel in 64 at patch size 8.

    Vectorised over the batch: instead of the official per-image loop over the
    kept channels, each image's kept channels are gathered into the first
    ``1 + max #GT`` slots and the unused slots get probability 0 (a softmax
    of -inf), which PAR (linear, non-negative weights) keeps at 0 - the same
    arg-max as the per-image code, with memory bounded by the largest label set.

    Only the foreground channels go through PAR and the resizing: the softmax
    sums to 1 at every pixel, and PAR and bilinear resizing are linear and map
    a constant c to ``c * par.gain`` and c, so the refined background is
    ``par.gain - sum of the refined foreground`` (equal up to float rounding,
    one channel in ``1 + #GT`` less to refine).
    """
    batch, _, height, width = cams.shape
    cams = cams.float()
    background = torch.ones_like(labels[:, :1], dtype=torch.bool)
    keep = torch.cat([background, labels > 0], dim=1)  # B x (C + 1); channel 0 is background
    slots = int(keep.sum(dim=1).max())
    order = torch.argsort(keep.float(), dim=1, descending=True, stable=True)[:, :slots]
    valid = keep.gather(1, order)  # B x slots; slot 0 is background
    size = _half_size(height, width, scale) if par is not None else (height, width)
    small = (
        F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        if size != (height, width)
        else cams
    )
    out_size = (height, width) if sample is None else (len(sample[0]), len(sample[1]))
    if slots == 1:  # no GT class anywhere in the batch: everything is background
        return torch.zeros(batch, *out_size, dtype=torch.int64, device=cams.device)
    # scores of the kept classes: background slot filled per threshold below
    gathered = small.gather(1, (order - 1).clamp(min=0)[..., None, None].expand(-1, -1, *size))
    foreground = []
    for threshold in (bg_low, bg_high):
        s = gathered.clone()
        s[:, 0] = threshold
        s = s.masked_fill(~valid[..., None, None], float("-inf"))
        foreground.append(s.softmax(dim=1)[:, 1:])
    stacked = torch.cat(foreground, dim=1)  # B x 2*(slots-1) x h x w: one PAR pass for both
    gain = 1.0
    if par is not None:
        small_images = F.interpolate(
            images.float(), size=size, mode="bilinear", align_corners=False
        )
        stacked = par(small_images, stacked)
        gain = par.gain
        if sample is None:
            stacked = F.interpolate(
                stacked, size=(height, width), mode="bilinear", align_corners=False
            )
        else:
            rows = bilinear_weights(height, size[0], sample[0], stacked.device)
            cols = bilinear_weights(width, size[1], sample[1], stacked.device)
            stacked = torch.einsum("yh,bkhw,xw->bkyx", rows, stacked, cols)
    elif sample is not None:
        rows = torch.as_tensor(sample[0], device=stacked.device)
        cols = torch.as_tensor(sample[1], device=stacked.device)
        stacked = stacked.index_select(2, rows).index_select(3, cols)
    labellings = []
    for fg in stacked.split(slots - 1, dim=1):
        scores = torch.cat([gain - fg.sum(dim=1, keepdim=True), fg], dim=1)
        # max(dim).indices: the first maximum, like argmax, but ~20x faster than argmax over dim 1
        index = scores.max(dim=1).indices.flatten(1)
        labellings.append(order.gather(1, index).view(batch, *out_size))
    low_label, high_label = labellings
    return fuse_pseudo_labels(high_label, low_label, ignore_index)


__all__ = [
    "PAR",
    "bilinear_weights",
    "denormalize",
    "fuse_pseudo_labels",
    "nearest_indices",
    "refine_cams_to_labels",
]
