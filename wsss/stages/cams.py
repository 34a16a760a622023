"""Stage ``cams``: extract (and refine) the CAMs of a split with one trained model."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.cam_store import CamWriter, quantize
from wsss.data.datasets import batches_by_size, open_dataset
from wsss.io import write_json
from wsss.methods.base import CAM_REFINERS
from wsss.methods.cam_inference import CamSettings, cams_for_batch, load_trained
from wsss.runtime import progress as tqdm
from wsss.runtime import resolve_device
from wsss.stages import add_common, json_arg

log = logging.getLogger("wsss")

HELP = "extract (and refine) the CAMs of a split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True)
    p.add_argument("--model", required=True, help="model.pt from the train stage")
    p.add_argument("--split", required=True, help="the split whose CAMs are extracted")
    p.add_argument("--out", required=True, help="CAM artifact (.npz)")
    p.add_argument("--timing", help="write extraction timing JSON here")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    info = extract_cams(
        args.config, args.model, args.split, args.out, progress=not args.no_progress
    )
    if args.timing:
        write_json(args.timing, info)
    return 0


def extract_cams(
    config: dict[str, Any],
    model_path: str | Path,
    split: str,
    out_path: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the CAM artifact of ``split`` for one trained model and refiner; return timing info."""

    device = resolve_device()
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
                cams_for_batch(
                    model,
                    method,
                    refiner,
                    image_tensor,
                    label_tensor,
                    settings,
                    image_ids=batch_ids,  # a non-finite CAM's error names the image and class
                    class_names=dataset.class_names,
                )
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
