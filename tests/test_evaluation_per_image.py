"""Per-image intersection/union counts: the hand example, the sweep's sums, the JSON form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsss.evaluation.per_image import PerImageCounts, image_counts, miou_from_sums
from wsss.evaluation.sweep import ThresholdSweep


def test_image_counts_hand_example():
    # 2 x 3 image, labels 0..2; one CAM channel for class 2 and one for class 1 (unsorted).
    gt = np.array([[0, 1, 1], [2, 2, 255]], np.uint8)
    cams = np.array(
        [
            [[0, 0, 0], [200, 100, 255]],  # class 2
            [[150, 200, 40], [0, 0, 0]],  # class 1
        ],
        np.uint8,
    )
    inter, union = image_counts(gt, cams, np.array([2, 1]), threshold=0.5, num_labels=3)
    # t = 0.5 (127.5/255): prediction [[1, 1, 0], [2, 0, ignored]].
    # background: gt {(0,0)}, pred {(0,2), (1,1)} -> I 0, U 3
    # class 1: gt {(0,1), (0,2)}, pred {(0,0), (0,1)} -> I 1, U 3
    # class 2: gt {(1,0), (1,1)}, pred {(1,0)} -> I 1, U 2
    np.testing.assert_array_equal(inter, [0, 1, 1])
    np.testing.assert_array_equal(union, [3, 3, 2])


def test_summed_image_counts_equal_the_sweep():
    rng = np.random.default_rng(0)
    num_labels = 5
    sweep = ThresholdSweep(num_labels)
    images = []
    for n in range(10):
        k = (0, 1, 2)[n % 3]
        h, w = rng.integers(4, 20, size=2)
        classes = rng.choice(np.arange(1, num_labels), size=k, replace=False)
        cams = rng.choice(np.array([0, 25, 26, 51, 128, 255], np.uint8), (k, h, w))
        gt = rng.integers(0, num_labels, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        sweep.update(gt, cams, classes)
        images.append((gt, cams, classes))
    for t in (0.0, 0.1, 0.2, 26 / 255, 0.5, 0.99):
        counts = [image_counts(gt, c, k, t, num_labels) for gt, c, k in images]
        conf = sweep.confusion_at(t)
        tp = np.diag(conf)
        np.testing.assert_array_equal(sum(i for i, _ in counts), tp)
        np.testing.assert_array_equal(
            sum(u for _, u in counts), conf.sum(0) + conf.sum(1) - tp, err_msg=f"t={t}"
        )


def test_json_round_trip_is_sparse():
    counts = PerImageCounts(
        ("b", "a"), np.array([[5, 0, 0], [1, 2, 0]]), np.array([[6, 0, 0], [3, 4, 0]]), 0.25
    )
    entry = counts.to_json()
    assert entry["images"]["b"] == {"labels": [0], "intersection": [5], "union": [6]}
    back = PerImageCounts.from_json(entry, "cam_metrics.json: cam.per_image")
    assert back.ids == ("a", "b")  # sorted, rows follow
    np.testing.assert_array_equal(back.union, [[3, 4, 0], [6, 0, 0]])
    assert back.threshold == 0.25 and back.num_labels == 3
    # mIoU over both images: background 6/9, class 1 2/4; class 2 has no union and is left out.
    assert back.miou() == pytest.approx((6 / 9 + 2 / 4) / 2)


def test_bad_counts_are_named():
    with pytest.raises(ValueError, match="run.json: expected"):
        PerImageCounts.from_json({"images": {}}, "run.json")
    entry = {
        "threshold": 0.1,
        "num_labels": 2,
        "images": {"x": {"labels": [0, 5], "intersection": [1, 1], "union": [1, 1]}},
    }
    with pytest.raises(ValueError, match=r"run.json: image 'x'"):
        PerImageCounts.from_json(entry, "run.json")
    entry["images"]["x"] = {"labels": [0], "intersection": [3], "union": [2]}
    with pytest.raises(ValueError, match="run.json: counts must satisfy"):
        PerImageCounts.from_json(entry, "run.json")


def test_miou_from_sums_leaves_out_empty_labels():
    assert miou_from_sums(np.array([1, 0, 2]), np.array([2, 0, 2])) == pytest.approx(0.75)
    assert math.isnan(miou_from_sums(np.zeros(3), np.zeros(3)))
    batch = miou_from_sums(np.array([[1, 1], [2, 2]]), np.array([[2, 2], [2, 4]]))
    np.testing.assert_allclose(batch, [0.5, 0.75])
