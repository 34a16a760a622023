"""Stage ``attention-figure``: one dataset's attention diagnostics as a figure (per block and
for the patch affinity, one line per trained run; :mod:`wsss.report.attention_plots`)."""

from __future__ import annotations

import argparse

from wsss.report.attention_plots import plot_attention_diagnostics
from wsss.stages import add_common, json_arg

HELP = "figure of one dataset's attention diagnostics (per block and for the affinity)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--diagnostics",
        nargs="+",
        required=True,
        help="attention_diagnostics.json of the dataset's trained runs",
    )
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument(
        "--config",
        type=json_arg,
        default={},
        help="JSON {run_order, labels} (wsss.config.attention_figure_config): the trained "
        "runs in legend order and each one's display label (default: the runs sorted, labelled by name)",
    )
    add_common(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    print(
        plot_attention_diagnostics(
            args.diagnostics, args.out, config.get("labels", {}), config.get("run_order")
        )
    )
    return 0
