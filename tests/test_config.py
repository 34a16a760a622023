import copy
from pathlib import Path

import pytest
import yaml

from wsss.config import (
    ParamsError,
    cam_config,
    deep_merge,
    load_params,
    training_config,
    training_key,
    validate_params,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def params():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid(params):
    validate_params(params)


def _broken(params, mutate):
    p = copy.deepcopy(params)
    mutate(p)
    return p


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: p["grid"]["methods"].append("no_such_method"),
            r"grid.methods: unknown method 'no_such_method'",
        ),
        (lambda p: p["train"].update(epochs=-1), r"train.epochs: -1 is less than the minimum of 1"),
        (lambda p: p["train"].pop("lr"), r"train.lr: missing required key"),
        (lambda p: p.pop("cam"), r"cam: missing required key"),
        (lambda p: p["train"].update(epoch=3), r"train.epoch: unknown key"),
        (
            lambda p: p["methods"]["mctformer_v2"].update(train="nope"),
            r"methods.mctformer_v2.train: unknown training method 'nope'",
        ),
        (
            lambda p: p["methods"]["mctformer_v2"].update(refine="nope"),
            r"methods.mctformer_v2.refine: unknown CAM refiner 'nope'",
        ),
        (
            lambda p: p["grid"]["datasets"].append("voc"),
            r"grid.datasets: 'voc' is not defined under datasets",
        ),
        (lambda p: p["cam"].update(class_layers=0), r"cam.class_layers"),
        (lambda p: p["datasets"]["synthetic"].update(kind="imagenet"), r"datasets.synthetic.kind"),
        (
            lambda p: p["method_params"].update(affinity={"bogus": 1}),
            r"method_params.affinity: unknown key\(s\) \['bogus'\]",
        ),
    ],
)
def test_malformed_params_name_the_key(params, mutate, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(_broken(params, mutate))


def test_load_params_merges_override_files(tmp_path):
    override = tmp_path / "ci.yaml"
    override.write_text("grid: {seeds: [3]}\ntrain: {epochs: 2}\n")
    params = load_params(REPO / "params.yaml", override)
    assert params["grid"]["seeds"] == [3]
    assert params["train"]["epochs"] == 2
    assert params["train"]["lr"] > 0  # untouched keys survive the merge
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ParamsError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def test_deep_merge_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = deep_merge(base, {"a": {"b": 5}, "d": [2]})
    assert merged == {"a": {"b": 5, "c": 2}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_refiner_variants_share_training_runs(params):
    params["methods"]["tuned"] = {"train": "mctformer_v2", "train_params": {}, "refine": "affinity"}
    assert (
        training_key(params, "mctformer_v2")
        == training_key(params, "mctformer_v2_affinity")
        == "mctformer_v2"
    )
    assert training_key(params, "tuned") == "mctformer_v2"  # empty train_params: nothing to retrain
    cfg = cam_config(params, "synthetic", "mctformer_v2_affinity")
    assert cfg["refiner"]["name"] == "affinity"
    assert cfg["method"]["name"] == "mctformer_v2"


def test_dataset_overrides_apply(params):
    params["datasets"]["synthetic"]["overrides"] = {"train": {"epochs": 7}}
    cfg = training_config(params, "synthetic", "mctformer_v2")
    assert cfg["train"]["epochs"] == 7
    assert cfg["train"]["batch_size"] == params["train"]["batch_size"]
    assert "overrides" not in cfg["dataset"]


def test_missing_dataset_root_fails_validation(params, tmp_path):
    params["datasets"]["voc"] = {
        "kind": "voc",
        "root": str(tmp_path / "no_such_voc"),
        "train_split": "train_aug",
        "eval_split": "train",
    }
    params["grid"]["datasets"] = ["voc"]
    with pytest.raises(ParamsError, match=r"datasets.voc.root: .*no_such_voc.*JPEGImages"):
        validate_params(params)
