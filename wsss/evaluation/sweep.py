"""Background-threshold sweep of quantised CAMs from one pass over the data.

The CAM-to-label rule of the literature: with per-class CAMs in [0, 1] for the
image's ground-truth classes (all other classes zero) and a background score
t, the label is ``argmax([t, cam_1, ..., cam_C])`` with ties going to the
lowest index (background first). A pixel is therefore foreground iff its
maximum CAM exceeds t, and then takes the argmax class.

CAMs are stored as ``q = round(255 * cam)``. Per pixel only three numbers
matter for every threshold: the ground-truth label, the argmax foreground class
and the maximum ``q``. ``ThresholdSweep`` histograms them into
``counts[gt, fg_class, q]`` (K x K x 256, int64); the confusion matrix at any t
follows from suffix sums over the q axis (O(K*K*256) per threshold, no pixel
work), so a 60- or 80-step sweep reads the CAMs once instead of once per step.

Float rule, shared by every path: a level q is foreground at t iff
``q / 255.0 > t`` in float64 (``Q_VALUES > t``). Note that float32
dequantisation can disagree exactly on grid points (``float32(51/255) > 0.2``
but ``51/255.0 == 0.2``); thresholds equal to a level count that level as
background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from wsss.evaluation.confusion import IGNORE_INDEX, gt_row_offsets
from wsss.evaluation.metrics import SegmentationScores, scores_from_confusion

LEVELS = 256
Q_VALUES = np.arange(LEVELS) / 255.0
SWEEP_STYLES = ("exhaustive", "greedy")


def _as_uint8_cams(cams_q: np.ndarray) -> np.ndarray:
    cams_q = np.asarray(cams_q)
    if cams_q.ndim != 3:
        raise ValueError(f"cams_q must be k x H x W, got shape {cams_q.shape}")
    if cams_q.dtype != np.uint8:
        if not np.issubdtype(cams_q.dtype, np.integer):
            raise ValueError(f"cams_q must hold uint8 quantised CAMs, got dtype {cams_q.dtype}")
        if cams_q.size and (cams_q.min() < 0 or cams_q.max() > 255):
            raise ValueError("cams_q values must be in 0..255 (quantised CAMs)")
        cams_q = cams_q.astype(np.uint8)
    return cams_q


def _as_classes(classes: np.ndarray, num_channels: int) -> np.ndarray:
    classes = np.asarray(classes)
    if classes.ndim != 1 or len(classes) != num_channels:
        raise ValueError(
            f"classes must be a 1-D array with one label per CAM channel ({num_channels}), "
            f"got shape {classes.shape}"
        )
    if len(classes) and not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes must be integer labels, got dtype {classes.dtype}")
    return classes.astype(np.int64)


def cam_argmax_and_score(cams_q: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel argmax class label and max quantised score of an image's k CAMs.

    ``cams_q`` is k x H x W uint8, ``classes`` the k labels (1..C) of its
    channels. Returns ``fg_class`` (H x W, uint8 for labels < 256, else int64;
    the first channel wins ties) and ``fg_score`` (H x W uint8). With k == 0
    both are all zero.
    """
    cams_q = _as_uint8_cams(cams_q)
    classes = _as_classes(classes, cams_q.shape[0])
    shape = cams_q.shape[1:]
    if len(classes) == 0:
        return np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    dtype = np.uint8 if classes.min() >= 0 and classes.max() < 256 else np.int64
    channel, score = np.argmax(cams_q, axis=0), np.max(cams_q, axis=0)
    return classes.astype(dtype)[channel], score


def threshold_grid(start: float, stop: float, step: float) -> list[float]:
    """``start, start+step, ...`` up to ``stop`` inclusive where it lands on the grid.

    Values are rounded to 10 decimals so that e.g. 0.07 is 0.07, not
    0.07000000000000001 (which would move a threshold across a level q/255).
    """
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    if stop < start:
        raise ValueError(f"stop ({stop}) must be >= start ({start})")
    count = math.floor((stop - start) / step + 1e-9) + 1
    return [round(start + i * step, 10) for i in range(count)]


