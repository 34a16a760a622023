"""Figures of one dataset's CAM results, from the per-run ``cam_metrics.json`` files.

Four PNGs per dataset (matplotlib, Agg backend, so no display is needed):

- ``cam_miou.png``: CAM mIoU per method, the mean over seeds as a bar and each
  seed as a point, with the two reference predictions as vertical lines;
- ``threshold_curves.png``: mIoU against the background threshold, one line
  per method (mean over seeds, the seeds' range shaded, the best point marked);
- ``per_class_iou.png``: a methods x classes heat map of the IoU at each run's
  chosen threshold (mean over seeds), with the mIoU as a last column;
- ``failure_modes.png``: per method, part recall, body recall and the context
  false-positive rate at each run's chosen threshold (wsss.evaluation.failure_modes;
  bars: mean over seeds, points: seeds); on a dataset without failure-mode maps
  the figure says so instead.

plus ``per_class_iou.csv`` (long format, one row per method and class) for
``dvc plots``, which cannot group a wide table by a column value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsss.io import atomic_path, read_json

FIGURE_NAMES = ("cam_miou.png", "threshold_curves.png", "per_class_iou.png", "failure_modes.png")

# The failure-mode rates in the figure: (key in cam.failure_modes, legend text).
FAILURE_BARS = (
    ("part_recall", "part recall"),
    ("body_recall", "body recall"),
    ("context_fp_rate", "context false-positive rate"),
)


@dataclass
class RunMetrics:
    """The numbers of one (dataset, method, seed) run that the figures use."""

    path: Path
    dataset: str
    method: str
    label: str
    seed: int
    miou: float
    threshold: float
    curve_thresholds: np.ndarray
    curve_miou: np.ndarray
    per_class_iou: dict[str, float]
    reference: dict[str, float]
    failure_modes: dict[str, float]  # FAILURE_BARS keys; NaN where recorded as null
    failure_modes_skipped: str | None  # why the dataset has no failure-mode metrics


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def load_run(path: str | Path, labels: dict[str, str] | None = None) -> RunMetrics:
    """Read the fields the figures need from one ``cam_metrics.json``, naming the file on error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run metrics {path} do not exist; run the evaluate stage first")
    data = read_json(path)
    try:
        meta, cam = data["meta"], data["cam"]
        curve = cam["sweep"]["curve"]
        return RunMetrics(
            path=path,
            dataset=str(meta["dataset"]),
            method=str(meta["method"]),
            label=str((labels or {}).get(meta["method"], meta["method"])),
            seed=int(meta["seed"]),
            miou=float(cam["miou"]),
            threshold=float(cam["threshold"]),
            curve_thresholds=np.array([p["threshold"] for p in curve], dtype=np.float64),
            curve_miou=np.array([_nan_if_none(p["miou"]) for p in curve], dtype=np.float64),
            per_class_iou={k: _nan_if_none(v) for k, v in cam["per_class"]["iou"].items()},
            reference={k: float(v) for k, v in cam["reference"].items()},
            failure_modes={key: _nan_if_none(cam["failure_modes"][key]) for key, _ in FAILURE_BARS},
            failure_modes_skipped=cam["failure_modes"].get("skipped"),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a CAM metrics file of the evaluate stage (missing {err})"
        ) from err


def load_dataset_runs(
    metric_files: Sequence[str | Path],
    method_order: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> list[RunMetrics]:
    """All runs of one dataset, ordered by method (``method_order``, else first seen) and seed."""
    runs = [load_run(p, labels) for p in metric_files]
    if not runs:
        raise ValueError("no run metrics given to the plots")
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) != 1:
        raise ValueError(f"the plots are per dataset; the metrics files mix {datasets}")
    seen: list[str] = []
    for r in runs:
        if r.method not in seen:
            seen.append(r.method)
    order = list(method_order) if method_order else seen
    missing = [m for m in seen if m not in order]
    if missing:
        raise ValueError(f"methods {missing} are not in the method order {order}")
    rank = {m: i for i, m in enumerate(order)}
    return sorted(runs, key=lambda r: (rank[r.method], r.seed))


def _methods(runs: list[RunMetrics]) -> list[tuple[str, str, list[RunMetrics]]]:
    """(method, label, its runs) in the runs' order."""
    groups: dict[str, list[RunMetrics]] = {}
    for r in runs:
        groups.setdefault(r.method, []).append(r)
    return [(m, rs[0].label, rs) for m, rs in groups.items()]


