"""The results table: CAM columns, the decoder column and the stage-2 columns."""

from __future__ import annotations

import csv
import json
import math

import pytest

from wsss.report.table import collect_runs, write_report


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _meta(method, seed, label=None):
    return {"dataset": "synthetic", "method": method, "seed": seed, "label": label or method}


def _cam(tmp_path, method, seed, miou):
    return _write(
        tmp_path / method / f"seed{seed}" / "cam_metrics.json",
        {
            "meta": _meta(method, seed),
            "cam": {
                "miou": miou,
                "threshold": 0.2,
                "precision": 0.5,
                "recall": 0.4,
                "reference": {"all_background": 0.124, "uniform_gt_classes": 0.06},
                "sweep": {
                    "curve": [{"threshold": 0.1, "miou": miou}, {"threshold": 0.2, "miou": miou}]
                },
            },
        },
    )


def _stage(tmp_path, name, key, method, seed, miou, split):
    return _write(
        tmp_path / method / f"seed{seed}" / f"{name}.json",
        {"meta": _meta(method, seed), key: {"miou": miou, "split": split}},
    )


@pytest.fixture
def runs(tmp_path):
    methods = {"a": (0.30, 0.32), "clustercam": (0.20, 0.24)}
    files = {"cam": [], "decoder": [], "pseudo": [], "seg": []}
    for method, (cam0, cam1) in methods.items():
        for seed, cam in ((0, cam0), (1, cam1)):
            files["cam"].append(_cam(tmp_path, method, seed, cam))
            files["pseudo"].append(
                _stage(
                    tmp_path, "pseudo_label_metrics", "pseudo_labels", method, seed, cam, "train"
                )
            )
            files["seg"].append(
                _stage(tmp_path, "seg_metrics", "seg", method, seed, cam + 0.05 * (seed + 1), "val")
            )
    for seed in (0, 1):
        files["decoder"].append(
            _stage(
                tmp_path, "decoder_metrics", "decoder", "clustercam", seed, 0.1 + seed * 0.02, "val"
            )
        )
    return files


def test_stage2_columns_in_every_output(runs, tmp_path):
    out = tmp_path / "results"
    summary = write_report(
        runs["cam"],
        out,
        method_order=["clustercam", "a"],
        decoder_files=runs["decoder"],
        pseudo_label_files=runs["pseudo"],
        seg_files=runs["seg"],
    )
    assert list(summary["method"]) == ["clustercam", "a"]
    a = summary.set_index("method").loc["a"]
    assert a["pseudo_label_miou_mean"] == pytest.approx(0.31)
    assert a["seg_miou_mean"] == pytest.approx((0.35 + 0.42) / 2)
    assert a["seg_miou_std"] == pytest.approx(math.sqrt(2) * 0.035, rel=1e-6)
    assert math.isnan(a["decoder_miou_mean"])

    table = (out / "table.md").read_text()
    header = next(
        line for line in table.splitlines() if line.startswith("| dataset | method | CAM")
    )
    assert "pseudo-label mIoU (train)" in header and "seg mIoU (val)" in header
    assert "decoder mIoU" in header  # ClusterCAM keeps its decoder column
    row = next(line for line in table.splitlines() if line.startswith("| synthetic | a |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[6] == "" and cells[7] == "31.0 ± 1.4" and cells[8] == "38.5 ± 4.9"
    cluster = next(
        line for line in table.splitlines() if line.startswith("| synthetic | clustercam |")
    )
    assert [c.strip() for c in cluster.split("|")[1:-1]][6] == "11.0 ± 1.4"
    per_run = next(line for line in table.splitlines() if line.startswith("| synthetic | a | 1 |"))
    assert per_run.split("|")[-3].strip() == "32.0" and per_run.split("|")[-2].strip() == "42.0"

    with open(out / "table.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(rows["a"]["seg_miou_mean"]) == pytest.approx(0.385)
    assert float(rows["clustercam"]["decoder_miou_mean"]) == pytest.approx(0.11)
    with open(out / "runs.csv") as f:
        per_run = list(csv.DictReader(f))
    assert {"pseudo_label_miou", "seg_miou", "decoder_miou"} <= set(per_run[0])
    assert len(per_run) == 4 and all(r["seg_miou"] for r in per_run)

    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    assert metrics["a"]["pseudo_label_miou"] == pytest.approx(0.31)
    assert metrics["a"]["seg_miou"] == pytest.approx(0.385)
    assert metrics["a"]["seg_miou_std"] == pytest.approx(0.049497, abs=1e-6)
    assert "decoder_miou" not in metrics["a"]
    assert metrics["clustercam"]["decoder_miou"] == pytest.approx(0.11)
    assert metrics["clustercam"]["seg_miou"] == pytest.approx((0.25 + 0.34) / 2)


def test_stage2_columns_are_empty_without_their_files(runs, tmp_path):
    out = tmp_path / "results"
    write_report(runs["cam"], out)
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| synthetic | a |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[7] == "" and cells[8] == ""
    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    assert "seg_miou" not in metrics["a"] and "pseudo_label_miou" not in metrics["a"]


def test_the_wrong_kind_of_file_is_named(runs):
    with pytest.raises(ValueError, match="expected a 'seg' entry"):
        collect_runs(runs["cam"], seg_files=runs["pseudo"])


def test_paper_columns_only_for_real_benchmarks(runs, tmp_path):
    plain = tmp_path / "plain"
    summary = write_report(runs["cam"], plain, seg_files=runs["seg"])
    assert summary["paper_seg_miou_val"].isna().all()
    assert "paper" not in (plain / "table.md").read_text()

    # The same runs read as a VOC table: ClusterCAM's reported decoder mIoU (methods.md 4.8)
    # appears beside ours; method "a" has no paper number.
    voc = tmp_path / "voc"
    summary = write_report(
        runs["cam"], voc, seg_files=runs["seg"], dataset_kinds={"synthetic": "voc"}
    ).set_index("method")
    assert summary.loc["clustercam", "paper_seg_miou_val"] == pytest.approx(0.703)
    assert math.isnan(summary.loc["clustercam", "paper_cam_miou"])
    assert math.isnan(summary.loc["a", "paper_seg_miou_val"])
    table = (voc / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| dataset | method |"))
    assert header.endswith("| paper CAM | paper seg (val) |")
    row = next(line for line in table.splitlines() if line.startswith("| synthetic | clustercam |"))
    assert [c.strip() for c in row.split("|")[1:-1]][-2:] == ["", "70.3"]
    with open(voc / "table.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(rows["clustercam"]["paper_seg_miou_val"]) == pytest.approx(0.703)
