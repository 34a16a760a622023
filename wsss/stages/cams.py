"""Stage ``cams``: extract (and refine) the CAMs of a split with one trained model.

How variants share forward passes, and shards: :mod:`wsss.methods.cam_extraction`.
"""

from __future__ import annotations

import argparse

from wsss.cam_store import read_shard_plan
from wsss.io import write_json
from wsss.methods.cam_extraction import extract_cam_variants, variants_with_outputs
from wsss.stages import add_common, add_execution, json_arg

HELP = (
    "extract (and refine) the CAMs of a split, or of one shard of it, for every variant of a model"
)


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
