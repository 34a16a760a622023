"""Confusion matrices for label maps (0 background, 1..C foreground, 255 ignore).

``conf[gt, pred]`` counts pixels; pixels whose ground truth is the ignore
index are skipped. Label maps are run-length encoded in raster order and one
weighted ``np.bincount`` over ``gt * K + pred`` per run replaces the per-class
boolean passes of the official VOC evaluation script.
"""

from __future__ import annotations

import numpy as np

from wsss.data.palette import IGNORE_INDEX


def _as_label_array(values: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label array, got dtype {array.dtype}")
    return array


def _describe_bad(values: np.ndarray) -> str:
    bad = np.unique(values)
    shown = ", ".join(str(int(v)) for v in bad[:10])
    return shown + (f", ... ({len(bad)} distinct)" if len(bad) > 10 else "")


def gt_codes(gt: np.ndarray, num_labels: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Flattened ground truth as ``intp`` row codes: labels stay, ignore becomes ``num_labels``.

    Mapping the ignore index onto an extra row (dropped after counting) avoids
    boolean-indexing every per-pixel array. Raises ValueError for labels outside
    ``0..num_labels-1`` that are not the ignore index.
    """
    gt = _as_label_array(gt, "gt").ravel()
    if gt.size == 0:
        return np.zeros(0, np.intp)
    lo, hi = int(gt.min()), int(gt.max())
    if lo >= 0 and hi < num_labels and not lo <= ignore_index <= hi:
        return gt.astype(np.intp)
    codes = gt.astype(np.intp)
    ignored = codes == ignore_index
    bad = ~ignored & ((codes < 0) | (codes >= num_labels))
    if bad.any():
        raise ValueError(
            f"gt has label values {_describe_bad(codes[bad])} outside 0..{num_labels - 1} "
            f"(num_labels={num_labels}) that are not the ignore index {ignore_index}"
        )
    codes[ignored] = num_labels
    return codes


def gt_row_offsets(gt: np.ndarray, num_labels: int, ignore_index: int, stride: int) -> np.ndarray:
    """Flattened ``gt * stride`` with the ignore index mapped to row ``num_labels``.

    The caller adds per-pixel offsets below ``stride``, bincounts, and drops
    everything from ``num_labels * stride`` on. The result is uint16 when every
    index fits (less memory traffic than intp), else intp. uint8 masks go
    through a 256-entry lookup table, which is cheaper than comparisons.
    """
    gt = _as_label_array(gt, "gt")
    if not (gt.dtype == np.uint8 and num_labels <= 256):
        return gt_codes(gt, num_labels, ignore_index) * stride
    dtype = np.uint16 if (num_labels + 1) * stride <= 1 << 16 else np.intp
    flat = gt.ravel()
    hi = int(flat.max()) if flat.size else 0
    if hi < num_labels and not 0 <= ignore_index <= hi:
        offsets = flat.astype(dtype)
        offsets *= stride
        return offsets
    ignored_row = num_labels * stride
    table = np.full(256, ignored_row + 1, dtype)  # above every legal offset: a bad label
    table[:num_labels] = np.arange(num_labels) * stride
    if 0 <= ignore_index <= 255:
        table[ignore_index] = ignored_row
    offsets = table[flat]
    if int(offsets.max()) > ignored_row:
        gt_codes(gt, num_labels, ignore_index)  # raises, naming the bad values
    return offsets


def _check_pred(
    pred: np.ndarray, codes: np.ndarray, num_labels: int, ignore_index: int
) -> np.ndarray:
    """Flattened prediction; values must be in range wherever the ground truth is not ignored."""
    pred = _as_label_array(pred, "pred").ravel()
    if pred.size == 0:
        return pred.astype(np.intp)
    if int(pred.min()) >= 0 and int(pred.max()) < num_labels:
        return pred
    scored = codes < num_labels
    bad = scored & ((pred < 0) | (pred >= num_labels))
    if bad.any():
        hint = ""
        if np.any(pred[bad] == ignore_index):
            hint = (
                f"; pred holds the ignore index {ignore_index} on labelled pixels, map such "
                "pixels to a class (e.g. background) before scoring"
            )
        raise ValueError(
            f"pred has label values {_describe_bad(pred[bad])} outside 0..{num_labels - 1} "
            f"(num_labels={num_labels}) on pixels with a ground-truth label{hint}"
        )
    # Out-of-range values only sit on ignored pixels: zero them so their index stays in
    # the dropped row.
    return np.where(scored, pred, 0).astype(np.intp)


# Run-length counting pays off while runs are at least this long on average; noisier
# label maps (e.g. random test data) are counted pixel by pixel.
_MIN_MEAN_RUN = 8


def pair_runs(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run-length encoding of the (gt, pred) pair sequence of two flat label arrays.

    Returns ``(gt values, pred values, run lengths)`` with one entry per maximal
    run of equal pairs in raster order, or the inputs themselves and ``None``
    when the runs are too short to be worth it. Label maps are piecewise
    constant (a 500x375 VOC mask and a prediction shifted from it have ~2,000
    runs for ~190,000 pixels), so counting runs instead of pixels avoids
    ``np.bincount``'s per-pixel increments, which are slow because consecutive
    pixels hit the same bin (each increment waits for the previous one).
    """
    size = gt.size
    if size < 2:
        return gt, pred, None
    changed = gt[1:] != gt[:-1]
    changed |= pred[1:] != pred[:-1]
    starts = np.flatnonzero(changed)
    if (len(starts) + 1) * _MIN_MEAN_RUN > size:
        return gt, pred, None
    runs = len(starts) + 1
    first = np.empty(runs, np.intp)  # first pixel of each run
    first[0] = 0
    np.add(starts, 1, out=first[1:])
    lengths = np.empty(runs, np.intp)
    np.subtract(first[1:], first[:-1], out=lengths[:-1])
    lengths[-1] = size - first[-1]
    return gt[first], pred[first], lengths


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_labels: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """``num_labels x num_labels`` int64 matrix ``conf[gt, pred]`` over non-ignored pixels.

    The prediction may hold any value (the ignore index included) where the
    ground truth is ignored; elsewhere it must be a label in ``0..num_labels-1``.
    Counts runs of equal (gt, pred) pairs (:func:`pair_runs`) rather than
    pixels; validation sees every distinct value either way, so errors are the same.
    """
    if num_labels < 1:
        raise ValueError(f"num_labels must be >= 1, got {num_labels}")
    gt_arr, pred_arr = np.asarray(gt), np.asarray(pred)
    if gt_arr.shape != pred_arr.shape:
        raise ValueError(f"shape mismatch: gt is {gt_arr.shape}, pred is {pred_arr.shape}")
    gt_arr = _as_label_array(gt_arr, "gt").ravel()
    pred_arr = _as_label_array(pred_arr, "pred").ravel()
    gt_values, pred_values, lengths = pair_runs(gt_arr, pred_arr)
    if lengths is None and gt_arr.dtype == pred_arr.dtype == np.uint8 and num_labels <= 256:
        conf = _confusion_uint8(gt_arr, pred_arr, num_labels, ignore_index)
        if conf is not None:
            return conf
    # Runs, or pixels of other dtypes; also where the uint8 path met an illegal value (named here).
    k = num_labels
    index = gt_row_offsets(gt_values, k, ignore_index, k)  # gt * k; ignored -> row k, dropped
    if pred_values.size and (int(pred_values.min()) < 0 or int(pred_values.max()) >= k):
        pred_values = _check_pred(pred_values, index // k, k, ignore_index)
    index = index + pred_values
    counts = np.bincount(index, weights=lengths, minlength=(k + 1) * k)[: k * k]
    # Weighted counts are float64 sums of integers below 2**53: exact.
    return counts.reshape(k, k).astype(np.int64)


def _confusion_uint8(
    gt: np.ndarray, pred: np.ndarray, num_labels: int, ignore_index: int
) -> np.ndarray | None:
    """Pixel-wise path for noisy flat uint8 maps: one bincount over the pair ``gt << 8 | pred``.

    The full 256 x 256 pair histogram also shows any illegal value, so no
    separate validation pass is needed. Returns None when a value is illegal
    (the general path then raises with the details).
    """
    pair = gt.astype(np.uint16)
    pair <<= 8
    pair |= pred
    hist = np.bincount(pair, minlength=1 << 16).reshape(256, 256)
    scored = np.arange(256) < num_labels
    if 0 <= ignore_index <= 255:
        scored[ignore_index] = False
        hist[ignore_index] = 0
    if hist[num_labels:].any() or hist[scored, num_labels:].any():
        return None
    return hist[:num_labels, :num_labels].astype(np.int64)


class ConfusionAccumulator:
    """Sums per-image confusion matrices (one ``update`` per image)."""

    def __init__(self, num_labels: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_labels, num_labels), np.int64)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.matrix += confusion_matrix(gt, pred, self.num_labels, self.ignore_index)

    def merge(self, other: ConfusionAccumulator) -> None:
        """Add another accumulator's counts (sharded evaluation)."""
        if (other.num_labels, other.ignore_index) != (self.num_labels, self.ignore_index):
            raise ValueError(
                f"cannot merge accumulators: num_labels/ignore_index {other.num_labels}/"
                f"{other.ignore_index} vs {self.num_labels}/{self.ignore_index}"
            )
        self.matrix += other.matrix
