"""Pseudo-labels from CAM artifacts: the threshold rule, fusion, PAR/CRF paths, PNGs, scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_synthetic_dataset
from PIL import Image

from wsss.cam_store import CamReader, CamWriter
from wsss.data.datasets import open_dataset
from wsss.data.palette import IGNORE_INDEX, load_label_png
from wsss.evaluation.confusion import confusion_matrix
from wsss.evaluation.sweep import ThresholdSweep
from wsss.segmentation.pseudo_labels import (
    PseudoLabelSettings,
    _UnlabelledAwareScorer,
    fuse_labels,
    make_pseudo_labels,
    resolve_threshold,
    threshold_edge_flag,
    threshold_labels,
)

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the label rule


def test_threshold_labels_score_exactly_like_the_sweep():
    rng = np.random.default_rng(0)
    sweep = ThresholdSweep(5)
    total = np.zeros((5, 5), np.int64)
    threshold = 0.2  # = 51 / 255 exactly
    for _ in range(6):
        k = int(rng.integers(0, 4))
        classes = rng.choice(np.arange(1, 5), size=k, replace=False)
        cams = rng.integers(0, 256, size=(k, 9, 7)).astype(np.uint8)
        # levels exactly at the threshold: q / 255 == t is background in both
        cams[..., 0, 0] = 51
        gt = rng.integers(0, 5, size=(9, 7)).astype(np.uint8)
        gt[0, 1] = IGNORE_INDEX
        sweep.update(gt, cams, classes)
        labels = threshold_labels(cams, classes, threshold)
        assert labels.dtype == np.uint8 and labels.shape == gt.shape
        assert set(np.unique(labels)) <= {0, *classes.tolist()}
        total += confusion_matrix(gt, labels, 5)
    np.testing.assert_array_equal(total, sweep.confusion_at(threshold))


def test_ties_go_to_the_lower_label_whatever_the_stored_order():
    cams = np.full((2, 1, 2), 200, np.uint8)
    np.testing.assert_array_equal(threshold_labels(cams, np.array([3, 1]), 0.1), [[1, 1]])
    np.testing.assert_array_equal(threshold_labels(cams, np.array([1, 3]), 0.1), [[1, 1]])


def test_no_classes_gives_background():
    labels = threshold_labels(np.zeros((0, 3, 4), np.uint8), np.zeros(0, np.int64), 0.0)
    np.testing.assert_array_equal(labels, np.zeros((3, 4)))


def test_fusion_ignores_the_band_between_the_thresholds():
    high = np.array([[0, 2, 0, 0]], np.uint8)
    low = np.array([[0, 2, 3, 0]], np.uint8)
    np.testing.assert_array_equal(fuse_labels(high, low), [[0, 2, IGNORE_INDEX, 0]])


def test_unlabelled_pixels_are_misses_not_predictions():
    scorer = _UnlabelledAwareScorer(3)
    gt = np.array([[1, 1, 0, IGNORE_INDEX]], np.uint8)
    scorer.update(gt, np.array([[1, IGNORE_INDEX, 0, IGNORE_INDEX]], np.uint8))
    scores = scorer.scores()
    assert len(scores.iou) == 3
    assert scores.iou[1] == pytest.approx(0.5)  # TP 1, GT 2, predicted 1
    assert scores.recall[1] == pytest.approx(0.5) and scores.precision[1] == pytest.approx(1.0)
    assert scores.iou[0] == pytest.approx(1.0)
    assert np.isnan(scores.iou[2]) and scores.num_counted == 2
    assert scores.miou == pytest.approx(0.75)
    assert scorer.ignored == 2 and scorer.pixels == 4


# ---------------------------------------------------------------- settings


def test_settings_validation():
    assert PseudoLabelSettings.from_dict({"bg_threshold": 0.2}).bg_threshold == 0.2
    with pytest.raises(ValueError, match="unknown key"):
        PseudoLabelSettings.from_dict({"threshold": 0.2})
    with pytest.raises(ValueError, match="'best'"):
        PseudoLabelSettings.from_dict({"bg_threshold": "optimal"})
    with pytest.raises(ValueError, match="bg_threshold"):
        PseudoLabelSettings.from_dict({"bg_threshold": 1.5})
    with pytest.raises(ValueError, match="alternatives"):
        PseudoLabelSettings.from_dict({"par": {"enabled": True}, "crf": {"enabled": True}})
    with pytest.raises(ValueError, match="pseudo_labels.par: unknown"):
        PseudoLabelSettings.from_dict({"par": {"iterations": 3}})


def test_best_threshold_comes_from_cam_metrics(tmp_path):
    settings = PseudoLabelSettings.from_dict({"bg_threshold": "best"})
    path = tmp_path / "cam_metrics.json"
    path.write_text(json.dumps({"meta": {}, "cam": {"threshold": 0.37}}))
    assert resolve_threshold(settings, path) == 0.37
    assert resolve_threshold(PseudoLabelSettings.from_dict({"bg_threshold": 0.1}), None) == 0.1
    with pytest.raises(FileNotFoundError, match="cam_metrics.json"):
        resolve_threshold(settings, tmp_path / "missing" / "cam_metrics.json")
    path.write_text(json.dumps({"cam": {}}))
    with pytest.raises(ValueError, match="no cam.threshold"):
        resolve_threshold(settings, path)
    with pytest.raises(ValueError, match="no cam_metrics.json"):
        resolve_threshold(settings, None)


def test_edge_flag_comes_from_cam_metrics(tmp_path):
    best = PseudoLabelSettings.from_dict({"bg_threshold": "best"})
    path = tmp_path / "cam_metrics.json"
    path.write_text(json.dumps({"cam": {"threshold": 0.79, "threshold_at_edge": True}}))
    assert threshold_edge_flag(best, path) is True
    assert threshold_edge_flag(PseudoLabelSettings.from_dict({"bg_threshold": 0.1}), None) is None
    path.write_text(json.dumps({"cam": {"threshold": 0.79}}))
    with pytest.raises(ValueError, match="no cam.threshold_at_edge"):
        threshold_edge_flag(best, path)


# ---------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("pl") / "data"
    return tiny_synthetic_dataset(root, num_train=10, num_val=4, image_size=32)


def _gt_cams(config, path, split="train", blur=False):
    """CAMs that are the masks themselves (255 on the class, 0 elsewhere; blurred: 200/60)."""
    dataset = open_dataset(config)
    with CamWriter(path, dataset.num_classes) as writer:
        for image_id in dataset.layout.split_ids(split):
            mask = dataset.layout.load_mask(image_id)
            classes = np.array(sorted(set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}), np.int64)
            on, off = (200, 60) if blur else (255, 0)
            cams = np.stack([np.where(mask == c, on, off) for c in classes]).astype(np.uint8)
            writer.add(image_id, classes, cams.reshape(len(classes), *mask.shape))
    return path


def test_perfect_cams_give_perfect_pseudo_labels_written_atomically(dataset_config, tmp_path):
    cams = _gt_cams(dataset_config, tmp_path / "train.npz")
    out = tmp_path / "labels"
    out.mkdir()
    (out / "stale.png").write_bytes(b"old run")
    metrics = tmp_path / "cam_metrics.json"
    metrics.write_text(json.dumps({"cam": {"threshold": 0.5, "threshold_at_edge": False}}))
    config = {"dataset": dataset_config, "pseudo_labels": {"bg_threshold": "best"}}
    result = make_pseudo_labels(config, cams, out, metrics, progress=False)

    ids = open_dataset(dataset_config).layout.split_ids("train")
    assert sorted(p.stem for p in out.iterdir()) == sorted(ids)  # the stale folder is replaced
    assert not list(tmp_path.glob(".labels.*"))  # no temporary folder left behind
    with Image.open(out / f"{ids[0]}.png") as png:
        assert png.mode == "P"
    layout = open_dataset(dataset_config).layout
    for image_id in ids:
        label, mask = load_label_png(out / f"{image_id}.png"), layout.load_mask(image_id)
        scored = mask != IGNORE_INDEX
        np.testing.assert_array_equal(label[scored], mask[scored])
    assert result["miou"] == pytest.approx(1.0)
    assert result["threshold"] == 0.5 and result["split"] == "train"
    assert result["images"] == result["labelled_images"] == len(ids)
    assert result["refinement"] == "none" and result["ignored_fraction"] == 0.0
    assert set(result["per_class"]["iou"]) == {
        "background",
        *open_dataset(dataset_config).class_names,
    }


def test_pseudo_label_miou_equals_cam_miou_at_that_threshold(dataset_config, tmp_path):
    from wsss.evaluation.cam_eval import evaluate_cams

    rng = np.random.default_rng(1)
    dataset = open_dataset(dataset_config)
    with CamWriter(tmp_path / "train.npz", dataset.num_classes) as writer:
        for image_id in dataset.layout.split_ids("train"):
            mask = dataset.layout.load_mask(image_id)
            classes = np.array(sorted(set(np.unique(mask).tolist()) - {0, IGNORE_INDEX}))
            noisy = [
                np.where(mask == c, 120, 40) + rng.integers(0, 130, mask.shape) for c in classes
            ]
            writer.add(image_id, classes, np.stack(noisy).astype(np.uint8))
    evaluate = {"thresholds": {"start": 0.0, "stop": 0.79, "step": 0.01}, "select": "exhaustive"}
    cam = evaluate_cams(dataset_config, evaluate, tmp_path / "train.npz", progress=False)
    (tmp_path / "cam_metrics.json").write_text(json.dumps({"cam": cam}))
    result = make_pseudo_labels(
        {"dataset": dataset_config, "pseudo_labels": {"bg_threshold": "best"}},
        tmp_path / "train.npz",
        tmp_path / "labels",
        tmp_path / "cam_metrics.json",
        progress=False,
    )
    assert result["threshold"] == cam["threshold"]
    assert result["threshold_at_edge"] is cam["threshold_at_edge"] is False
    assert result["miou"] == pytest.approx(cam["miou"], abs=1e-12)
    assert 0.0 < result["miou"] < 1.0


def test_margin_marks_uncertain_pixels_ignored(dataset_config, tmp_path):
    cams = _gt_cams(dataset_config, tmp_path / "train.npz", blur=True)  # class 200/255, rest 60/255
    config = {
        "dataset": dataset_config,
        "pseudo_labels": {"bg_threshold": 0.3, "ignore_margin": 0.1},  # 60/255 = 0.235 in band
    }
    result = make_pseudo_labels(config, cams, tmp_path / "labels", progress=False)
    layout = open_dataset(dataset_config).layout
    image_id = layout.split_ids("train")[0]
    label, mask = (
        load_label_png(tmp_path / "labels" / f"{image_id}.png"),
        layout.load_mask(image_id),
    )
    fg = (mask != 0) & (mask != IGNORE_INDEX)
    np.testing.assert_array_equal(label[fg], mask[fg])
    # background of an image with a class: its CAMs sit at 60, between 0.2 and 0.4 -> ignored
    assert (label[mask == 0] == IGNORE_INDEX).all()
    assert 0.0 < result["ignored_fraction"] < 1.0
    assert result["per_class"]["iou"]["background"] == 0.0  # every bg pixel was a miss


def test_cams_of_another_split_are_refused(dataset_config, tmp_path):
    cams = _gt_cams(dataset_config, tmp_path / "val.npz", split="val")
    config = {"dataset": dataset_config, "pseudo_labels": {"bg_threshold": 0.2}}
    with pytest.raises(ValueError, match="CAMs of the train split"):
        make_pseudo_labels(config, cams, tmp_path / "labels", progress=False)
    assert not (tmp_path / "labels").exists()


def test_plain_rule_does_not_import_torch(dataset_config, tmp_path):
    cams = _gt_cams(dataset_config, tmp_path / "train.npz")
    config = {"dataset": dataset_config, "pseudo_labels": {"bg_threshold": 0.2}}
    code = (
        "import json, sys\n"
        "from wsss.segmentation.pseudo_labels import make_pseudo_labels\n"
        f"make_pseudo_labels(json.loads({json.dumps(json.dumps(config))}), "
        f"{str(cams)!r}, {str(tmp_path / 'labels')!r}, progress=False)\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False"


def test_par_refinement_path(dataset_config, tmp_path):
    cams = _gt_cams(dataset_config, tmp_path / "train.npz", blur=True)
    par = {"enabled": True, "num_iters": 3, "dilations": [1, 2], "scale": 1.0, "batch_size": 4}
    config = {
        "dataset": dataset_config,
        "pseudo_labels": {"bg_threshold": 0.5, "ignore_margin": 0.05, "par": par},
    }
    first = make_pseudo_labels(config, cams, tmp_path / "a", progress=False)
    again = make_pseudo_labels(config, cams, tmp_path / "b", progress=False)
    assert first["refinement"] == "par"
    assert first["miou"] == again["miou"] and first["miou"] > 0.5
    reader = CamReader(cams)
    for record in reader:
        label = load_label_png(tmp_path / "a" / f"{record.image_id}.png")
        assert label.shape == record.shape
        assert set(np.unique(label)) <= {0, IGNORE_INDEX, *record.classes.tolist()}


def test_crf_path_without_pydensecrf_fails_before_writing(dataset_config, tmp_path, monkeypatch):
    # None in sys.modules makes "import pydensecrf..." raise ImportError, as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    cams = _gt_cams(dataset_config, tmp_path / "train.npz")
    config = {
        "dataset": dataset_config,
        "pseudo_labels": {"bg_threshold": 0.2, "crf": {"enabled": True}},
    }
    with pytest.raises(ImportError, match="pydensecrf2"):
        make_pseudo_labels(config, cams, tmp_path / "labels", progress=False)
    assert not (tmp_path / "labels").exists()


def test_crf_refinement_path(dataset_config, tmp_path):
    pytest.importorskip("pydensecrf.densecrf", reason="the optional pydensecrf2 is not installed")
    cams = _gt_cams(dataset_config, tmp_path / "train.npz", blur=True)
    config = {
        "dataset": dataset_config,
        "pseudo_labels": {"bg_threshold": 0.5, "crf": {"enabled": True, "bilateral_sxy": 20}},
    }
    result = make_pseudo_labels(config, cams, tmp_path / "labels", progress=False)
    assert result["refinement"] == "crf"
    assert result["miou"] > 0.5
    with pytest.raises(ValueError, match="pseudo_labels.crf: unknown CRF setting"):
        make_pseudo_labels(
            {"dataset": dataset_config, "pseudo_labels": {"crf": {"enabled": True, "sigma": 1}}},
            cams,
            tmp_path / "other",
            progress=False,
        )
