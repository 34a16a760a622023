import copy
import re
from pathlib import Path

import pytest
import yaml

from wsss.config import (
    ParamsError,
    cam_config,
    deep_merge,
    entropy_config,
    load_params,
    training_config,
    training_key,
    upstream_inputs,
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
        (
            lambda p: p["intervals"].update(n_resamples=10),
            r"intervals.n_resamples: 10 is less than the minimum of 100",
        ),
        (lambda p: p["intervals"].pop("seed"), r"intervals.seed: missing required key"),
        (lambda p: p["intervals"].update(confidence=0.9), r"intervals.confidence: unknown key"),
    ],
)
def test_malformed_params_name_the_key(params, mutate, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(_broken(params, mutate))


def test_load_params_merges_override_files(tmp_path):
    override = tmp_path / "ci.yaml"
    override.write_text("grid: {seeds: [3]}\ntrain: {epochs: 13}\n")
    params = load_params(REPO / "params.yaml", override)
    assert params["grid"]["seeds"] == [3]
    assert params["train"]["epochs"] == 13
    assert params["train"]["lr"] > 0  # untouched keys survive the merge
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ParamsError, match=r"bad.yaml:2:1: not valid YAML"):
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
    # the CAM job reads the trained method and model from model.pt, not from its params
    assert set(cfg) == {"dataset", "cam", "refiner"}


def test_cam_groups_put_the_variants_of_one_trained_model_in_one_job(params):
    from wsss.config import cam_group_config, cam_groups

    params["grid"]["methods"] = [
        "mctformer_v2",
        "aream",
        "mctformer_v2_affinity",
        "aream_entropy",
        "aream_unrefined",
    ]
    groups = cam_groups(params)
    # grid order inside a group; aream_entropy has its own train_params, so its own run
    assert groups == {
        "mctformer_v2": ["mctformer_v2", "mctformer_v2_affinity"],
        "aream": ["aream", "aream_unrefined"],
        "aream_entropy": ["aream_entropy"],
    }
    job = cam_group_config(params, "synthetic", groups["aream"])
    assert set(job) == {"dataset", "variants"} and list(job["variants"]) == groups["aream"]
    for variant in groups["aream"]:
        alone = cam_config(params, "synthetic", variant)
        assert job["variants"][variant] == {"cam": alone["cam"], "refiner": alone["refiner"]}
        assert job["dataset"] == alone["dataset"]
    with pytest.raises(ValueError, match="do not share one trained model"):
        cam_group_config(params, "synthetic", ["mctformer_v2", "aream"])


def test_fine_tuning_options_at_their_off_value_are_not_in_the_training_params(params):
    """layer_decay 1 / freeze_blocks 0 are the plain recipe: a run's params (and its model.pt)
    are the same with or without them, so adding them reruns nothing."""
    assert params["train"]["layer_decay"] == 1.0 and params["train"]["freeze_blocks"] == 0
    plain = training_config(params, "synthetic", "mctformer_v2")
    assert "layer_decay" not in plain["train"] and "freeze_blocks" not in plain["train"]
    without = copy.deepcopy(params)
    del without["train"]["layer_decay"], without["train"]["freeze_blocks"]
    validate_params(without)
    assert training_config(without, "synthetic", "mctformer_v2") == plain
    params["train"]["layer_decay"] = 0.65
    tuned = training_config(params, "synthetic", "mctformer_v2")["train"]
    assert tuned["layer_decay"] == 0.65 and "freeze_blocks" not in tuned


def test_cpu_bf16_off_is_not_in_the_training_params_and_on_is(params):
    """train.cpu_bf16 false (the default) reruns nothing; true is a param of every training job."""
    assert params["train"]["cpu_bf16"] is False
    plain = training_config(params, "synthetic", "mctformer_v2")
    assert "cpu_bf16" not in plain["train"]
    without = copy.deepcopy(params)
    del without["train"]["cpu_bf16"]
    validate_params(without)
    assert training_config(without, "synthetic", "mctformer_v2") == plain
    params["train"]["cpu_bf16"] = True
    assert training_config(params, "synthetic", "mctformer_v2")["train"]["cpu_bf16"] is True
    params["train"]["cpu_bf16"] = "yes"
    with pytest.raises(ValueError, match="cpu_bf16"):
        validate_params(params)


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


