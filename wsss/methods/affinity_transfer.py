"""The decoupled affinity test: refine one fixed CAM with another source's patch affinity.

Whether a backbone's attention can make MCTformer's patch-affinity refinement win is
separate from whether fine-tuning keeps it. This module takes the *unrefined* CAM of
one trained model (the fixed CAM set, e.g. a from-scratch MCTformer-V2) and refines it,
at patch-grid resolution and exactly as the ``affinity`` refiner does
(``M'_c = P . vec(M_c)``, :func:`wsss.models.attention.propagate`), with a patch affinity
``P`` taken from elsewhere:

- ``own``: the CAM model's own affinity (the grid's ``<method>_affinity`` row; a check);
- a **backbone** (:class:`BackboneAffinity`): another network run on the same padded
  input, its head-mean patch -> patch attention summed over ``cam.affinity_layers``, never
  renormalised (:meth:`~wsss.methods.base.TrainingMethod.affinity`). A pretrained weights
  file is loaded as a training run starts (class tokens copied from its CLS token), so
  the test judges a pretraining before any fine-tuning;
- the **oracle** (:func:`oracle_affinity`) from the instance masks: each patch goes to
  the region (an object instance or the background) holding most of its labelled pixels,
  and its row is uniform over the patches of that region. ``oracle_objects`` keeps only
  the object rows (background rows are the identity), ``oracle_background`` only the
  background rows. It is the ceiling of what a grouping affinity can add to that CAM.

Everything else (scales, flip, upsampling, GT-class masking, per-class min-max) is
:func:`wsss.methods.cam_inference.cams_for_batch_variants`'s, so the unrefined and
``own`` CAMs are bitwise the ``cams`` stage's (tested).

Source: the separation experiment of the proxy probe (docs/synthetic.md, "decoupled
affinity test"); the affinity refinement is MCTformer's (methods.md section 2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from wsss.data.classification import normalize
from wsss.evaluation.attention_diagnostics import (
    IGNORE_VALUE,
    LocalitySums,
    locality_sums,
    patch_instance_labels,
)
from wsss.methods.base import CamRecipe, TrainingMethod
from wsss.methods.cam_inference import CamSettings, _normalised
from wsss.models import ModelOutput, MultiClassTokenViT
from wsss.models.attention import propagate
from wsss.ops.multiscale import pad_to_multiple, resize, scaled_size, to_image

ORACLE_ROWS = ("all", "objects", "background")
NO_REGION = -1  # a patch without one labelled pixel: its own region (identity row)


def majority_regions(instance_map: np.ndarray, patch_size: int) -> np.ndarray:
    """The h x w region of each patch of an H x W instance map (0 background, 1..K objects,
    255 unlabelled or padding): the label with most pixels in the patch, ties to the lower
    label, :data:`NO_REGION` when every pixel is 255. H and W must be multiples of the
    patch size (ValueError otherwise)."""
    labels = np.asarray(instance_map).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"instance map must be 2-D (H x W), got shape {labels.shape}")
    height, width = labels.shape
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"instance map {height}x{width} is not a multiple of the patch size {patch_size}"
        )
    gh, gw = height // patch_size, width // patch_size
    patches = (
        labels.reshape(gh, patch_size, gw, patch_size)
        .transpose(0, 2, 1, 3)
        .reshape(gh * gw, patch_size * patch_size)
    )
    values = [int(v) for v in np.unique(labels) if v != IGNORE_VALUE]
    out = np.full(gh * gw, NO_REGION, dtype=np.int64)
    if values:
        counts = np.stack([(patches == v).sum(axis=1) for v in values], axis=1)  # N x V
        best = counts.argmax(axis=1)  # first (lowest label) on ties
        labelled = counts.max(axis=1) > 0
        out[labelled] = np.asarray(values)[best[labelled]]
    return out.reshape(gh, gw)


def oracle_affinity(regions: np.ndarray, rows: str = "all") -> np.ndarray:
    """N x N oracle affinity of one h x w region grid (:func:`majority_regions`).

    Row i is uniform over the patches of i's region (1/|region| each, itself included);
    a :data:`NO_REGION` patch keeps only itself. ``rows``: ``"all"``; ``"objects"``:
    background rows (region 0) are the identity; ``"background"``: object rows are.
    """
    if rows not in ORACLE_ROWS:
        raise ValueError(f"oracle rows must be one of {ORACLE_ROWS}, got {rows!r}")
    flat = np.asarray(regions).reshape(-1)
    n = flat.size
    same = (flat[:, None] == flat[None, :]) & (flat[:, None] != NO_REGION)
    same |= np.eye(n, dtype=bool)
    if rows == "objects":
        keep = flat > 0
    elif rows == "background":
        keep = flat == 0
    else:
        keep = np.ones(n, dtype=bool)
    same[~keep] = np.eye(n, dtype=bool)[~keep]
    return same / same.sum(axis=1, keepdims=True)


class AffinitySource:
    """Where a patch affinity comes from, for one forward pass of the CAM model."""

    def affinity(
        self,
        padded: torch.Tensor,
        instances: np.ndarray,
        output: ModelOutput,
        method: TrainingMethod,
        recipe: CamRecipe,
        patch_size: int,
    ) -> torch.Tensor:
        """B x N x N (rows = queries) for the normalised padded input ``padded`` (B x 3 x H x W),
        its padded instance maps ``instances`` (B x H x W, 255 outside the image) and the CAM
        model's ``output`` of that input."""
        raise NotImplementedError


