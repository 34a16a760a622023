"""Stage ``attention-diagnostics``: does a trained model's attention group patches into objects?

What is measured, and on which images: :mod:`wsss.methods.model_diagnostics`.
"""

from __future__ import annotations

import argparse

from wsss.io import write_json
from wsss.methods.model_diagnostics import attention_diagnostics
from wsss.stages import add_common, add_execution, json_arg

HELP = "attention diagnostics of one trained model per block and for the patch affinity (JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="{dataset, max_images, min_fraction, batch_size, affinity_layers, class_layers, meta}",
    )
    p.add_argument("--model", required=True, help="model.pt from the train stage")
    p.add_argument("--out", required=True, help="JSON to write")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    write_json(args.out, attention_diagnostics(args.config, args.model))
    return 0