# ------------------------------------------------------------- per-variant training recipes


def test_variant_overrides_change_only_that_variants_training(params):
    recipe = {"model": {"img_size": 96}, "train": {"epochs": 13, "batch_size": 5}}
    for variant in ("clustercam", "clustercam_affinity"):
        params["methods"][variant]["overrides"] = copy.deepcopy(recipe)
    params["datasets"]["synthetic"]["overrides"] = {"train": {"epochs": 7, "lr": 0.5}}
    validate_params(params)
    key = training_key(params, "clustercam_affinity")
    assert key == training_key(params, "clustercam") == "clustercam"  # still one shared model
    cfg = training_config(params, "synthetic", key)
    assert cfg["model"]["img_size"] == 96
    assert (cfg["train"]["epochs"], cfg["train"]["batch_size"]) == (13, 5)  # variant wins
    assert cfg["train"]["lr"] == 0.5  # the dataset's override still applies
    plain = training_config(params, "synthetic", "mctformer_v2")
    assert plain["train"]["epochs"] == 7
    assert plain["model"]["img_size"] == params["model"]["img_size"]


def test_a_variant_with_its_own_recipe_trains_its_own_model(params):
    params["methods"]["mctformer_v2_long"] = {
        "train": "mctformer_v2",
        "refine": "affinity",
        "overrides": {"train": {"epochs": 40}},
    }
    params["methods"]["mctformer_v2_long_plain"] = {
        "train": "mctformer_v2",
        "overrides": {"train": {"epochs": 40}},
    }
    validate_params(params)
    assert training_key(params, "mctformer_v2_affinity") == "mctformer_v2"
    assert training_key(params, "mctformer_v2_long") == "mctformer_v2_long"
    assert training_key(params, "mctformer_v2_long_plain") == "mctformer_v2_long"
    assert training_config(params, "synthetic", "mctformer_v2_long")["train"]["epochs"] == 40
    assert training_config(params, "synthetic", "mctformer_v2")["train"]["epochs"] == 20
    # Empty override blocks are no recipe of their own.
    params["methods"]["mctformer_v2_affinity"]["overrides"] = {"train": {}}
    assert training_key(params, "mctformer_v2_affinity") == "mctformer_v2"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train": {"epochs": 0}}, "methods.clustercam.overrides.train.epochs"),
        ({"train": {"epoch": 3}}, "methods.clustercam.overrides.train.epoch: unknown key"),
        ({"cam": {"scales": [1.0]}}, "methods.clustercam.overrides.cam: unknown key"),
    ],
)
def test_variant_overrides_are_validated(params, overrides, message):
    params["methods"]["clustercam"]["overrides"] = overrides
    with pytest.raises(ParamsError, match=message):
        validate_params(params)


def test_a_training_run_name_cannot_serve_two_recipes(params):
    # A variant named like a training method, with a recipe of its own, would write
    # into the plain method's run folder.
    params["methods"]["aream"] = {"train": "mctformer_v2", "overrides": {"train": {"epochs": 3}}}
    params["methods"]["aream_plain"] = {"train": "aream"}
    with pytest.raises(
        ParamsError,
        match=r"methods\.aream: methods\.aream has its own training settings .* under the run name 'aream', which is also the run of .*methods\.aream_plain with other settings; rename the variant$",
    ):
        validate_params(params)


# ------------------------------------------------------------- AReAM's entropy weights


def _without_baseline_run(params):
    """params whose variants never train the plain mctformer_v2 run."""
    for variant in [v for v in params["methods"] if training_key(params, v) == "mctformer_v2"]:
        del params["methods"][variant]
        if variant in params["grid"]["methods"]:
            params["grid"]["methods"].remove(variant)


