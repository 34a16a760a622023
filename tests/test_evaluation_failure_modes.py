"""Failure-mode metrics: context false positives, part and body recall (hand-computed cases)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import tiny_synthetic_dataset

from wsss.cam_store import CamReader, CamWriter
from wsss.data.datasets import open_dataset
from wsss.evaluation.cam_eval import evaluate_cams
from wsss.evaluation.confusion import confusion_matrix
from wsss.evaluation.failure_modes import (
    FailureModeCounts,
    cam_label_map,
    failure_mode_counts,
    score_failure_modes,
)
from wsss.evaluation.per_image import image_counts

# A 4 x 6 image: a class-1 object (rows 1-2, cols 1-3) and a class-2 object (row 3, cols 4-5),
# one ignored pixel (2, 5). Context of class 1 on 5 background pixels, of class 3 (not in the
# image) on 2. Parts: column 1 of object 1 and (3, 4) of object 2.
GT = np.array(
    [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 0, 255],
        [0, 0, 0, 0, 2, 2],
    ]
)
CONTEXT = np.array(
    [
        [1, 1, 1, 1, 3, 3],
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 255],
        [0, 0, 0, 0, 0, 0],
    ]
)
PART = np.array(
    [
        [0, 0, 0, 0, 0, 0],
        [0, 1, 2, 2, 0, 0],
        [0, 1, 2, 2, 0, 255],
        [0, 0, 0, 0, 1, 2],
    ]
)
PRED = np.array(
    [
        [1, 1, 0, 2, 0, 0],  # context 1: two pixels labelled 1, one labelled 2 (not its class)
        [1, 1, 1, 0, 0, 0],  # context 1: one more labelled 1; part hit, body 1 hit 1 miss
        [0, 1, 0, 0, 0, 1],  # part hit, body 2 misses; (2, 5) is ignored
        [0, 0, 0, 0, 2, 0],  # object 2: part hit, body miss
    ]
)


def test_hand_computed_counts_and_rates():
    counts = failure_mode_counts(PRED, GT, CONTEXT, PART, classes=[1, 2], num_labels=4)
    assert counts.context.tolist() == [0, 5, 0, 0]  # class 3's context is not scored
    assert counts.context_fp.tolist() == [0, 3, 0, 0]
    assert counts.part.tolist() == [0, 2, 1, 0] and counts.part_hit.tolist() == [0, 2, 1, 0]
    assert counts.body.tolist() == [0, 4, 1, 0] and counts.body_hit.tolist() == [0, 1, 0, 0]

    summary = counts.summary(["a", "b", "c"])
    assert summary["context_fp_rate"] == pytest.approx(3 / 5)  # class 1 only has context
    assert summary["part_recall"] == pytest.approx(1.0)  # (2/2 + 1/1) / 2
    assert summary["body_recall"] == pytest.approx((1 / 4 + 0 / 1) / 2)
    assert summary["per_class"]["a"] == {
        "context_fp_rate": pytest.approx(0.6),
        "part_recall": 1.0,
        "body_recall": 0.25,
    }
    assert summary["per_class"]["b"]["context_fp_rate"] is None  # no context of class 2
    assert summary["per_class"]["c"] == dict.fromkeys(summary["per_class"]["c"])
    assert summary["pixels"]["context"] == [5, 0, 0]


def test_a_context_of_a_class_in_the_image_counts_even_when_unpredicted():
    # With class 3 among the image's classes its 2 context pixels are scored: none is
    # labelled 3, so its rate is 0 and the mean over classes halves.
    counts = failure_mode_counts(PRED, GT, CONTEXT, PART, classes=[1, 2, 3], num_labels=4)
    assert counts.context.tolist() == [0, 5, 0, 2] and counts.context_fp[3] == 0
    assert counts.summary(["a", "b", "c"])["context_fp_rate"] == pytest.approx((0.6 + 0) / 2)


def test_counts_add_over_images_and_rates_pool_pixels():
    one = failure_mode_counts(PRED, GT, CONTEXT, PART, [1, 2], 4)
    perfect = failure_mode_counts(np.where(GT == 255, 0, GT), GT, CONTEXT, PART, [1, 2], 4)
    assert perfect.context_fp.sum() == 0 and np.array_equal(perfect.part_hit, perfect.part)
    total = one + perfect
    assert total.body.tolist() == [0, 8, 2, 0] and total.body_hit.tolist() == [0, 5, 1, 0]
    summary = total.summary(["a", "b", "c"])
    assert summary["body_recall"] == pytest.approx((5 / 8 + 1 / 2) / 2)
    assert summary["context_fp_rate"] == pytest.approx(3 / 10)
    empty = FailureModeCounts.zeros(4).summary(["a", "b", "c"])
    assert empty["context_fp_rate"] is None and empty["part_recall"] is None


def test_maps_that_contradict_the_mask_are_refused():
    bad_context = CONTEXT.copy()
    bad_context[1, 1] = 1  # a context on an object pixel
    with pytest.raises(ValueError, match="contexts are background"):
        failure_mode_counts(PRED, GT, bad_context, PART, [1, 2], 4)
    bad_part = PART.copy()
    bad_part[0, 0] = 2  # a body on background
    with pytest.raises(ValueError, match="part map must hold"):
        failure_mode_counts(PRED, GT, CONTEXT, bad_part, [1, 2], 4)
    with pytest.raises(ValueError, match="outside 0..2"):
        failure_mode_counts(PRED, GT, CONTEXT, PART, [1, 2, 3], 3)  # a class-3 context
    with pytest.raises(ValueError, match="part map is"):
        failure_mode_counts(PRED, GT, CONTEXT, PART[:, :5], [1, 2], 4)


def test_label_map_is_the_sweeps_rule():
    # Hand case: classes given out of order, a tie (lower label wins), a level equal to
    # the threshold (background).
    cams = np.array([[[51, 200, 100]], [[10, 200, 120]]], np.uint8)  # classes 3 and 1
    assert cam_label_map(cams, np.array([3, 1]), 0.2).tolist() == [[0, 1, 1]]
    # Random case: the confusion of the label map is the per-image counts' one.
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(9, 7))
    gt[0, :3] = 255
    cams = rng.integers(0, 256, size=(3, 9, 7)).astype(np.uint8)
    classes = np.array([2, 1, 3])
    for threshold in (0.0, 0.3, 0.71):
        conf = confusion_matrix(gt, cam_label_map(cams, classes, threshold), 4)
        tp = np.diag(conf)
        inter, union = image_counts(gt, cams, classes, threshold, 4)
        assert np.array_equal(inter, tp)
        assert np.array_equal(union, conf.sum(0) + conf.sum(1) - tp)


# --------------------------------------------------------------------------- on a dataset


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("failure_modes") / "data"
    return tiny_synthetic_dataset(root, num_train=8, num_val=2, image_size=32, context_prob=1.0)


def _cams(config, path, paint):
    """CAMs built from each image's maps by ``paint(mask, context, class) -> uint8 map``."""
    dataset = open_dataset(config)
    with CamWriter(path, dataset.num_classes) as writer:
        for image_id in dataset.layout.split_ids("train"):
            mask = dataset.layout.load_mask(image_id)
            context, _ = dataset.layout.load_failure_maps(image_id)
            classes = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
            cams = np.stack([paint(mask, context, c) for c in classes]).astype(np.uint8)
            writer.add(image_id, classes, cams)
    return path


