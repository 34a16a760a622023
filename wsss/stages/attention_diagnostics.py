"""Stage ``attention-diagnostics``: does a trained model's attention group patches into objects?

For one trained run (``model.pt`` of the train stage) on its dataset's
``eval_split``: per block, and for the patch affinity the refinement propagates
CAMs with, the own-object lift, other-object lift, background-to-object ratio,
neighbourhood lift and entropy of :mod:`wsss.evaluation.attention_diagnostics`
(definitions and the reading there and in ``docs/synthetic.md``). The model is
rebuilt by its own training method (``load_trained``), so a method with extra
parameters (ClusterCAM) or block hooks (DOEI) runs exactly as when its CAMs are
extracted, at each image's stored size, no flip, one scale.

The statistics need per-object masks (``SegmentationObject/``: the synthetic
generator writes them, VOC ships them for its segmentation images). A dataset
without that folder, or a split none of whose images has a mask, is not an
error: the JSON records ``skipped`` with the reason and no values, and the table
and figure show the run as empty. Images of the split without a mask are left
out and counted (``images_without_instance_masks``).
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any

from wsss.data.datasets import open_dataset
from wsss.evaluation.attention_report import INSTANCE_DIR, diagnose_model, instance_path
from wsss.io import write_json
from wsss.methods.cam_inference import load_trained
from wsss.models.attention import select_blocks
from wsss.runtime import resolve_device
from wsss.stages import add_common, add_execution, json_arg

log = logging.getLogger("wsss")

HELP = "attention diagnostics of one trained model per block and for the patch affinity (JSON)"


def _finite_or_none(value: Any) -> Any:
    """NaN (a statistic without queries, e.g. other-object lift with one object) -> None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def attention_diagnostics(config: dict[str, Any], model_path: str | Path) -> dict[str, Any]:
    """The diagnostics of the trained model at ``model_path`` (what the rule writes).

    ``config``: ``{"dataset"`` (its ``eval_split`` is read), ``"max_images"`` (the
    first n images with a mask; None: all), ``"min_fraction"`` (patch labelling,
    :func:`~wsss.evaluation.attention_diagnostics.patch_instance_labels`),
    ``"batch_size"``, ``"affinity_layers"`` (the blocks the affinity sums: ``"all"``,
    the last k or indices, as ``cam.affinity_layers``), ``"meta"}``.
    Returns ``{"meta", "skipped", "method", "split", "images", "blocks": [...],
    "affinity": {...}, "affinity_blocks", ...}``; with ``skipped`` set (a reason)
    there are no values. Raises ValueError when the model's classes are not the
    dataset's.
    """
    dataset = open_dataset(config["dataset"])
    split = config["dataset"]["eval_split"]
    layout = dataset.layout
    base = {"meta": config["meta"], "model": str(model_path), "split": split, "skipped": None}
    if not (layout.root / INSTANCE_DIR).is_dir():
        reason = (
            f"dataset {dataset.name} has no instance masks ({layout.root / INSTANCE_DIR} does "
            "not exist); the diagnostics need per-object masks"
        )
        log.warning("attention diagnostics skipped: %s", reason)
        return {**base, "skipped": reason}
    ids = layout.split_ids(split)
    with_masks = [i for i in ids if instance_path(layout, i).is_file()]
    if not with_masks:
        reason = f"no image of split {split!r} has an instance mask in {INSTANCE_DIR}/"
        log.warning("attention diagnostics skipped: %s", reason)
        return {**base, "skipped": reason}
    missing = len(ids) - len(with_masks)
    if missing:
        log.warning(
            "%d of %d images of %s have no instance mask: left out", missing, len(ids), split
        )
    if config["max_images"] is not None:
        with_masks = with_masks[: config["max_images"]]

    device = resolve_device()
    model, method, state = load_trained(model_path, device)
    if len(state["class_names"]) != dataset.num_classes:
        raise ValueError(
            f"{model_path} was trained on {len(state['class_names'])} classes, dataset "
            f"{dataset.name} has {dataset.num_classes}"
        )
    blocks = select_blocks(model.depth, config["affinity_layers"])
    log.info(
        "attention diagnostics: %s (%s, seed %s) on %s %s (%d images), affinity blocks %s",
        model_path,
        state.get("method"),
        state.get("seed"),
        dataset.name,
        split,
        len(with_masks),
        blocks,
    )
    result = diagnose_model(
        model,
        layout,
        with_masks,
        num_classes=dataset.num_classes,
        patch_size=model.patch_size,
        affinity_blocks=blocks,
        min_fraction=config["min_fraction"],
        device=device,
        batch_size=config["batch_size"],
        forward=lambda images: method.forward(model, images, epoch=-1),
    )
    for index, entry in enumerate(result["blocks"]):
        log.info(
            "block %d: own %.2f other %.2f bg->object %.2f entropy/logN %.3f",
            index,
            entry["own_object_lift"],
            entry["other_object_lift"],
            entry["background_to_object_ratio"],
            entry["entropy_normalised"],
        )
    log.info("affinity: bg->object %.2f", result["affinity"]["background_to_object_ratio"])
    result["blocks"] = [{k: _finite_or_none(v) for k, v in b.items()} for b in result["blocks"]]
    result["affinity"] = {k: _finite_or_none(v) for k, v in result["affinity"].items()}
    return {
        **base,
        **result,
        "method": state.get("method"),
        "min_fraction": config["min_fraction"],
        "images_without_instance_masks": missing,
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="{dataset, max_images, min_fraction, batch_size, affinity_layers, meta}",
    )
    p.add_argument("--model", required=True, help="model.pt from the train stage")
    p.add_argument("--out", required=True, help="JSON to write")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    write_json(args.out, attention_diagnostics(args.config, args.model))
    return 0
