"""Stage ``entropy-weights``: AReAM's per-block entropy weights from a trained baseline.

What is computed and how the train stage reads it: :mod:`wsss.methods.entropy_weights`.
"""

from __future__ import annotations

import argparse

from wsss.io import write_json
from wsss.methods.entropy_weights import baseline_entropy_weights
from wsss.stages import add_common, add_execution, json_arg

HELP = "AReAM's per-block entropy weights from a trained MCTformer-V2 (JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="{dataset, batch_size}; the dataset's train_split is read",
    )
    p.add_argument("--model", required=True, help="the baseline's model.pt from the train stage")
    p.add_argument("--out", required=True, help="JSON to write (weights, raw entropies)")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    result = baseline_entropy_weights(args.config, args.model, progress=not args.no_progress)
    write_json(args.out, result)
    return 0