def test_mask_cams_have_no_context_leak_and_full_recall(dataset_config, tmp_path):
    cams = _cams(dataset_config, tmp_path / "c.npz", lambda m, ctx, c: np.where(m == c, 200, 0))
    result = score_failure_modes(open_dataset(dataset_config), CamReader(cams), 0.5, False)
    assert result["threshold"] == 0.5
    assert result["context_fp_rate"] == 0.0
    assert result["part_recall"] == 1.0 and result["body_recall"] == 1.0
    pixels = result["pixels"]
    assert sum(pixels["context"]) > 0 and sum(pixels["part"]) > 0
    assert sum(pixels["body"]) > sum(pixels["part"])  # part_frac 0.25


def test_cams_on_the_part_and_the_context(dataset_config, tmp_path):
    # Each class's CAM covers its part and its context, not its body: what the failure
    # modes are built to cause, at its extreme.
    dataset = open_dataset(dataset_config)
    with CamWriter(tmp_path / "c.npz", dataset.num_classes) as writer:
        for image_id in dataset.layout.split_ids("train"):
            mask = dataset.layout.load_mask(image_id)
            context, part = dataset.layout.load_failure_maps(image_id)
            classes = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
            cams = [np.where((context == c) | ((mask == c) & (part == 1)), 200, 0) for c in classes]
            writer.add(image_id, classes, np.stack(cams).astype(np.uint8))
    result = score_failure_modes(dataset, CamReader(tmp_path / "c.npz"), 0.5, False)
    assert result["context_fp_rate"] == 1.0
    assert result["part_recall"] == 1.0 and result["body_recall"] == 0.0


def test_evaluate_records_the_metrics_or_why_not(dataset_config, tmp_path):
    cams = _cams(dataset_config, tmp_path / "c.npz", lambda m, ctx, c: np.where(m == c, 200, 0))
    spec = {"thresholds": {"start": 0.0, "stop": 0.95, "step": 0.05}, "select": "exhaustive"}
    result = evaluate_cams(dataset_config, spec, cams, progress=False)
    modes = result["failure_modes"]
    assert modes["threshold"] == result["threshold"]
    assert modes["part_recall"] == 1.0 and modes["context_fp_rate"] == 0.0

    # A dataset without the maps (as VOC): every metric null, and the reason.
    bare = tmp_path / "bare"
    shutil.copytree(dataset_config["root"], bare)
    shutil.rmtree(bare / "SegmentationPart")
    result = evaluate_cams({**dataset_config, "root": str(bare)}, spec, cams, progress=False)
    modes = result["failure_modes"]
    assert modes["context_fp_rate"] is None and modes["body_recall"] is None
    assert "no failure-mode maps" in modes["skipped"] and str(bare) in modes["skipped"]
