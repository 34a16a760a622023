"""Batched multi-scale + flip CAM extraction for any method and refiner.

For each pass (scale, and its horizontal flip in the same batch) the method
reads its CAM from the forward pass at patch-grid resolution, the refiner
(none, affinity, AD-CAM, ...) acts on it there, and the result is upsampled to
the image. Passes are summed; then GT-class masking, per-class min-max and
quantisation (methods.md section 2.3). Images of equal size are batched
together, so a VOC split costs a few hundred forward passes, not ten thousand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsss import checkpoint
from wsss.data.classification import normalize
from wsss.methods.base import TRAINING_METHODS, CamRecipe, CamRefiner, TrainingMethod
from wsss.models import MultiClassTokenViT
from wsss.ops.multiscale import pad_to_multiple, resize, scaled_size, to_image
from wsss.ops.normalize import NonFiniteCamError, minmax_per_class


@dataclass
class CamSettings:
    scales: list[float]
    flip: bool
    batch_size: int
    recipe: CamRecipe

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CamSettings:
        return cls(list(d["scales"]), bool(d["flip"]), int(d["batch_size"]), CamRecipe.from_dict(d))


def load_trained(
    model_path: str | Path, device: torch.device
) -> tuple[MultiClassTokenViT, TrainingMethod, dict]:
    """Rebuild a trained model from its ``model.pt`` (no pretrained download: weights come from the file)."""
    state = checkpoint.load(model_path, device, what="trained model (train stage)")
    config = state["config"]
    method = TRAINING_METHODS.get(config["method"]["name"])(config["method"]["params"])
    model_config = {**config["model"], "pretrained": False, "weights": None}
    model = method.build_model(model_config, len(state["class_names"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), method, state


@torch.inference_mode()
def cams_for_batch(
    model: MultiClassTokenViT,
    method: TrainingMethod,
    refiner: CamRefiner,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: CamSettings,
    image_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """B x 3 x H x W uint8 images, B x C labels -> B x C x H x W CAMs in [0, 1] (zero off the GT classes).

    A flat CAM (wsss.ops.normalize.flat_maps) is all zeros. A GT class whose summed CAM
    holds NaN or an infinity raises :class:`NonFiniteCamError` naming the image
    (``image_ids[b]``, else the batch index) and the class (``class_names[c]``, else
    its label); the maps of the other classes are never computed downstream, so theirs
    are set to zero first and do not raise.
    """
    (cams,) = cams_for_batch_variants(
        model, method, [(refiner, settings)], images, labels, image_ids, class_names
    )
    return cams


def shares_forward(a: CamSettings, b: CamSettings) -> bool:
    """Whether two CAM recipes can read their CAMs from the same forward passes: the same
    scales, flip and batch size (the batch decides the passes' inputs, and so their floats)."""
    return (a.scales, a.flip, a.batch_size) == (b.scales, b.flip, b.batch_size)


@torch.inference_mode()
def cams_for_batch_variants(
    model: MultiClassTokenViT,
    method: TrainingMethod,
    variants: Sequence[tuple[CamRefiner, CamSettings]],
    images: torch.Tensor,
    labels: torch.Tensor,
    image_ids: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[torch.Tensor]:
    """The CAMs of several (refiner, recipe) variants of one trained model from one forward
    pass per scale: one B x C x H x W tensor per variant, each bitwise what
    :func:`cams_for_batch` gives for that variant alone (every variant reads the same
    forward output; no refiner or recipe writes into it).

    Raises ValueError when the variants' scales or flip differ (:func:`shares_forward`:
    extract those in separate calls), and :class:`NonFiniteCamError` as
    :func:`cams_for_batch`.
    """
    if not variants:
        return []
    scales, flip = variants[0][1].scales, variants[0][1].flip
    for _, settings in variants[1:]:
        if (settings.scales, settings.flip) != (scales, flip):
            raise ValueError(
                f"CAM variants of one forward pass need the same scales and flip; got {scales} "
                f"flip={flip} and {settings.scales} flip={settings.flip}"
            )
    batch, _, height, width = images.shape
    x = normalize(images)
    totals: list[torch.Tensor | None] = [None] * len(variants)
    for scale in scales:
        size = scaled_size(height, width, scale)
        scaled = resize(x, size)
        if flip:
            scaled = torch.cat([scaled, scaled.flip(-1)])
        padded = pad_to_multiple(scaled, model.patch_size)
        output = method.forward(model, padded, epoch=-1)
        for k, (refiner, settings) in enumerate(variants):
            cam = refiner(method.cam(output, settings.recipe), output, method, settings.recipe)
            cam = to_image(cam.float(), padded.shape[-2:], size, (height, width))
            if flip:
                cam = cam[:batch] + cam[batch:].flip(-1)
            totals[k] = cam if totals[k] is None else totals[k] + cam
    gt = labels[:, :, None, None]
    return [_normalised(total, gt, image_ids, class_names) for total in totals]


def _normalised(
    total: torch.Tensor,
    gt: torch.Tensor,
    image_ids: Sequence[str] | None,
    class_names: Sequence[str] | None,
) -> torch.Tensor:
    # masked_fill, not only the product: NaN * 0 is NaN. Bitwise the same for finite maps.
    total = (F.relu(total) * gt).masked_fill_(gt == 0, 0.0)
    try:
        normalised = minmax_per_class(total, eps=1e-8)
    except NonFiniteCamError as err:
        b, c = err.index
        image = image_ids[b] if image_ids is not None else f"batch item {b}"
        name = f"{class_names[c]} (label {c + 1})" if class_names is not None else c + 1
        raise NonFiniteCamError(
            err.index,
            f"the CAM of image {image}, class {name} holds NaN or an infinity after "
            "summing the scales: the model or the refiner produced a non-finite value",
        ) from None
    return normalised * gt