def threshold_at_edge(threshold: float, thresholds: Sequence[float]) -> bool:
    """Whether ``threshold`` is the lowest or the highest value of the swept ``thresholds``.

    A best threshold at an end of the sweep says the best one may lie outside the
    range (a rising curve clipped at the last value, e.g. CAMs flattened by a refinement
    whose mIoU keeps rising towards all background): widen the sweep. A one-value grid
    is always at its edge. Raises ValueError for an empty grid.
    """
    if len(thresholds) == 0:
        raise ValueError("no thresholds were swept")
    values = [float(t) for t in thresholds]
    return float(threshold) in (min(values), max(values))


class ThresholdSweep:
    """Histogram ``counts[gt, fg_class, q]`` over images; confusion matrices for any threshold."""

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.counts = np.zeros((num_labels, num_labels, LEVELS), np.int64)
        self._suffix: np.ndarray | None = None

    # ------------------------------------------------------------------ filling
    def update(self, gt: np.ndarray, cams_q: np.ndarray, classes: np.ndarray) -> None:
        """Add one image: its ground truth and the quantised CAMs of its k GT classes.

        Channels are taken in increasing label order, so ties between classes go
        to the lower label, as the argmax over the full ``[t, cam_1..cam_C]``
        stack does whatever order the classes were stored in.
        """
        cams_q = _as_uint8_cams(cams_q)
        classes = _as_classes(classes, cams_q.shape[0])
        gt = np.asarray(gt)
        if gt.shape != cams_q.shape[1:]:
            raise ValueError(f"shape mismatch: gt is {gt.shape}, CAMs are {cams_q.shape[1:]}")
        self._check_classes(classes)
        k_labels = self.num_labels
        if len(classes) == 0:
            # No CAM: every pixel scores 0, i.e. background at every threshold >= 0.
            rows = gt_row_offsets(gt, k_labels, self.ignore_index, 1)
            self.counts[:, 0, 0] += np.bincount(rows, minlength=k_labels + 1)[:k_labels]
            self._suffix = None
            return
        order = np.argsort(classes, kind="stable")
        if np.any(order != np.arange(len(order))):
            classes, cams_q = classes[order], cams_q[order]
        k = len(classes)
        stride = LEVELS * k
        # One key per pixel and channel, q * k + (k - 1 - channel): its max over the
        # channels is the max q, ties going to the first channel. Cheaper than argmax
        # along the channel axis.
        if k == 1:
            key = cams_q[0]
        else:
            key_dtype = np.uint16 if stride <= 1 << 16 else np.intp
            keys = cams_q.astype(key_dtype)
            keys *= k
            keys += np.arange(k - 1, -1, -1, dtype=key_dtype)[:, None, None]
            key = keys.max(axis=0)
        index = gt_row_offsets(gt, k_labels, self.ignore_index, stride)
        index += key.ravel()
        local = np.bincount(index, minlength=(k_labels + 1) * stride)[: k_labels * stride]
        # (gt, q, k - 1 - channel) -> (gt, channel, q), scattered into the image's classes.
        local = local.reshape(k_labels, LEVELS, k)[:, :, ::-1].transpose(0, 2, 1)
        self.counts[:, classes, :] += local
        self._suffix = None

    def update_from_max(self, gt: np.ndarray, fg_class: np.ndarray, fg_score: np.ndarray) -> None:
        """Add one image from precomputed per-pixel argmax class and max q (see cam_argmax_and_score)."""
        gt, fg_class, fg_score = np.asarray(gt), np.asarray(fg_class), np.asarray(fg_score)
        if not gt.shape == fg_class.shape == fg_score.shape:
            raise ValueError(
                f"shape mismatch: gt is {gt.shape}, fg_class is {fg_class.shape}, "
                f"fg_score is {fg_score.shape}"
            )
        k_labels = self.num_labels
        if fg_class.size:
            if not np.issubdtype(fg_class.dtype, np.integer):
                raise ValueError(f"fg_class must be integer labels, got dtype {fg_class.dtype}")
            if fg_class.min() < 0 or fg_class.max() >= k_labels:
                raise ValueError(
                    f"fg_class has labels outside 0..{k_labels - 1} (num_labels={k_labels})"
                )
        score = _as_uint8_cams(fg_score[None])[0]
        stride = k_labels * LEVELS
        index = gt_row_offsets(gt, k_labels, self.ignore_index, stride).astype(np.intp)
        index += fg_class.ravel().astype(np.intp) * LEVELS
        index += score.ravel()
        counts = np.bincount(index, minlength=(k_labels + 1) * stride)[: k_labels * stride]
        self.counts += counts.reshape(k_labels, k_labels, LEVELS)
        self._suffix = None

    def merge(self, other: ThresholdSweep) -> None:
        """Add another sweep's counts (sharded evaluation)."""
        if (other.num_labels, other.ignore_index) != (self.num_labels, self.ignore_index):
            raise ValueError(
                f"cannot merge sweeps: num_labels/ignore_index {other.num_labels}/"
                f"{other.ignore_index} vs {self.num_labels}/{self.ignore_index}"
            )
        self.counts += other.counts
        self._suffix = None

    def _check_classes(self, classes: np.ndarray) -> None:
        if len(classes) == 0:
            return
        if classes.min() < 1 or classes.max() >= self.num_labels:
            raise ValueError(
                f"CAM class labels must be in 1..{self.num_labels - 1}, got {classes.tolist()}"
            )
        if len(np.unique(classes)) != len(classes):
            raise ValueError(f"CAM class labels must be distinct, got {classes.tolist()}")

    # ------------------------------------------------------------------ reading
    def _suffix_sums(self) -> np.ndarray:
        """``suffix[g, f, s]`` = pixels with q >= s (s = 0..256), cached until the next update."""
        if self._suffix is None:
            suffix = np.zeros((self.num_labels, self.num_labels, LEVELS + 1), np.int64)
            suffix[:, :, :LEVELS] = np.cumsum(self.counts[:, :, ::-1], axis=2)[:, :, ::-1]
            self._suffix = suffix
        return self._suffix

    def confusion_at(self, threshold: float) -> np.ndarray:
        """Confusion matrix of the argmax rule at background score ``threshold`` (>= 0)."""
        threshold = float(threshold)
        if math.isnan(threshold) or threshold < 0:
            # Below 0 the zero CAMs of absent classes would beat the background
            # and the histogram (GT classes only) no longer describes the rule.
            raise ValueError(f"background threshold must be >= 0, got {threshold}")
        # Levels are sorted, so the foreground ones (Q_VALUES > t) are a suffix q >= first.
        first = int(np.count_nonzero(Q_VALUES <= threshold))
        suffix = self._suffix_sums()
        foreground = suffix[:, :, first]
        conf = foreground.copy()
        conf[:, 0] += (suffix[:, :, 0] - foreground).sum(axis=1)
        return conf

    def sweep(self, thresholds: Sequence[float]) -> list[SegmentationScores]:
        """Scores at every threshold, in the given order."""
        return [scores_from_confusion(self.confusion_at(t)) for t in thresholds]

    def best(
        self, thresholds: Sequence[float], style: str = "exhaustive"
    ) -> tuple[float, SegmentationScores, list[tuple[float, float]]]:
        """Pick the background threshold: (threshold, its scores, evaluated (t, mIoU) curve).

        ``exhaustive``: highest mIoU over all thresholds, the first on ties.
        ``greedy``: MCTformer's early stop; thresholds are walked in increasing
        order and the walk stops at the first one whose mIoU does not improve on
        the previous, returning the previous. The curve then ends with that
        first non-improving threshold.
        """
        if style not in SWEEP_STYLES:
            raise ValueError(f"unknown sweep style {style!r}; expected one of {SWEEP_STYLES}")
        if len(thresholds) == 0:
            raise ValueError("no thresholds to sweep")
        ordered = sorted(float(t) for t in thresholds) if style == "greedy" else list(thresholds)
        best_t, best_scores, best_miou = math.nan, None, -math.inf
        curve: list[tuple[float, float]] = []
        for t in ordered:
            scores = scores_from_confusion(self.confusion_at(t))
            miou = scores.miou
            curve.append((float(t), float(miou)))
            if not math.isnan(miou) and miou > best_miou:
                best_t, best_scores, best_miou = float(t), scores, miou
            elif style == "greedy" and best_scores is not None:
                break
        if best_scores is None:
            # Nothing scored (no pixels): report the first threshold's NaN scores.
            best_t = float(ordered[0])
            best_scores = scores_from_confusion(self.confusion_at(best_t))
        return best_t, best_scores, curve
