import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from wsss.evaluation import (
    ConfusionAccumulator,
    ThresholdSweep,
    cam_argmax_and_score,
    confusion_matrix,
    scores_from_confusion,
    threshold_grid,
)

# ----------------------------------------------------------------- hand-computed example

GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 2, 2, 1],
        [255, 2, 0, 0],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 2, 1, 1],
        [2, 2, 2, 0],
    ],
    dtype=np.uint8,
)
# 11 scored pixels (the 255 one is skipped). Rows gt, columns pred:
#   gt 0: pred 0 at (0,0) (1,0) (2,3); pred 1 at (0,1); pred 2 at (2,2)   -> [3, 1, 1]
#   gt 1: pred 1 at (0,2) (0,3) (1,3)                                      -> [0, 3, 0]
#   gt 2: pred 2 at (1,1) (2,1); pred 1 at (1,2)                           -> [0, 1, 2]
EXPECTED_CONF = np.array([[3, 1, 1], [0, 3, 0], [0, 1, 2]])
# T (row sums) = [5, 3, 3], P (column sums) = [3, 5, 3], TP = [3, 3, 2]
# IoU = TP / (T + P - TP) = [3/(5+3-3), 3/(3+5-3), 2/(3+3-2)] = [3/5, 3/5, 2/4]
EXPECTED_IOU = [0.6, 0.6, 0.5]
# mIoU = (0.6 + 0.6 + 0.5) / 3
EXPECTED_MIOU = 1.7 / 3
# precision = TP / P = [3/3, 3/5, 2/3]; recall = TP / T = [3/5, 3/3, 2/3]
EXPECTED_PRECISION = [1.0, 0.6, 2 / 3]
EXPECTED_RECALL = [0.6, 1.0, 2 / 3]
# fp_rate = (P - TP) / U = [0/5, 2/5, 1/4]; fn_rate = (T - TP) / U = [2/5, 0/5, 1/4]
EXPECTED_FP = [0.0, 0.4, 0.25]
EXPECTED_FN = [0.4, 0.0, 0.25]
# pixel accuracy = sum(TP) / scored pixels = 8 / 11


@pytest.mark.parametrize("dtype", [np.uint8, np.int64])
def test_confusion_matrix_hand_example(dtype):
    conf = confusion_matrix(GT.astype(dtype), PRED.astype(dtype), 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, EXPECTED_CONF)


def test_scores_hand_example():
    scores = scores_from_confusion(EXPECTED_CONF)
    np.testing.assert_allclose(scores.iou, EXPECTED_IOU)
    np.testing.assert_allclose(scores.precision, EXPECTED_PRECISION)
    np.testing.assert_allclose(scores.recall, EXPECTED_RECALL)
    np.testing.assert_allclose(scores.fp_rate, EXPECTED_FP)
    np.testing.assert_allclose(scores.fn_rate, EXPECTED_FN)
    assert scores.miou == pytest.approx(EXPECTED_MIOU)
    assert scores.pixel_accuracy == pytest.approx(8 / 11)
    assert scores.num_counted == 3


def test_accumulator_sums_images():
    acc = ConfusionAccumulator(3)
    acc.update(GT, PRED)
    acc.update(GT[:2], PRED[:2])
    np.testing.assert_array_equal(acc.matrix, EXPECTED_CONF + confusion_matrix(GT[:2], PRED[:2], 3))
    other = ConfusionAccumulator(3)
    other.update(GT, PRED)
    acc.merge(other)
    np.testing.assert_array_equal(
        acc.matrix, 2 * EXPECTED_CONF + confusion_matrix(GT[:2], PRED[:2], 3)
    )


