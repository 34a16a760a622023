"""Scoring a CAM file: the sweep-edge flag, per-image counts and the platform record."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import tiny_synthetic_dataset

from wsss.cam_store import CamWriter
from wsss.data.datasets import open_dataset
from wsss.evaluation.cam_eval import evaluate_cams, summarize
from wsss.evaluation.metrics import scores_from_confusion
from wsss.evaluation.per_image import PerImageCounts
from wsss.evaluation.sweep import threshold_at_edge


def test_threshold_at_edge():
    grid = [0.0, 0.1, 0.2, 0.3]
    assert threshold_at_edge(0.3, grid) and threshold_at_edge(0.0, grid)
    assert not threshold_at_edge(0.1, grid) and not threshold_at_edge(0.2, grid)
    assert threshold_at_edge(0.0, [0.3, 0.0, 0.1])  # order does not matter
    assert threshold_at_edge(0.5, [0.5])  # a one-value sweep is all edge
    with pytest.raises(ValueError, match="no thresholds"):
        threshold_at_edge(0.1, [])


def test_summary_of_a_model_that_predicts_only_background_is_strict_json():
    """A segmenter that labels every pixel background has no defined foreground precision:
    the summary says null, not NaN (ten seg_metrics.json files once held a bare NaN)."""
    conf = np.array([[50, 0, 0], [30, 0, 0], [20, 0, 0]])  # gt rows, pred columns
    summary = summarize(scores_from_confusion(conf), ["cat", "dog"])
    assert summary["precision"] is None
    assert summary["recall"] == 0.0 and summary["fn_rate"] == 1.0
    assert summary["miou"] == pytest.approx(0.5 / 3)
    json.loads(json.dumps(summary, allow_nan=False))
    no_labels = summarize(scores_from_confusion(np.zeros((3, 3), np.int64)), ["cat", "dog"])
    assert no_labels["miou"] is None and no_labels["recall"] is None


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("cam_eval") / "data"
    return tiny_synthetic_dataset(root, num_train=8, num_val=2, image_size=32)


def _mask_cams(config, path, on, off):
    """CAMs that are the masks: ``on`` on the class, ``off`` elsewhere (uint8 levels)."""
    dataset = open_dataset(config)
    with CamWriter(path, dataset.num_classes) as writer:
        for image_id in dataset.layout.split_ids("train"):
            mask = dataset.layout.load_mask(image_id)
            classes = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
            cams = np.stack([np.where(mask == c, on, off) for c in classes]).astype(np.uint8)
            writer.add(image_id, classes, cams.reshape(len(classes), *mask.shape))
    return path


def _evaluate(config, cams, stop):
    spec = {"thresholds": {"start": 0.0, "stop": stop, "step": 0.01}, "select": "exhaustive"}
    return evaluate_cams(config, spec, cams, progress=False)


def test_best_threshold_inside_the_sweep_is_not_flagged(dataset_config, tmp_path, caplog):
    # Class 200/255 (0.784), elsewhere 60/255 (0.235): every t in [0.24, 0.78] is perfect,
    # and the first of them is chosen.
    cams = _mask_cams(dataset_config, tmp_path / "train.npz", 200, 60)
    with caplog.at_level(logging.WARNING, logger="wsss"):
        result = _evaluate(dataset_config, cams, stop=0.99)
    assert result["threshold"] == 0.24 and result["miou"] == pytest.approx(1.0)
    assert result["threshold_at_edge"] is False
    assert result["threshold_range"] == [0.0, 0.99]
    assert "edge of the sweep" not in caplog.text


def test_best_threshold_at_either_end_is_flagged_and_logged(dataset_config, tmp_path, caplog):
    # Background levels 40..59 (0.157..0.231): each step up to 0.23 turns more of them
    # background, so a sweep cut at 0.2 still rises at its last value.
    ramp = 40 + np.arange(32 * 32).reshape(32, 32) % 20
    cams = _mask_cams(dataset_config, tmp_path / "train.npz", 200, ramp)
    with caplog.at_level(logging.WARNING, logger="wsss"):
        high = _evaluate(dataset_config, cams, stop=0.2)
    assert high["threshold"] == 0.2 and high["threshold_at_edge"] is True
    assert "best background threshold 0.20 is at the edge of the sweep [0.00, 0.20]" in caplog.text
    # Binary CAMs (255 on the class, 0 elsewhere) are perfect from t = 0 on: the low end.
    binary = _mask_cams(dataset_config, tmp_path / "binary.npz", 255, 0)
    low = _evaluate(dataset_config, binary, stop=0.99)
    assert low["threshold"] == 0.0 and low["threshold_at_edge"] is True


def test_per_image_counts_reproduce_the_headline_miou(dataset_config, tmp_path):
    rng = np.random.default_rng(0)
    dataset = open_dataset(dataset_config)
    with CamWriter(tmp_path / "noisy.npz", dataset.num_classes) as writer:
        for image_id in dataset.layout.split_ids("train"):
            mask = dataset.layout.load_mask(image_id)
            classes = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
            noisy = [
                np.where(mask == c, 120, 40) + rng.integers(0, 130, mask.shape) for c in classes
            ]
            writer.add(image_id, classes, np.stack(noisy).astype(np.uint8))
    result = _evaluate(dataset_config, tmp_path / "noisy.npz", stop=0.99)
    counts = PerImageCounts.from_json(result["per_image"], "cam.per_image")
    assert counts.ids == tuple(sorted(dataset.layout.split_ids("train")))
    assert counts.threshold == result["threshold"]
    assert counts.num_labels == dataset.num_classes + 1
    assert counts.miou() == pytest.approx(result["miou"], abs=1e-12)
    assert 0.0 < result["miou"] < 1.0


def test_metrics_record_the_platform(dataset_config, tmp_path):
    cams = _mask_cams(dataset_config, tmp_path / "train.npz", 200, 60)
    platform = _evaluate(dataset_config, cams, stop=0.5)["platform"]
    assert platform["device"] == "cpu"
    assert platform["versions"]["numpy"] == np.__version__
    assert {"cpu", "isa", "torch_cpu_capability", "libc"} <= set(platform)
