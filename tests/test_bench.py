"""The benchmark harness: the training sections run on the real data pipeline and
report per-method ratios against the baseline (timings themselves are not asserted)."""

import sys
from pathlib import Path

import pytest
from conftest import tiny_synthetic_dataset

# The harness lives outside the package (benchmarks/bench.py), run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench import (  # noqa: E402
    aream_decomposition,
    bench_cpu_bf16,
    bench_epochs,
    bench_stacked_seeds,
    bench_training,
    markdown,
)

TRAIN = {"batch_size": 8, "crop_scale": [0.6, 1.0], "hflip": True}


def _data(tmp_path):
    config = tiny_synthetic_dataset(
        tmp_path / "synthetic", seed=0, image_size=32, num_train=16, num_val=2, num_classes=3
    )
    return {"dataset": config, "train": TRAIN}


SPECS = {
    "mctformer_v2": {"name": "mctformer_v2", "params": {}},
    "aream": {"name": "aream", "params": {"layer_index": 1, "cls_epochs": 0}},
}


def test_training_and_epoch_sections_on_the_data_pipeline(tiny_model_config, tmp_path):
    data = _data(tmp_path)
    steps = bench_training(tiny_model_config, SPECS, 3, 8, steps=1, rounds=1, data=data)
    assert steps["batch"] == 8 and steps["batch_source"].startswith("one training batch")
    assert 1.0 <= steps["classes_per_image"] <= 3.0
    assert steps["methods"]["mctformer_v2"]["ratio_to_mctformer_v2"] == 1.0
    assert steps["methods"]["aream"]["ratio_to_mctformer_v2"] > 0
    epochs = bench_epochs(data["dataset"], tiny_model_config, TRAIN, SPECS, rounds=1)
    assert epochs["images"] == 16 and epochs["steps_per_epoch"] == 2
    aream = epochs["methods"]["aream"]
    assert aream["seconds_per_epoch"] > 0
    low, high = aream["ratio_to_mctformer_v2_range"]
    assert low <= aream["ratio_to_mctformer_v2"] <= high


def test_cpu_bf16_section_gives_each_method_a_ratio_to_its_fp32_step(tiny_model_config):
    result = bench_cpu_bf16(tiny_model_config, SPECS, 3, 4, steps=1, rounds=2)
    assert set(result["methods"]) == set(SPECS) and result["rounds"] == 2
    for entry in result["methods"].values():
        low, high = entry["range"]
        assert 0 < low <= entry["ratio"] <= high and entry["fp32_images_per_s"] > 0


def test_stacked_seeds_compute_the_one_at_a_time_gradients(tiny_model_config):
    # The vmapped step must be the same computation as the models one after another:
    # the harness compares their gradients from the same weights before timing.
    result = bench_stacked_seeds(tiny_model_config, 3, 4, seeds=2, steps=1, rounds=1)
    assert result["seeds"] == 2 and result["max_rel_grad_diff"] < 1e-4
    low, high = result["range"]
    assert 0 < low <= result["ratio"] <= high


def test_markdown_lists_epoch_rows():
    method = {
        "seconds_per_epoch": 2.0,
        "ratio_to_mctformer_v2": 1.4,
        "ratio_to_mctformer_v2_range": [1.3, 1.5],
    }
    report = {
        "training": {"methods": {}, "peak_rss_mib": 1.0},
        "epochs": {"images": 500, "methods": {"aream": method}, "peak_rss_mib": 2.0},
        "cams": {
            "refiners": {},
            "reference_one_image_at_a_time": {"images_per_s": 1.0, "speedup_of_batched": 2.0},
            "peak_rss_mib": 1.0,
        },
        "evaluation": {
            "masks": 1,
            "masks_per_s": 1.0,
            "ratio_to_decode": 1.0,
            "speedup_over_reference": 1.0,
            "peak_rss_mib": 1.0,
        },
        "sweep": {
            "thresholds": 80,
            "images": 1,
            "full_sweep_s": 1.0,
            "ratio_full_sweep_to_one_threshold": 1.0,
            "speedup_over_reference_per_image": 1.0,
            "peak_rss_mib": 1.0,
            "artifact": {
                "ours_bytes_per_image": 1024,
                "npy_dict_bytes_per_image": 2048,
                "ours_voc_train_aug_gib": 1.0,
                "npy_dict_voc_train_aug_gib": 2.0,
            },
        },
    }
    text = markdown(report)
    assert (
        "| epoch aream (500 images, loss past warm-up) | 2.00 s/epoch | 1.40x baseline epoch (1.30–1.50 over rounds)"
        in text
    )
    assert "epochs 2" in text


def test_aream_decomposition_switches_off_one_part_at_a_time():
    specs = {
        **SPECS,
        "aream_bf16": {"name": "aream", "params": {"label_pass_bf16": True, "par": False}},
    }
    rows = aream_decomposition(specs)
    # defaults: flip and PAR on, the code's fp32; "aream_bf16": bf16 on, PAR already off
    assert sorted(rows) == [
        "aream[cam_flip=false]",
        "aream[par=false]",
        "aream_bf16[cam_flip=false]",
        "aream_bf16[label_pass_bf16=false]",
    ]
    assert rows["aream_bf16[label_pass_bf16=false]"]["params"] == {
        "label_pass_bf16": False,
        "par": False,
    }
    assert rows["aream[par=false]"]["params"] == {"layer_index": 1, "cls_epochs": 0, "par": False}


@pytest.mark.slow
def test_cam_memory_section_measures_each_stage_per_size(tmp_path, tiny_model_config):
    from bench import bench_cam_memory, markdown_cam_memory

    model = dict(tiny_model_config, overrides={**tiny_model_config["overrides"], "patch_size": 16})
    cam = {
        "scales": [1.0],
        "flip": False,
        "batch_size": 2,
        "class_layers": 2,
        "class_reduce": "sum",
        "fusion": "fused",
        "affinity_layers": "all",
        "affinity_reduce": "sum",
    }
    section = bench_cam_memory(model, cam, (2, 5), str(tmp_path))
    assert sorted(section["sizes"]) == ["2", "5"]
    for row in section["sizes"].values():
        assert row["cams"]["peak_rss_mib"] > 0 and row["evaluate"]["peak_rss_mib"] > 0
        assert row["split_cam_mib"] > 0 and row["artifact_mib"] > 0
    assert set(section["peak_ratio_large_to_small"]) == {"cams", "evaluate"}
    text = markdown_cam_memory(section)
    assert "| 5 |" in text and "Largest over smallest split" in text


def test_cam_section_runs(tiny_model_config):
    """The CAM section (it once imported a helper that had moved, and raised ImportError)."""
    from bench import bench_cams

    cam = {"scales": [1.0, 0.5], "flip": True, "batch_size": 2}
    result = bench_cams(tiny_model_config, cam, {"none": {"name": "none"}}, 3, 2, 32, 32)
    assert result["images"] == 2 and result["plain_forward_images_per_s"] > 0
    assert result["refiners"]["none"]["ratio_to_unrefined"] == 1.0
    assert result["reference_one_image_at_a_time"]["images_per_s"] > 0
