"""The results table, DVC metrics and plot data, from the per-run metrics files.

Each row (a method on a dataset) gets, besides mean ± std over seeds, a 95%
interval of its CAM mIoU over training seeds and images, the paired difference to
its baseline with that difference's interval (wsss.evaluation.bootstrap), and the
smallest difference its seed count could detect. A row's
baseline is the variant named by ``methods.<variant>.baseline`` in params.yaml
(the table rule passes it with ``--baselines``); the default grid names
``mctformer_v2``, the model every other method modifies. A row is marked better
or worse than its baseline only when the difference's interval excludes 0. A best
threshold at an end of the swept range (``cam.threshold_at_edge``) is marked too.
The failure-mode rates (context false positives, part and body recall;
wsss.evaluation.failure_modes) are means over seeds, empty for a dataset without
failure-mode maps.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from wsss.evaluation.bootstrap import (
    N_RESAMPLES,
    Interval,
    detectable_difference,
    miou_interval,
    one_sided_t_test,
    paired_miou_difference,
)
from wsss.evaluation.per_image import PerImageCounts
from wsss.io import atomic_path, read_json, write_json, write_text

# Columns of the per-run table: (name in the table, key in a run's cam metrics).
CAM_COLUMNS = {
    "cam_miou": "miou",
    "threshold": "threshold",
    "precision": "precision",
    "recall": "recall",
}


# Failure-mode rates of a run (wsss.evaluation.failure_modes): (column, key in its
# cam.failure_modes). None there (a dataset without failure-mode maps) is NaN here.
FAILURE_COLUMNS = {
    "context_fp": "context_fp_rate",
    "part_recall": "part_recall",
    "body_recall": "body_recall",
}


# Per-run scores read from other stages' files: (column, the file's top-level key).
STAGE_COLUMNS = {
    "decoder_miou": "decoder",
    "pseudo_label_miou": "pseudo_labels",
    "seg_miou": "seg",
}


# Per-run attention diagnostic (wsss.stages.attention_diagnostics): the summed patch
# affinity's background-to-object ratio of the run's trained model (1 = uniform attention;
# above 1 the affinity refinement pulls CAMs into the background). Shared by the variants
# of one trained model; empty where the dataset has no instance masks.
ATTENTION_COLUMN = "affinity_bg_to_object"


def _attention_by_run(files: list[str | Path]) -> dict[tuple[str, str, int], float]:
    """{(dataset, trained run, seed): affinity background-to-object ratio} (NaN when skipped)."""
    values = {}
    for path in files:
        run = read_json(path)
        meta = _required(run, ("meta",), path)
        if run.get("skipped"):
            value = math.nan
        else:
            value = _required(run, ("affinity", "background_to_object_ratio"), path)
        key = (meta["dataset"], meta["run"], int(meta["seed"]))
        values[key] = math.nan if value is None else float(value)
    return values


def _scores_by_run(files: list[str | Path], key: str) -> tuple[dict, dict[str, set[str]]]:
    """{(dataset, method, seed): mIoU} of one kind of metrics file, and the splits per dataset."""
    scores, splits = {}, {}
    for path in files:
        run = read_json(path)
        meta = run["meta"]
        if key not in run:
            raise ValueError(f"{path}: expected a {key!r} entry (is it the right kind of file?)")
        scores[(meta["dataset"], meta["method"], int(meta["seed"]))] = run[key]["miou"]
        if "split" in run[key]:
            splits.setdefault(meta["dataset"], set()).add(run[key]["split"])
    return scores, splits


def _required(run: dict, keys: tuple[str, ...], path: str | Path) -> Any:
    value = run
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise ValueError(
                f"{path}: no {'.'.join(keys)}; the file was written by an older evaluate "
                "stage, rerun it (snakemake reruns it when the evaluation code changed)"
            )
        value = value[key]
    return value


def collect_counts(metric_files: list[str | Path]) -> dict[tuple[str, str, int], PerImageCounts]:
    """{(dataset, method, seed): per-image intersection/union counts} of the runs' CAM metrics."""
    counts = {}
    for path in metric_files:
        run = read_json(path)
        meta = run["meta"]
        entry = _required(run, ("cam", "per_image"), path)
        counts[(meta["dataset"], meta["method"], int(meta["seed"]))] = PerImageCounts.from_json(
            entry, f"{path}: cam.per_image"
        )
    return counts