def test_entropy_baseline_is_a_dependency_on_the_mctformer_run(params):
    validate_params(params)  # params.yaml: aream_entropy, and mctformer_v2 trains the baseline
    assert training_key(params, "aream_entropy") == "aream_entropy"  # its own model
    # declared by the method (AReAM's upstream()), not by the pipeline
    assert upstream_inputs(params, "aream_entropy") == [
        ("entropy_weights", "entropy_weights", "mctformer_v2")
    ]
    assert upstream_inputs(params, "aream") == []
    assert upstream_inputs(params, "mctformer_v2") == []
    config = training_config(params, "synthetic", "aream_entropy")
    assert config["method"]["params"]["entropy_weights"] == "baseline"
    job = entropy_config(params, "synthetic", "mctformer_v2")
    assert job["dataset"]["train_split"] == "train" and job["dataset"]["name"] == "synthetic"
    assert "device" not in job  # an execution knob, not a param
    baseline = training_config(params, "synthetic", "mctformer_v2")
    assert job["batch_size"] == baseline["train"]["batch_size"]


def test_entropy_baseline_without_the_mctformer_run_fails_naming_the_key(params):
    _without_baseline_run(params)
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    message = str(err.value)
    assert "methods.aream_entropy: its training method 'aream' reads the entropy_weights" in message
    assert "trained run 'mctformer_v2'" in message
    assert "no variant of that name is under methods" in message
    assert "method_params.aream.entropy_weights" in message


def test_entropy_baseline_set_for_the_method_names_method_params(params):
    del params["methods"]["aream_entropy"]
    params["grid"]["methods"] = [m for m in params["grid"]["methods"] if m != "aream_entropy"]
    params["method_params"]["aream"]["entropy_weights"] = "baseline"
    validate_params(params)  # every AReAM run now reads the weights
    assert upstream_inputs(params, "aream")
    _without_baseline_run(params)
    with pytest.raises(ParamsError, match=r"method_params.aream.entropy_weights"):
        validate_params(params)


def test_entropy_baseline_run_must_train_mctformer(params):
    # The run named mctformer_v2 trained by another method is no baseline.
    _without_baseline_run(params)
    params["methods"]["mctformer_v2"] = {"train": "doei", "train_params": {"gamma": 0.4}}
    with pytest.raises(ParamsError, match=r"methods.mctformer_v2 trains it with 'doei'"):
        validate_params(params)


def test_entropy_baseline_is_a_method_param(params):
    """The baseline run is a declaration on the method, named in params.yaml."""
    params["methods"]["mct_again"] = {"train": "mctformer_v2", "label": "another baseline"}
    params["method_params"]["aream"]["entropy_baseline"] = "mct_again"
    validate_params(params)
    assert upstream_inputs(params, "aream_entropy") == [
        ("entropy_weights", "entropy_weights", "mctformer_v2")  # same recipe: the run is shared
    ]


@pytest.mark.parametrize("baseline", ["aream", "no_such_variant"])
def test_a_baseline_names_another_defined_variant(params, baseline):
    params["methods"]["aream"]["baseline"] = baseline
    with pytest.raises(ParamsError, match=rf"methods.aream.baseline: '{baseline}' must name"):
        validate_params(params)


