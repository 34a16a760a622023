"""Per-class segmentation scores from a confusion matrix ``conf[gt, pred]``.

With T = row sum (ground-truth pixels), P = column sum (predicted pixels) and
TP = diagonal, the union is U = T + P - TP and

- IoU = TP / U, precision = TP / P, recall = TP / T;
- fp_rate = (P - TP) / U and fn_rate = (T - TP) / U, the error split used in
  WSSS papers: IoU + fp_rate + fn_rate = 1 for every class with U > 0.

A class with U == 0 (neither in the ground truth nor predicted) has NaN IoU,
fp_rate and fn_rate and is left out of the mIoU (``np.nanmean``); ``num_counted``
says how many classes the mean is over. Precision is NaN where P == 0 and recall
where T == 0. mIoU averages every label, background included, as the VOC
benchmark does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class SegmentationScores:
    miou: float
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    fp_rate: np.ndarray
    fn_rate: np.ndarray
    pixel_accuracy: float
    num_counted: int

    def to_dict(self, class_names: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready dict; per-class values keyed by class name (index if no names), NaN -> None."""
        num = len(self.iou)
        if class_names is None:
            keys = [str(i) for i in range(num)]
        else:
            if len(class_names) != num:
                raise ValueError(f"got {len(class_names)} class names for {num} labels")
            keys = list(class_names)

        def per_class(values: np.ndarray) -> dict[str, float | None]:
            return {key: _json_float(v) for key, v in zip(keys, values, strict=True)}

        return {
            "miou": _json_float(self.miou),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "num_counted": int(self.num_counted),
            "iou": per_class(self.iou),
            "precision": per_class(self.precision),
            "recall": per_class(self.recall),
            "fp_rate": per_class(self.fp_rate),
            "fn_rate": per_class(self.fn_rate),
        }


def _json_float(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0 (no warnings)."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def scores_from_confusion(conf: np.ndarray) -> SegmentationScores:
    """All scores of a square ``conf[gt, pred]`` matrix (see the module docstring)."""
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square K x K, got shape {conf.shape}")
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_total = conf.sum(axis=1)
    pred_total = conf.sum(axis=0)
    union = gt_total + pred_total - tp
    iou = _ratio(tp, union)
    counted = ~np.isnan(iou)
    num_counted = int(counted.sum())
    total = conf.sum()
    return SegmentationScores(
        miou=float(iou[counted].mean()) if num_counted else math.nan,
        iou=iou,
        precision=_ratio(tp, pred_total),
        recall=_ratio(tp, gt_total),
        fp_rate=_ratio(pred_total - tp, union),
        fn_rate=_ratio(gt_total - tp, union),
        pixel_accuracy=float(tp.sum() / total) if total > 0 else math.nan,
        num_counted=num_counted,
    )


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Multi-label mean average precision (the classifier's training-split mAP).

    ``scores``: (N, C) float, any range (higher = more confident); ``labels``: (N, C),
    > 0 where the class is present. Per class with at least one positive image: the mean,
    over its positives, of the precision at each positive's rank (images sorted by score,
    descending, ties in image order: a stable sort), i.e. the non-interpolated AP of
    scikit-learn's ``average_precision_score`` without tie grouping. Returns the mean over
    those classes in [0, 1], NaN when no class has a positive.
    """
    aps = []
    for c in range(labels.shape[1]):
        positives = labels[:, c] > 0
        if not positives.any():
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = positives[order]
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        aps.append(float((precision * hits).sum() / hits.sum()))
    return float(np.mean(aps)) if aps else float("nan")
