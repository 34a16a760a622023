"""Stage ``cam-shards``: cut a split into CAM shards, and index the shards once extracted.

``plan`` (the rule ``cam_shard_plan``, a Snakemake checkpoint: the number of ``cams``
jobs follows from it) writes how the split is cut (wsss.cam_store.plan_shards);
``index`` (the rule ``cam_shard_index``) writes the shard index through which the
split's CAMs are read as one (wsss.cam_store.write_shard_index), after checking that
the shards are the plan's and hold every image of the split once.
"""

from __future__ import annotations

import argparse
import logging

from wsss.cam_store import plan_shards, read_shard_plan, write_shard_index
from wsss.data.datasets import open_dataset
from wsss.io import write_json
from wsss.stages import add_common, json_arg

log = logging.getLogger("wsss")

HELP = "cut a split into CAM shards (plan), or index the extracted shards (index)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["plan", "index"])
    p.add_argument("--config", type=json_arg, help="plan: {dataset, shard_size}")
    p.add_argument("--split", help="plan: the split to cut")
    p.add_argument("--plan", help="index: the split's plan")
    p.add_argument("--shards", nargs="+", help="index: the shards' CAM files, in shard order")
    p.add_argument("--out", required=True, help="the plan or index JSON to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    if args.action == "plan":
        if args.config is None or args.split is None:
            raise ValueError("cam-shards plan needs --config and --split")
        dataset = open_dataset(args.config["dataset"])
        plan = {
            "dataset": dataset.name,
            "split": args.split,
            **plan_shards(dataset.layout.split_ids(args.split), args.config["shard_size"]),
        }
        write_json(args.out, plan)
        log.info(
            "%s %s: %d images in %d shards",
            dataset.name,
            args.split,
            plan["images"],
            plan["shards"],
        )
        return 0
    if args.plan is None or not args.shards:
        raise ValueError("cam-shards index needs --plan and --shards")
    plan = read_shard_plan(args.plan)
    if len(args.shards) != plan["shards"]:
        raise ValueError(
            f"{args.plan} cuts the split into {plan['shards']} shards, {len(args.shards)} given"
        )
    write_shard_index(args.out, args.shards, images=plan["images"])
    return 0