def class_order(runs: list[RunMetrics], class_names: Sequence[str] | None) -> list[str]:
    """``background`` then the dataset's classes in label order; checked against every run."""
    keys = set(runs[0].per_class_iou)
    if class_names is None:
        # Without the manifest only the names are known, not the label order.
        names = ["background", *sorted(keys - {"background"})]
    else:
        names = ["background", *class_names]
    for r in runs:
        if set(r.per_class_iou) != set(names):
            raise ValueError(
                f"{r.path}: per-class IoU is over {sorted(r.per_class_iou)}, expected the "
                f"classes {names}"
            )
    return names


def per_class_table(runs: list[RunMetrics], classes: list[str]) -> pd.DataFrame:
    """Long table: one row per (method, class), IoU mean and sample std over seeds."""
    rows = []
    for method, label, group in _methods(runs):
        for name in classes:
            values = np.array([r.per_class_iou[name] for r in group])
            std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
            rows.append(
                {
                    "dataset": group[0].dataset,
                    "method": method,
                    "label": label,
                    "class": name,
                    "method_class": f"{method}/{name}",
                    "iou": float(np.mean(values)),
                    "iou_std": std,
                    "seeds": len(values),
                }
            )
    return pd.DataFrame(rows)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _colours(count: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _pyplot().close(fig)


def plot_miou(runs: list[RunMetrics], path: str | Path) -> None:
    """Horizontal bars: mean CAM mIoU per method, each seed a point, references as lines."""
    plt = _pyplot()
    methods = _methods(runs)
    fig, ax = plt.subplots(figsize=(8.0, 1.2 + 0.42 * len(methods)), layout="constrained")
    ys = np.arange(len(methods))[::-1]
    colours = _colours(len(methods))
    for y, (_, _, group), colour in zip(ys, methods, colours, strict=True):
        values = np.array([r.miou for r in group]) * 100
        mean = float(values.mean())
        ax.barh(y, mean, color=colour, alpha=0.55, height=0.7)
        ax.scatter(values, np.full(len(values), y), color="black", s=16, zorder=3)
        spread = f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else ""
        ax.text(values.max() + 0.6, y, f"{mean:.1f}{spread}", va="center", fontsize=8)
    reference = runs[0].reference
    for key, style, text in (
        ("all_background", "--", "all background"),
        ("uniform_gt_classes", ":", "uniform CAM over GT classes"),
    ):
        if key in reference:
            ax.axvline(reference[key] * 100, color="grey", linestyle=style, label=text)
    ax.set_yticks(ys, [label for _, label, _ in methods], fontsize=8)
    top = max(r.miou for r in runs) * 100
    ax.set_xlim(0, max(top * 1.18, 10))
    ax.set_xlabel("CAM mIoU (%)")
    seeds = sorted({r.seed for r in runs})
    ax.set_title(
        f"{runs[0].dataset}: CAM mIoU per method (bar: mean; points: seeds {seeds})", fontsize=10
    )
    ax.legend(loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, Path(path))


def plot_threshold_curves(runs: list[RunMetrics], path: str | Path) -> None:
    """mIoU against the background threshold, one line per method (mean over seeds)."""
    plt = _pyplot()
    methods = _methods(runs)
    fig, ax = plt.subplots(figsize=(10.0, 5.0), layout="constrained")
    colours = _colours(len(methods))
    for index, ((method, label, group), colour) in enumerate(zip(methods, colours, strict=True)):
        grid = group[0].curve_thresholds
        for r in group[1:]:
            if r.curve_thresholds.shape != grid.shape or not np.allclose(r.curve_thresholds, grid):
                raise ValueError(
                    f"{r.path}: threshold sweep differs from {group[0].path}; "
                    f"the seeds of {method} must share one sweep"
                )
        curves = np.stack([r.curve_miou for r in group]) * 100
        mean = curves.mean(axis=0)
        style = "-" if index < 20 else "--"  # tab20 has 20 colours; dash the ones that repeat
        ax.plot(grid, mean, color=colour, linestyle=style, label=label, linewidth=1.4)
        if len(group) > 1:
            ax.fill_between(grid, curves.min(axis=0), curves.max(axis=0), color=colour, alpha=0.15)
        if np.isfinite(mean).any():
            best = int(np.nanargmax(mean))
            ax.plot(grid[best], mean[best], marker="o", color=colour, markersize=4)
    ax.set_xlabel("background threshold")
    ax.set_ylabel("CAM mIoU (%)")
    ax.set_title(
        f"{runs[0].dataset}: mIoU vs background threshold (mean over seeds, shaded: seed range, "
        "dot: best)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    _save(fig, Path(path))


def plot_per_class(table: pd.DataFrame, classes: list[str], path: str | Path) -> None:
    """Heat map, methods x classes, of the per-class IoU (%) with an mIoU column."""
    plt = _pyplot()
    labels = list(dict.fromkeys(table["label"]))
    values = (
        table.pivot(index="label", columns="class", values="iou").loc[labels, classes].to_numpy()
        * 100
    )
    with np.errstate(all="ignore"):
        miou = np.nanmean(values, axis=1, keepdims=True)
    grid = np.concatenate([values, miou], axis=1)
    columns = [*classes, "mIoU"]
    width = 3.5 + 0.62 * len(columns)
    fig, ax = plt.subplots(figsize=(width, 1.3 + 0.36 * len(labels)), layout="constrained")
    image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.axvline(len(classes) - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if grid.size <= 600:  # annotations stay legible up to about VOC x a dozen methods
        for (i, j), value in np.ndenumerate(grid):
            text = "–" if math.isnan(value) else f"{value:.0f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=7,
                color="black" if value > 60 else "white",
            )
    fig.colorbar(image, ax=ax, label="IoU (%)", fraction=0.04)
    ax.set_title(
        f"{table['dataset'].iloc[0]}: per-class CAM IoU at the chosen threshold (mean over seeds)",
        fontsize=10,
    )
    _save(fig, Path(path))


def plot_failure_modes(runs: list[RunMetrics], path: str | Path) -> None:
    """Grouped horizontal bars per method: part recall, body recall, context FP rate (%).

    A bar is the mean over seeds, each point a seed; a rate recorded as null (no
    pixels of its kind) gets no bar. Without failure-mode metrics on the dataset (every
    run skipped them), the figure states the recorded reason.
    """
    plt = _pyplot()
    methods = _methods(runs)
    dataset = runs[0].dataset
    if all(r.failure_modes_skipped for r in runs):
        fig, ax = plt.subplots(figsize=(8.0, 2.0), layout="constrained")
        ax.axis("off")
        ax.set_title(f"{dataset}: failure-mode metrics not available", fontsize=10)
        ax.text(0.5, 0.5, runs[0].failure_modes_skipped, ha="center", va="center", wrap=True)
        _save(fig, Path(path))
        return
    fig, ax = plt.subplots(figsize=(8.0, 1.4 + 0.75 * len(methods)), layout="constrained")
    height = 0.8 / len(FAILURE_BARS)
    colours = _colours(len(FAILURE_BARS))
    ys = np.arange(len(methods))[::-1].astype(np.float64)
    for b, ((key, _), colour) in enumerate(zip(FAILURE_BARS, colours, strict=True)):
        offset = (len(FAILURE_BARS) - 1) / 2 * height - b * height
        for y, (_, _, group) in zip(ys + offset, methods, strict=True):
            values = np.array([r.failure_modes[key] for r in group]) * 100
            values = values[~np.isnan(values)]
            if not values.size:
                ax.text(2, y, "n/a (no pixels)", va="center", fontsize=7, color="grey")
                continue
            ax.barh(y, values.mean(), height=height * 0.9, color=colour, alpha=0.7)
            ax.scatter(values, np.full(values.size, y), color="black", s=8, zorder=3)
            ax.text(values.max() + 1, y, f"{values.mean():.1f}", va="center", fontsize=7)
    ax.set_yticks(ys, [label for _, label, _ in methods], fontsize=8)
    ax.set_xlim(0, 110)
    ax.set_ylim(-0.5, len(methods) - 0.5)
    ax.set_xlabel("% of the pixels of each kind (mean over classes)")
    seeds = sorted({r.seed for r in runs})
    ax.set_title(
        f"{dataset}: part vs body recall and context false positives at the chosen threshold "
        f"(bar: mean; points: seeds {seeds})",
        fontsize=9,
    )
    from matplotlib.patches import Patch

    handles = [
        Patch(color=colour, alpha=0.7, label=text)
        for (_, text), colour in zip(FAILURE_BARS, colours, strict=True)
    ]
    ax.legend(handles=handles, loc="lower right", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, Path(path))


def write_plots(
    metric_files: Sequence[str | Path],
    out_dir: str | Path,
    csv_path: str | Path,
    class_names: Sequence[str] | None = None,
    method_order: Sequence[str] | None = None,
    labels: dict[str, str] | None = None,
) -> list[Path]:
    """Write the figures of one dataset (:data:`FIGURE_NAMES`) into ``out_dir`` and its
    per-class CSV."""
    out_dir = Path(out_dir)
    runs = load_dataset_runs(metric_files, method_order, labels)
    classes = class_order(runs, class_names)
    table = per_class_table(runs, classes)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    paths = [out_dir / name for name in FIGURE_NAMES]
    plot_miou(runs, paths[0])
    plot_threshold_curves(runs, paths[1])
    plot_per_class(table, classes, paths[2])
    plot_failure_modes(runs, paths[3])
    return paths


# -- training curves ----------------------------------------------------------------------

TRAIN_CURVE_KEYS = ("dataset", "run", "seed", "epoch")


def train_curves_table(logs: Sequence[str | Path]) -> pd.DataFrame:
    """The per-epoch training logs (``<results>/runs/<dataset>/train/<run>/seed<N>/
    train_log.tsv``, written by the train stage: ``epoch``, ``lr`` and the epoch's mean
    loss terms, ``loss`` their weighted sum) in long format: one row per (dataset, run,
    seed, epoch), columns ``dataset, run, seed, epoch, loss``, then ``lr`` and the other
    terms (empty where a run's method has no such term). Sorted by run, seed, epoch.
    ValueError naming the file for a path outside that layout or a log without ``epoch``
    and ``loss`` columns."""
    frames = []
    for log in logs:
        path = Path(log)
        seed_dir, run_dir, train_dir = path.parent, path.parent.parent, path.parents[2]
        if train_dir.name != "train" or not seed_dir.name.startswith("seed"):
            raise ValueError(f"{path}: expected <results>/runs/<dataset>/train/<run>/seed<N>/")
        frame = pd.read_csv(path, sep="\t")
        missing = {"epoch", "loss"} - set(frame.columns)
        if missing:
            raise ValueError(f"{path}: no {', '.join(sorted(missing))} column in the log")
        frame.insert(0, "dataset", train_dir.parent.name)
        frame.insert(1, "run", run_dir.name)
        frame.insert(2, "seed", int(seed_dir.name[len("seed") :]))
        frames.append(frame)
    if not frames:
        raise ValueError("no training logs given")
    table = pd.concat(frames, ignore_index=True)
    first = [*TRAIN_CURVE_KEYS, "loss"]
    rest = sorted(c for c in table.columns if c not in first)
    table = table[first + rest].sort_values(["run", "seed", "epoch"], kind="stable")
    return table.reset_index(drop=True)


def plot_train_curves(table: pd.DataFrame, path: str | Path) -> None:
    """Training loss per epoch: one colour per trained run, one line per seed (log scale
    when every loss is positive)."""
    plt = _pyplot()
    runs = list(dict.fromkeys(table["run"]))
    fig, ax = plt.subplots(figsize=(8.0, 4.5), layout="constrained")
    for run, colour in zip(runs, _colours(len(runs)), strict=True):
        for index, (_, rows) in enumerate(table[table["run"] == run].groupby("seed")):
            label = run if index == 0 else None
            ax.plot(rows["epoch"], rows["loss"], color=colour, label=label, linewidth=1.2)
            ax.plot(rows["epoch"].iloc[-1], rows["loss"].iloc[-1], "o", color=colour, ms=3)
    if (table["loss"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title(f"{table['dataset'].iloc[0]}: training loss (one line per seed)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    _save(fig, Path(path))


def write_train_curves(
    logs: Sequence[str | Path], csv_path: str | Path, figure: str | Path
) -> list[Path]:
    """The training curves of one dataset: the long-format CSV (a DVC plot) and the figure."""
    table = train_curves_table(logs)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    plot_train_curves(table, figure)
    return [Path(csv_path), Path(figure)]