def collect_runs(
    metric_files: list[str | Path],
    decoder_files: list[str | Path] = (),
    pseudo_label_files: list[str | Path] = (),
    seg_files: list[str | Path] = (),
    labels: dict[str, str] | None = None,
    baselines: dict[str, str] | None = None,
    attention_files: list[str | Path] = (),
    training_runs: dict[str, str] | None = None,
) -> pd.DataFrame:
    """One row per run. ``runs.attrs["splits"]``: {column: {dataset: split names}}.

    ``attention_files``: the trained runs' attention diagnostics, and ``training_runs``
    the trained run of each grid method (required for every method when files are given).

    ``labels`` and ``baselines``: display label and baseline variant
    (``methods.<v>.baseline``) per grid method. The report rules pass them; metrics files
    carry neither, so renaming a method or changing its baseline reruns only the report."""
    stage_files = {
        "decoder_miou": decoder_files,
        "pseudo_label_miou": pseudo_label_files,
        "seg_miou": seg_files,
    }
    stages, splits = {}, {}
    for column, files in stage_files.items():
        stages[column], splits[column] = _scores_by_run(files, STAGE_COLUMNS[column])
    attention = _attention_by_run(list(attention_files))
    rows = []
    for path in metric_files:
        run = read_json(path)
        row: dict[str, Any] = {
            "dataset": run["meta"]["dataset"],
            "method": run["meta"]["method"],
            "label": (labels or {}).get(run["meta"]["method"], run["meta"]["method"]),
            "seed": int(run["meta"]["seed"]),
        }
        row.update({column: run["cam"][key] for column, key in CAM_COLUMNS.items()})
        row["threshold_at_edge"] = _required(run, ("cam", "threshold_at_edge"), path)
        modes = _required(run, ("cam", "failure_modes"), path)
        for column, key in FAILURE_COLUMNS.items():
            row[column] = float("nan") if modes.get(key) is None else float(modes[key])
        row["baseline"] = (baselines or {}).get(row["method"])
        row["all_background_miou"] = run["cam"]["reference"]["all_background"]
        row["uniform_gt_miou"] = run["cam"]["reference"]["uniform_gt_classes"]
        run_key = (row["dataset"], row["method"], row["seed"])
        for column, scores in stages.items():
            row[column] = scores.get(run_key, float("nan"))
        if attention and row["method"] not in (training_runs or {}):
            raise ValueError(f"{path}: no trained run given for method {row['method']!r}")
        trained = (row["dataset"], (training_runs or {}).get(row["method"]), row["seed"])
        row[ATTENTION_COLUMN] = attention.get(trained, float("nan"))
        rows.append(row)
    if not rows:
        raise ValueError("no run metrics given to the table")
    runs = (
        pd.DataFrame(rows)
        .sort_values(["dataset", "method", "seed"], kind="stable")
        .reset_index(drop=True)
    )
    runs.attrs["splits"] = splits
    return runs


# Paper numbers shown beside ours: (column, metric in wsss/resources/paper_numbers.yaml).
PAPER_COLUMNS = {"paper_cam_miou": "cam_miou", "paper_seg_miou_val": "seg_miou_val"}


def add_paper_numbers(summary: pd.DataFrame, dataset_kinds: dict[str, str]) -> pd.DataFrame:
    """The papers' reported mIoU (as a fraction, like ours) for each (dataset, method) row;
    NaN where the paper reports none or the dataset's kind is not given (e.g. synthetic)."""
    from wsss.report.paper import paper_numbers

    summary = summary.copy()
    for column, metric in PAPER_COLUMNS.items():
        values = []
        for row in summary.itertuples():
            kind = dataset_kinds.get(row.dataset)
            entry = paper_numbers(kind, row.method).get(metric) if kind else None
            values.append(entry["value"] / 100.0 if entry else float("nan"))
        summary[column] = values
    return summary


