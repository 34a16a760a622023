"""Stage ``gallery``: the CAM gallery of one dataset, the same images for every method."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsss.report.gallery import GalleryMethod, write_gallery
from wsss.stages import add_common, json_arg

HELP = "CAM gallery of one dataset: the same images for every method"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=json_arg, required=True, help="{dataset, report, methods, seed}"
    )
    p.add_argument("--cams", nargs="+", required=True, help="one CAM file per method, in order")
    p.add_argument(
        "--pseudo-labels", nargs="*", default=None, help="one pseudo-label folder per method"
    )
    p.add_argument("--out", required=True, help="PNG to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    methods = config["methods"]
    pseudo = args.pseudo_labels or [None] * len(methods)
    if not len(methods) == len(args.cams) == len(pseudo):
        raise ValueError(
            f"gallery: {len(methods)} methods in --config, {len(args.cams)} --cams files and "
            f"{len(args.pseudo_labels or [])} --pseudo-labels folders; give one of each per method"
        )
    columns = [
        GalleryMethod(m["name"], m["label"], Path(c), None if d is None else Path(d))
        for m, c, d in zip(methods, args.cams, pseudo, strict=True)
    ]
    ids = write_gallery(config["dataset"], config["report"], columns, args.out, config.get("seed"))
    print(" ".join(ids))
    return 0
