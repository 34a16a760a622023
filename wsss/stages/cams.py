"""Stage ``cams``: extract (and refine) the CAMs of a split with one trained model.

One job writes the CAM file of every grid variant that shares the trained model (e.g.
MCTformer-V2 with refiner none, CAM x attention, affinity and AD-CAM): the variants read
their CAMs from the same forward passes, so the model is loaded and run once instead of
once per variant. Each variant's file is bitwise what extracting it alone gives.
"""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.cam_store import CamWriter, quantize, read_shard_plan, shard_ids
from wsss.data.datasets import batches_by_size, open_dataset
from wsss.io import write_json
from wsss.methods.base import CAM_REFINERS
from wsss.methods.cam_inference import (
    CamSettings,
    cams_for_batch_variants,
    load_trained,
    shares_forward,
)
from wsss.runtime import progress as tqdm
from wsss.runtime import resolve_device
from wsss.stages import add_common, add_execution, json_arg

log = logging.getLogger("wsss")

HELP = (
    "extract (and refine) the CAMs of a split, or of one shard of it, for every variant of a model"
)
CHUNK_BATCHES = 16  # images decoded at a time: this many batches' worth


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="JSON: {dataset, variants: {NAME: {cam, refiner}}} (wsss.config.cam_group_config),"
        " or one variant's {dataset, cam, refiner} (wsss.config.cam_config)",
    )
    p.add_argument("--model", required=True, help="model.pt from the train stage")
    p.add_argument("--split", required=True, help="the split whose CAMs are extracted")
    p.add_argument(
        "--out",
        required=True,
        action="append",
        help="CAM file (.npz); with a variants config NAME=FILE, once per variant",
    )
    p.add_argument("--timing", help="write extraction timing JSON here")
    p.add_argument("--shard", type=int, help="extract only this shard of the split (0-based)")
    p.add_argument("--plan", help="the split's shard plan (wsss cam-shards plan); with --shard")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    if (args.shard is None) != (args.plan is None):
        raise ValueError("--shard and --plan go together: the plan says which images a shard holds")
    shard = None if args.shard is None else (args.shard, read_shard_plan(args.plan))
    dataset, variants = variants_with_outputs(args.config, args.out)
    info = extract_cam_variants(
        dataset, variants, args.model, args.split, progress=not args.no_progress, shard=shard
    )
    if args.timing:
        write_json(args.timing, info)
    return 0


def variants_with_outputs(
    config: dict[str, Any], outs: list[str]
) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], Path]]]:
    """(dataset config, {variant: (its {cam, refiner} config, CAM file)}) from the job's config
    and its ``--out`` values. Raises ValueError naming what does not match: a variants config
    needs exactly one NAME=FILE per variant, a one-variant config one plain FILE."""
    if "variants" not in config:
        if len(outs) != 1 or "=" in outs[0]:
            raise ValueError(
                f"a one-variant CAM config takes one --out FILE, got {outs}; a config with "
                "'variants' takes --out NAME=FILE per variant"
            )
        return config["dataset"], {"cams": (config, Path(outs[0]))}
    names = list(config["variants"])
    paths: dict[str, Path] = {}
    for item in outs:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--out {item!r}: expected NAME=FILE, NAME one of {names}")
        if name not in config["variants"] or name in paths:
            raise ValueError(f"--out {item!r}: {name!r} is not one of {names}, or given twice")
        paths[name] = Path(path)
    missing = [n for n in names if n not in paths]
    if missing:
        raise ValueError(f"no --out NAME=FILE for the variants {missing} of the CAM config")
    return config["dataset"], {n: (config["variants"][n], paths[n]) for n in names}


