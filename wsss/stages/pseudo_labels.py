"""Stage ``pseudo-labels``: CAMs of the train split -> pseudo-label PNGs, scored.

The rule of each label map (background threshold, two-threshold fusion, PAR, dense CRF)
and the scoring are :mod:`wsss.segmentation.pseudo_labels`.
"""

from __future__ import annotations

import argparse

from wsss.io import write_json
from wsss.segmentation.pseudo_labels import make_pseudo_labels
from wsss.stages import add_common, json_arg

__all__ = ["HELP", "add_arguments", "run"]

HELP = "CAMs of the train split -> pseudo-label PNGs (threshold, PAR or CRF), scored"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True, help="{dataset, pseudo_labels, meta}")
    p.add_argument(
        "--cams", required=True, help="CAM file (or shard index) of the dataset's train_split"
    )
    p.add_argument("--cam-metrics", help="cam_metrics.json whose best threshold 'best' uses")
    p.add_argument(
        "--out-dir", required=True, help="folder of <image id>.png (replaced atomically)"
    )
    p.add_argument("--metrics", required=True, help="pseudo_label_metrics.json to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    result = make_pseudo_labels(
        config, args.cams, args.out_dir, args.cam_metrics, progress=not args.no_progress
    )
    write_json(args.metrics, {"meta": config.get("meta", {}), "pseudo_labels": result})
    return 0