# ------------------------------------------------------------- checks across keys (issue: params gaps)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    override = tmp_path / "override.yaml"
    # the third line is indented one space too far: a mapping where none may start
    override.write_text("grid:\n  seeds: [0]\n   methods: [mctformer_v2]\n")
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", override)
    assert str(err.value).startswith(f"{override}:3:")
    assert "not valid YAML" in str(err.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        # block indices against the model depth
        (
            lambda p: p["cam"].update(class_layers=5),
            r"cam.class_layers: 5 does not fit a 4-block model \(layer count 5 outside 1..4\) "
            r"\(runs: mctformer_v2 on synthetic, ",
        ),
        (
            lambda p: p["cam"].update(affinity_layers=[0, 4]),
            r"cam.affinity_layers: \[0, 4\] does not fit a 4-block model",
        ),
        (
            lambda p: p["methods"]["clustercam"]["cam"].update(class_layers=[7]),
            r"methods.clustercam.cam.class_layers: \[7\] does not fit a 4-block model "
            r".*\(runs: clustercam on synthetic\)",
        ),
        (
            lambda p: p["model"]["overrides"].update(depth=2),
            r"cam.class_layers: 3 does not fit a 2-block model",
        ),
        (
            lambda p: p["model"]["overrides"].update(depth=0),
            r"model.overrides.depth: 0 is less than the minimum of 1",
        ),
        (
            lambda p: p["method_params"]["adcam"].update(layers=[9]),
            r"method_params.adcam.layers: \[9\] does not fit a 4-block model",
        ),
        (
            lambda p: p["method_params"]["doei"].update(blocks=[4]),
            r"method_params.doei.blocks: \[4\] does not fit a 4-block model",
        ),
        (
            lambda p: p["method_params"]["clustercam"].update(cluster_blocks=6),
            r"method_params.clustercam.cluster_blocks: 6 does not fit a 4-block model",
        ),
        (
            lambda p: p["method_params"]["aream"].update(layer_index=4),
            r"method_params.aream.layer_index 4 must be in 1..3 for a 4-block model",
        ),
        (
            lambda p: (
                p["methods"].update(
                    aream_loss5={"train": "aream", "train_params": {"loss_layers": [5]}}
                ),
                p["grid"]["methods"].append("aream_loss5"),
            ),
            r"methods.aream_loss5.train_params.loss_layers: \[5\] does not fit a 4-block model",
        ),
        # ordered ranges
        (
            lambda p: p["train"].update(crop_scale=[1.0, 0.2]),
            r"train.crop_scale: \[1.0, 0.2\] is not an ordered range; expected \[low, high\] "
            r"with low <= high, e.g. \[0.2, 1.0\]",
        ),
        (
            lambda p: p["segmentation"].update(scale_range=[1.5, 0.5]),
            r"segmentation.scale_range: \[1.5, 0.5\] is not an ordered range",
        ),
        (
            lambda p: p["datasets"]["synthetic"].update(
                overrides={"segmentation": {"scale_range": [2.0, 1.0]}}
            ),
            r"datasets.synthetic.overrides.segmentation.scale_range: \[2.0, 1.0\] is not an "
            r"ordered range",
        ),
        # thresholds: a number in [0, 1] or best, both offered
        (
            lambda p: p["pseudo_labels"].update(bg_threshold=1.5),
            r"pseudo_labels.bg_threshold: 1.5 is not valid; expected a number in \[0, 1\] "
            r"\(the background score\), or best",
        ),
        (
            lambda p: p["pseudo_labels"].update(bg_threshold="bset"),
            r"pseudo_labels.bg_threshold: 'bset' is not valid; expected a number in \[0, 1\]",
        ),
        # generator keys
        (
            lambda p: p["datasets"]["synthetic"]["generator"].update(num_trian=5),
            r"datasets.synthetic.generator: unknown key\(s\) \['num_trian'\]; known keys: seed, "
            r"image_size, num_train, ",
        ),
        (
            lambda p: p["datasets"]["synthetic"]["generator"].update(num_classes=0),
            r"datasets.synthetic.generator: .*num_classes",
        ),
    ],
)
def test_params_checked_across_keys_before_any_job(params, mutate, message):
    with pytest.raises(ParamsError, match=message):
        validate_params(_broken(params, mutate))


def test_block_indices_are_checked_only_for_the_runs_of_the_grid(params):
    """The smoke preset's 2-block model with only its two grid methods is valid, although
    other variants' recipes (ClusterCAM's 3 class layers) would not fit it."""
    smoke = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    validate_params(deep_merge(params, smoke))
    smoke["grid"]["methods"].append("clustercam")
    with pytest.raises(ParamsError, match=r"methods.clustercam.cam.class_layers: 3 does not fit"):
        validate_params(deep_merge(params, smoke))


