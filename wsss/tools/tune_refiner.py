"""Choosing a refiner's settings on a held-out split, never on the scored one.

For each combination of the given parameter values, the trained model's CAMs
of ``split`` are extracted with the refiner set that way and scored; the
table of results says which setting to put in ``params.yaml``. The split
should not be the dataset's ``eval_split`` (the one the results table
reports): for the synthetic benchmark that means ``val``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.config import cam_config, load_params, training_key
from wsss.evaluation.cam_eval import evaluate_cams
from wsss.io import atomic_path
from wsss.methods.cam_extraction import extract_cams
from wsss.stages import add_common, add_execution


def tune_refiner(
    cam_config: dict[str, Any],
    evaluate_config: dict[str, Any],
    model_path: str | Path,
    split: str,
    grid: dict[str, list[Any]],
    progress: bool = False,
    eval_split: str | None = None,
) -> pd.DataFrame:
    if split == eval_split:
        raise ValueError(
            f"tuning split {split!r} is the dataset's eval_split: choose a held-out split so the "
            "reported numbers are not tuned on the data they are scored on"
        )
    keys = list(grid)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cams_path = Path(tmp) / "cams.npz"
        for values in itertools.product(*(grid[k] for k in keys)):
            config = copy.deepcopy(cam_config)
            config["refiner"]["params"].update(dict(zip(keys, values, strict=True)))
            extract_cams(config, model_path, split, cams_path, progress=progress)
            dataset = {**config["dataset"], "eval_split": split}
            result = evaluate_cams(dataset, evaluate_config, str(cams_path), progress=progress)
            rows.append(
                {
                    **dict(zip(keys, values, strict=True)),
                    "miou": result["miou"],
                    "threshold": result["threshold"],
                    "precision": result["precision"],
                    "recall": result["recall"],
                }
            )
    return (
        pd.DataFrame(rows)
        .sort_values("miou", ascending=False, kind="stable")
        .reset_index(drop=True)
    )


HELP = "score refiner settings on a held-out split (not the scored one)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--configfile", action="append", default=[])
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--method", required=True, help="a variant under methods: whose refiner is tuned"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model", help="default: the trained model of the variant's run in results/runs"
    )
    p.add_argument("--split", required=True, help="held-out split, e.g. val")
    p.add_argument(
        "--grid", required=True, help="JSON {param: [values]}, e.g. '{\"steps\": [1, 2, 4]}'"
    )
    p.add_argument("--out", help="write the table as CSV")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, *args.configfile)
    config = cam_config(params, args.dataset, args.method)
    key = training_key(params, args.method)
    model = args.model or f"results/runs/{args.dataset}/train/{key}/seed{args.seed}/model.pt"
    table = tune_refiner(
        config,
        params["evaluate"],
        model,
        args.split,
        json.loads(args.grid),
        not args.no_progress,
        eval_split=params["datasets"][args.dataset]["eval_split"],
    )
    print(table.to_string(index=False))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    return 0
