"""Figures of one dataset from per-run CAM metrics: files, data, errors."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from wsss.cli import main
from wsss.report.plots import FIGURE_NAMES, load_dataset_runs, write_plots

CLASSES = ["disc", "square"]
METHODS = {"base": "Baseline", "refined": "Baseline + refiner", "other": "Other method"}


def _run_metrics(dataset, method, seed, miou, per_class, modes=None):
    """``modes``: (context FP, part recall, body recall); None: skipped, as on VOC."""
    thresholds = np.round(np.arange(0.0, 0.5, 0.05), 2)
    if modes is None:
        failure_modes = {
            "context_fp_rate": None,
            "part_recall": None,
            "body_recall": None,
            "skipped": f"dataset {dataset} has no failure-mode maps",
        }
    else:
        keys = ("context_fp_rate", "part_recall", "body_recall")
        failure_modes = dict(zip(keys, modes, strict=True))
    curve = [{"threshold": float(t), "miou": float(miou - abs(t - 0.2) / 2)} for t in thresholds]
    return {
        "meta": {"dataset": dataset, "method": method, "label": METHODS[method], "seed": seed},
        "cam": {
            "miou": miou,
            "threshold": 0.2,
            "per_class": {"iou": per_class},
            "reference": {"all_background": 0.1, "uniform_gt_classes": 0.05},
            "sweep": {"curve": curve},
            "failure_modes": failure_modes,
        },
    }


@pytest.fixture
def metric_files(tmp_path):
    """3 methods x 2 seeds of one dataset; per-class IoU = base + 0.1 * seed."""
    files = []
    for m, method in enumerate(METHODS):
        for seed in (0, 1):
            per_class = {
                "background": 0.8,
                "disc": 0.2 + 0.1 * m + 0.1 * seed,
                "square": 0.3 if method != "other" else None,  # a class never predicted
            }
            path = tmp_path / "runs" / method / f"seed{seed}" / "cam_metrics.json"
            path.parent.mkdir(parents=True)
            # ClusterCAM-like "other": no context pixels got a rate (null)
            modes = (None if method == "other" else 0.2 + 0.1 * m, 0.8, 0.3 + 0.1 * seed)
            path.write_text(
                json.dumps(_run_metrics("toy", method, seed, 0.3 + 0.05 * m, per_class, modes))
            )
            files.append(path)
    return files


def test_write_plots_writes_three_figures_and_the_per_class_csv(metric_files, tmp_path):
    order = ["other", "base", "refined"]
    csv = tmp_path / "plots" / "per_class_iou" / "toy.csv"
    paths = write_plots(metric_files, tmp_path / "figures", csv, CLASSES, method_order=order)
    assert [p.name for p in paths] == list(FIGURE_NAMES)
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 150

    table = pd.read_csv(csv)
    assert len(table) == len(METHODS) * (1 + len(CLASSES))
    assert list(dict.fromkeys(table["method"])) == order  # the given method order
    assert list(table["class"][:3]) == ["background", *CLASSES]  # label order, not alphabetical
    disc = table[(table["method"] == "refined") & (table["class"] == "disc")].iloc[0]
    assert disc["iou"] == pytest.approx(0.35)  # mean of 0.3 and 0.4 over the seeds
    assert disc["iou_std"] == pytest.approx(np.std([0.3, 0.4], ddof=1), abs=1e-6)
    assert disc["method_class"] == "refined/disc" and disc["seeds"] == 2
    square = table[(table["method"] == "other") & (table["class"] == "square")].iloc[0]
    assert np.isnan(square["iou"])  # None in the metrics stays missing, not 0


def test_failure_mode_figure_reads_the_rates_or_says_why_not(metric_files, tmp_path):
    runs = load_dataset_runs(metric_files)
    refined = [r for r in runs if r.method == "refined"]
    assert [r.failure_modes["body_recall"] for r in refined] == [0.3, 0.4]
    assert refined[0].failure_modes["context_fp_rate"] == pytest.approx(0.3)
    other = next(r for r in runs if r.method == "other")
    assert np.isnan(other.failure_modes["context_fp_rate"]) and other.failure_modes_skipped is None

    # A dataset without failure-mode maps (VOC): the figure exists and states the reason.
    voc = []
    for seed in (0, 1):
        path = tmp_path / "voc" / f"seed{seed}.json"
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(_run_metrics("voc", "base", seed, 0.3, {"background": 0.9})))
        voc.append(path)
    paths = write_plots(voc, tmp_path / "voc_figures", tmp_path / "voc.csv")
    assert paths[3].name == "failure_modes.png"
    voc_runs = load_dataset_runs(voc)
    assert all(np.isnan(list(r.failure_modes.values())).all() for r in voc_runs)
    assert voc_runs[0].failure_modes_skipped == "dataset voc has no failure-mode maps"
    with Image.open(paths[3]) as image:
        assert image.format == "PNG" and image.width > 300


def test_miou_figure_grows_with_the_number_of_methods(metric_files, tmp_path):
    one = [f for f in metric_files if f.parts[-3] == "base"]
    write_plots(one, tmp_path / "one", tmp_path / "one.csv", CLASSES)
    write_plots(metric_files, tmp_path / "all", tmp_path / "all.csv", CLASSES)
    with (
        Image.open(tmp_path / "one" / "cam_miou.png") as a,
        Image.open(tmp_path / "all" / "cam_miou.png") as b,
    ):
        assert b.height > a.height and a.width == b.width


def test_a_missing_metrics_file_is_named(metric_files, tmp_path):
    missing = tmp_path / "runs" / "nope" / "seed0" / "cam_metrics.json"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        write_plots([*metric_files, missing], tmp_path / "f", tmp_path / "c.csv", CLASSES)


def test_runs_of_two_datasets_are_refused(metric_files, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps(_run_metrics("voc", "base", 0, 0.3, {"background": 1.0})))
    with pytest.raises(ValueError, match="per dataset"):
        load_dataset_runs([*metric_files, other])


def test_class_names_that_do_not_match_the_metrics_name_the_file(metric_files, tmp_path):
    with pytest.raises(ValueError, match=r"cam_metrics\.json: per-class IoU is over"):
        write_plots(metric_files, tmp_path / "f", tmp_path / "c.csv", ["disc", "ring"])


def test_a_method_outside_the_given_order_is_refused(metric_files):
    with pytest.raises(ValueError, match="not in the method order"):
        load_dataset_runs(metric_files, method_order=["base", "refined"])


def test_cli_plots(metric_files, tmp_path):
    manifest = tmp_path / "toy.json"
    manifest.write_text(json.dumps({"class_names": CLASSES}))
    out = tmp_path / "figures" / "toy"
    args = ["plots", "--metrics", *map(str, metric_files), "--manifest", str(manifest)]
    args += ["--out-dir", str(out), "--csv", str(tmp_path / "toy.csv"), "--no-progress"]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(FIGURE_NAMES)
    # A missing input is an error message naming it, not a traceback.
    bad = [*args[:2], str(tmp_path / "missing.json"), *args[2 + len(metric_files) :]]
    assert main(bad) == 1


def _train_log(root, run: str, seed: int, rows: list[dict]) -> str:
    path = root / "runs" / "synthetic" / "train" / run / f"seed{seed}" / "train_log.tsv"
    path.parent.mkdir(parents=True)
    keys = list(rows[0])
    lines = ["\t".join(keys)] + ["\t".join(str(row[k]) for k in keys) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_train_curves_long_format_from_the_training_logs(tmp_path):
    from wsss.report.plots import write_train_curves

    logs = [
        _train_log(tmp_path, "aream", 0, [{"epoch": 1, "lr": 0.1, "loss": 2.0, "loss_aff": 0.5}]),
        _train_log(
            tmp_path,
            "mctformer_v2",
            1,
            [{"epoch": 1, "lr": 0.1, "loss": 1.5}, {"epoch": 2, "lr": 0.05, "loss": 0.75}],
        ),
    ]
    csv, figure = tmp_path / "curves.csv", tmp_path / "curves.png"
    write_train_curves(logs, csv, figure)
    assert csv.read_text().splitlines() == [
        "dataset,run,seed,epoch,loss,loss_aff,lr",
        "synthetic,aream,0,1,2,0.5,0.1",
        "synthetic,mctformer_v2,1,1,1.5,,0.1",
        "synthetic,mctformer_v2,1,2,0.75,,0.05",
    ]
    with Image.open(figure) as image:
        assert image.size[0] > 300

    outside = tmp_path / "elsewhere" / "train_log.tsv"
    outside.parent.mkdir()
    outside.write_text("epoch\tloss\n1\t1.0\n")
    with pytest.raises(ValueError, match=r"elsewhere/train_log\.tsv: expected .*/train/<run>"):
        write_train_curves([outside], csv, figure)
    no_loss = _train_log(tmp_path, "doei", 0, [{"epoch": 1, "lr": 0.1}])
    with pytest.raises(ValueError, match=r"doei/seed0/train_log\.tsv: no loss column"):
        write_train_curves([no_loss], csv, figure)
