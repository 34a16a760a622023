"""Stage ``prepare-data``: generate (synthetic) or check a dataset and write its manifest.

Besides the files and their sizes (:func:`wsss.data.datasets.prepare_dataset`), every image
and mask of the splits in use is decoded and checked once (:mod:`wsss.data.checks`), in a
pool of ``--threads`` threads; the manifest's ``checked`` record lets a rerun skip decoding
the files whose content it already checked (the rule marks the manifest ``update`` so
Snakemake keeps it for the rerun to read).
"""

from __future__ import annotations

import argparse

from wsss.data.checks import check_dataset, recorded_checks
from wsss.data.datasets import prepare_dataset
from wsss.io import write_json
from wsss.stages import add_common, json_arg

HELP = "generate or check a dataset (every image and mask decoded once); write its manifest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True, help="the dataset block (JSON)")
    p.add_argument(
        "--out", required=True, help="manifest JSON to write (an existing one's checks are reused)"
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    previous = recorded_checks(args.out)
    manifest = prepare_dataset(args.config, progress=not args.no_progress)
    manifest["checked"] = check_dataset(
        args.config, previous, threads=args.threads or 1, progress=not args.no_progress
    )
    write_json(args.out, manifest)
    return 0
