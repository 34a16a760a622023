"""Batched multi-scale + flip CAM extraction for any method and refiner.

For each pass (scale, and its horizontal flip in the same batch) the method
reads its CAM from the forward pass at patch-grid resolution, the refiner
(none, affinity, AD-CAM, ...) acts on it there, and the result is upsampled to
the image. Passes are summed; then GT-class masking, per-class min-max and
quantisation (methods.md section 2.3). Images of equal size are batched
together, so a VOC split costs a few hundred forward passes, not ten thousand.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss.cams.store import CamWriter, quantize
from wsss.data.classification import normalize
from wsss.data.datasets import batches_by_size, open_dataset
from wsss.methods.base import CAM_REFINERS, TRAINING_METHODS, CamRecipe, CamRefiner, TrainingMethod
from wsss.models import MultiClassTokenViT
from wsss.runtime import progress as tqdm
from wsss.runtime import resolve_device

log = logging.getLogger("wsss")


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
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"trained model {path} does not exist; run the train stage first")
    state = torch.load(path, map_location=device, weights_only=False)
    config = state["config"]
    method = TRAINING_METHODS.get(config["method"]["name"])(config["method"]["params"])
    model_config = {**config["model"], "pretrained": False, "weights": None}
    model = method.build_model(model_config, len(state["class_names"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), method, state


def _pad_to_multiple(images: torch.Tensor, multiple: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))  # zero = the mean colour after normalisation
    return images


@torch.inference_mode()
def cams_for_batch(
    model: MultiClassTokenViT,
    method: TrainingMethod,
    refiner: CamRefiner,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: CamSettings,
) -> torch.Tensor:
    """B x 3 x H x W uint8 images, B x C labels -> B x C x H x W CAMs in [0, 1] (zero off the GT classes)."""
    batch, _, height, width = images.shape
    x = normalize(images)
    total = None
    for scale in settings.scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        scaled = (
            x
            if size == (height, width)
            else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        )
        if settings.flip:
            scaled = torch.cat([scaled, scaled.flip(-1)])
        padded = _pad_to_multiple(scaled, model.patch_size)
        output = method.forward(model, padded, epoch=-1)
        cam = refiner(method.cam(output, settings.recipe), output, method, settings.recipe).float()
        cam = F.interpolate(cam, size=padded.shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[..., : size[0], : size[1]]
        if size != (height, width):
            cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
        if settings.flip:
            cam = cam[:batch] + cam[batch:].flip(-1)
        total = cam if total is None else total + cam
    total = F.relu(total) * labels[:, :, None, None]
    low = total.amin(dim=(2, 3), keepdim=True)
    high = total.amax(dim=(2, 3), keepdim=True)
    normalised = (total - low) / (high - low + 1e-8)
    return normalised * labels[:, :, None, None]


def extract_cams(
    config: dict[str, Any],
    model_path: str | Path,
    split: str,
    out_path: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the CAM artifact of ``split`` for one trained model and refiner; return timing info."""
    import time

    device = resolve_device(config["train"]["device"])
    dataset = open_dataset(config["dataset"])
    model, method, _ = load_trained(model_path, device)
    refiner = CAM_REFINERS.get(config["refiner"]["name"])(config["refiner"]["params"])
    settings = CamSettings.from_dict(config["cam"])
    ids = dataset.layout.split_ids(split)
    labels = {
        i: dataset.layout.image_labels(i, dataset.num_classes, dataset.label_source()) for i in ids
    }
    writer = CamWriter(dataset.num_classes)
    started = time.perf_counter()
    with tqdm(total=len(ids), desc=f"CAMs {split}", disable=not progress) as bar:
        for batch_ids, images in batches_by_size(dataset, ids, settings.batch_size):
            image_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
            label_tensor = torch.from_numpy(np.stack([labels[i] for i in batch_ids])).to(device)
            cams = (
                cams_for_batch(model, method, refiner, image_tensor, label_tensor, settings)
                .cpu()
                .numpy()
            )
            for image_id, cam, label in zip(
                batch_ids, cams, label_tensor.cpu().numpy(), strict=True
            ):
                present = np.flatnonzero(label > 0)
                writer.add(image_id, present + 1, quantize(cam[present]))
            bar.update(len(batch_ids))
    seconds = time.perf_counter() - started
    writer.save(out_path)
    log.info("wrote %d CAMs to %s in %.1f s", len(ids), out_path, seconds)
    return {
        "images": len(ids),
        "seconds": seconds,
        "images_per_second": len(ids) / max(seconds, 1e-9),
    }