def test_rates_sum_to_one_and_absent_class_is_nan():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (40, 50)).astype(np.uint8)  # labels 0..3; label 4 and 5 absent
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = rng.integers(0, 5, (40, 50)).astype(np.uint8)  # label 4 predicted, 5 never
    scores = scores_from_confusion(confusion_matrix(gt, pred, 6))
    counted = ~np.isnan(scores.iou)
    np.testing.assert_array_equal(counted, [True, True, True, True, True, False])
    np.testing.assert_allclose((scores.iou + scores.fp_rate + scores.fn_rate)[counted], 1.0)
    assert scores.iou[4] == 0.0 and math.isnan(scores.recall[4])  # predicted, never in GT
    assert all(math.isnan(v[5]) for v in (scores.precision, scores.recall, scores.fp_rate))
    assert scores.num_counted == 5
    assert scores.miou == pytest.approx(np.mean(scores.iou[:5]))

    # The hand example with a 4th label that never occurs: same mIoU over 3 classes.
    padded = scores_from_confusion(confusion_matrix(GT, PRED, 4))
    assert padded.num_counted == 3 and math.isnan(padded.iou[3])
    assert padded.miou == pytest.approx(EXPECTED_MIOU)


def test_empty_confusion_gives_nan_not_warnings():
    scores = scores_from_confusion(np.zeros((3, 3), np.int64))
    assert math.isnan(scores.miou) and math.isnan(scores.pixel_accuracy)
    assert scores.num_counted == 0


def test_to_dict_is_json_ready():
    scores = scores_from_confusion(confusion_matrix(GT, PRED, 4))
    named = scores.to_dict(["background", "cat", "dog", "cow"])
    json.dumps(named, allow_nan=False)
    assert named["iou"]["cat"] == pytest.approx(0.6)
    assert named["iou"]["cow"] is None
    assert named["num_counted"] == 3
    assert named["miou"] == pytest.approx(EXPECTED_MIOU)
    assert list(scores.to_dict()["recall"]) == ["0", "1", "2", "3"]
    with pytest.raises(ValueError, match="class names"):
        scores.to_dict(["background"])


# ----------------------------------------------------------------- bad input


def test_confusion_shape_mismatch():
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3, 4\).*\(3, 3\)"):
        confusion_matrix(GT, PRED[:, :3], 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32])
def test_confusion_label_out_of_range(dtype):
    bad_gt = GT.astype(dtype)
    bad_gt[0, 0] = 7
    with pytest.raises(ValueError, match=r"gt has label values 7 outside 0\.\.2"):
        confusion_matrix(bad_gt, PRED.astype(dtype), 3)
    bad_pred = PRED.astype(dtype)
    bad_pred[0, 0] = 3
    with pytest.raises(ValueError, match=r"pred has label values 3 outside 0\.\.2"):
        confusion_matrix(GT.astype(dtype), bad_pred, 3)


def test_pred_ignore_allowed_only_where_gt_is_ignored():
    pred = PRED.copy()
    pred[2, 0] = 255  # gt is 255 there: fine
    np.testing.assert_array_equal(confusion_matrix(GT, pred, 3), EXPECTED_CONF)
    pred[0, 0] = 255  # gt is 0 there
    with pytest.raises(ValueError, match="ignore index 255"):
        confusion_matrix(GT, pred, 3)


def test_float_labels_rejected():
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(GT.astype(np.float32), PRED, 3)


def _naive_confusion(gt: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """One pixel at a time, skipping ignored ground truth: the definition, nothing clever."""
    conf = np.zeros((num_labels, num_labels), np.int64)
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist(), strict=True):
        if g != 255:
            conf[g, p] += 1
    return conf


