"""The paper-faithful presets configs/voc.yaml and configs/coco.yaml: resolved settings and dry runs.

Nothing here trains: the presets are checked as resolved configurations and as
Snakemake dry runs in a copy of the project with a fake dataset root.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SHARED_DATA
from test_workflow import _copy_project, _job_counts, _snakemake

from wsss.config import (
    cam_config,
    execution,
    load_params,
    training_config,
    training_key,
)
from wsss.methods import TRAINING_METHODS

REPO = Path(__file__).resolve().parents[1]
VOC_PRESET = REPO / "configs" / "voc.yaml"
COCO_PRESET = REPO / "configs" / "coco.yaml"


def _fake_voc(root: Path) -> Path:
    """Just enough of a VOC tree for the dataset-root check (the dry run reads no image)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    return root


def _fake_coco_raw(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split in ("train2014", "val2014"):
        (root / split).mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text("{}")
    return root


def _override(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def voc_params(tmp_path):
    root = _override(
        tmp_path / "root.yaml", {"datasets": {"voc": {"root": str(_fake_voc(tmp_path / "voc"))}}}
    )
    return load_params(REPO / "params.yaml", VOC_PRESET, root)


@pytest.fixture
def coco_params(tmp_path):
    raw = _fake_coco_raw(tmp_path / "raw")
    root = _override(tmp_path / "raw.yaml", {"datasets": {"coco": {"source": {"root": str(raw)}}}})
    return load_params(REPO / "params.yaml", COCO_PRESET, root)


# --------------------------------------------------------------------------- resolved settings


def test_voc_preset_resolves_each_methods_official_recipe(voc_params):
    params = voc_params
    assert sorted(params["grid"]["methods"]) == sorted(params["methods"])  # every variant
    mct = training_config(params, "voc", "mctformer_v2")
    assert mct["model"]["backbone"] == "deit_small_patch16_224" and mct["model"]["pretrained"]
    assert mct["model"]["img_size"] == 224
    assert mct["model"]["overrides"] == {
        "patch_size": 16,
        "embed_dim": 384,
        "depth": 12,
        "num_heads": 6,
    }
    train = mct["train"]
    assert (train["epochs"], train["batch_size"], train["warmup_epochs"]) == (60, 64, 5)
    assert train["lr"] * train["batch_size"] / 512 == pytest.approx(6.25e-5)
    assert train["lr_batch_scaling"] and train["amp"]
    assert execution(params, "voc")["device"] == "cuda"  # an execution knob, not a param
    assert mct["dataset"]["train_split"] == "train_aug" and "eval_split" not in mct["dataset"]

    cluster_key = training_key(params, "clustercam")
    assert training_key(params, "clustercam_affinity") == cluster_key  # one model, two refiners
    cluster = training_config(params, "voc", cluster_key)
    assert cluster["model"]["img_size"] == 448
    assert (cluster["train"]["epochs"], cluster["train"]["batch_size"]) == (80, 9)
    assert cluster["train"]["lr"] == train["lr"]  # the rest is the common recipe

    aream = training_config(params, "voc", training_key(params, "aream"))
    assert aream["train"]["epochs"] == 60 and aream["model"]["img_size"] == 224
    assert aream["method"]["params"]["cls_epochs"] == 10
    assert aream["method"]["params"]["layer_index"] == 7
    assert cam_config(params, "voc", "mctformer_v2")["cam"]["scales"] == [1.0]

    for resource in ("train", "cams"):
        assert params["resources"][resource]["gpu"] == 1


@pytest.mark.parametrize("preset", [VOC_PRESET, COCO_PRESET])
def test_presets_state_the_official_method_parameters(preset):
    """The preset values are the registered classes' defaults, which follow the official code
    (methods.md), except the documented per-dataset ones."""
    method_params = yaml.safe_load(preset.read_text())["method_params"]
    assert method_params["aream"] == TRAINING_METHODS.get("aream").defaults
    expected = dict(TRAINING_METHODS.get("clustercam").defaults)
    if preset == COCO_PRESET:  # run_e2e_coco.sh
        expected.update(bg_thr=0.43, seg_start_epoch=40)
    assert method_params["clustercam"] == expected


def test_coco_preset_resolves(coco_params):
    params = coco_params
    cluster = training_config(params, "coco", training_key(params, "clustercam"))
    assert cluster["model"]["img_size"] == 448
    assert (cluster["train"]["epochs"], cluster["train"]["batch_size"]) == (60, 6)
    assert cluster["method"]["params"]["bg_thr"] == 0.43
    mct = training_config(params, "coco", "mctformer_v2")
    assert (mct["train"]["epochs"], mct["train"]["batch_size"]) == (60, 64)
    assert "source" not in mct["dataset"]  # only the conversion reads the raw files
    assert params["datasets"]["coco"]["source"]["crowd"] == "class"


def test_preset_model_block_builds_deit_small(voc_params):
    from wsss.models import build_model

    block = dict(training_config(voc_params, "voc", "mctformer_v2")["model"], pretrained=False)
    model = build_model(block, 20)  # random init: no download; the shape is what matters
    backbone = model.backbone if hasattr(model, "backbone") else model
    blocks = [m for m in backbone.modules() if type(m).__name__ == "Block"]
    assert len(blocks) == 12
    assert model.patch_size == 16
    assert sum(p.numel() for p in model.parameters()) > 20_000_000  # DeiT-S: ~22M


@pytest.mark.parametrize("preset", [VOC_PRESET, COCO_PRESET])
def test_presets_set_the_standard_stage_two(preset):
    data = yaml.safe_load(preset.read_text())
    seg = data["segmentation"]
    assert (seg["epochs"], seg["batch_size"], seg["crop_size"]) == (30, 4, 321)
    assert (seg["optimizer"], seg["lr"], seg["head_lr_mult"], seg["weight_decay"]) == (
        "sgd",
        7e-4,
        10,
        1e-5,
    )
    assert seg["head"] == "largefov" and seg["dilations"] == [12] and seg["output_stride"] == 8
    assert seg["crf"]["enabled"] and data["pseudo_labels"]["bg_threshold"] == "best"
    assert data["resources"]["segment"]["gpu"] == 1


def test_preset_segmenter_is_resnet101(voc_params):
    import timm

    from wsss.segmentation.model import SegmenterConfig, create_feature_backbone

    block = dict(voc_params["segmentation"], pretrained=False)
    backbone = create_feature_backbone(SegmenterConfig.from_dict(block))
    reference = timm.create_model("resnet101", pretrained=False, features_only=True)
    shapes = {k: v.shape for k, v in reference.state_dict().items()}
    ours = {k: v.shape for k, v in backbone.state_dict().items()}
    assert ours == {k: shapes[k] for k in ours}  # pretrained ResNet-101 weights fit
    assert len(ours) > 600


# --------------------------------------------------------------------------- dry runs


@pytest.fixture
def project(tmp_path):
    return _copy_project(tmp_path / "project")


def _train_runs(params: dict) -> int:
    return len({training_key(params, m) for m in params["grid"]["methods"]})


def test_voc_preset_dry_run_lists_the_full_grid(project, tmp_path, voc_params):
    root = _override(
        tmp_path / "root.yaml", {"datasets": {"voc": {"root": str(_fake_voc(tmp_path / "voc"))}}}
    )
    result = _snakemake(project, "-n", "--configfile", str(VOC_PRESET), str(root))
    counts = _job_counts(result.stdout)
    methods, seeds = voc_params["grid"]["methods"], voc_params["grid"]["seeds"]
    assert len(methods) == 16 and len(seeds) == 3
    assert counts["prepare_data"] == 1
    assert counts["train"] == _train_runs(voc_params) * len(seeds) == 8 * 3
    assert counts["entropy_weights"] == len(seeds)  # aream_entropy's weights, one per seed
    assert counts["evaluate_cams"] == len(methods) * len(seeds)
    # CAMs of train (scored) and of train_aug (the pseudo-labels stage 2 trains on)
    # one CAM job per trained model and split: the variants of a model share its forward pass
    assert counts["cams"] == 2 * _train_runs(voc_params) * len(seeds)
    assert counts["evaluate_decoder"] == 2 * len(seeds)  # the two ClusterCAM variants
    assert counts["pseudo_labels"] == counts["segment"] == len(methods) * len(seeds)
    assert "convert_data" not in counts
    # Every method of the grid appears, and training jobs ask for a GPU.
    for method in methods:
        assert f"results-voc/runs/voc/{method}/seed2/cam_metrics.json" in result.stdout
    train_jobs = result.stdout.split("rule train:")[1:]
    assert train_jobs and all("gpu=1" in job.split("rule ")[0] for job in train_jobs)
    entropy_jobs = result.stdout.split("rule entropy_weights:")[1:]
    assert entropy_jobs and all("gpu=1" in job.split("rule ")[0] for job in entropy_jobs)
    assert not (project / "results").exists()


def test_voc_preset_without_the_dataset_fails_clearly(project):
    result = _snakemake(project, "-n", "--configfile", str(VOC_PRESET), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets.voc.root: no VOC-layout dataset at data/voc" in output
    assert "expected JPEGImages/, SegmentationClassAug/" in output
    assert "Job stats" not in output  # nothing was scheduled
    assert not (project / "results").exists()


@pytest.mark.slow
def test_coco_preset_dry_run_converts_once_then_lists_the_grid(project, tmp_path, coco_params):
    raw = _fake_coco_raw(tmp_path / "raw")
    override = _override(
        tmp_path / "raw.yaml", {"datasets": {"coco": {"source": {"root": str(raw)}}}}
    )
    result = _snakemake(project, "-n", "--configfile", str(COCO_PRESET), str(override))
    counts = _job_counts(result.stdout)
    methods = coco_params["grid"]["methods"]
    assert counts["convert_data"] == 1 and counts["prepare_data"] == 1
    # train (82,081 images) is both splits and is cut into shards (cam.shard_size 10,000):
    # its cams_shard jobs, and the jobs only they need, appear once its plan exists; every
    # trained model (and AReAM's entropy weights) is a target of `all` by itself
    seeds = coco_params["grid"]["seeds"]
    runs = {training_key(coco_params, m) for m in methods}
    assert counts["cam_shard_plan"] == 1 and "cams" not in counts
    assert counts["train"] == len(runs) * len(seeds)
    assert counts["entropy_weights"] == len(seeds)
    assert counts["evaluate_decoder"] == 2  # its two grid variants
    assert counts["evaluate_cams"] == len(methods)
    assert counts["pseudo_labels"] == counts["segment"] == len(methods)
    # the kind's conversion job, with the resources of its stage (resources.convert_coco)
    convert_job = result.stdout.split("rule convert_data:")[1].split("rule ")[0]
    assert "mem_mb=16000" in convert_job and "runtime=240" in convert_job


def test_coco_preset_without_raw_data_fails_clearly(project):
    result = _snakemake(project, "-n", "--configfile", str(COCO_PRESET), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "datasets.coco.source: data/coco holds no converted COCO layout" in output
    assert "data/coco-raw/annotations/instances_train2014.json does not exist" in output
    assert "Job stats" not in output
    assert not (project / "results").exists()


VOC_SAMPLE = SHARED_DATA / "voc_sample" / "VOCdevkit" / "VOC2012"


@pytest.mark.slow
def test_voc_preset_architectures_train_extract_and_score_on_real_images(project, tmp_path):
    """The VOC preset's networks (DeiT-S/16 at 224 for MCTformer-V2 and AReAM, at 448 for
    ClusterCAM; random weights, one step of batch 2, each method's loss fully on) through
    train -> cams -> evaluate on two real VOC images at their own sizes, on CPU."""
    if not VOC_SAMPLE.is_dir():
        pytest.skip(f"real data {VOC_SAMPLE} absent; set WSSS_SHARED_DATA to the folder holding it")
    root = tmp_path / "voc"  # the sample's folders linked, with a two-image split of our own
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for folder in ("JPEGImages", "SegmentationClassAug"):
        (root / folder).symlink_to(VOC_SAMPLE / folder)
    ids = ["2007_000032", "2011_000003"]  # 500 x 281 and 500 x 334: not patch multiples
    (root / "ImageSets" / "Segmentation" / "smoke.txt").write_text("\n".join(ids) + "\n")
    # the seg split (val) is decoded and checked by prepare-data too: the sample's own val image
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    methods = ["mctformer_v2", "aream", "clustercam"]
    one_step = {"epochs": 1, "batch_size": 2, "warmup_epochs": 0}
    override = _override(
        tmp_path / "smoke.yaml",
        {
            "grid": {"methods": methods, "seeds": [0]},
            "datasets": {"voc": {"root": str(root), "train_split": "smoke", "eval_split": "smoke"}},
            "model": {"pretrained": False},
            "train": {**one_step, "device": "cpu", "amp": False, "num_workers": 0},
            "cam": {"batch_size": 2},
            "methods": {"clustercam": {"overrides": {"train": one_step}}},
            "method_params": {"aream": {"cls_epochs": 0}, "clustercam": {"seg_start_epoch": 0}},
        },
    )
    targets = [f"results-voc/runs/voc/{m}/seed0/cam_metrics.json" for m in methods]
    _snakemake(project, "--configfile", str(VOC_PRESET), str(override), "--", *targets)
    for method, target in zip(methods, targets, strict=True):
        cam = json.loads((project / target).read_text())["cam"]
        assert cam["images"] == 2 and 0.0 <= cam["miou"] <= 1.0, method
        model = torch.load(
            project / f"results-voc/runs/voc/train/{method}/seed0/model.pt", weights_only=False
        )
        config = model["config"]["model"]
        assert config["backbone"] == "deit_small_patch16_224"
        assert config["img_size"] == (448 if method == "clustercam" else 224)
        assert config["overrides"] == {
            "patch_size": 16,
            "embed_dim": 384,
            "depth": 12,
            "num_heads": 6,
        }


@pytest.mark.parametrize("preset", ["voc", "coco"])
def test_cluster_preset_headers_give_the_launcher_command(preset):
    """The header's command is the launcher (the plain `snakemake --workflow-profile` call
    hangs on a cluster without job accounting), with the git-ignored site settings."""
    header = "".join(
        line
        for line in (REPO / "configs" / f"{preset}.yaml").read_text().splitlines(True)
        if line.startswith("#")
    )
    assert f"workflow/profiles/slurm/snakemake-slurm --configfile configs/{preset}.yaml" in header
    assert "#   snakemake --workflow-profile" not in header


def test_site_settings_are_git_ignored():
    import subprocess

    result = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", "configs/site.yaml"], cwd=REPO
    )
    assert result.returncode == 0, "configs/site.yaml is not git-ignored"


def test_the_documented_site_file_sets_both_offline_weights():
    """docs/real-data.md's configs/site.yaml example names the classifier's and the
    segmenter's weights, under keys the schema knows."""
    docs = (REPO / "docs" / "real-data.md").read_text()
    block = docs.split("# configs/site.yaml (yours, git-ignored)")[1].split("```")[0]
    site = yaml.safe_load(block)
    assert site["model"]["weights"].endswith(".pth")
    assert site["segmentation"]["weights"]
    params = load_params(REPO / "params.yaml")
    assert {"weights", "pretrained"} <= set(params["model"]) & set(params["segmentation"])


@pytest.mark.parametrize(
    "preset, results",
    [
        ("smoke", "results-smoke"),
        ("full", "results-full"),
        ("voc", "results-voc"),
        ("coco", "results-coco"),
        ("voc-sample", "results-voc-sample"),
    ],
)
def test_each_preset_writes_its_own_git_ignored_results_dir(preset, results):
    """A preset run never overwrites the committed results/ (the default grid's)."""
    import subprocess

    assert sorted(p.stem for p in (REPO / "configs").glob("*.yaml") if p.stem != "site") == sorted(
        ["smoke", "full", "voc", "coco", "voc-sample"]
    )
    assert (
        yaml.safe_load((REPO / "configs" / f"{preset}.yaml").read_text())["results_dir"] == results
    )
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", f"{results}/x"], cwd=REPO)
    assert ignored.returncode == 0, f"{results}/ is not git-ignored"


def test_voc_sample_preset_plans_the_voc_code_path_on_the_sample_splits(project, tmp_path):
    """configs/voc-sample.yaml after configs/voc.yaml (one command, CPU): the preset's
    networks and stage 2 on the sample's own splits, nothing on a GPU, its own results
    folder. The dry run reads no image: a tree with the sample's split files stands in."""
    root = _fake_voc(tmp_path / "voc_sample") / "VOCdevkit" / "VOC2012"
    splits = root / "ImageSets" / "Segmentation"
    (splits / "train.txt").write_text("2007_000032\n2011_000003\n2011_000006\n2011_000025\n")
    (splits / "val.txt").write_text("2007_000033\n")
    site = _override(tmp_path / "site.yaml", {"datasets": {"voc": {"root": str(root)}}})
    sample = REPO / "configs" / "voc-sample.yaml"
    result = _snakemake(
        project, "-n", "-p", "--configfile", str(VOC_PRESET), str(sample), str(site)
    )
    counts = _job_counts(result.stdout)
    assert counts["train"] == counts["segment"] == counts["cams"] == counts["table"] == 1
    assert "results-voc-sample/table.md" in result.stdout and "results/" not in result.stdout
    for rule in ("train", "cams", "segment"):
        block = result.stdout.split(f"rule {rule}")[1].split("\nrule ")[0]
        assert "device=cpu" in block and "gpu=0" in block, (rule, block)
    train = result.stdout.split("wsss train --config ")[1].split("\n")[0]
    assert '"backbone": "deit_small_patch16_224"' in train and '"pretrained": false' in train
    assert '"train_split": "train"' in train
    segment = result.stdout.split("wsss segment --config ")[1].split("\n")[0]
    assert '"backbone": "resnet101"' in segment and '"enabled": true' in segment  # the CRF
    assert '"seg_split": "val"' in segment
