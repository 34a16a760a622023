"""Stage ``segment``: stage 2, a segmenter trained on pseudo-labels and scored on seg_split."""

from __future__ import annotations

import argparse

from wsss import distributed
from wsss.io import write_json
from wsss.segmentation.train import run_segmentation
from wsss.stages import add_common, add_execution, json_arg

HELP = "stage 2: train a segmenter on pseudo-labels, score it on the seg split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="{dataset, segmentation, scales, device, meta}",
    )
    p.add_argument("--labels", required=True, help="pseudo-label folder of the train split")
    p.add_argument("--seed", type=int, required=True, help="the run's seed (grid.seeds)")
    p.add_argument("--model", required=True, help="segmenter.pt to write")
    p.add_argument("--metrics", required=True, help="seg_metrics.json to write")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    ranks = distributed.from_environment()
    try:
        result = run_segmentation(
            config, args.labels, args.seed, args.model, progress=not args.no_progress
        )
    finally:
        distributed.stop(ranks)
    if ranks.is_main:  # under torchrun, rank 0 alone writes the outputs
        write_json(args.metrics, {"meta": config.get("meta", {}), "seg": result})
    return 0
