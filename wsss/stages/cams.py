"""Stage ``cams``: extract (and refine) the CAMs of a split with one trained model."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.cam_store import CamWriter, quantize, read_shard_plan, shard_ids
from wsss.data.datasets import batches_by_size, open_dataset
from wsss.io import write_json
from wsss.methods.base import CAM_REFINERS
from wsss.methods.cam_inference import CamSettings, cams_for_batch, load_trained
from wsss.runtime import progress as tqdm
from wsss.runtime import resolve_device
from wsss.stages import add_common, json_arg

log = logging.getLogger("wsss")

HELP = "extract (and refine) the CAMs of a split, or of one shard of it"
CHUNK_BATCHES = 16  # images decoded at a time: this many batches' worth


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True)
    p.add_argument("--model", required=True, help="model.pt from the train stage")
    p.add_argument("--split", required=True, help="the split whose CAMs are extracted")
    p.add_argument("--out", required=True, help="CAM file (.npz)")
    p.add_argument("--timing", help="write extraction timing JSON here")
    p.add_argument("--shard", type=int, help="extract only this shard of the split (0-based)")
    p.add_argument("--plan", help="the split's shard plan (wsss cam-shards plan); with --shard")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    if (args.shard is None) != (args.plan is None):
        raise ValueError("--shard and --plan go together: the plan says which images a shard holds")
    shard = None if args.shard is None else (args.shard, read_shard_plan(args.plan))
    info = extract_cams(
        args.config, args.model, args.split, args.out, progress=not args.no_progress, shard=shard
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
    shard: tuple[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the CAM file of ``split`` (or of shard ``(index, plan)`` of it, see
    :func:`wsss.cam_store.shard_ids`) for one trained model and refiner; return timing info.

    Memory does not grow with the split: images are decoded a chunk at a time and each
    image's CAMs are written as soon as its batch is done.
    """

    device = resolve_device()
    dataset = open_dataset(config["dataset"])
    model, method, _ = load_trained(model_path, device)
    refiner = CAM_REFINERS.get(config["refiner"]["name"])(config["refiner"]["params"])
    settings = CamSettings.from_dict(config["cam"])
    ids = dataset.layout.split_ids(split)
    what = split
    if shard is not None:
        index, plan = shard
        ids = shard_ids(ids, index, plan, f"split {split!r} of {dataset.name}")
        what = f"{split} shard {index}"
    source = dataset.label_source()
    started = time.perf_counter()
    chunk = CHUNK_BATCHES * settings.batch_size
    with (
        CamWriter(out_path, dataset.num_classes) as writer,
        tqdm(total=len(ids), desc=f"CAMs {what}", disable=not progress) as bar,
    ):
        for start in range(0, len(ids), chunk):
            for batch_ids, images in batches_by_size(
                dataset, ids[start : start + chunk], settings.batch_size
            ):
                labels = np.stack(
                    [dataset.layout.image_labels(i, dataset.num_classes, source) for i in batch_ids]
                )
                image_tensor = torch.from_numpy(images).permute(0, 3, 1, 2).to(device)
                label_tensor = torch.from_numpy(labels).to(device)
                cams = (
                    cams_for_batch(
                        model,
                        method,
                        refiner,
                        image_tensor,
                        label_tensor,
                        settings,
                        image_ids=batch_ids,  # a non-finite CAM's error names image and class
                        class_names=dataset.class_names,
                    )
                    .cpu()
                    .numpy()
                )
                for image_id, cam, label in zip(batch_ids, cams, labels, strict=True):
                    present = np.flatnonzero(label > 0)
                    writer.add(image_id, present + 1, quantize(cam[present]))
                bar.update(len(batch_ids))
    seconds = time.perf_counter() - started
    log.info("wrote %d CAMs to %s in %.1f s", len(ids), out_path, seconds)
    return {
        "images": len(ids),
        "seconds": seconds,
        "images_per_second": len(ids) / max(seconds, 1e-9),
    }
