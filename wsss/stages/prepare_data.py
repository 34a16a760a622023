"""Stage ``prepare-data``: generate (synthetic) or check a dataset and write its manifest."""

from __future__ import annotations

import argparse

from wsss.data.datasets import prepare_dataset
from wsss.io import write_json
from wsss.stages import add_common, json_arg

HELP = "generate or check a dataset; write its manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True, help="the dataset block (JSON)")
    p.add_argument("--out", required=True, help="manifest JSON to write")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    write_json(args.out, prepare_dataset(args.config, progress=not args.no_progress))
    return 0
