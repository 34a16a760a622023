"""Stage ``train-curves``: the training loss per epoch of one dataset's trained runs, as a
long-format CSV (a DVC plot) and a figure (in ``snakemake --report``), both read from the
runs' ``train_log.tsv``, the one record of the per-epoch losses."""

from __future__ import annotations

import argparse

from wsss.report.plots import write_train_curves
from wsss.stages import add_common

HELP = "training curves of one dataset: loss per epoch of every trained run (CSV + PNG)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--logs", nargs="+", required=True, help="train_log.tsv of the dataset's trained runs"
    )
    p.add_argument("--csv", required=True, help="long-format CSV (dataset, run, seed, epoch, loss)")
    p.add_argument("--figure", required=True, help="the PNG")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    for path in write_train_curves(args.logs, args.csv, args.figure):
        print(path)
    return 0