def summarize_runs(runs: pd.DataFrame, method_order: list[str] | None = None) -> pd.DataFrame:
    """Mean and standard deviation over seeds for each (dataset, method)."""
    values = [*CAM_COLUMNS, *FAILURE_COLUMNS, *STAGE_COLUMNS, ATTENTION_COLUMN]
    grouped = runs.groupby(["dataset", "method", "label"], sort=False)[values]
    summary = grouped.mean().add_suffix("_mean").join(grouped.std(ddof=1).add_suffix("_std"))
    summary["seeds"] = grouped.size()
    summary["edge_runs"] = runs.groupby(["dataset", "method", "label"], sort=False)[
        "threshold_at_edge"
    ].sum()
    baselines = runs.groupby(["dataset", "method", "label"], sort=False)["baseline"]
    for (dataset, method, _), values in baselines:
        if values.map(repr).nunique() > 1:
            raise ValueError(
                f"{dataset}/{method}: its runs name different baselines "
                f"({sorted(set(map(str, values)))}); rerun the evaluate stage of every seed"
            )
    summary["baseline"] = baselines.first()
    summary = summary.reset_index()
    if method_order:
        summary["_order"] = summary["method"].map({m: i for i, m in enumerate(method_order)})
        summary = summary.sort_values(["dataset", "_order"], kind="stable").drop(columns="_order")
    return summary.reset_index(drop=True)


# What the intervals cover and what not, in the table's legend (README repeats it).
INTERVALS_COVER = (
    "95%: a t-interval over seeds whose variance adds the image-sampling variance the "
    "seeds share, one image bootstrap draw shared by every seed; docs/statistics.md). "
    "The intervals cover the noise a rerun redraws: the training seeds and the evaluation "
    "images. They do not cover the choice of the background threshold (each run's is held "
    "fixed) or a change of platform (CPU kernels, thread count), which moves runs like "
    "another seed would but is not sampled here."
)


# Columns added by add_intervals (fractions, like the mIoU columns).
INTERVAL_COLUMNS = (
    "cam_miou_ci_low",
    "cam_miou_ci_high",
    "diff_vs_baseline",
    "diff_ci_low",
    "diff_ci_high",
    "detectable_diff",
    "seed_t_test_p",
)


