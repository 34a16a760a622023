"""Stage ``convert-coco``: COCO instance annotations -> the VOC-style layout, once per dataset."""

from __future__ import annotations

import argparse

from wsss.data.coco import CocoConversion, convert_coco, dataset_conversion
from wsss.io import write_json
from wsss.stages import add_common, json_arg

HELP = "COCO instance annotations -> the VOC-style layout (once per dataset)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, help="a kind: coco dataset block (JSON)")
    p.add_argument("--root", help="output folder (without --config)")
    p.add_argument(
        "--split",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "ANNOTATIONS", "IMAGES"),
        help="output split name, its instances_*.json and its image folder (repeatable)",
    )
    p.add_argument("--link", default="symlink", choices=["symlink", "hardlink", "copy"])
    p.add_argument("--crowd", default="class", choices=["class", "ignore"])
    p.add_argument("--keep-empty", action="store_true", help="list images without foreground")
    p.add_argument("--out", help="also write the conversion manifest here")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:
        if args.split or args.root:
            raise ValueError("give either --config or --root with --split, not both")
        conversion, root = dataset_conversion(args.config), args.config["root"]
    elif args.root and args.split:
        splits = {name: {"annotations": ann, "images": img} for name, ann, img in args.split}
        source = {"splits": splits, "link": args.link, "crowd": args.crowd}
        conversion = CocoConversion.from_source({**source, "keep_empty": args.keep_empty})
        root = args.root
    else:
        raise ValueError(
            "give --config, or --root and at least one --split NAME ANNOTATIONS IMAGES"
        )
    manifest = convert_coco(conversion, root, progress=not args.no_progress)
    if args.out:
        write_json(args.out, manifest)
    return 0
