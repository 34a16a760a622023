"""Stage ``table``: every run's metrics -> results/table.{md,csv}, runs.csv, metrics.json, plots."""

from __future__ import annotations

import argparse

from wsss.report.table import write_report
from wsss.stages import add_common, key_values

HELP = "aggregate run metrics into results/table.{md,csv}, metrics.json, plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", nargs="+", required=True, help="cam_metrics.json of every run")
    p.add_argument(
        "--decoder-metrics", nargs="*", default=[], help="decoder_metrics.json of single-stage runs"
    )
    p.add_argument(
        "--pseudo-label-metrics",
        nargs="*",
        default=[],
        help="pseudo_label_metrics.json of every run",
    )
    p.add_argument("--seg-metrics", nargs="*", default=[], help="seg_metrics.json of every run")
    p.add_argument(
        "--attention-diagnostics",
        nargs="*",
        default=[],
        help="attention_diagnostics.json of every trained run",
    )
    p.add_argument(
        "--training-runs", nargs="*", default=[], help="METHOD=RUN: the trained run of each method"
    )
    p.add_argument(
        "--dataset-kinds",
        nargs="*",
        default=[],
        help="DATASET=KIND (voc, coco, synthetic): picks the papers' numbers shown beside ours",
    )
    p.add_argument("--labels", nargs="*", default=[], help="METHOD=LABEL, the display labels")
    p.add_argument(
        "--baselines", nargs="*", default=[], help="METHOD=BASELINE: the row each is compared with"
    )
    p.add_argument("--out-dir", default="results")
    p.add_argument("--method-order", nargs="*", default=None)
    add_common(p)


def run(args: argparse.Namespace) -> int:
    summary = write_report(
        args.metrics,
        args.out_dir,
        method_order=args.method_order,
        decoder_files=args.decoder_metrics,
        pseudo_label_files=args.pseudo_label_metrics,
        seg_files=args.seg_metrics,
        dataset_kinds=key_values(args.dataset_kinds, "--dataset-kinds"),
        labels=key_values(args.labels, "--labels"),
        baselines=key_values(args.baselines, "--baselines"),
        attention_files=args.attention_diagnostics,
        training_runs=key_values(args.training_runs, "--training-runs"),
    )
    print(summary.to_string(index=False))
    return 0
