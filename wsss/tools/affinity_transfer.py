"""Command ``affinity-transfer``: the decoupled test of a backbone's affinity.

Refines one fixed CAM set (a trained variant's *unrefined* CAM, by default the
from-scratch ``mctformer_v2`` run of seed 0, on the held-out ``val`` split) with
each given affinity, with no fine-tuning, and scores every CAM set as the
``evaluate`` stage does (CAM mIoU at the best background threshold of
``evaluate.thresholds``). The gain of each affinity over the unrefined CAM comes
with a paired bootstrap interval over the images (:mod:`wsss.evaluation.bootstrap`,
one stratum: this one CAM model). Affinities (``--affinity``, repeatable):

- ``own``: the CAM model's own affinity (equals the grid's ``<method>_affinity`` row);
- ``oracle``, ``oracle_objects``, ``oracle_background``: the oracle affinity from the
  instance masks (all rows, object rows only, background rows only): the ceiling;
- a file: pretrained backbone weights (e.g. ``pretrained/proxy_vit.pth``), loaded into
  the CAM model's architecture as a training run starts, or a trained ``model.pt``
  (told apart by its keys), rebuilt by its own training method.

Alongside, for each affinity as used (its first pass), the attention diagnostics of
:mod:`wsss.evaluation.attention_diagnostics` (bg->object ratio, lifts, and an object
patch's shares on itself, the rest of its object, other objects and the background).
A pretraining that cannot beat the unrefined CAM here cannot make the refinement win
after fine-tuning either (docs/synthetic.md, "decoupled affinity test").

Needs per-object masks (``SegmentationObject/``). The split should not be the one the
table reports when the result chooses a recipe: the default is ``val``.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss import checkpoint
from wsss.cam_store import CamWriter, quantize
from wsss.config import cam_config, load_params, training_key
from wsss.data.datasets import batches_by_size, open_dataset
from wsss.evaluation.attention_diagnostics import LocalitySums
from wsss.evaluation.attention_report import INSTANCE_DIR, load_instance_map
from wsss.evaluation.bootstrap import image_only_paired_difference
from wsss.evaluation.cam_eval import evaluate_cams
from wsss.evaluation.per_image import PerImageCounts
from wsss.io import write_json
from wsss.methods.affinity_transfer import (
    AffinitySource,
    BackboneAffinity,
    OracleAffinity,
    OwnAffinity,
    transfer_cams,
)
from wsss.methods.base import TRAINING_METHODS
from wsss.methods.cam_inference import CamSettings, load_trained
from wsss.runtime import platform_info, resolve_device
from wsss.runtime import progress as tqdm
from wsss.stages import add_common

log = logging.getLogger("wsss")

HELP = "refine one fixed CAM set with other affinities (backbone, oracle): the decoupled test"

UNREFINED = "unrefined"


def build_source(spec: str, cam_state: dict[str, Any], device: torch.device) -> AffinitySource:
    """The affinity source of one ``--affinity`` spec (see the module docstring)."""
    if spec == "own":
        return OwnAffinity()
    if spec in ("oracle", "oracle_objects", "oracle_background"):
        return OracleAffinity(spec.partition("_")[2] or "all")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--affinity {spec}: not own, oracle, oracle_objects, oracle_background, nor an "
            "existing file (pretrained backbone weights or a trained model.pt)"
        )
    state = checkpoint.load(path, "cpu", what="affinity backbone")
    if isinstance(state, dict) and {"model", "config", "class_names"} <= set(state):
        model, method, _ = load_trained(path, device)
        return BackboneAffinity(model, method)
    # Pretrained weights: the CAM model's architecture and method, as a training run
    # starting from them builds its model (wsss.models.build_model: pretrained + weights).
    config = cam_state["config"]
    method = TRAINING_METHODS.get(config["method"]["name"])(config["method"]["params"])
    model_config = {**config["model"], "pretrained": True, "weights": str(path)}
    model = method.build_model(model_config, len(cam_state["class_names"]))
    return BackboneAffinity(model.to(device).eval(), method)


def describe_source(spec: str) -> dict[str, Any]:
    """What an ``--affinity`` spec is, for the result file."""
    if spec == "own":
        return {"kind": "own"}
    if spec in ("oracle", "oracle_objects", "oracle_background"):
        return {"kind": "oracle", "rows": spec.partition("_")[2] or "all"}
    return {"kind": "backbone", "file": spec}


def affinity_transfer(
    cam_config: dict[str, Any],
    evaluate_config: dict[str, Any],
    model_path: str | Path,
    split: str,
    affinities: list[str],
    cams_dir: str | Path | None = None,
    progress: bool = True,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """Score the unrefined CAM of ``model_path`` on ``split`` and its refinement by each of
    ``affinities``; return the result dict (what the command writes).

    ``cam_config``: a CAM job's ``{dataset, cam, ...}`` (:func:`wsss.config.cam_config`; its
    refiner is ignored); ``evaluate_config``: the ``evaluate`` block. ``cams_dir``: keep the
    CAM files there (``<name>.npz``); None: a temporary folder. Raises ValueError for a
    repeated or unknown affinity and FileNotFoundError for a dataset without instance masks.
    """
    if len(set(affinities)) != len(affinities) or UNREFINED in affinities:
        raise ValueError(f"--affinity values must be distinct and not {UNREFINED!r}: {affinities}")
    dataset = open_dataset(cam_config["dataset"])
    layout = dataset.layout
    if not (layout.root / INSTANCE_DIR).is_dir():
        raise FileNotFoundError(
            f"dataset {dataset.name} has no instance masks ({layout.root / INSTANCE_DIR}); the "
            "oracle and the diagnostics need per-object masks"
        )
    device = resolve_device()
    model, method, state = load_trained(model_path, device)
    if len(state["class_names"]) != dataset.num_classes:
        raise ValueError(
            f"{model_path} was trained on {len(state['class_names'])} classes, dataset "
            f"{dataset.name} has {dataset.num_classes}"
        )
    settings = CamSettings.from_dict(cam_config["cam"])
    sources: dict[str, AffinitySource | None] = {UNREFINED: None}
    for spec in affinities:
        sources[spec] = build_source(spec, state, device)
    ids = layout.split_ids(split)
    names = {spec: f"affinity{i}" for i, spec in enumerate(affinities)} | {UNREFINED: UNREFINED}
    diagnostics: dict[str, LocalitySums] = {}
    source = dataset.label_source()
    with ExitStack() as stack:
        folder = (
            Path(cams_dir) if cams_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        folder.mkdir(parents=True, exist_ok=True)
        paths = {spec: folder / f"{names[spec]}.npz" for spec in sources}
        writers = {
            spec: stack.enter_context(CamWriter(path, dataset.num_classes))
            for spec, path in paths.items()
        }
        with tqdm(total=len(ids), desc=f"affinity transfer {split}", disable=not progress) as bar:
            for batch_ids, images in batches_by_size(dataset, ids, settings.batch_size):
                labels = np.stack(
                    [layout.image_labels(i, dataset.num_classes, source) for i in batch_ids]
                )
                instances = np.stack([load_instance_map(layout, i) for i in batch_ids])
                cams = transfer_cams(
                    model,
                    method,
                    sources,
                    torch.from_numpy(images).permute(0, 3, 1, 2).to(device),
                    torch.from_numpy(instances.astype(np.int64)).to(device),
                    torch.from_numpy(labels).to(device),
                    settings,
                    diagnostics,
                )
                present = [np.flatnonzero(label > 0) for label in labels]
                for spec, variant in cams.items():
                    for image_id, cam, classes in zip(
                        batch_ids, variant.cpu().numpy(), present, strict=True
                    ):
                        writers[spec].add(image_id, classes + 1, quantize(cam[classes]))
                bar.update(len(batch_ids))
        for writer in writers.values():
            writer.close()
        dataset_split = {**cam_config["dataset"], "eval_split": split}
        scores = {
            spec: evaluate_cams(dataset_split, evaluate_config, str(path), progress=False)
            for spec, path in paths.items()
        }
    counts = {
        spec: PerImageCounts.from_json(s["per_image"], f"{spec} CAMs") for spec, s in scores.items()
    }
    base = scores[UNREFINED]
    result: dict[str, Any] = {
        "cam_model": str(model_path),
        "method": state.get("method"),
        "seed": state.get("seed"),
        "dataset": dataset.name,
        "split": split,
        "images": len(ids),
        "cam": cam_config["cam"],
        "unrefined": _score(base),
        "affinities": {},
        "platform": platform_info(device=str(device)),
    }
    for spec in affinities:
        # One fixed model: the question is this model's CAMs refined two ways, so only the
        # images are redrawn (the seed-aware scheme needs several trained seeds).
        gain = image_only_paired_difference(
            [(counts[spec], counts[UNREFINED])], seed=bootstrap_seed
        )
        entry = {
            **describe_source(spec),
            **_score(scores[spec]),
            "gain": gain.estimate,
            "gain_interval": [gain.low, gain.high],
            "verdict": gain.verdict(),
        }
        if spec in diagnostics:
            entry["diagnostics"] = {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in diagnostics[spec].means()[0].items()
            }
        result["affinities"][spec] = entry
    return result


def _score(scores: dict[str, Any]) -> dict[str, Any]:
    return {
        "miou": scores["miou"],
        "threshold": scores["threshold"],
        "threshold_at_edge": scores["threshold_at_edge"],
    }


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of one result: mIoU (threshold), gain [95% interval], and the
    affinity's object-patch shares (self / rest of object / background) and bg->obj ratio."""
    lines = [
        f"CAM model {result['cam_model']} ({result['method']}, seed {result['seed']}), "
        f"{result['dataset']} {result['split']} ({result['images']} images)",
        "",
        "| affinity | CAM mIoU (threshold) | gain [95% CI] | object patch: self / rest of object "
        "/ other objects / background | bg->object |",
        "|---|---|---|---|---|",
    ]

    def edge(entry: dict[str, Any]) -> str:
        return "*" if entry["threshold_at_edge"] else ""

    base = result["unrefined"]
    lines.append(
        f"| none (unrefined) | {100 * base['miou']:.1f} ({base['threshold']:.2f}{edge(base)}) "
        "| | | |"
    )

    def number(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}"

    for spec, entry in result["affinities"].items():
        d = entry.get("diagnostics", {})
        shares = " / ".join(
            number(d.get(k))
            for k in (
                "self_share",
                "rest_of_object_share",
                "other_objects_share",
                "background_share",
            )
        )
        low, high = entry["gain_interval"]
        lines.append(
            f"| {spec} | {100 * entry['miou']:.1f} ({entry['threshold']:.2f}{edge(entry)}) | "
            f"{100 * entry['gain']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | {shares} | "
            f"{number(d.get('background_to_object_ratio'))} |"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--configfile", action="append", default=[])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument(
        "--method",
        default="mctformer_v2",
        help="the variant whose trained model gives the fixed (unrefined) CAM and the CAM recipe",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="default: the variant's trained model in results/runs")
    p.add_argument("--split", default="val", help="held-out split (default: val)")
    p.add_argument(
        "--affinity",
        action="append",
        required=True,
        help="own | oracle | oracle_objects | oracle_background | a weights file | a model.pt",
    )
    p.add_argument("--cams-dir", help="keep the CAM files here (default: not kept)")
    p.add_argument("--out", help="write the result JSON here")
    add_common(p)


def run(args: argparse.Namespace) -> int:
    params = load_params(args.params, *args.configfile)
    config = cam_config(params, args.dataset, args.method)
    key = training_key(params, args.method)
    model = args.model or f"results/runs/{args.dataset}/train/{key}/seed{args.seed}/model.pt"
    result = affinity_transfer(
        config,
        params["evaluate"],
        model,
        args.split,
        args.affinity,
        cams_dir=args.cams_dir,
        progress=not args.no_progress,
    )
    print(format_table(result))
    if args.out:
        write_json(args.out, result)
    return 0
