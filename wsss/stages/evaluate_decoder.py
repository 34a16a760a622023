"""Stage ``evaluate-decoder``: score a single-stage method's segmentation decoder on a split
(:mod:`wsss.methods.decoder_evaluation`)."""

from __future__ import annotations

import argparse

from wsss.io import write_json
from wsss.methods.decoder_evaluation import evaluate_decoder
from wsss.stages import add_common, add_execution, json_arg

HELP = "score a single-stage method's segmentation decoder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=json_arg, required=True, help="{dataset, scales, meta}")
    p.add_argument("--model", required=True, help="model.pt of a method with a decoder")
    p.add_argument("--split", help="default: the dataset's seg_split")
    p.add_argument("--out", required=True, help="decoder_metrics.json to write")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    config = args.config
    split = args.split or config["dataset"]["seg_split"]
    result = evaluate_decoder(
        config, args.model, split, config["scales"], progress=not args.no_progress
    )
    write_json(args.out, {"meta": config["meta"], "decoder": result})
    return 0
