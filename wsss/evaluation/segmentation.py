"""Scoring a dense segmentation prediction (a stage-2 segmenter, a single-stage method's
decoder) against the masks of a split: one confusion matrix over every pixel, mIoU over
background + classes with 255 ignored (the same scores as the CAM evaluation,
:func:`wsss.evaluation.cam_eval.summarize`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wsss.data.datasets import OpenedDataset, batches_by_size
from wsss.evaluation.cam_eval import summarize
from wsss.evaluation.confusion import ConfusionAccumulator
from wsss.evaluation.metrics import scores_from_confusion
from wsss.runtime import progress as tqdm


def score_segmentation(
    predict: Callable[[torch.Tensor], np.ndarray],
    dataset: OpenedDataset,
    split: str,
    device: torch.device,
    batch_size: int = 16,
    desc: str = "segment",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict every image of ``split`` in batches of equal-size images and score it.

    ``predict`` maps a B x 3 x H x W uint8 tensor (on ``device``) to B x H x W labels
    (uint8 array: 0 background, c = class c). Returns ``{"split", "images", **summarize}``.
    Raises ValueError naming the dataset and split when the split is empty.
    """
    ids = dataset.layout.split_ids(split)
    if not ids:
        raise ValueError(f"dataset {dataset.name}: split {split!r} is empty")
    accumulator = ConfusionAccumulator(dataset.num_classes + 1)
    with tqdm(total=len(ids), desc=f"{desc} {split}", disable=not progress) as bar:
        for batch_ids, images in batches_by_size(dataset, ids, batch_size):
            labels = predict(torch.from_numpy(images).permute(0, 3, 1, 2).to(device))
            for image_id, label in zip(batch_ids, labels, strict=True):
                accumulator.update(dataset.layout.load_mask(image_id), label)
            bar.update(len(batch_ids))
    scores = scores_from_confusion(accumulator.matrix)
    return {"split": split, "images": len(ids), **summarize(scores, dataset.class_names)}
