"""Stage ``evaluate``: score a CAM artifact against the masks (mIoU, sweep, precision/recall)."""

from __future__ import annotations

import argparse

from wsss.evaluation.cam_eval import evaluate_cams
from wsss.io import write_json
from wsss.stages import add_common, json_arg

HELP = "score CAMs: mIoU, per-class IoU, precision/recall, threshold sweep"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True, help="{dataset, evaluate, meta}")
    p.add_argument(
        "--cams", required=True, help="CAM file (.npz) or shard index (.shards.json) to score"
    )
    p.add_argument("--out", required=True, help="cam_metrics.json to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    result = evaluate_cams(
        config["dataset"], config["evaluate"], args.cams, progress=not args.no_progress
    )
    write_json(args.out, {"meta": config["meta"], "cam": result})
    return 0
