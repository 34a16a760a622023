"""The results table, DVC metrics and plot data, from the per-run metrics files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.io import atomic_path, read_json, write_json, write_text

# Columns of the per-run table: (name in the table, key in a run's cam metrics).
CAM_COLUMNS = {
    "cam_miou": "miou",
    "threshold": "threshold",
    "precision": "precision",
    "recall": "recall",
}


def collect_runs(
    metric_files: list[str | Path], decoder_files: list[str | Path] = ()
) -> pd.DataFrame:
    decoder = {}
    for path in decoder_files:
        run = read_json(path)
        meta = run["meta"]
        decoder[(meta["dataset"], meta["method"], int(meta["seed"]))] = run["decoder"]["miou"]
    rows = []
    for path in metric_files:
        run = read_json(path)
        row: dict[str, Any] = {
            "dataset": run["meta"]["dataset"],
            "method": run["meta"]["method"],
            "label": run["meta"]["label"],
            "seed": int(run["meta"]["seed"]),
        }
        row.update({column: run["cam"][key] for column, key in CAM_COLUMNS.items()})
        row["all_background_miou"] = run["cam"]["reference"]["all_background"]
        row["uniform_gt_miou"] = run["cam"]["reference"]["uniform_gt_classes"]
        row["decoder_miou"] = decoder.get(
            (row["dataset"], row["method"], row["seed"]), float("nan")
        )
        rows.append(row)
    if not rows:
        raise ValueError("no run metrics given to the table")
    return (
        pd.DataFrame(rows)
        .sort_values(["dataset", "method", "seed"], kind="stable")
        .reset_index(drop=True)
    )


def summarize_runs(runs: pd.DataFrame, method_order: list[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation over seeds for each (dataset, method)."""
    values = [*CAM_COLUMNS, "decoder_miou"]
    grouped = runs.groupby(["dataset", "method", "label"], sort=False)[values]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    summary["seeds"] = grouped.size()
    summary = summary.reset_index()
    if method_order:
        summary["_order"] = summary["method"].map({m: i for i, m in enumerate(method_order)})
        summary = summary.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order")
    return summary.reset_index(drop=True)


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_table(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    lines = [
        "# Results",
        "",
        "CAM mIoU (%) on each dataset's evaluation split at the best background threshold, "
        "with mean foreground precision and recall (%) at that threshold. "
        "Mean ± std over seeds (sample std).",
        "",
        "Decoder mIoU: a single-stage method's own segmentation decoder on the seg split "
        "(multi-scale, no CRF); empty for two-stage methods.",
        "",
        "| dataset | method | CAM mIoU | best threshold | precision | recall | decoder mIoU | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.itertuples():
        lines.append(
            f"| {row.dataset} | {row.label} | {_pm(row.cam_miou_mean, row.cam_miou_std)} "
            f"| {_pm(row.threshold_mean, row.threshold_std, 1, 2)} "
            f"| {_pm(row.precision_mean, row.precision_std)} | {_pm(row.recall_mean, row.recall_std)} "
            f"| {'' if math.isnan(row.decoder_miou_mean) else _pm(row.decoder_miou_mean, row.decoder_miou_std)} "
            f"| {row.seeds} |"
        )
    lines += ["", "Reference predictions (same masks, no model):", ""]
    lines += ["| dataset | all background | uniform CAM over GT classes |", "|---|---|---|"]
    for dataset, group in runs.groupby("dataset", sort=True):
        lines.append(
            f"| {dataset} | {group['all_background_miou'].iloc[0] * 100:.1f} "
            f"| {group['uniform_gt_miou'].iloc[0] * 100:.1f} |"
        )
    lines += [
        "",
        "## Per run",
        "",
        "| dataset | method | seed | CAM mIoU | threshold | precision | recall |",
    ]
    lines += ["|---|---|---|---|---|---|---|"]
    for row in runs.itertuples():
        lines.append(
            f"| {row.dataset} | {row.label} | {row.seed} | {row.cam_miou * 100:.1f} | {row.threshold:.2f} "
            f"| {row.precision * 100:.1f} | {row.recall * 100:.1f} |"
        )
    return "\n".join(lines) + "\n"


def metrics_tree(runs: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    """Nested {dataset: {method: {...}}} for ``dvc metrics show/diff``."""
    tree: dict[str, Any] = {}
    for row in summary.itertuples():
        entry = {
            "cam_miou": round(float(row.cam_miou_mean), 6),
            "cam_miou_std": None
            if math.isnan(row.cam_miou_std)
            else round(float(row.cam_miou_std), 6),
            "threshold": round(float(row.threshold_mean), 4),
            "precision": round(float(row.precision_mean), 6),
            "recall": round(float(row.recall_mean), 6),
            "seeds": int(row.seeds),
        }
        if not math.isnan(row.decoder_miou_mean):
            entry["decoder_miou"] = round(float(row.decoder_miou_mean), 6)
        tree.setdefault(row.dataset, {})[row.method] = entry
    for dataset, group in runs.groupby("dataset"):
        tree[dataset]["reference"] = {
            "all_background_miou": round(float(group["all_background_miou"].iloc[0]), 6),
            "uniform_gt_miou": round(float(group["uniform_gt_miou"].iloc[0]), 6),
        }
    return tree


def threshold_curves(metric_files: list[str | Path]) -> pd.DataFrame:
    """One wide table: threshold, then one mIoU column per run (DVC plots can't group by a column)."""
    columns = {}
    for path in metric_files:
        run = read_json(path)
        meta = run["meta"]
        curve = run["cam"]["sweep"]["curve"]
        columns[f"{meta['dataset']}/{meta['method']}/seed{meta['seed']}"] = pd.Series(
            [p["miou"] for p in curve], index=[round(p["threshold"], 4) for p in curve]
        )
    frame = pd.DataFrame(columns)
    frame.index.name = "threshold"
    return frame.reset_index()


def write_report(
    metric_files: list[str | Path],
    out_dir: str | Path,
    method_order: list[str] | None = None,
    decoder_files: list[str | Path] = (),
) -> pd.DataFrame:
    out_dir = Path(out_dir)
    runs = collect_runs(metric_files, decoder_files)
    summary = summarize_runs(runs, method_order)
    write_text(out_dir / "table.md", markdown_table(runs, summary))
    with atomic_path(out_dir / "table.csv") as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(out_dir / "runs.csv") as tmp:
        runs.to_csv(tmp, index=False, float_format="%.6f")
    write_json(out_dir / "metrics.json", metrics_tree(runs, summary))
    plots = out_dir / "plots"
    with atomic_path(plots / "cam_miou.csv") as tmp:
        runs[["dataset", "method", "seed", "cam_miou"]].assign(
            run=lambda d: d["dataset"] + "/" + d["method"]
        ).to_csv(tmp, index=False, float_format="%.6f")
    with atomic_path(plots / "threshold_curves.csv") as tmp:
        threshold_curves(metric_files).to_csv(tmp, index=False, float_format="%.6f")
    return summary
