"""Scoring a segmentation prediction (a single-stage method's decoder) on a split."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.data.classification import normalize
from wsss.data.datasets import open_dataset
from wsss.evaluation.segmentation import score_segmentation
from wsss.io import write_json
from wsss.methods.cam_inference import load_trained
from wsss.ops.multiscale import max_softmax_over_scales, padded_logits_at
from wsss.runtime import resolve_device
from wsss.stages import add_common, add_execution, json_arg


@torch.inference_mode()
def segmentation_probabilities(
    method, model, x: torch.Tensor, scales: Sequence[float]
) -> torch.Tensor:
    """Normalised B x 3 x H x W -> B x (C+1) x H x W: element-wise max over scales of the
    decoder's softmax, no flip (the official ClusterCAM inference script)."""

    def decoder_logits(padded: torch.Tensor) -> torch.Tensor:
        logits = method.segment(model, padded)
        if logits is None:
            raise ValueError(f"method {method.name!r} has no segmentation decoder to evaluate")
        return logits

    return max_softmax_over_scales(x, scales, padded_logits_at(decoder_logits, model.patch_size))


def predict_segmentation(
    method, model, images: torch.Tensor, scales: Sequence[float]
) -> torch.Tensor:
    """B x 3 x H x W uint8 -> B x H x W labels."""
    return segmentation_probabilities(method, model, normalize(images), scales).argmax(1)


def evaluate_decoder(
    config: dict[str, Any],
    model_path: str | Path,
    split: str,
    scales: list[float],
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    device = resolve_device()
    dataset = open_dataset(config["dataset"])
    model, method, _ = load_trained(model_path, device)

    def predict(images: torch.Tensor) -> np.ndarray:
        labels = predict_segmentation(method, model, images, scales)
        return labels.cpu().numpy().astype(np.uint8)

    result = score_segmentation(
        predict, dataset, split, device, batch_size, desc="decoder", progress=progress
    )
    return {**result, "scales": scales}


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