class OwnAffinity(AffinitySource):
    """The CAM model's own affinity: the ``affinity`` refiner exactly."""

    def affinity(self, padded, instances, output, method, recipe, patch_size):
        return method.affinity(output, recipe)


@dataclass
class OracleAffinity(AffinitySource):
    """:func:`oracle_affinity` of each pass's (resized, flipped, padded) instance map."""

    rows: str = "all"

    def affinity(self, padded, instances, output, method, recipe, patch_size):
        grids = [oracle_affinity(majority_regions(m, patch_size), self.rows) for m in instances]
        return torch.from_numpy(np.stack(grids)).to(padded.device, torch.float32)


@dataclass
class BackboneAffinity(AffinitySource):
    """Another network's affinity on the same input, summed over the CAM recipe's
    ``affinity_layers`` as the refiner sums the CAM model's (its own ``method`` reads it)."""

    model: MultiClassTokenViT
    method: TrainingMethod

    def affinity(self, padded, instances, output, method, recipe, patch_size):
        if self.model.patch_size != patch_size:
            raise ValueError(
                f"the affinity backbone has patch size {self.model.patch_size}, the CAM model "
                f"{patch_size}: their patch grids differ"
            )
        other = self.method.forward(self.model, padded, epoch=-1)
        return self.method.affinity(other, recipe)


def _instances_at(instances: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """B x H x W integer maps -> nearest-neighbour resized to ``size`` (the pass's scale)."""
    if tuple(size) == tuple(instances.shape[-2:]):
        return instances
    return F.interpolate(instances[:, None].float(), size=tuple(size), mode="nearest")[:, 0].to(
        instances.dtype
    )


@torch.inference_mode()
def transfer_cams(
    model: MultiClassTokenViT,
    method: TrainingMethod,
    sources: dict[str, AffinitySource | None],
    images: torch.Tensor,
    instances: torch.Tensor,
    labels: torch.Tensor,
    settings: CamSettings,
    diagnostics: dict[str, LocalitySums] | None = None,
) -> dict[str, torch.Tensor]:
    """The CAM model's CAMs refined by each source's affinity: ``{name: B x C x H x W}`` in
    [0, 1], zero off the GT classes (``None``: unrefined).

    ``images``: B x 3 x H x W uint8; ``instances``: B x H x W instance maps (0 background,
    1..K, 255 unlabelled); ``labels``: B x C multi-hot. One forward pass of the CAM model per
    scale (the flip in the same batch), as :func:`~wsss.methods.cam_inference.cams_for_batch`.
    ``diagnostics``: when given, each source's affinity of the first scale's unflipped pass
    is added to ``diagnostics[name]`` (:func:`~wsss.evaluation.attention_diagnostics.locality_sums`
    with the instance map reduced by majority at half the patch's pixels).
    """
    batch, _, height, width = images.shape
    x = normalize(images)
    patch = model.patch_size
    totals: dict[str, torch.Tensor] = {}
    for number, scale in enumerate(settings.scales):
        size = scaled_size(height, width, scale)
        scaled = resize(x, size)
        maps = _instances_at(instances, size)
        if settings.flip:
            scaled = torch.cat([scaled, scaled.flip(-1)])
            maps = torch.cat([maps, maps.flip(-1)])
        padded = pad_to_multiple(scaled, patch)
        pad_h, pad_w = padded.shape[-2] - size[0], padded.shape[-1] - size[1]
        padded_maps = F.pad(maps, (0, pad_w, 0, pad_h), value=IGNORE_VALUE).cpu().numpy()
        output = method.forward(model, padded, epoch=-1)
        cam = method.cam(output, settings.recipe)
        for name, source in sources.items():
            if source is None:
                refined = cam
            else:
                affinity = source.affinity(
                    padded, padded_maps, output, method, settings.recipe, patch
                )
                refined = propagate(cam, affinity)
                if diagnostics is not None and number == 0:
                    _add_diagnostics(
                        diagnostics, name, affinity[:batch], padded_maps[:batch], patch
                    )
            image = to_image(refined.float(), padded.shape[-2:], size, (height, width))
            if settings.flip:
                image = image[:batch] + image[batch:].flip(-1)
            totals[name] = image if name not in totals else totals[name] + image
    gt = labels[:, :, None, None]
    return {name: _normalised(total, gt, None, None) for name, total in totals.items()}


def _add_diagnostics(
    diagnostics: dict[str, LocalitySums],
    name: str,
    affinity: torch.Tensor,
    padded_maps: np.ndarray,
    patch: int,
) -> None:
    for rows, instance_map in zip(affinity.float().cpu().numpy(), padded_maps, strict=True):
        sums = locality_sums(rows[None], patch_instance_labels(instance_map, patch))
        diagnostics[name] = sums if name not in diagnostics else diagnostics[name] + sums