def add_intervals(
    summary: pd.DataFrame,
    counts: dict[tuple[str, str, int], PerImageCounts],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Each row's 95% CAM mIoU interval and paired difference to its baseline row.

    ``counts``: :func:`collect_counts`. Columns added: :data:`INTERVAL_COLUMNS` (NaN where
    a row has no baseline in the table) and ``vs_baseline``: ``better``, ``worse``,
    ``no difference`` (the difference's interval contains 0), ``baseline`` (a row that
    other rows are compared with and that has no baseline itself), ``baseline not in
    grid``, ``one seed: no interval`` or empty. ``detectable_diff``: the smallest true
    difference the interval calls at 80% power (wsss.evaluation.bootstrap
    .detectable_difference), from the observed spread; ``seed_t_test_p``: the one-sided
    t-test over the per-seed paired differences, which every verdict agrees with. The pairs are the seeds both rows ran (they must be the same
    seeds) and, within a seed, the same images. ``seed`` seeds the resampling.
    Raises ValueError for a row without counts, a baseline naming its own row, seed sets
    that differ, or counts whose mIoU is not the run's reported one.
    """
    summary = summary.copy()
    seeds_of: dict[tuple[str, str], list[int]] = {}
    for dataset, method, run_seed in sorted(counts):
        seeds_of.setdefault((dataset, method), []).append(run_seed)
    referenced = {
        (row.dataset, row.baseline) for row in summary.itertuples() if isinstance(row.baseline, str)
    }
    values: dict[str, list] = {column: [] for column in (*INTERVAL_COLUMNS, "vs_baseline")}
    for row in summary.itertuples():
        name = f"{row.dataset}/{row.method}"
        seeds = seeds_of.get((row.dataset, row.method))
        if not seeds:
            raise ValueError(f"{name}: no per-image counts among the CAM metrics files")
        runs = [counts[(row.dataset, row.method, s)] for s in seeds]
        ci = miou_interval(runs, n_resamples=n_resamples, seed=seed)
        if not math.isclose(ci.estimate, row.cam_miou_mean, abs_tol=1e-9):
            raise ValueError(
                f"{name}: mIoU from the per-image counts ({ci.estimate:.6f}) is not the runs' "
                f"mean CAM mIoU ({row.cam_miou_mean:.6f}); the metrics files are inconsistent"
            )
        diff, verdict = Interval(math.nan, math.nan, math.nan), ""
        t_test_p = math.nan
        baseline = row.baseline if isinstance(row.baseline, str) else None
        if baseline == row.method:
            raise ValueError(f"{name}: names itself as its baseline (methods.{baseline}.baseline)")
        if baseline is None:
            verdict = "baseline" if (row.dataset, row.method) in referenced else ""
        elif (row.dataset, baseline) not in seeds_of:
            verdict = "baseline not in grid"
        else:
            base_seeds = seeds_of[(row.dataset, baseline)]
            if base_seeds != seeds:
                raise ValueError(
                    f"{name}: seeds {seeds}, its baseline {baseline} has seeds {base_seeds}; "
                    "a paired difference needs the same seeds"
                )
            pairs = [
                (run, counts[(row.dataset, baseline, s)])
                for run, s in zip(runs, seeds, strict=True)
            ]
            diff = paired_miou_difference(pairs, n_resamples=n_resamples, seed=seed)
            verdict = diff.verdict() or "one seed: no interval"
            t_test_p = one_sided_t_test([run.miou() - base.miou() for run, base in pairs])
        detectable = detectable_difference(diff.se, diff.df)
        for column, value in zip(
            INTERVAL_COLUMNS,
            (ci.low, ci.high, diff.estimate, diff.low, diff.high, detectable, t_test_p),
            strict=True,
        ):
            values[column].append(value)
        values["vs_baseline"].append(verdict)
    for column, column_values in values.items():
        summary[column] = column_values
    return summary


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _pm_or_empty(mean: float, std: float) -> str:
    return "" if math.isnan(mean) else _pm(mean, std)


def _ratio_cell(mean: float, std: float) -> str:
    """A ratio (not a percentage) with two decimals; empty when missing."""
    return "" if math.isnan(mean) else _pm(mean, std, scale=1.0, digits=2)


def _signed(value: float) -> str:
    return f"{value * 100:+.1f}".replace("-", "\u2212")


def _ci_cell(low: float, high: float) -> str:
    return "" if math.isnan(low) else f"[{low * 100:.1f}, {high * 100:.1f}]"


def _detectable_cell(value: float) -> str:
    return "" if math.isnan(value) else f"{value * 100:.1f}"


def _diff_cell(row: Any) -> str:
    """``+1.2 [+0.3, +2.1] **better**``, a note (baseline, not in grid), or empty."""
    if math.isnan(row.diff_vs_baseline):
        return row.vs_baseline
    if math.isnan(row.diff_ci_low):
        return f"{_signed(row.diff_vs_baseline)} ({row.vs_baseline})"
    text = (
        f"{_signed(row.diff_vs_baseline)} [{_signed(row.diff_ci_low)}, {_signed(row.diff_ci_high)}]"
    )
    return f"{text} **{row.vs_baseline}**" if row.vs_baseline != "no difference" else text


def _threshold_cell(row: Any) -> str:
    cell = _pm(row.threshold_mean, row.threshold_std, 1, 2)
    return f"{cell} (edge {row.edge_runs}/{row.seeds})" if row.edge_runs else cell


def _baseline_names(summary: pd.DataFrame) -> str:
    """Which rows are compared with which baseline, in words."""
    labels = {(r.dataset, r.method): r.label for r in summary.itertuples()}
    groups: dict[str, list[str]] = {}
    for row in summary.itertuples():
        if isinstance(row.baseline, str):
            name = labels.get((row.dataset, row.baseline), f"{row.baseline} (not in the grid)")
            groups.setdefault(name, []).append(row.label)
    if not groups:
        return "no row names a baseline"
    if len(groups) == 1:
        return f"{next(iter(groups))} for every row that has one"
    return "; ".join(f"{name} for {', '.join(rows)}" for name, rows in groups.items())


def _split_suffix(runs: pd.DataFrame, column: str, generic: str) -> str:
    """`` (train)`` when every dataset scores ``column`` on one split of that name, else generic."""
    names = set().union(*runs.attrs.get("splits", {}).get(column, {}).values())
    return f" ({next(iter(names))})" if len(names) == 1 else f" ({generic})"


def _split_names(runs: pd.DataFrame, column: str) -> str:
    per_dataset = runs.attrs.get("splits", {}).get(column, {})
    return ", ".join(f"{d}: {'/'.join(sorted(s))}" for d, s in sorted(per_dataset.items()))


def markdown_table(runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    pseudo = "pseudo-label mIoU" + _split_suffix(runs, "pseudo_label_miou", "eval split")
    seg = "seg mIoU" + _split_suffix(runs, "seg_miou", "seg split")
    lines = [
        "# Results",
        "",
        "CAM mIoU (%) on each dataset's evaluation split at the best background threshold, "
        "with mean foreground precision and recall (%) at that threshold. "
        "Mean ± std over seeds (sample std).",
        "",
        f"95% CI: an interval of the CAM mIoU over training seeds and images ({INTERVALS_COVER}) "
        "Δ vs baseline: the mean over seeds of the row's CAM mIoU minus its baseline's, "
        "paired by seed and image, with the interval of that paired difference; **better** "
        "or **worse** only where the interval excludes 0 (each such verdict is also a "
        "one-sided 95% t-test over the per-seed differences). Baselines (params.yaml "
        f"`methods.<variant>.baseline`): {_baseline_names(summary)}. Detectable Δ: the "
        "smallest true difference to the baseline that the interval would call with 80% "
        "power at this row's seed count and observed spread (more seeds shrink it).",
        "",
        "Best threshold: (edge n/N) marks a row whose best background threshold is the "
        "first or last value of the sweep (`evaluate.thresholds`) in n of its N seeds: the "
        "best threshold may lie outside the swept range, and its mIoU is a lower bound.",
        "",
        "Context FP, part recall, body recall (%, at the row's best threshold; mean ± std "
        "over seeds; empty on a dataset without the synthetic benchmark's failure-mode "
        "maps): the share of the pixels of a class's co-occurring context (background in "
        "the masks) labelled with that class, and the shares of the pixels of an object's "
        "discriminative part and of its body labelled with its class, each a mean over "
        "classes (wsss.evaluation.failure_modes; docs/synthetic.md).",
        "",
        "Decoder mIoU: a single-stage method's own segmentation decoder on the seg split "
        "(multi-scale, no CRF); empty for two-stage methods.",
        "",
        "Pseudo-label mIoU: the stage-2 training labels made from the train split's CAMs "
        "(params `pseudo_labels`), scored on the evaluation split "
        f"({_split_names(runs, 'pseudo_label_miou') or 'none given'}); with the best threshold "
        "it was chosen on those masks, so it is optimistic like the CAM mIoU. "
        "Seg mIoU: a segmentation network trained on those pseudo-labels "
        "(params `segmentation`), multi-scale inference, scored on the seg split "
        f"({_split_names(runs, 'seg_miou') or 'none given'}), which no earlier stage looks at.",
        "",
        "Affinity bg→object: the attention diagnostics of the row's trained model on the "
        "evaluation split (per-object masks): how much a background patch's summed patch "
        "affinity (the matrix the affinity refinement propagates CAMs with) lands on object "
        "patches, relative to their share; 1 = uniform, above 1 the refinement pulls CAMs into "
        "the background. Per block: results/figures/<dataset>/attention_diagnostics.png. "
        "Empty where the dataset has no instance masks.",
        "",
    ]
    # Only tables of real benchmarks get the papers' columns (the synthetic one has none).
    with_paper = all(c in summary for c in PAPER_COLUMNS) and bool(
        summary[list(PAPER_COLUMNS)].notna().any().any()
    )
    if with_paper:
        lines += [
            "Paper CAM / paper seg: the mIoU the method's paper reports for the same "
            "recipe on that benchmark (seg: its final segmentation, a stage-2 network or a "
            "single-stage method's own decoder; wsss/resources/paper_numbers.yaml gives each "
            "number's source and whether it was checked); empty where none is reported.",
            "",
        ]
    paper_head = " paper CAM | paper seg (val) |" if with_paper else ""
    lines += [
        f"| dataset | method | CAM mIoU | 95% CI | Δ vs baseline [95% CI] | best threshold | precision | recall | context FP | part recall | body recall | decoder mIoU | {pseudo} | {seg} | affinity bg→object | seeds | detectable Δ |{paper_head}",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|---|" if with_paper else ""),
    ]
    for row in summary.itertuples():
        paper_cells = (
            "".join(
                f" {'' if math.isnan(getattr(row, c)) else f'{getattr(row, c) * 100:.1f}'} |"
                for c in PAPER_COLUMNS
            )
            if with_paper
            else ""
        )
        lines.append(
            f"| {row.dataset} | {row.label} | {_pm(row.cam_miou_mean, row.cam_miou_std)} "
            f"| {_ci_cell(row.cam_miou_ci_low, row.cam_miou_ci_high)} | {_diff_cell(row)} "
            f"| {_threshold_cell(row)} "
            f"| {_pm(row.precision_mean, row.precision_std)} | {_pm(row.recall_mean, row.recall_std)} "
            f"| {_pm_or_empty(row.context_fp_mean, row.context_fp_std)} "
            f"| {_pm_or_empty(row.part_recall_mean, row.part_recall_std)} "
            f"| {_pm_or_empty(row.body_recall_mean, row.body_recall_std)} "
            f"| {_pm_or_empty(row.decoder_miou_mean, row.decoder_miou_std)} "
            f"| {_pm_or_empty(row.pseudo_label_miou_mean, row.pseudo_label_miou_std)} "
            f"| {_pm_or_empty(row.seg_miou_mean, row.seg_miou_std)} "
            f"| {_ratio_cell(row.affinity_bg_to_object_mean, row.affinity_bg_to_object_std)} "
            f"| {row.seeds} | {_detectable_cell(row.detectable_diff)} |{paper_cells}"
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
        "| dataset | method | seed | CAM mIoU | threshold | precision | recall | context FP | part recall | body recall | pseudo-label mIoU | seg mIoU | affinity bg→object |",
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in runs.itertuples():
        lines.append(
            f"| {row.dataset} | {row.label} | {row.seed} | {row.cam_miou * 100:.1f} "
            f"| {row.threshold:.2f}{' (edge)' if row.threshold_at_edge else ''} "
            f"| {row.precision * 100:.1f} | {row.recall * 100:.1f} "
            f"| {_pm_or_empty(row.context_fp, math.nan)} | {_pm_or_empty(row.part_recall, math.nan)} "
            f"| {_pm_or_empty(row.body_recall, math.nan)} "
            f"| {_pm_or_empty(row.pseudo_label_miou, math.nan)} | {_pm_or_empty(row.seg_miou, math.nan)} "
            f"| {_ratio_cell(row.affinity_bg_to_object, math.nan)} |"
        )
    return "\n".join(lines) + "\n"


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def metrics_tree(runs: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    """Nested {dataset: {method: {...}}} for ``dvc metrics show/diff``.

    Every leaf is a scalar (DVC drops lists): the interval is ``cam_miou_ci_low`` /
    ``cam_miou_ci_high``, the paired difference ``vs_baseline.diff`` with
    ``diff_ci_low`` / ``diff_ci_high``; null where undefined (one seed)."""
    tree: dict[str, Any] = {}
    for row in summary.itertuples():
        entry = {
            "cam_miou": round(float(row.cam_miou_mean), 6),
            "cam_miou_std": None
            if math.isnan(row.cam_miou_std)
            else round(float(row.cam_miou_std), 6),
            "cam_miou_ci_low": _rounded(row.cam_miou_ci_low),
            "cam_miou_ci_high": _rounded(row.cam_miou_ci_high),
            "threshold": round(float(row.threshold_mean), 4),
            "threshold_at_edge_runs": int(row.edge_runs),
            "precision": round(float(row.precision_mean), 6),
            "recall": round(float(row.recall_mean), 6),
            "seeds": int(row.seeds),
        }
        if not math.isnan(row.diff_vs_baseline):
            entry["vs_baseline"] = {
                "baseline": row.baseline,
                "diff": _rounded(row.diff_vs_baseline),
                "diff_ci_low": _rounded(row.diff_ci_low),
                "diff_ci_high": _rounded(row.diff_ci_high),
                "detectable_diff": _rounded(row.detectable_diff),
                "verdict": row.vs_baseline,
            }
        if not math.isnan(row.decoder_miou_mean):
            entry["decoder_miou"] = round(float(row.decoder_miou_mean), 6)
        for column in (*FAILURE_COLUMNS, "pseudo_label_miou", "seg_miou", ATTENTION_COLUMN):
            mean, std = getattr(row, f"{column}_mean"), getattr(row, f"{column}_std")
            if not math.isnan(mean):
                entry[column] = round(float(mean), 6)
                entry[f"{column}_std"] = None if math.isnan(std) else round(float(std), 6)
        tree.setdefault(row.dataset, {})[row.method] = entry
    for dataset, group in runs.groupby("dataset"):
        tree[dataset]["reference"] = {
            "all_background_miou": round(float(group["all_background_miou"].iloc[0]), 6),
            "uniform_gt_miou": round(float(group["uniform_gt_miou"].iloc[0]), 6),
        }
    return tree


def threshold_curves(metric_files: list[str | Path]) -> pd.DataFrame:
    """Every run's CAM mIoU against the background threshold, in long format.

    One row per run and threshold, columns ``dataset, method, seed, threshold, miou``
    (threshold rounded to 4 decimals, mIoU in [0, 1]) from ``cam.sweep.curve`` of each
    ``cam_metrics.json``, in the order of ``metric_files``. Long format lets
    ``dvc plots`` draw one line per method and seed (dvc.yaml declares ``x``, ``y`` and
    a template that colours by ``method``).
    """
    rows = []
    for path in metric_files:
        run = read_json(path)
        meta = run["meta"]
        rows.extend(
            {
                "dataset": meta["dataset"],
                "method": meta["method"],
                "seed": int(meta["seed"]),
                "threshold": round(point["threshold"], 4),
                "miou": point["miou"],
            }
            for point in run["cam"]["sweep"]["curve"]
        )
    return pd.DataFrame(rows, columns=["dataset", "method", "seed", "threshold", "miou"])


def write_report(
    metric_files: list[str | Path],
    out_dir: str | Path,
    method_order: list[str] | None = None,
    decoder_files: list[str | Path] = (),
    pseudo_label_files: list[str | Path] = (),
    seg_files: list[str | Path] = (),
    dataset_kinds: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    baselines: dict[str, str] | None = None,
    attention_files: list[str | Path] = (),
    training_runs: dict[str, str] | None = None,
) -> pd.DataFrame:
    out_dir = Path(out_dir)
    runs = collect_runs(
        metric_files,
        decoder_files,
        pseudo_label_files,
        seg_files,
        labels,
        baselines,
        attention_files,
        training_runs,
    )
    summary = add_intervals(summarize_runs(runs, method_order), collect_counts(metric_files))
    summary = add_paper_numbers(summary, dataset_kinds or {})
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
