"""Scoring a single-stage method's segmentation decoder on a split (the ``evaluate-decoder`` stage)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss.data.classification import normalize
from wsss.data.datasets import open_dataset
from wsss.evaluation.segmentation import score_segmentation
from wsss.methods.cam_inference import load_trained
from wsss.ops.multiscale import max_softmax_over_scales, padded_logits_at
from wsss.runtime import resolve_device


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
