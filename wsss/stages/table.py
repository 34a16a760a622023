"""Stage ``table``: every run's metrics -> results/table.{md,csv}, runs.csv, metrics.json, plots."""

from __future__ import annotations

import argparse

from wsss.report.table import write_report
from wsss.stages import add_common, json_arg

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
        "--config",
        type=json_arg,
        required=True,
        help="JSON {method_order, dataset_kinds, labels, baselines, training_runs, "
        "intervals} (wsss.config.table_config): the row order; each dataset's kind (voc, "
        "coco, synthetic: picks the papers' numbers shown beside ours); each method's "
        "display label, the baseline it is compared with and its trained run; the "
        "intervals' {n_resamples, seed} (params.yaml intervals)",
    )
    p.add_argument("--out-dir", default="results")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    summary = write_report(
        args.metrics,
        args.out_dir,
        method_order=config.get("method_order"),
        decoder_files=args.decoder_metrics,
        pseudo_label_files=args.pseudo_label_metrics,
        seg_files=args.seg_metrics,
        dataset_kinds=config.get("dataset_kinds", {}),
        labels=config.get("labels", {}),
        baselines=config.get("baselines", {}),
        attention_files=args.attention_diagnostics,
        training_runs=config.get("training_runs", {}),
        intervals=config.get("intervals", {}),
    )
    print(summary.to_string(index=False))
    return 0
