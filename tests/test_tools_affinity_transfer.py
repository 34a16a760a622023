"""`wsss affinity-transfer` end to end on a tiny dataset: every affinity scored against the
same unrefined CAM, a trained model.pt as a backbone equal to the model's own affinity."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import TINY_MODEL, tiny_synthetic_dataset

from wsss import checkpoint
from wsss.methods.base import TRAINING_METHODS
from wsss.tools.affinity_transfer import affinity_transfer, format_table

EVALUATE = {"thresholds": {"start": 0.0, "stop": 0.99, "step": 0.01}, "select": "exhaustive"}
CAM = {
    "scales": [1.0],
    "flip": True,
    "batch_size": 4,
    "class_layers": 2,
    "class_reduce": "sum",
    "fusion": "fused",
    "affinity_layers": "all",
    "affinity_reduce": "sum",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    dataset = tiny_synthetic_dataset(root / "data", num_train=4, num_val=6, image_size=32)
    torch.manual_seed(0)
    method = TRAINING_METHODS.get("mctformer_v2")({})
    model = method.build_model(copy.deepcopy(TINY_MODEL), 6)
    path = root / "model.pt"
    state = {
        "model": model.state_dict(),
        "config": {"model": TINY_MODEL, "method": {"name": "mctformer_v2", "params": {}}},
        "seed": 0,
        "class_names": list("abcdef"),
        "method": "mctformer_v2",
    }
    checkpoint.save(path, state)
    return {"dataset": dataset, "cam": CAM}, path, root


def test_every_affinity_against_one_unrefined_cam(setup, tmp_path):
    config, model, _ = setup
    specs = ["own", str(model), "oracle", "oracle_objects"]
    result = affinity_transfer(
        config, EVALUATE, model, "val", specs, cams_dir=tmp_path, progress=False
    )
    assert result["split"] == "val" and result["images"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "affinity0.npz",
        "affinity1.npz",
        "affinity2.npz",
        "affinity3.npz",
        "unrefined.npz",
    ]
    base = result["unrefined"]["miou"]
    for spec in specs:
        entry = result["affinities"][spec]
        assert entry["gain"] == pytest.approx(entry["miou"] - base)
        low, high = entry["gain_interval"]
        assert low <= entry["gain"] <= high
    # The model's own file as the backbone is the own affinity: same CAMs, same numbers.
    own, same = result["affinities"]["own"], result["affinities"][str(model)]
    assert own["kind"] == "own" and same["kind"] == "backbone"
    assert same["miou"] == own["miou"] and same["diagnostics"] == own["diagnostics"]
    oracle = result["affinities"]["oracle"]["diagnostics"]
    assert oracle["background_to_object_ratio"] == 0.0 and oracle["other_objects_share"] == 0.0
    assert "| oracle_objects |" in format_table(result)
    json.dumps(result)  # JSON-ready


def test_bad_affinities_are_named(setup):
    config, model, _ = setup
    with pytest.raises(FileNotFoundError, match="nor an existing file"):
        affinity_transfer(config, EVALUATE, model, "val", ["oracel"], progress=False)
    with pytest.raises(ValueError, match="distinct"):
        affinity_transfer(config, EVALUATE, model, "val", ["own", "own"], progress=False)
