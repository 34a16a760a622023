"""`wsss attention-diagnostics` per trained run: every method's own model (ClusterCAM's
included), the affinity's blocks, and a clean skip on a dataset without instance masks."""

import copy
import json
import shutil

import pytest
import torch
from conftest import TINY_MODEL, tiny_synthetic_dataset

from wsss import checkpoint
from wsss.cli import main
from wsss.evaluation.attention_report import diagnose_checkpoint
from wsss.methods.base import TRAINING_METHODS

DEPTH = TINY_MODEL["overrides"]["depth"]


@pytest.fixture(scope="module")
def dataset_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention") / "data"
    config = tiny_synthetic_dataset(
        root, num_train=5, num_val=2, image_size=32, min_object_frac=0.45, max_object_frac=0.7
    )
    return config


def _save_model(path, method_name, params=None):
    """An untrained model.pt as the train stage writes it (random weights suffice here)."""
    torch.manual_seed(0)
    method = TRAINING_METHODS.get(method_name)(params or {})
    model = method.build_model(copy.deepcopy(TINY_MODEL), 6)
    config = {"model": TINY_MODEL, "method": {"name": method_name, "params": method.params}}
    state = {
        "model": model.state_dict(),
        "config": config,
        "seed": 0,
        "class_names": list("abcdef"),
        "method": method_name,
    }
    checkpoint.save(path, state)
    return path


def _config(dataset_config, **extra):
    return {
        "dataset": dataset_config,
        "max_images": None,
        "min_fraction": 0.5,
        "batch_size": 4,
        "affinity_layers": "all",
        "class_layers": 3,
        "meta": {"dataset": "synthetic", "run": "r", "seed": 0},
        **extra,
    }


def _run(config, model, out):
    args = ["--config", json.dumps(config), "--model", str(model), "--out", str(out)]
    assert main(["attention-diagnostics", *args, "--no-progress"]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("method", ["mctformer_v2", "clustercam", "doei"])
def test_every_method_is_diagnosed_with_its_own_model(dataset_config, tmp_path, method):
    params = {"decoder_channels": 8} if method == "clustercam" else None
    model = _save_model(tmp_path / "model.pt", method, params)
    result = _run(_config(dataset_config), model, tmp_path / "out.json")
    assert result["skipped"] is None and result["method"] == method
    assert result["meta"] == {"dataset": "synthetic", "run": "r", "seed": 0}
    assert result["split"] == "train" and result["images"] == 5
    assert result["images_without_instance_masks"] == 0
    assert len(result["blocks"]) == DEPTH and result["affinity_blocks"] == [0, 1, 2]
    for entry in [*result["blocks"], result["affinity"]]:
        assert entry["background_to_object_ratio"] > 0 and entry["own_object_lift"] > 0
        assert 0 < entry["entropy_normalised"] <= 1 + 1e-9
        shares = [entry[k] for k in ("self_share", "rest_of_object_share", "background_share")]
        assert all(0 < v < 1 for v in shares) and sum(shares) <= 1 + 1e-9
    for entry in [*result["blocks"], result["class_attention"]]:
        assert entry["class_token_lift"] > 0 and entry["class_token_lift_queries"] >= 5
    assert result["class_attention"]["blocks"] == [0, 1, 2]  # class_layers 3 of 3 blocks


def test_clustercam_needs_its_own_builder(dataset_config, tmp_path):
    """The driver's default (plain) builder cannot hold ClusterCAM's parameters: the stage's
    load_trained rebuilds it with ClusterCAM.build_model."""
    model = _save_model(tmp_path / "model.pt", "clustercam", {"decoder_channels": 8})
    with pytest.raises(ValueError, match="build="):
        diagnose_checkpoint(model, dataset_config["root"])


def test_affinity_blocks_follow_the_cam_recipe(dataset_config, tmp_path):
    """The affinity summed over the last block only is that block's attention: same numbers."""
    model = _save_model(tmp_path / "model.pt", "mctformer_v2")
    result = _run(_config(dataset_config, affinity_layers=1), model, tmp_path / "out.json")
    assert result["affinity_blocks"] == [DEPTH - 1]
    last = result["blocks"][-1]
    for key in ("own_object_lift", "background_to_object_ratio", "entropy", "rest_of_object_share"):
        assert result["affinity"][key] == pytest.approx(last[key], rel=1e-9)
    # The class attention of the CAM's last block only is that block's class attention.
    one = _run(_config(dataset_config, class_layers=1), model, tmp_path / "one.json")
    assert one["class_attention"]["blocks"] == [DEPTH - 1]
    assert one["class_attention"]["class_token_lift"] == pytest.approx(
        one["blocks"][-1]["class_token_lift"], rel=1e-9
    )


def test_max_images_and_missing_masks_are_counted(dataset_config, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(dataset_config["root"], root)
    (root / "SegmentationObject" / "train_00001.png").unlink()
    model = _save_model(tmp_path / "model.pt", "mctformer_v2")
    config = _config({**dataset_config, "root": str(root)}, max_images=3)
    result = _run(config, model, tmp_path / "out.json")
    assert result["images"] == 3 and result["images_without_instance_masks"] == 1


def test_a_dataset_without_instance_masks_is_skipped_with_the_reason(dataset_config, tmp_path):
    root = tmp_path / "no-instances"
    shutil.copytree(dataset_config["root"], root)
    shutil.rmtree(root / "SegmentationObject")
    model = _save_model(tmp_path / "model.pt", "mctformer_v2")
    result = _run(_config({**dataset_config, "root": str(root)}), model, tmp_path / "out.json")
    assert "no instance masks" in result["skipped"] and "SegmentationObject" in result["skipped"]
    assert "blocks" not in result and "affinity" not in result