def test_cam_rule_names_fold_back_into_the_cams_resources_key():
    from wsss.config import cam_rule_name, rule_family

    assert cam_rule_name("cams", "aream_entropy") == "cams_aream_entropy"
    assert cam_rule_name("cams_shard", "my-run.v2") == "cams_shard_my_run_v2"
    assert rule_family("cams_aream_entropy") == "cams"
    assert rule_family("cams_shard_my_run_v2") == "cams_shard"
    assert rule_family("train") == "train"
    assert rule_family("cam_shard_plan") == "cam_shard_plan"


@pytest.mark.parametrize("variant", ["mctformer_v2", "aream_doei"])
def test_a_variant_cam_shard_size_is_refused_once_naming_that_variant(params, variant):
    """cam.shard_size is a setting of the split (its shards are shared by every method): a
    variant's own is refused, on any variant (the first one too), in one line."""
    params["methods"][variant]["cam"] = {"shard_size": 5}
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    message = str(err.value)
    assert f"methods.{variant}.cam.shard_size: the shards of a split are shared" in message
    assert message.count("cam.shard_size: the shards") == 1


@pytest.fixture
def toy_refiner():
    """A test-only refiner whose block parameter has a name no other method uses."""
    from wsss.methods import CAM_REFINERS, CamRefiner, Param

    class ToyRefiner(CamRefiner):
        name = "toy_blocks"
        params_spec = {"attn_blocks": Param("all", "blocks"), "strength": Param(1.0, "number")}

    CAM_REFINERS.register("toy_blocks")(ToyRefiner)
    yield ToyRefiner
    CAM_REFINERS._entries.pop("toy_blocks")


def test_every_declared_block_parameter_is_checked_against_the_depth(params, toy_refiner):
    """No list of parameter names: a refiner's own ``attn_blocks: [7]`` on the 4-block
    model is refused, because the refiner declares it as naming blocks."""
    params["methods"]["toy"] = {"train": "mctformer_v2", "refine": "toy_blocks"}
    params["grid"]["methods"].append("toy")
    params["method_params"]["toy_blocks"] = {"attn_blocks": [1, 3]}
    validate_params(params)
    params["method_params"]["toy_blocks"] = {"attn_blocks": [7]}
    with pytest.raises(
        ParamsError, match=r"method_params.toy_blocks.attn_blocks: \[7\] does not fit a 4-block"
    ):
        validate_params(params)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda p: p["train"].update(epochs=5),
            r"method_params.clustercam.seg_start_epoch: 12 is not less than train.epochs \(5\), "
            r"so the decoder would never be trained.*\(runs: clustercam on synthetic, "
            r"clustercam_affinity on synthetic\)",
        ),
        (
            lambda p: p["train"].update(epochs=3),
            r"method_params.aream.cls_epochs: 3 is not less than train.epochs \(3\)",
        ),
        (
            lambda p: [
                p["methods"][v].update(train_params={"seg_start_epoch": 25})
                for v in ("clustercam", "clustercam_affinity")
            ],
            r"methods.clustercam.train_params.seg_start_epoch: 25 is not less than "
            r"train.epochs \(20\)",
        ),
    ],
)
def test_methods_state_their_limits_against_the_train_block(params, mutate, message):
    mutate(params)
    with pytest.raises(ParamsError, match=message):
        validate_params(params)


def test_a_longer_run_of_the_variant_satisfies_its_method_limit(params):
    params["train"]["epochs"] = 5
    params["grid"]["methods"] = ["mctformer_v2", "clustercam"]
    for variant in ("clustercam", "clustercam_affinity"):
        params["methods"][variant]["overrides"] = {"train": {"epochs": 14}}
    validate_params(params)


