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


def _meta(method, seed):
    return {"dataset": "synthetic", "method": method, "seed": seed}


def _per_image(miou, images=4):
    """One label, images of IoU miou - 0.1 and miou + 0.1 (unions of 1000): mIoU = miou."""
    low, high = round(miou * 1000) - 100, round(miou * 1000) + 100
    return {
        "threshold": 0.2,
        "num_labels": 1,
        "images": {
            f"img{i}": {"labels": [0], "intersection": [low if i % 2 else high], "union": [1000]}
            for i in range(images)
        },
    }


def _cam(tmp_path, method, seed, miou, threshold=0.2, at_edge=False, modes=None):
    """``modes``: the run's failure-mode rates (context FP, part, body recall); None: none."""
    context_fp, part, body = modes or (None, None, None)
    return _write(
        tmp_path / method / f"seed{seed}" / "cam_metrics.json",
        {
            "meta": _meta(method, seed),
            "cam": {
                "miou": miou,
                "threshold": threshold,
                "threshold_at_edge": at_edge,
                "per_image": _per_image(miou),
                "precision": 0.5,
                "recall": 0.4,
                "reference": {"all_background": 0.124, "uniform_gt_classes": 0.06},
                "failure_modes": {
                    "context_fp_rate": context_fp,
                    "part_recall": part,
                    "body_recall": body,
                },
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


RUN_BASELINES = {"a": "clustercam"}  # what the table rule passes from methods.<v>.baseline


@pytest.fixture
def runs(tmp_path):
    methods = {"a": (0.30, 0.32), "clustercam": (0.20, 0.24)}
    files = {"cam": [], "decoder": [], "pseudo": [], "seg": []}  # baselines: RUN_BASELINES
    for method, (cam0, cam1) in methods.items():
        for seed, cam in ((0, cam0), (1, cam1)):
            at_edge = method == "clustercam" and seed == 1
            modes = (0.1 + 0.1 * seed, 0.9, 0.3 + 0.2 * seed) if method == "a" else None
            files["cam"].append(_cam(tmp_path, method, seed, cam, at_edge=at_edge, modes=modes))
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
        baselines=RUN_BASELINES,
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
    assert cells[11] == "" and cells[12] == "31.0 ± 1.4" and cells[13] == "38.5 ± 4.9"
    cluster = next(
        line for line in table.splitlines() if line.startswith("| synthetic | clustercam |")
    )
    assert [c.strip() for c in cluster.split("|")[1:-1]][11] == "11.0 ± 1.4"
    per_run = next(line for line in table.splitlines() if line.startswith("| synthetic | a | 1 |"))
    assert _cell(table, "| synthetic | a | 1 |", "pseudo-label mIoU (train)") == "32.0"
    assert _cell(table, "| synthetic | a | 1 |", "seg mIoU (val)") == "42.0"
    for header in ("affinity bg→object", "affinity rest-of-object share", "class-token lift"):
        assert _cell(table, "| synthetic | a | 1 |", header) == ""  # no diagnostics given

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


def _attention(tmp_path, run, seed, ratio, skipped=None, rest=0.3, lift=2.0):
    data = {"meta": {"dataset": "synthetic", "run": run, "seed": seed}, "skipped": skipped}
    if not skipped:
        data["affinity"] = {
            "background_to_object_ratio": ratio,
            "own_object_lift": 3.0,
            "rest_of_object_share": rest,
        }
        data["class_attention"] = {"blocks": [1, 2, 3], "class_token_lift": lift}
    return _write(tmp_path / "train" / run / f"seed{seed}" / "attention_diagnostics.json", data)


def _cell(table: str, row_start: str, header: str) -> str:
    """The cell under ``header`` in the first markdown row starting with ``row_start``,
    read against the header line of the table that row belongs to."""
    lines = table.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(row_start))
    head = next(lines[i] for i in range(index, -1, -1) if lines[i].startswith("| dataset |"))
    column = [c.strip() for c in head.split("|")[1:-1]].index(header)
    return [c.strip() for c in lines[index].split("|")[1:-1]][column]


def test_attention_column_per_trained_run(runs, tmp_path):
    """Variants of one trained model share its diagnostics; a skipped run's cell is empty."""
    files = [
        _attention(tmp_path, "shared", 0, 4.0),
        _attention(tmp_path, "shared", 1, 5.0),
        _attention(tmp_path, "cc", 0, None, skipped="no instance masks"),
        _attention(tmp_path, "cc", 1, None, skipped="no instance masks"),
    ]
    out = tmp_path / "results"
    summary = write_report(
        runs["cam"],
        out,
        baselines=RUN_BASELINES,
        attention_files=files,
        training_runs={"a": "shared", "clustercam": "cc"},
    ).set_index("method")
    assert summary.loc["a", "affinity_bg_to_object_mean"] == pytest.approx(4.5)
    assert math.isnan(summary.loc["clustercam", "affinity_bg_to_object_mean"])
    table = (out / "table.md").read_text()
    assert "affinity bg→object" in table
    header = next(line for line in table.splitlines() if line.startswith("| dataset | method |"))
    column = [c.strip() for c in header.split("|")[1:-1]].index("affinity bg→object")
    row = next(line for line in table.splitlines() if line.startswith("| synthetic | a |"))
    assert [c.strip() for c in row.split("|")[1:-1]][column] == "4.50 ± 0.71"
    assert _cell(table, "| synthetic | a | 1 |", "affinity bg→object") == "5.00"
    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    assert metrics["a"]["affinity_bg_to_object"] == pytest.approx(4.5)
    assert "affinity_bg_to_object" not in metrics["clustercam"]
    with pytest.raises(ValueError, match="no trained run given for method 'clustercam'"):
        collect_runs(runs["cam"], attention_files=files, training_runs={"a": "shared"})


def test_rest_of_object_share_and_class_token_lift_columns(runs, tmp_path):
    """The two diagnostics self-attention cannot fool are columns of every output, read
    from the trained run's file (affinity.rest_of_object_share, class_attention
    .class_token_lift); a file without them (an older stage) is an error naming it."""
    files = [
        _attention(tmp_path, "shared", 0, 4.0, rest=0.2, lift=4.0),
        _attention(tmp_path, "shared", 1, 5.0, rest=0.4, lift=3.0),
        _attention(tmp_path, "cc", 0, None, skipped="no instance masks"),
        _attention(tmp_path, "cc", 1, None, skipped="no instance masks"),
    ]
    out = tmp_path / "results"
    training = {"a": "shared", "clustercam": "cc"}
    summary = write_report(
        runs["cam"], out, baselines=RUN_BASELINES, attention_files=files, training_runs=training
    ).set_index("method")
    assert summary.loc["a", "affinity_rest_of_object_mean"] == pytest.approx(0.3)
    assert summary.loc["a", "class_token_lift_mean"] == pytest.approx(3.5)
    assert math.isnan(summary.loc["clustercam", "class_token_lift_mean"])
    table = (out / "table.md").read_text()
    assert _cell(table, "| synthetic | a |", "affinity rest-of-object share") == "0.30 ± 0.14"
    assert _cell(table, "| synthetic | a |", "class-token lift") == "3.50 ± 0.71"
    assert _cell(table, "| synthetic | clustercam |", "class-token lift") == ""
    assert _cell(table, "| synthetic | a | 0 |", "affinity rest-of-object share") == "0.20"
    assert _cell(table, "| synthetic | a | 1 |", "class-token lift") == "3.00"
    assert "Affinity rest-of-object share:" in table and "Class-token lift:" in table
    with open(out / "runs.csv") as f:
        per_run = {(r["method"], r["seed"]): r for r in csv.DictReader(f)}
    assert float(per_run[("a", "0")]["affinity_rest_of_object"]) == pytest.approx(0.2)
    assert float(per_run[("a", "1")]["class_token_lift"]) == pytest.approx(3.0)
    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    assert metrics["a"]["affinity_rest_of_object"] == pytest.approx(0.3)
    assert metrics["a"]["class_token_lift"] == pytest.approx(3.5)
    assert "class_token_lift" not in metrics["clustercam"]

    # A diagnostics file written before these keys existed: no value is made up.
    old = json.loads(files[0].read_text())
    del old["affinity"]["rest_of_object_share"], old["class_attention"]
    _write(files[0], old)
    with pytest.raises(
        ValueError,
        match=r"seed0/attention_diagnostics.json: no affinity"
        r"\.rest_of_object_share; the file was written by an older stage",
    ):
        collect_runs(runs["cam"], attention_files=files, training_runs=training)


def test_stage2_columns_are_empty_without_their_files(runs, tmp_path):
    out = tmp_path / "results"
    write_report(runs["cam"], out)
    table = (out / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| synthetic | a |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[12] == "" and cells[13] == ""
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


def _row(table: str, start: str) -> list[str]:
    line = next(line for line in table.splitlines() if line.startswith(start))
    return [c.strip() for c in line.split("|")[1:-1]]


def test_intervals_paired_difference_and_edge_marks(runs, tmp_path):
    out = tmp_path / "results"
    summary = write_report(
        runs["cam"], out, method_order=["clustercam", "a"], baselines=RUN_BASELINES
    ).set_index("method")
    a = summary.loc["a"]
    # Every image of "a" has IoU 0.10 (seed 0) or 0.08 (seed 1) above the same image of its
    # baseline: no resample of images moves a seed's difference, so the interval is the
    # t-interval over the two seeds' differences: 0.09 ± t(0.975, 1 df) * 0.01.
    half = 12.7062047 * 0.01
    assert (a["diff_vs_baseline"], a["diff_ci_low"], a["diff_ci_high"]) == pytest.approx(
        (0.09, 0.09 - half, 0.09 + half)
    )
    assert a["vs_baseline"] == "no difference" and a["baseline"] == "clustercam"
    # The interval of "a" itself: seed variance 0.0002 / 2, plus the image noise both seeds
    # share: each image is 0.1 above or below its seed's mIoU, so a 4-image resample with h
    # high images moves both seeds by 0.1 * (2h/4 - 1), variance 0.01 * 4 * 1/16 = 0.0025,
    # times 4/3 for the plug-in bias: C = 0.00333. Each part with its own t quantile,
    # t(1 df) = 12.706 for the seeds and t(3 df) = 3.182 for the 4 images: half-width
    # sqrt(12.706^2 * 0.0001 + 3.182^2 * C) = 0.223.
    assert a["cam_miou_ci_low"] == pytest.approx(0.31 - 0.223, abs=0.015)
    assert a["cam_miou_ci_high"] == pytest.approx(0.31 + 0.223, abs=0.015)
    assert summary.loc["clustercam", "vs_baseline"] == "baseline"
    assert math.isnan(summary.loc["clustercam", "diff_vs_baseline"])
    assert list(summary["threshold_at_edge_runs"]) == [1, 0]

    table = (out / "table.md").read_text()
    row = _row(table, "| synthetic | a |")
    assert row[3] == f"[{a['cam_miou_ci_low'] * 100:.1f}, {a['cam_miou_ci_high'] * 100:.1f}]"
    assert row[4] == "+9.0 [−3.7, +21.7]"
    assert row[5] == "0.20 ± 0.00"
    cluster = _row(table, "| synthetic | clustercam |")
    assert cluster[4] == "baseline" and cluster[5] == "0.20 ± 0.00 (edge 1/2)"
    assert _row(table, "| synthetic | clustercam | 1 |")[4] == "0.20 (edge)"
    assert _row(table, "| synthetic | clustercam | 0 |")[4] == "0.20"
    assert "clustercam for every row that has one" in table

    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    vs = metrics["a"]["vs_baseline"]
    assert vs["verdict"] == "no difference"
    # Scalar leaves only, which `dvc metrics diff` shows (it drops lists).
    assert (vs["diff"], vs["diff_ci_low"], vs["diff_ci_high"]) == pytest.approx(
        (0.09, 0.09 - half, 0.09 + half), abs=1e-6
    )
    assert metrics["a"]["cam_miou_ci_low"] == pytest.approx(a["cam_miou_ci_low"], abs=1e-6)
    assert metrics["a"]["seeds"] == 2
    for entry in metrics.values():
        for value in [*entry.values(), *entry.get("vs_baseline", {}).values()]:
            assert not isinstance(value, list)
    assert metrics["clustercam"]["threshold_at_edge_runs"] == 1
    with open(out / "table.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert float(rows["a"]["diff_ci_low"]) == pytest.approx(0.09 - half, abs=1e-6)


def test_verdict_with_three_consistent_seeds_and_its_t_test(tmp_path):
    files = []
    for seed, gain in enumerate((0.10, 0.09, 0.11)):
        files.append(_cam(tmp_path, "base", seed, 0.30))
        files.append(_cam(tmp_path, "row", seed, 0.30 + gain))
    summary = write_report(files, tmp_path / "out", baselines={"row": "base"})
    row = summary.set_index("method").loc["row"]
    # Differences 0.10, 0.09, 0.11 on every image: mean 0.10, se 0.01 / sqrt(3), t(2 df).
    half = 4.3026527 * 0.01 / math.sqrt(3)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx((0.10 - half, 0.10 + half))
    assert row["vs_baseline"] == "better"
    # The one-sided t-test over the per-seed differences agrees: t = 17.3, 2 df.
    assert row["seed_t_test_p"] < 0.05
    # Detectable at 80% power: noncentral-t solution, between the normal approximation
    # (t quantiles 4.30 + 0.82) and a wider bound.
    assert 5.1 * 0.01 / math.sqrt(3) < row["detectable_diff"] < 8 * 0.01 / math.sqrt(3)
    table = (tmp_path / "out" / "table.md").read_text()
    header = _row(table, "| dataset | method | CAM")
    cells = dict(zip(header, _row(table, "| synthetic | row |"), strict=True))
    assert cells["seeds"] == "3"
    assert cells["detectable Δ"] == f"{row['detectable_diff'] * 100:.1f}"
    assert "training seeds and the evaluation images" in table  # the legend says what it covers


def test_the_interval_settings_reach_the_bootstrap(tmp_path, monkeypatch):
    # params.yaml intervals: {n_resamples, seed} -> table_config -> write_report.
    from wsss.report import table

    seen = {}
    real = table.add_intervals

    def spy(summary, counts, **settings):
        seen.update(settings)
        return real(summary, counts, **settings)

    monkeypatch.setattr(table, "add_intervals", spy)
    files = [_cam(tmp_path, "base", seed, 0.30) for seed in (0, 1)]
    write_report(files, tmp_path / "out", intervals={"n_resamples": 200, "seed": 7})
    assert seen == {"n_resamples": 200, "seed": 7}


def test_no_difference_and_missing_baseline(tmp_path):
    files = []
    for seed in (0, 1):
        files.append(_cam(tmp_path, "base", seed, 0.30))
        files.append(_cam(tmp_path, "same", seed, 0.30))
        files.append(_cam(tmp_path, "orphan", seed, 0.25))
    baselines = {"same": "base", "orphan": "not_run"}
    summary = write_report(files, tmp_path / "out", baselines=baselines).set_index("method")
    assert summary.loc["same", "vs_baseline"] == "no difference"
    assert summary.loc["orphan", "vs_baseline"] == "baseline not in grid"
    table = (tmp_path / "out" / "table.md").read_text()
    assert _row(table, "| synthetic | same |")[4] == "+0.0 [+0.0, +0.0]"  # not marked
    assert _row(table, "| synthetic | orphan |")[4] == "baseline not in grid"


def test_failure_mode_columns(runs, tmp_path):
    out = tmp_path / "results"
    summary = write_report(runs["cam"], out).set_index("method")
    a = summary.loc["a"]  # seeds 0 and 1: context FP 0.1 and 0.2, part 0.9, body 0.3 and 0.5
    assert a["context_fp_mean"] == pytest.approx(0.15)
    assert a["context_fp_std"] == pytest.approx(math.sqrt(2) * 0.05)
    assert (a["part_recall_mean"], a["body_recall_mean"]) == pytest.approx((0.9, 0.4))
    assert math.isnan(summary.loc["clustercam", "part_recall_mean"])  # recorded as null

    table = (out / "table.md").read_text()
    header = _row(table, "| dataset | method | CAM")
    assert header[8:11] == ["context FP", "part recall", "body recall"]
    assert _row(table, "| synthetic | a |")[8:11] == ["15.0 ± 7.1", "90.0 ± 0.0", "40.0 ± 14.1"]
    assert _row(table, "| synthetic | clustercam |")[8:11] == ["", "", ""]
    assert _row(table, "| synthetic | a | 1 |")[7:10] == ["20.0", "90.0", "50.0"]
    assert _row(table, "| synthetic | clustercam | 1 |")[7:10] == ["", "", ""]

    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]
    assert metrics["a"]["body_recall"] == pytest.approx(0.4)
    assert metrics["a"]["context_fp_std"] == pytest.approx(0.070711, abs=1e-6)
    assert "context_fp" not in metrics["clustercam"]
    with open(out / "runs.csv") as f:
        per_run = {(r["method"], r["seed"]): r for r in csv.DictReader(f)}
    assert float(per_run[("a", "0")]["context_fp"]) == pytest.approx(0.1)
    assert per_run[("clustercam", "0")]["context_fp"] == ""


def test_inconsistent_or_old_metrics_are_refused(tmp_path):
    old = _cam(tmp_path, "old", 0, 0.3)
    run = json.loads(old.read_text())
    del run["cam"]["per_image"]
    old.write_text(json.dumps(run))
    with pytest.raises(ValueError, match=r"old/seed0/cam_metrics.json: no cam.per_image"):
        write_report([old], tmp_path / "out")
    del run["cam"]["failure_modes"]
    old.write_text(json.dumps(run))
    with pytest.raises(ValueError, match=r"old/seed0/cam_metrics.json: no cam.failure_modes"):
        write_report([old], tmp_path / "out")

    wrong = _cam(tmp_path, "wrong", 0, 0.3)
    run = json.loads(wrong.read_text())
    run["cam"]["miou"] = 0.35
    wrong.write_text(json.dumps(run))
    with pytest.raises(ValueError, match="inconsistent"):
        write_report([wrong], tmp_path / "out")

    files = [
        _cam(tmp_path, "b", 0, 0.3),
        _cam(tmp_path, "b", 1, 0.3),
        _cam(tmp_path, "c", 0, 0.3),
    ]
    with pytest.raises(ValueError, match="needs the same seeds"):
        write_report(files, tmp_path / "out", baselines={"c": "b"})
    with pytest.raises(ValueError, match="names itself"):
        write_report([_cam(tmp_path, "d", 0, 0.3)], tmp_path / "out", baselines={"d": "d"})


def test_a_new_column_is_one_spec(runs, tmp_path, monkeypatch):
    """One Column line puts a run metric into runs.csv, table.csv, table.md (both tables)
    and metrics.json: here ``cam.fp_rate``, which every cam_metrics.json carries."""
    from wsss.report import table

    for i, path in enumerate(runs["cam"]):
        run = json.loads(path.read_text())
        run["cam"]["fp_rate"] = 0.1 + 0.1 * (i % 2)
        path.write_text(json.dumps(run))
    spec = table.Column("fp_rate", "FP rate", "cam", ("cam", "fp_rate"))
    monkeypatch.setattr(table, "COLUMNS", (*table.COLUMNS, spec))
    out = tmp_path / "results"
    write_report(runs["cam"], out, baselines=RUN_BASELINES)

    with open(out / "runs.csv") as f:
        assert [float(r["fp_rate"]) for r in csv.DictReader(f)] == pytest.approx([0.1, 0.2] * 2)
    with open(out / "table.csv") as f:
        assert all(float(r["fp_rate_mean"]) == pytest.approx(0.15) for r in csv.DictReader(f))
    text = (out / "table.md").read_text()
    header = _row(text, "| dataset | method | CAM")
    assert header[-1] == "FP rate" and _row(text, "| synthetic | a |")[-1] == "15.0 ± 7.1"
    assert _row(text, "| dataset | method | seed |")[-1] == "FP rate"
    assert _row(text, "| synthetic | a | 1 |")[-1] == "20.0"
    metrics = json.loads((out / "metrics.json").read_text())["synthetic"]["a"]
    assert metrics["fp_rate"] == pytest.approx(0.15)
    assert metrics["fp_rate_std"] == pytest.approx(0.070711, abs=1e-6)


def test_every_column_spec_is_well_formed():
    from wsss.report.table import _RUN_CELLS, _SUMMARY_CELLS, COLUMNS, OUTPUTS, SOURCES

    keys = [c.key for c in COLUMNS]
    assert len(keys) == len(set(keys))
    for column in COLUMNS:
        assert column.source in SOURCES and column.shows <= set(OUTPUTS), column
        if "table.md" in column.shows:
            assert column.fmt in _SUMMARY_CELLS and column.header, column
        if "runs.md" in column.shows:
            assert column.fmt in _RUN_CELLS, column
        assert column.aggregate in ("mean", "sum", "first"), column