def _blocky_labels(
    rng: np.random.Generator, shape: tuple[int, int], num_labels: int, block: int = 16
) -> np.ndarray:
    """Piecewise-constant labels (runs of several pixels), as real masks and predictions are."""
    coarse = rng.integers(0, num_labels, (shape[0] // 3 + 1, shape[1] // block + 1))
    return np.repeat(np.repeat(coarse, 3, axis=0), block, axis=1)[: shape[0], : shape[1]]


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
@pytest.mark.parametrize("blocky", [True, False])  # run-length counting / pixel-wise counting
def test_confusion_matches_naive_count_with_ignore(dtype, blocky):
    from wsss.evaluation.confusion import pair_runs

    rng = np.random.default_rng(3)
    for num_labels, shape in [(21, (37, 53)), (5, (64, 48)), (1, (9, 7)), (3, (1, 1))]:
        if blocky:
            gt = _blocky_labels(rng, shape, num_labels)
            pred = _blocky_labels(rng, shape, num_labels, block=24)
            ignored = _blocky_labels(rng, shape, 4, block=32) == 0
        else:
            gt = rng.integers(0, num_labels, shape)
            pred = rng.integers(0, num_labels, shape)
            ignored = rng.random(shape) < 0.2
        gt[ignored] = 255
        # any value is allowed in the prediction where the ground truth is ignored
        some = _blocky_labels(rng, shape, 2, block=40) == 0 if blocky else rng.random(shape) < 0.5
        pred[ignored & some] = 255
        gt, pred = gt.astype(dtype), pred.astype(dtype)
        if gt.size > 1:  # the counting path under test
            runs = pair_runs(gt.ravel(), pred.ravel())[2]
            assert (runs is not None) == blocky
        conf = confusion_matrix(gt, pred, num_labels)
        assert conf.dtype == np.int64
        np.testing.assert_array_equal(conf, _naive_confusion(gt, pred, num_labels))
        assert conf.sum() == np.count_nonzero(gt != 255)


def test_pair_runs_encode_the_pair_sequence():
    from wsss.evaluation.confusion import pair_runs

    rng = np.random.default_rng(4)
    gt = _blocky_labels(rng, (30, 41), 3).astype(np.uint8).ravel()
    pred = _blocky_labels(rng, (30, 41), 3).astype(np.uint8).ravel()
    gt_runs, pred_runs, lengths = pair_runs(gt, pred)
    assert lengths is not None and len(lengths) < gt.size // 4
    np.testing.assert_array_equal(np.repeat(gt_runs, lengths), gt)
    np.testing.assert_array_equal(np.repeat(pred_runs, lengths), pred)
    # neighbouring runs differ in at least one of the two labels (maximal runs)
    assert np.all((gt_runs[1:] != gt_runs[:-1]) | (pred_runs[1:] != pred_runs[:-1]))
    # noise has runs of about one pixel: returned as is, counted pixel by pixel
    noise = rng.integers(0, 21, 500)
    assert pair_runs(noise, noise[::-1].copy())[2] is None


def test_sweep_bad_input():
    sweep = ThresholdSweep(4)
    gt = np.zeros((4, 5), np.uint8)
    cams = np.zeros((2, 4, 5), np.uint8)
    with pytest.raises(ValueError, match="shape mismatch"):
        sweep.update(gt[:3], cams, np.array([1, 2]))
    with pytest.raises(ValueError, match="one label per CAM channel"):
        sweep.update(gt, cams, np.array([1]))
    with pytest.raises(ValueError, match=r"labels must be in 1\.\.3"):
        sweep.update(gt, cams, np.array([1, 4]))
    with pytest.raises(ValueError, match="distinct"):
        sweep.update(gt, cams, np.array([2, 2]))
    with pytest.raises(ValueError, match="gt has label values 9"):
        sweep.update(gt + 9, cams, np.array([1, 2]))
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        sweep.confusion_at(-0.1)
    with pytest.raises(ValueError, match="'exhaustive', 'greedy'"):
        sweep.best([0.1], style="median")
    with pytest.raises(ValueError, match="num_labels"):
        sweep.merge(ThresholdSweep(5))


# ----------------------------------------------------------------- threshold sweep


def direct_prediction(cams_q: np.ndarray, classes: np.ndarray, threshold: float, num_classes: int):
    """The literal rule: argmax over [t, cam_1..cam_C] with absent classes at zero."""
    stack = np.zeros((num_classes + 1, *cams_q.shape[1:]))
    stack[0] = threshold
    for channel, label in enumerate(classes):
        stack[label] = cams_q[channel] / 255.0
    return np.argmax(stack, axis=0).astype(np.uint8)


def random_images(rng, num_labels, count=12):
    """Quantised CAMs on a coarse level set (many ties, many exact threshold hits)."""
    levels = np.array([0, 1, 2, 25, 26, 51, 102, 127, 128, 200, 254, 255], np.uint8)
    images = []
    for n in range(count):
        k = (0, 1, 3)[n % 3]
        h, w = rng.integers(5, 30, size=2)
        classes = rng.choice(np.arange(1, num_labels), size=k, replace=False)  # unsorted
        cams = levels[rng.integers(0, len(levels), (k, h, w))]
        gt = rng.integers(0, num_labels, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.15] = 255
        images.append((gt, cams, classes))
    return images


SWEEP_THRESHOLDS = sorted(
    {0.0, 1.0, 1.5, 0.2, 0.5, 0.1, 0.15, 0.35}
    | {q / 255.0 for q in (1, 2, 25, 26, 51, 102, 127, 128, 200, 254)}
    | set(threshold_grid(0.0, 0.79, 0.01))
)


def test_sweep_matches_direct_argmax_rule():
    rng = np.random.default_rng(0)
    num_labels = 6
    images = random_images(rng, num_labels)
    sweep = ThresholdSweep(num_labels)
    for n, (gt, cams, classes) in enumerate(images):
        sweep.update(gt.astype(np.int32) if n % 2 else gt, cams, classes)  # both gt paths
    assert sweep.counts.sum() == sum(int((gt != 255).sum()) for gt, _, _ in images)
    for t in SWEEP_THRESHOLDS:
        expected = np.zeros((num_labels, num_labels), np.int64)
        for gt, cams, classes in images:
            expected += confusion_matrix(
                gt, direct_prediction(cams, classes, t, num_labels - 1), num_labels
            )
        np.testing.assert_array_equal(sweep.confusion_at(t), expected, err_msg=f"t={t}")


def test_threshold_on_a_level_counts_it_as_background():
    gt = np.array([[1, 1]], np.uint8)
    cams = np.array([[[51, 52]]], np.uint8)
    sweep = ThresholdSweep(2)
    sweep.update(gt, cams, np.array([1]))
    # 51/255 == 0.2 exactly in float64: not above the threshold -> background.
    np.testing.assert_array_equal(sweep.confusion_at(0.2), [[0, 0], [1, 1]])
    np.testing.assert_array_equal(sweep.confusion_at(0.0), [[0, 0], [0, 2]])
    np.testing.assert_array_equal(sweep.confusion_at(1.0), [[0, 0], [2, 0]])


def test_update_from_max_matches_update():
    rng = np.random.default_rng(3)
    images = random_images(rng, 5)
    direct, from_max = ThresholdSweep(5), ThresholdSweep(5)
    for gt, cams, classes in images:
        direct.update(gt, cams, classes)
        order = np.argsort(classes)  # update() breaks ties towards the lower label
        fg_class, fg_score = cam_argmax_and_score(cams[order], classes[order])
        from_max.update_from_max(gt, fg_class, fg_score)
    np.testing.assert_array_equal(direct.counts, from_max.counts)


def test_cam_argmax_and_score():
    cams = np.array([[[10, 200, 0]], [[30, 200, 0]]], np.uint8)
    fg_class, fg_score = cam_argmax_and_score(cams, np.array([7, 3]))
    np.testing.assert_array_equal(fg_class, [[3, 7, 7]])  # ties: first channel
    np.testing.assert_array_equal(fg_score, [[30, 200, 0]])
    empty_class, empty_score = cam_argmax_and_score(np.zeros((0, 2, 3), np.uint8), np.array([]))
    assert empty_class.shape == empty_score.shape == (2, 3)
    assert not empty_class.any() and not empty_score.any()


def test_merge_equals_single_sweep():
    rng = np.random.default_rng(5)
    images = random_images(rng, 6, count=10)
    whole, first, second = ThresholdSweep(6), ThresholdSweep(6), ThresholdSweep(6)
    for n, (gt, cams, classes) in enumerate(images):
        whole.update(gt, cams, classes)
        (first if n < 4 else second).update(gt, cams, classes)
    first.confusion_at(0.3)  # fills the cache that merge must invalidate
    first.merge(second)
    np.testing.assert_array_equal(first.counts, whole.counts)
    for t in (0.0, 0.3, 0.9):
        np.testing.assert_array_equal(first.confusion_at(t), whole.confusion_at(t))


def curve_sweep() -> ThresholdSweep:
    """Binary problem whose mIoU over t = 0, 0.25, 0.5, 0.75 rises, dips, then rises higher.

    Groups (gt, q): 10 bg pixels at q 0, 10 bg at q 51 (0.2), 2 fg at q 102 (0.4),
    20 bg at q 153 (0.6), 10 fg at q 255. Each step turns one group into background:
      t=0    conf [[10, 30], [0, 12]] -> IoU 10/40, 12/42 -> mIoU 0.268
      t=0.25 conf [[20, 20], [0, 12]] -> IoU 20/40, 12/32 -> mIoU 0.4375
      t=0.5  conf [[20, 20], [2, 10]] -> IoU 20/42, 10/32 -> mIoU 0.394 (dip)
      t=0.75 conf [[40, 0], [2, 10]]  -> IoU 40/42, 10/12 -> mIoU 0.893
    """
    groups = [(0, 0, 10), (0, 51, 10), (1, 102, 2), (0, 153, 20), (1, 255, 10)]
    gt = np.concatenate([np.full(n, g, np.uint8) for g, _, n in groups])[None]
    score = np.concatenate([np.full(n, q, np.uint8) for _, q, n in groups])[None]
    sweep = ThresholdSweep(2)
    sweep.update_from_max(gt, np.ones_like(gt), score)
    return sweep


def test_greedy_stops_at_first_peak_exhaustive_finds_best():
    sweep = curve_sweep()
    thresholds = [0.0, 0.25, 0.5, 0.75]
    mious = [s.miou for s in sweep.sweep(thresholds)]
    assert mious == pytest.approx(
        [(10 / 40 + 12 / 42) / 2, 0.4375, (20 / 42 + 10 / 32) / 2, (40 / 42 + 10 / 12) / 2]
    )

    t, scores, curve = sweep.best(thresholds, style="exhaustive")
    assert t == 0.75 and scores.miou == pytest.approx(mious[3])
    assert [c[0] for c in curve] == thresholds

    t, scores, curve = sweep.best(list(reversed(thresholds)), style="greedy")
    assert t == 0.25 and scores.miou == pytest.approx(0.4375)
    assert curve == [(0.0, pytest.approx(mious[0])), (0.25, 0.4375), (0.5, pytest.approx(mious[2]))]


def test_exhaustive_takes_first_of_equal_best():
    sweep = curve_sweep()
    t, _, _ = sweep.best([0.8, 0.75, 0.9], style="exhaustive")  # all equal mIoU
    assert t == 0.8


def test_threshold_grid():
    grid = threshold_grid(0.0, 0.79, 0.01)
    assert len(grid) == 80 and grid[0] == 0.0 and grid[-1] == 0.79
    assert grid[7] == 0.07 and grid[29] == 0.29
    assert len(threshold_grid(0.0, 0.59, 0.01)) == 60
    assert threshold_grid(0.1, 0.35, 0.1) == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError, match="step"):
        threshold_grid(0.0, 1.0, 0.0)


# ----------------------------------------------------------------- real VOC masks

SHARED_DATA = Path(
    os.environ.get("WSSS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
VOC_MASKS = SHARED_DATA / "voc_masks" / "SegmentationClassAug"
PERSON = 15


@pytest.fixture(scope="module")
def voc_real():
    """One pass over the 2,913 real masks: self-evaluation, person->background, sweeps."""
    from wsss.data.palette import load_label_png

    paths = sorted(VOC_MASKS.glob("*.png"))
    if not paths:
        pytest.skip(f"real VOC masks not found under {VOC_MASKS} (set WSSS_SHARED_DATA)")
    identity, no_person = ConfusionAccumulator(21), ConfusionAccumulator(21)
    sweep = ThresholdSweep(21)
    pixels = np.zeros(256, np.int64)
    for path in paths:
        mask = load_label_png(path)
        pixels += np.bincount(mask.ravel(), minlength=256)
        identity.update(mask, mask)
        dropped = mask.copy()
        dropped[dropped == PERSON] = 0
        no_person.update(mask, dropped)
        classes = np.array([c for c in np.unique(mask) if 0 < c < 255], np.int64)
        sweep.update(mask, (mask[None] == classes[:, None, None]).astype(np.uint8) * 255, classes)
    return {
        "count": len(paths),
        "pixels": pixels,
        "identity": identity,
        "no_person": no_person,
        "sweep": sweep,
    }


def test_real_masks_against_themselves(voc_real):
    assert voc_real["count"] == 2913
    pixels = voc_real["pixels"]
    assert pixels[21:255].sum() == 0  # only 0..20 and 255 occur
    conf = voc_real["identity"].matrix
    np.testing.assert_array_equal(conf, np.diag(pixels[:21]))
    scores = scores_from_confusion(conf)
    assert scores.miou == 1.0 and scores.num_counted == 21
    assert scores.pixel_accuracy == 1.0


def test_real_masks_class_replaced_by_background(voc_real):
    pixels = voc_real["pixels"][:21].astype(np.float64)
    scores = scores_from_confusion(voc_real["no_person"].matrix)
    others = [c for c in range(1, 21) if c != PERSON]
    assert scores.iou[PERSON] == 0.0 and scores.recall[PERSON] == 0.0
    assert math.isnan(scores.precision[PERSON])  # never predicted
    assert scores.fn_rate[PERSON] == 1.0
    np.testing.assert_array_equal(scores.precision[others], 1.0)
    np.testing.assert_array_equal(scores.recall[others], 1.0)
    np.testing.assert_array_equal(scores.iou[others], 1.0)
    # Background keeps all its pixels and gains every person pixel.
    expected_bg = pixels[0] / (pixels[0] + pixels[PERSON])
    assert scores.recall[0] == 1.0
    assert scores.precision[0] == pytest.approx(expected_bg)
    assert scores.iou[0] == pytest.approx(expected_bg)
    assert scores.miou == pytest.approx((19 + expected_bg) / 21)


def test_real_masks_indicator_cams_sweep(voc_real):
    sweep = voc_real["sweep"]
    np.testing.assert_array_equal(sweep.confusion_at(0.5), voc_real["identity"].matrix)
    t, scores, curve = sweep.best(threshold_grid(0.0, 0.79, 0.01), style="greedy")
    assert t == 0.0 and scores.miou == 1.0 and len(curve) == 2
    all_background = scores_from_confusion(sweep.confusion_at(1.0))
    assert all_background.num_counted == 21
    assert all_background.recall[0] == 1.0 and not all_background.iou[1:].any()


def test_mean_average_precision_by_hand():
    from wsss.evaluation.metrics import mean_average_precision

    scores = np.array([[0.9, 0.1], [0.8, 0.7], [0.1, 0.2]])
    labels = np.array([[1, 0], [0, 1], [1, 0]])
    # class 0: ranks 1 (hit), 2 (miss), 3 (hit) -> (1/1 + 2/3) / 2; class 1: rank 1 hit -> 1
    expected = ((1 + 2 / 3) / 2 + 1.0) / 2
    assert mean_average_precision(scores, labels) == pytest.approx(expected)
    assert np.isnan(mean_average_precision(scores, np.zeros_like(labels)))