def extract_cams(
    config: dict[str, Any],
    model_path: str | Path,
    split: str,
    out_path: str | Path,
    progress: bool = True,
    shard: tuple[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write the CAM file of ``split`` (or of shard ``(index, plan)`` of it) for one trained
    model and one variant's ``{dataset, cam, refiner}`` config; return timing info
    (:func:`extract_cam_variants` with one variant)."""
    variants = {"cams": (config, Path(out_path))}
    return extract_cam_variants(config["dataset"], variants, model_path, split, progress, shard)


def extract_cam_variants(
    dataset_config: dict[str, Any],
    variants: dict[str, tuple[dict[str, Any], Path]],
    model_path: str | Path,
    split: str,
    progress: bool = True,
    shard: tuple[int, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write, for every variant ``name -> ({cam, refiner}, CAM file)`` of one trained model,
    the CAM file of ``split`` (or of shard ``(index, plan)`` of it, see
    :func:`wsss.cam_store.shard_ids`); return timing info.

    Variants whose recipes share scales, flip and batch size
    (:func:`wsss.methods.cam_inference.shares_forward`) are extracted from the same forward
    passes; each further set of them costs one more pass over the split. Memory does not
    grow with the split: images are decoded a chunk at a time and each image's CAMs are
    written as soon as its batch is done. Every file is written atomically; when one variant
    fails (e.g. a non-finite CAM) none of the files is left behind.
    """

    device = resolve_device()
    dataset = open_dataset(dataset_config)
    model, method, _ = load_trained(model_path, device)
    jobs = [
        (
            name,
            CAM_REFINERS.get(cfg["refiner"]["name"])(cfg["refiner"]["params"]),
            CamSettings.from_dict(cfg["cam"]),
            path,
        )
        for name, (cfg, path) in variants.items()
    ]
    passes: list[list[tuple[str, Any, CamSettings, Path]]] = []
    for job in jobs:
        same = next((p for p in passes if shares_forward(p[0][2], job[2])), None)
        if same is None:
            passes.append([job])
        else:
            same.append(job)
    ids = dataset.layout.split_ids(split)
    what = split
    if shard is not None:
        index, plan = shard
        ids = shard_ids(ids, index, plan, f"split {split!r} of {dataset.name}")
        what = f"{split} shard {index}"
    started = time.perf_counter()
    with ExitStack() as stack:
        writers = {
            name: stack.enter_context(CamWriter(path, dataset.num_classes))
            for name, _, _, path in jobs
        }
        for number, group in enumerate(passes):
            desc = f"CAMs {what}" + (f" ({number + 1}/{len(passes)})" if len(passes) > 1 else "")
            with tqdm(total=len(ids), desc=desc, disable=not progress) as bar:
                for batch_ids, images in _batches(dataset, ids, group[0][2].batch_size):
                    _write_batch(model, method, group, writers, dataset, batch_ids, images, device)
                    bar.update(len(batch_ids))
    seconds = time.perf_counter() - started
    log.info(
        "wrote %d CAMs for each of %d variant(s) (%s) in %d pass(es) over the images in %.1f s",
        len(ids),
        len(jobs),
        ", ".join(variants),
        len(passes),
        seconds,
    )
    return {
        "images": len(ids),
        "variants": list(variants),
        "passes": len(passes),
        "seconds": seconds,
        "images_per_second": len(ids) / max(seconds, 1e-9),
    }


def _batches(dataset, ids: list[str], batch_size: int):
    """(image ids, uint8 images) batches of equal-size images, decoded a chunk at a time so
    that memory does not grow with the split."""
    chunk = CHUNK_BATCHES * batch_size
    for start in range(0, len(ids), chunk):
        yield from batches_by_size(dataset, ids[start : start + chunk], batch_size)


def _write_batch(model, method, group, writers, dataset, batch_ids, images, device) -> None:
    """Extract one batch's CAMs for the variants of one forward pass and add them to each
    variant's CAM file (the GT classes of each image only)."""
    source = dataset.label_source()
    labels = np.stack(
        [dataset.layout.image_labels(i, dataset.num_classes, source) for i in batch_ids]
    )
    cams = cams_for_batch_variants(
        model,
        method,
        [(refiner, settings) for _, refiner, settings, _ in group],
        torch.from_numpy(images).permute(0, 3, 1, 2).to(device),
        torch.from_numpy(labels).to(device),
        image_ids=batch_ids,  # a non-finite CAM's error names image and class
        class_names=dataset.class_names,
    )
    present = [np.flatnonzero(label > 0) for label in labels]
    for (name, _, _, _), variant_cams in zip(group, cams, strict=True):
        for image_id, cam, classes in zip(
            batch_ids, variant_cams.cpu().numpy(), present, strict=True
        ):
            writers[name].add(image_id, classes + 1, quantize(cam[classes]))