@pytest.mark.parametrize(
    "value, expected", [("1e-1", 0.1), ("5e-4", 5e-4), ("1e-06", 1e-6), (1, 1.0), ("1", 1.0)]
)
def test_method_numbers_are_read_as_numbers(params, value, expected):
    """AReAM's ``weight: 1e-1`` (a string to PyYAML) is the number 0.1 before any job, as
    in the training job's config; not a string that crashes training at cls_epochs."""
    params["method_params"]["aream"]["weight"] = value
    validate_params(params)
    config = training_config(params, "synthetic", "aream")
    assert config["method"]["params"]["weight"] == expected
    assert isinstance(config["method"]["params"]["weight"], float)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("weight", "heavy", r"method_params.aream.weight: expected a number, got 'heavy'"),
        ("weight", -0.5, r"method_params.aream.weight: must be >= 0, got -0.5"),
        ("cls_epochs", 2.5, r"method_params.aream.cls_epochs: expected an integer, got 2.5"),
        ("par", "yes", r"method_params.aream.par: expected true or false, got 'yes'"),
        ("shallow_reduce", "max", r"method_params.aream.shallow_reduce: expected one of"),
    ],
)
def test_method_params_are_typed(params, key, value, message):
    params["method_params"]["aream"][key] = value
    with pytest.raises(ParamsError, match=message):
        validate_params(params)


def test_every_method_declares_each_parameter_with_a_type():
    """The declaration is complete: every parameter of every registered method has a
    declared type, and every parameter whose name says it selects blocks is declared as
    ``blocks`` (so its depth is checked)."""
    from wsss.methods import CAM_REFINERS, TRAINING_METHODS, Param

    for registry in (TRAINING_METHODS, CAM_REFINERS):
        for name in registry.names():
            cls = registry.get(name)
            assert set(cls.defaults) == set(cls.params_spec), name
            for key, param in cls.params_spec.items():
                assert isinstance(param, Param) and param.type in Param.TYPES, (name, key)
                if key.endswith(("layers", "blocks")):
                    assert param.type == "blocks", (name, key)


@pytest.mark.parametrize(
    "block, key, value, expected",
    [
        ("train", "lr", "1e-06", 1e-06),  # what `dvc exp run -S train.lr=0.000001` writes
        ("train", "lr", "5e-4", 5e-4),  # YAML 1.1 reads it as a string
        ("train", "epochs", "20", 20),
        ("train", "crop_scale", ["0.6", "1.0"], [0.6, 1.0]),
        ("pseudo_labels", "bg_threshold", "3e-1", 0.3),
    ],
)
def test_numbers_written_as_strings_are_read_as_numbers(params, block, key, value, expected):
    params[block][key] = value
    validate_params(params)
    assert params[block][key] == expected
    assert type(params[block][key]) is type(expected)


def test_a_string_that_is_no_number_is_still_refused(params):
    params["train"]["lr"] = "fast"
    with pytest.raises(ParamsError, match=r"train.lr: 'fast' is not of type 'number'"):
        validate_params(params)


def test_an_empty_override_file_is_refused_with_its_name(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ParamsError, match=rf"{empty}: the params file is empty"):
        load_params(REPO / "params.yaml", empty)


@pytest.mark.parametrize("name", ["aream+doei", "aream(v2)", "aream v2", "-x"])
def test_unsafe_variant_names_are_refused_naming_the_key(params, name):
    params["methods"][name] = {"train": "mctformer_v2"}
    params["grid"]["methods"].append(name)
    with pytest.raises(ParamsError, match=rf"methods: {re.escape(repr(name))} is not a safe name"):
        validate_params(params)


def test_unsafe_dataset_names_and_results_dir_are_refused(params):
    params["datasets"]["syn thetic"] = params["datasets"]["synthetic"]
    params["results_dir"] = "my results"
    with pytest.raises(ParamsError) as err:
        validate_params(params)
    assert "datasets: 'syn thetic' is not a safe name" in str(err.value)
    assert "results_dir: 'my results' is not a safe path" in str(err.value)


