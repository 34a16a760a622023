"""Choosing a refiner's settings on a held-out split, never on the scored one.

For each combination of the given parameter values, the trained model's CAMs
of ``split`` are extracted with the refiner set that way and scored; the
table of results says which setting to put in ``params.yaml``. The split
should not be the dataset's ``eval_split`` (the one the results table
reports): for the synthetic benchmark that means ``val``.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.cams.extract import extract_cams
from wsss.evaluation.cam_eval import evaluate_cams


def tune_refiner(
    cam_config: dict[str, Any],
    evaluate_config: dict[str, Any],
    model_path: str | Path,
    split: str,
    grid: dict[str, list[Any]],
    progress: bool = False,
) -> pd.DataFrame:
    if split == cam_config["dataset"]["eval_split"]:
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
