"""Multi-scale inference and scoring of the stage-2 segmenter.

As the official ``seg/infer_seg.py`` (methods.md section 1.3): the image is
resized to each scale, the softmax of the logits is resized back, and the
element-wise maximum over scales is taken; no flip. An optional dense CRF
(wsss.ops.crf, the optional ``pydensecrf2``) refines the result per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from wsss.data.classification import normalize
from wsss.data.datasets import OpenedDataset
from wsss.evaluation.segmentation import score_segmentation
from wsss.ops.multiscale import max_softmax_over_scales


@torch.inference_mode()
def multiscale_probabilities(
    model: nn.Module, x: torch.Tensor, scales: Sequence[float]
) -> torch.Tensor:
    """Normalised B x 3 x H x W -> B x K x H x W: max over scales of the segmenter's softmax."""
    # logits resized straight to the image size, then the softmax (as the official script)
    return max_softmax_over_scales(x, scales, lambda scaled, size: model(scaled, size=size))


def predict(
    model: nn.Module,
    images: torch.Tensor,
    scales: Sequence[float],
    crf_settings=None,
) -> np.ndarray:
    """uint8 B x 3 x H x W -> B x H x W uint8 labels (CRF per image when settings are given)."""
    probs = multiscale_probabilities(model, normalize(images), scales)
    if crf_settings is None:
        return probs.argmax(1).cpu().numpy().astype(np.uint8)
    from wsss.ops.crf import dense_crf

    probs = probs / probs.sum(1, keepdim=True)  # a max over scales no longer sums to 1
    rgb = images.permute(0, 2, 3, 1).cpu().numpy()
    labels = [
        dense_crf(np.ascontiguousarray(image), p, crf_settings).argmax(0)
        for image, p in zip(rgb, probs.cpu().numpy(), strict=True)
    ]
    return np.stack(labels).astype(np.uint8)


def evaluate_segmenter(
    model: nn.Module,
    dataset: OpenedDataset,
    split: str,
    scales: Sequence[float],
    device: torch.device,
    batch_size: int = 16,
    crf_settings=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of ``split`` and score it against the masks (summarize's dict)."""
    model.eval()
    result = score_segmentation(
        lambda images: predict(model, images, scales, crf_settings),
        dataset,
        split,
        device,
        batch_size,
        desc="segment",
        progress=progress,
    )
    return {**result, "scales": list(scales), "crf": crf_settings is not None}
