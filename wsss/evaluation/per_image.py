"""Per-image intersection and union counts at one background threshold.

mIoU over a set of images is not a mean of per-image IoUs: it is
``mean_c sum_i I_ic / sum_i U_ic`` (the VOC benchmark's dataset-level IoU, see
wsss.evaluation.metrics). Resampling images (wsss.evaluation.bootstrap) therefore
needs each image's per-class intersection ``I = TP`` and union ``U = T + P - TP``;
both are additive over images, so the mIoU of any multiset of images follows from
summed counts.

JSON form (``cam.per_image`` in ``cam_metrics.json``), sparse because an image
touches few of the labels (a VOC image ~3 of 21)::

    {"threshold": 0.11, "num_labels": 7,
     "images": {"<image id>": {"labels": [0, 3], "intersection": [812, 40],
                               "union": [1000, 120]}, ...}}

``labels`` lists the labels whose union is > 0 in that image (background is 0);
every other label has I = U = 0 there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss.evaluation.confusion import IGNORE_INDEX, confusion_matrix
from wsss.evaluation.sweep import Q_VALUES, cam_argmax_and_score


def image_counts(
    gt: np.ndarray,
    cams_q: np.ndarray,
    classes: np.ndarray,
    threshold: float,
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label intersection and union (two int64 arrays of length ``num_labels``) of one image.

    The label map is the threshold sweep's rule (wsss.evaluation.sweep): the argmax
    class where the maximum quantised CAM ``q`` has ``q / 255 > threshold`` (float64),
    background elsewhere, ties to the lower label. ``cams_q``: k x H x W uint8 CAMs of
    the labels ``classes`` (1..num_labels-1); ``gt``: H x W labels, ``ignore_index``
    skipped. Summed over a split, the counts give exactly the sweep's confusion at
    ``threshold``.
    """
    classes = np.asarray(classes)
    order = np.argsort(classes, kind="stable")
    fg_class, fg_score = cam_argmax_and_score(np.asarray(cams_q)[order], classes[order])
    pred = np.where(Q_VALUES[fg_score] > threshold, fg_class, 0)
    conf = confusion_matrix(gt, pred, num_labels, ignore_index)
    tp = np.diag(conf)
    return tp, conf.sum(axis=0) + conf.sum(axis=1) - tp


@dataclass(frozen=True)
class PerImageCounts:
    """Counts of n images: ``intersection`` and ``union`` are n x num_labels int64, rows in
    the order of ``ids``."""

    ids: tuple[str, ...]
    intersection: np.ndarray
    union: np.ndarray
    threshold: float

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.intersection.ndim != 2 or self.intersection.shape[0] != n:
            raise ValueError(
                f"intersection must be {n} x num_labels, got {self.intersection.shape}"
            )
        if self.union.shape != self.intersection.shape:
            raise ValueError(f"union is {self.union.shape}, intersection {self.intersection.shape}")
        if np.any(self.intersection < 0) or np.any(self.intersection > self.union):
            raise ValueError("counts must satisfy 0 <= intersection <= union")

    @property
    def num_labels(self) -> int:
        return self.intersection.shape[1]

    def miou(self) -> float:
        """mIoU of all the images (NaN if no label has a union > 0)."""
        return float(miou_from_sums(self.intersection.sum(axis=0), self.union.sum(axis=0)))

    def to_json(self) -> dict[str, Any]:
        images = {}
        for image_id, inter, union in zip(self.ids, self.intersection, self.union, strict=True):
            labels = np.flatnonzero(union)
            images[image_id] = {
                "labels": labels.tolist(),
                "intersection": inter[labels].tolist(),
                "union": union[labels].tolist(),
            }
        return {"threshold": self.threshold, "num_labels": self.num_labels, "images": images}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str) -> PerImageCounts:
        """Parse :meth:`to_json`'s form; ``where`` names the source in errors (file and key)."""
        try:
            num_labels = int(entry["num_labels"])
            threshold = float(entry["threshold"])
            images = entry["images"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{where}: expected {{threshold, num_labels, images}} per-image counts ({err})"
            ) from err
        ids = tuple(sorted(images))
        inter = np.zeros((len(ids), num_labels), np.int64)
        union = np.zeros((len(ids), num_labels), np.int64)
        for row, image_id in enumerate(ids):
            record = images[image_id]
            try:
                labels = np.asarray(record["labels"], np.int64)
                inter[row, labels] = record["intersection"]
                union[row, labels] = record["union"]
            except (KeyError, TypeError, ValueError, IndexError) as err:
                raise ValueError(
                    f"{where}: image {image_id!r}: expected labels (0..{num_labels - 1}), "
                    f"intersection and union lists of one length ({err})"
                ) from err
        try:
            return cls(ids, inter, union, threshold)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err


def miou_from_sums(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU over the last axis of summed counts (``... x num_labels`` -> ``...``).

    Labels with union 0 are left out (as in wsss.evaluation.metrics); NaN where no
    label has a union > 0.
    """
    intersection = np.asarray(intersection, np.float64)
    union = np.asarray(union, np.float64)
    counted = union > 0
    iou = np.divide(intersection, union, out=np.zeros_like(union), where=counted)
    num = counted.sum(axis=-1)
    total = iou.sum(axis=-1)
    return np.divide(total, num, out=np.full(np.shape(total), np.nan), where=num > 0)
