"""Stage ``plots``: the figures of one dataset (mIoU per method, threshold curves, per-class IoU)."""

from __future__ import annotations

import argparse

from wsss.io import read_json
from wsss.report.plots import write_plots
from wsss.stages import add_common, json_arg

HELP = "figures of one dataset: mIoU per method, threshold curves, per-class IoU"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics", nargs="+", required=True, help="cam_metrics.json of the dataset's runs"
    )
    p.add_argument(
        "--manifest", help="the dataset's manifest (results/data/<dataset>.json): class order"
    )
    p.add_argument("--out-dir", required=True, help="folder for the PNGs")
    p.add_argument("--csv", required=True, help="per-class IoU table (a DVC plot)")
    p.add_argument(
        "--config",
        type=json_arg,
        default={},
        help="JSON {method_order, labels} (wsss.config.plots_config): the grid's methods in "
        "row order and each one's display label (default: the methods in the order their metrics are given, labelled by name)",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    class_names = read_json(args.manifest)["class_names"] if args.manifest else None
    config = args.config
    for path in write_plots(
        args.metrics,
        args.out_dir,
        args.csv,
        class_names,
        config.get("method_order"),
        config.get("labels", {}),
    ):
        print(path)
    return 0