def test_errors_name_the_file_that_set_the_bad_key(tmp_path):
    """Issue 28, case 9: every error began "params.yaml is invalid", even when the bad value
    came from an override file."""
    lr = tmp_path / "lr.yaml"
    lr.write_text("train: {lr: fast}\n")
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", lr)
    assert str(err.value).startswith(f"{lr} is invalid:\n  train.lr: 'fast' is not of type")
    # Two files with a bad key each: each line names its file.
    scales = tmp_path / "scales.yaml"
    scales.write_text("cam: {scales: all}\n")
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", scales, lr)
    assert str(err.value).startswith(f"{scales}, {lr} are invalid:")
    assert f"cam.scales: 'all' is not of type 'array' (from {scales})" in str(err.value)
    assert f"train.lr: 'fast' is not of type 'number' (from {lr})" in str(err.value)
    # A later file that replaces the value takes the blame; a check across keys names
    # the file of the key it reports (the unknown variant, not the grid that lists it).
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("train: {lr: 0.001}\ngrid: {methods: [nope]}\n")
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", lr, fixed)
    assert str(err.value).startswith(f"{fixed} is invalid:\n  grid.methods: unknown method")
    # A bad value in params.yaml itself still names params.yaml.
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    base["train"]["epochs"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(base))
    with pytest.raises(ParamsError, match=r"params\.yaml is invalid:\n  train\.epochs"):
        load_params(tmp_path / "params.yaml")


def _override_error(override: Path, text: str) -> str:
    """The ParamsError message of params.yaml merged with ``override`` holding ``text``."""
    override.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", override)
    return str(err.value)


def test_method_param_errors_name_the_file_and_key_that_set_them(tmp_path):
    """A bad method parameter in an override file was reported as "params.yaml is invalid:
    methods.aream: method_params.aream.weight ...": the variant's key (set in params.yaml)
    led the line, so the error named params.yaml. Now the method's own key leads, and a
    value from a variant's train_params is named there, not under method_params."""
    override = tmp_path / "o.yaml"
    error = _override_error(override, "method_params: {aream: {weight: heavy}}\n")
    assert error.startswith(
        f"{override} is invalid:\n  method_params.aream.weight: expected a number, got 'heavy'"
    )
    error = _override_error(
        override, "methods: {aream_x: {train: aream, train_params: {wieght: 1}}}\n"
    )
    assert error.startswith(
        f"{override} is invalid:\n  methods.aream_x.train_params: unknown key(s) ['wieght']"
    )


def test_a_variant_named_like_its_method_with_own_settings_names_the_setting(tmp_path):
    """`methods.aream.train_params` in an override gives the variant `aream` its own run,
    named `aream`, the run the other AReAM variants train with the defaults: one line, led
    by the key the override set, naming every variant involved and both fixes."""
    override = tmp_path / "o.yaml"
    error = _override_error(override, "methods: {aream: {train_params: {weight: 0.2}}}\n")
    assert error.startswith(f"{override} is invalid:\n  methods.aream.train_params: methods.aream ")
    assert error.count("\n") == 1  # one problem line, not one per sibling variant
    assert "methods.aream_unrefined" in error and "method_params.aream" in error
    # `overrides` written by the file: the line leads with that key, not with train_params
    error = _override_error(override, "methods: {clustercam: {overrides: {train: {epochs: 30}}}}\n")
    assert error.startswith(
        f"{override} is invalid:\n  methods.clustercam.overrides: methods.clustercam "
    )


def test_a_check_across_keys_names_the_file_that_changed_one_of_them(tmp_path):
    """`train: {epochs: 3}` in an override makes AReAM's cls_epochs (params.yaml) too late;
    the line leads with cls_epochs, but the file to blame is the override that set the
    other key it names, not params.yaml."""
    override = tmp_path / "short.yaml"
    override.write_text("train: {epochs: 3}\n")
    with pytest.raises(ParamsError) as err:
        load_params(REPO / "params.yaml", override)
    assert str(err.value).startswith(f"{override} is invalid:\n  method_params.aream.cls_epochs")
