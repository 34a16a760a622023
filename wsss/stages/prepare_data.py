"""Stage ``prepare-data``: generate (synthetic) or check a dataset and write its manifest.

Besides the files and their sizes (:func:`wsss.data.datasets.prepare_dataset`), every image
and mask of the splits in use is decoded and checked once (:mod:`wsss.data.checks`), in a
pool of ``--threads`` threads, and the manifest records what decoding found (``checked``).
``--cache`` keeps a copy of that record where the next run finds it (Snakemake deletes the
manifest before rerunning the job), so a rerun decodes only the files whose content changed;
the checks are applied again to every file either way.
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
    p.add_argument("--out", required=True, help="manifest JSON to write")
    p.add_argument(
        "--cache",
        help="JSON file keeping the record of the files checked: read (if present) to skip "
        "decoding unchanged files, rewritten after a successful check",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    previous = recorded_checks(args.cache) if args.cache else None
    manifest = prepare_dataset(args.config, progress=not args.no_progress)
    manifest["checked"] = check_dataset(
        args.config, previous, threads=args.threads or 1, progress=not args.no_progress
    )
    write_json(args.out, manifest)
    if args.cache:
        write_json(args.cache, {"checked": manifest["checked"]})
    return 0
