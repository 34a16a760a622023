"""Scoring label maps and CAMs: confusion matrices, per-class scores, threshold sweeps."""

from wsss.evaluation.confusion import IGNORE_INDEX, ConfusionAccumulator, confusion_matrix
from wsss.evaluation.metrics import SegmentationScores, scores_from_confusion
from wsss.evaluation.sweep import (
    SWEEP_STYLES,
    ThresholdSweep,
    cam_argmax_and_score,
    threshold_at_edge,
    threshold_grid,
)

__all__ = [
    "IGNORE_INDEX",
    "SWEEP_STYLES",
    "ConfusionAccumulator",
    "SegmentationScores",
    "ThresholdSweep",
    "cam_argmax_and_score",
    "confusion_matrix",
    "scores_from_confusion",
    "threshold_at_edge",
    "threshold_grid",
]
