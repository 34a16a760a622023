"""The results table, DVC metrics and plot data, from the per-run metrics files.

Each row (a method on a dataset) gets, besides mean ± std over seeds, a 95%
interval of its CAM mIoU over training seeds and images, the paired difference to
its baseline with that difference's interval (wsss.evaluation.bootstrap), and the
smallest difference its seed count could detect.

Every column is declared once, in :data:`COLUMNS` (key, header, source file, format,
which outputs show it); runs.csv, table.csv, table.md and metrics.json all iterate
that list, so a new column is one :class:`Column` line (and its test). A row's
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
from dataclasses import dataclass
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

# The outputs a column can appear in. table.csv and runs.csv are the data behind the
# markdown: they hold every column (a per-run column as <key> in runs.csv and
# <key>_mean / <key>_std in table.csv), so ``shows`` decides the markdown and JSON only.
OUTPUTS = ("table.md", "runs.md", "metrics.json", "reference")
SHOWN = frozenset({"table.md", "runs.md", "metrics.json"})

# Where a column's values come from: the per-run files of one stage (the table job's
# argument that lists them) or the summary computed here.
SOURCES = {
    "cam": "cam_metrics.json (--metrics)",
    "decoder": "decoder_metrics.json (--decoder-metrics)",
    "pseudo_labels": "pseudo_label_metrics.json (--pseudo-label-metrics)",
    "seg": "seg_metrics.json (--seg-metrics)",
    "attention": "attention_diagnostics.json of the trained run (--attention-diagnostics)",
    "intervals": "per-image counts of cam_metrics.json (add_intervals)",
    "paper": "wsss/resources/paper_numbers.yaml (add_paper_numbers)",
}
RUN_SOURCES = ("cam", "decoder", "pseudo_labels", "seg", "attention")


@dataclass(frozen=True)
class Column:
    """One column of the results, declared once; every output iterates :data:`COLUMNS`.

    ``key``: its name in runs.csv / table.csv. ``header``: in table.md (``{split}`` is
    replaced by the split the column is scored on). ``source``: a key of :data:`SOURCES`.
    ``path``: the keys leading to the value in that source's file (per-run sources).
    ``fmt``: how table.md shows it (a key of ``_SUMMARY_CELLS`` / ``_RUN_CELLS``).
    ``shows``: which of :data:`OUTPUTS` show it. ``optional``: a None value (a dataset
    without that measurement) is NaN, an empty cell, and left out of metrics.json.
    ``aggregate``: over seeds, ``mean`` (with std), ``sum`` (a count of flags) or
    ``first`` (the same value for every run of a dataset).
    """

    key: str
    header: str
    source: str
    path: tuple[str, ...] = ()
    fmt: str = "percent"
    shows: frozenset[str] = SHOWN
    optional: bool = False
    aggregate: str = "mean"
    split_note: str = ""  # the split named in the header when the files give none


COLUMNS: tuple[Column, ...] = (
    Column("cam_miou", "CAM mIoU", "cam", ("cam", "miou")),
    Column("cam_miou_ci", "95% CI", "intervals", fmt="ci", shows=frozenset({"table.md"})),
    Column(
        "diff_vs_baseline",
        "Δ vs baseline [95% CI]",
        "intervals",
        fmt="diff",
        shows=frozenset({"table.md", "metrics.json"}),
    ),
    Column("threshold", "best threshold", "cam", ("cam", "threshold"), fmt="threshold"),
    Column(
        "threshold_at_edge",
        "",
        "cam",
        ("cam", "threshold_at_edge"),
        fmt="flag",
        shows=frozenset({"metrics.json"}),
        aggregate="sum",
    ),
    Column("precision", "precision", "cam", ("cam", "precision")),
    Column("recall", "recall", "cam", ("cam", "recall")),
    # Failure-mode rates (wsss.evaluation.failure_modes); None without failure-mode maps.
    Column(
        "context_fp",
        "context FP",
        "cam",
        ("cam", "failure_modes", "context_fp_rate"),
        optional=True,
    ),
    Column(
        "part_recall", "part recall", "cam", ("cam", "failure_modes", "part_recall"), optional=True
    ),
    Column(
        "body_recall", "body recall", "cam", ("cam", "failure_modes", "body_recall"), optional=True
    ),
    Column("decoder_miou", "decoder mIoU", "decoder", ("decoder", "miou"), optional=True),
    Column(
        "pseudo_label_miou",
        "pseudo-label mIoU{split}",
        "pseudo_labels",
        ("pseudo_labels", "miou"),
        optional=True,
        split_note="eval split",
    ),
    Column(
        "seg_miou", "seg mIoU{split}", "seg", ("seg", "miou"), optional=True, split_note="seg split"
    ),
    # The summed patch affinity's background-to-object ratio of the run's trained model
    # (wsss.methods.model_diagnostics; 1 = uniform, above 1 the affinity refinement
    # pulls CAMs into the background); shared by the variants of one trained model.
    Column(
        "affinity_bg_to_object",
        "affinity bg→object",
        "attention",
        ("affinity", "background_to_object_ratio"),
        fmt="ratio",
        optional=True,
    ),
    # Diagnostics self-attention cannot fool (wsss.evaluation.attention_diagnostics): an
    # object patch's summed-affinity share on the rest of its own object (self excluded;
    # the oracle grouping 1 - 1/n, the identity 0), and the class-token lift of the class
    # attention summed over cam.class_layers (1 = uniform).
    Column(
        "affinity_rest_of_object",
        "affinity rest-of-object share",
        "attention",
        ("affinity", "rest_of_object_share"),
        fmt="ratio",
        optional=True,
    ),
    Column(
        "class_token_lift",
        "class-token lift",
        "attention",
        ("class_attention", "class_token_lift"),
        fmt="ratio",
        optional=True,
    ),
    Column(
        "seeds", "seeds", "intervals", fmt="count", shows=frozenset({"table.md", "metrics.json"})
    ),
    Column(
        "detectable_diff",
        "detectable Δ",
        "intervals",
        fmt="detectable",
        shows=frozenset({"table.md"}),
    ),
    # Reference predictions on the same masks (one per dataset).
    Column(
        "all_background_miou",
        "all background",
        "cam",
        ("cam", "reference", "all_background"),
        shows=frozenset({"reference"}),
        aggregate="first",
    ),
    Column(
        "uniform_gt_miou",
        "uniform CAM over GT classes",
        "cam",
        ("cam", "reference", "uniform_gt_classes"),
        shows=frozenset({"reference"}),
        aggregate="first",
    ),
    # The papers' numbers beside ours (only in tables of real benchmarks).
    Column(
        "paper_cam_miou",
        "paper CAM",
        "paper",
        ("cam_miou",),
        fmt="paper",
        shows=frozenset({"table.md"}),
    ),
    Column(
        "paper_seg_miou_val",
        "paper seg (val)",
        "paper",
        ("seg_miou_val",),
        fmt="paper",
        shows=frozenset({"table.md"}),
    ),
)


def run_columns(source: str | None = None) -> list[Column]:
    """The columns read from per-run files (of ``source`` only, when given)."""
    return [c for c in COLUMNS if c.source in RUN_SOURCES and source in (None, c.source)]


def _missing(path: str | Path, keys: tuple[str, ...]) -> ValueError:
    return ValueError(
        f"{path}: no {'.'.join(keys)}; the file was written by an older stage, rerun it "
        "(snakemake reruns it when the code changed)"
    )


def _value(run: dict, column: Column, path: str | Path) -> Any:
    """The column's value in one run file; NaN for None in an optional column."""
    value: Any = run
    for i, key in enumerate(column.path):
        if not isinstance(value, dict) or key not in value:
            raise _missing(path, column.path[: i + 1])
        value = value[key]
    if value is None:
        if not column.optional:
            raise ValueError(f"{path}: {'.'.join(column.path)} is null")
        return math.nan
    return value


def _run_key(run: dict, path: str | Path) -> tuple[str, str, int]:
    meta = run.get("meta")
    if not isinstance(meta, dict) or not {"dataset", "method", "seed"} <= set(meta):
        raise _missing(path, ("meta",))
    return meta["dataset"], meta["method"], int(meta["seed"])


def _stage_files(files: list[str | Path], top: str) -> tuple[dict, dict[str, set[str]]]:
    """{(dataset, method, seed): parsed file} of one stage's files, and its splits per dataset."""
    runs, splits = {}, {}
    for path in files:
        run = read_json(path)
        if top not in run:
            raise ValueError(f"{path}: expected a {top!r} entry (is it the right kind of file?)")
        key = _run_key(run, path)
        runs[key] = (path, run)
        if isinstance(run[top], dict) and "split" in run[top]:
            splits.setdefault(key[0], set()).add(run[top]["split"])
    return runs, splits


def _attention_files(files: list[str | Path]) -> dict[tuple[str, str, int], tuple]:
    """{(dataset, trained run, seed): (path, parsed file)}; a skipped run has no values."""
    runs = {}
    for path in files:
        run = read_json(path)
        meta = run.get("meta")
        if not isinstance(meta, dict) or not {"dataset", "run", "seed"} <= set(meta):
            raise _missing(path, ("meta",))
        runs[(meta["dataset"], meta["run"], int(meta["seed"]))] = (path, run)
    return runs


def collect_counts(metric_files: list[str | Path]) -> dict[tuple[str, str, int], PerImageCounts]:
    """{(dataset, method, seed): per-image intersection/union counts} of the runs' CAM metrics."""
    counts = {}
    for path in metric_files:
        run = read_json(path)
        entry = _value(run, Column("per_image", "", "cam", ("cam", "per_image")), path)
        counts[_run_key(run, path)] = PerImageCounts.from_json(entry, f"{path}: cam.per_image")
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
    """One row per run, a column per :func:`run_columns` spec (runs.csv).
    ``runs.attrs["splits"]``: {column: {dataset: split names}}.

    ``attention_files``: the trained runs' attention diagnostics, and ``training_runs``
    the trained run of each grid method (required for every method when files are given).

    ``labels`` and ``baselines``: display label and baseline variant
    (``methods.<v>.baseline``) per grid method. The report rules pass them; metrics files
    carry neither, so renaming a method or changing its baseline reruns only the report."""
    stage_inputs = {"decoder": decoder_files, "pseudo_labels": pseudo_label_files, "seg": seg_files}
    stages, splits = {}, {}
    for source, files in stage_inputs.items():
        stages[source], found = _stage_files(list(files), run_columns(source)[0].path[0])
        for column in run_columns(source):
            splits[column.key] = found
    attention = _attention_files(list(attention_files))
    rows = []
    for path in metric_files:
        run = read_json(path)
        dataset, method, seed = _run_key(run, path)
        row: dict[str, Any] = {
            "dataset": dataset,
            "method": method,
            "label": (labels or {}).get(method, method),
            "seed": seed,
            "baseline": (baselines or {}).get(method),
        }
        if attention and method not in (training_runs or {}):
            raise ValueError(f"{path}: no trained run given for method {method!r}")
        trained = (dataset, (training_runs or {}).get(method), seed)
        for column in run_columns():
            if column.source == "cam":
                row[column.key] = _value(run, column, path)
            elif column.source == "attention":
                found = attention.get(trained)
                skipped = found is None or found[1].get("skipped")
                row[column.key] = math.nan if skipped else float(_value(found[1], column, found[0]))
            else:
                found = stages[column.source].get((dataset, method, seed))
                row[column.key] = math.nan if found is None else _value(found[1], column, found[0])
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


def add_paper_numbers(summary: pd.DataFrame, dataset_kinds: dict[str, str]) -> pd.DataFrame:
    """The papers' reported mIoU (as a fraction, like ours) for each (dataset, method) row;
    NaN where the paper reports none or the dataset's kind is not given (e.g. synthetic)."""
    from wsss.report.paper import paper_numbers

    summary = summary.copy()
    for column in (c for c in COLUMNS if c.source == "paper"):
        values = []
        for row in summary.itertuples():
            kind = dataset_kinds.get(row.dataset)
            entry = paper_numbers(kind, row.method).get(column.path[0]) if kind else None
            values.append(entry["value"] / 100.0 if entry else float("nan"))
        summary[column.key] = values
    return summary


def summarize_runs(runs: pd.DataFrame, method_order: list[str] | None = None) -> pd.DataFrame:
    """Per (dataset, method), each run column aggregated over seeds as its spec says:
    ``<key>_mean`` and ``<key>_std`` (sample std), ``<key>_runs`` (a count of flags) or
    ``<key>`` (the same for every run); ``seeds``: how many runs."""
    by = ["dataset", "method", "label"]
    grouped = runs.groupby(by, sort=False)
    means = [c.key for c in run_columns() if c.aggregate == "mean"]
    summary = (
        grouped[means]
        .mean()
        .add_suffix("_mean")
        .join(grouped[means].std(ddof=1).add_suffix("_std"))
    )
    for column in run_columns():
        if column.aggregate == "sum":
            summary[f"{column.key}_runs"] = grouped[column.key].sum().astype(int)
        elif column.aggregate == "first":
            summary[column.key] = grouped[column.key].first()
    summary["seeds"] = grouped.size()
    baselines = grouped["baseline"]
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
    edges = row.threshold_at_edge_runs
    return f"{cell} (edge {edges}/{row.seeds})" if edges else cell


def _mean_std(row: Any, key: str) -> tuple[float, float]:
    return getattr(row, f"{key}_mean"), getattr(row, f"{key}_std")


# How table.md shows a column: summary rows (mean ± std) and per-run rows (one value).
_SUMMARY_CELLS = {
    "percent": lambda row, c: _pm_or_empty(*_mean_std(row, c.key)),
    "ratio": lambda row, c: _ratio_cell(*_mean_std(row, c.key)),
    "threshold": lambda row, c: _threshold_cell(row),
    "ci": lambda row, c: _ci_cell(row.cam_miou_ci_low, row.cam_miou_ci_high),
    "diff": lambda row, c: _diff_cell(row),
    "count": lambda row, c: str(getattr(row, c.key)),
    "detectable": lambda row, c: _detectable_cell(row.detectable_diff),
    "paper": lambda row, c: _detectable_cell(getattr(row, c.key)),
}
_RUN_CELLS = {
    "percent": lambda row, c: _pm_or_empty(getattr(row, c.key), math.nan),
    "ratio": lambda row, c: _ratio_cell(getattr(row, c.key), math.nan),
    "threshold": lambda row, c: f"{row.threshold:.2f}{' (edge)' if row.threshold_at_edge else ''}",
}


def _header(column: Column, runs: pd.DataFrame) -> str:
    split = _split_suffix(runs, column.key, column.split_note) if column.split_note else ""
    return column.header.replace("{split}", split)


def _markdown_rows(
    head: dict[str, str], columns: list[Column], cells: dict, rows: Any, runs: pd.DataFrame
) -> list[str]:
    """A markdown table: ``head`` ({title: row attribute}) then one column per spec."""
    names = [*head, *(_header(c, runs) for c in columns)]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        values = [str(getattr(row, attribute)) for attribute in head.values()]
        values += [cells[c.fmt](row, c) for c in columns]
        lines.append("| " + " | ".join(values) + " |")
    return lines


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
    lines = [
        "# Results",
        "",
        "CAM mIoU (%) on each dataset's evaluation split at the best background threshold, "
        "with mean foreground precision and recall (%) at that threshold. "
        "Mean ± std over seeds (sample std).",
        "",
        "95% CI: an interval of the CAM mIoU over training seeds and images: the variance "
        "over seeds plus the image-sampling variance the seeds share (one image bootstrap "
        "draw shared by every seed), each part with its own t quantile (seeds − 1 and "
        "images − 1 degrees of freedom; docs/statistics.md). "
        f"{INTERVALS_COVER} "
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
        "Affinity rest-of-object share: the same affinity's mass, for a patch of an object "
        "of 2+ patches, on the other patches of its own object (self excluded; 0 for the "
        "identity, 1 - 1/n for a uniform grouping of its n patches): what the refinement "
        "spreads a CAM over an object with, which self-attention cannot inflate. "
        "Class-token lift: the class attention summed over the CAM's class layers, its mass "
        "on the class's own patches over their share (1 = uniform). Same files; empty where "
        "the dataset has no instance masks.",
        "",
    ]
    # Only tables of real benchmarks get the papers' columns (the synthetic one has none).
    paper = [c.key for c in COLUMNS if c.source == "paper"]
    with_paper = all(k in summary for k in paper) and bool(summary[paper].notna().any().any())
    if with_paper:
        lines += [
            "Paper CAM / paper seg: the mIoU the method's paper reports for the same "
            "recipe on that benchmark (seg: its final segmentation, a stage-2 network or a "
            "single-stage method's own decoder; wsss/resources/paper_numbers.yaml gives each "
            "number's source and whether it was checked); empty where none is reported.",
            "",
        ]
    shown = [c for c in COLUMNS if "table.md" in c.shows and (c.source != "paper" or with_paper)]
    head = {"dataset": "dataset", "method": "label"}
    lines += _markdown_rows(head, shown, _SUMMARY_CELLS, summary.itertuples(), runs)
    reference = [c for c in COLUMNS if "reference" in c.shows]
    lines += ["", "Reference predictions (same masks, no model):", ""]
    lines += ["| dataset | " + " | ".join(c.header for c in reference) + " |"]
    lines += ["|" + "---|" * (len(reference) + 1)]
    for dataset, group in runs.groupby("dataset", sort=True):
        cells = [f"{group[c.key].iloc[0] * 100:.1f}" for c in reference]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    per_run = [c for c in COLUMNS if "runs.md" in c.shows]
    lines += ["", "## Per run", ""]
    head = {"dataset": "dataset", "method": "label", "seed": "seed"}
    lines += _markdown_rows(head, per_run, _RUN_CELLS, runs.itertuples(), runs)
    return "\n".join(lines) + "\n"


def _rounded(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def metrics_tree(runs: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Any]:
    """Nested {dataset: {method: {...}}} for ``dvc metrics show/diff``.

    Every leaf is a scalar (DVC drops lists). Per column spec shown in metrics.json: a
    mean column as ``<key>`` and ``<key>_std`` (left out when the mean is NaN, std null
    with one seed), a flag column as ``<key>_runs``; the interval as ``cam_miou_ci_low``
    / ``cam_miou_ci_high``; the paired difference under ``vs_baseline`` as ``diff`` with
    ``diff_ci_low`` / ``diff_ci_high``, ``detectable_diff`` and ``verdict``; null where
    undefined (one seed)."""
    tree: dict[str, Any] = {}
    for row in summary.itertuples():
        entry: dict[str, Any] = {}
        for column in COLUMNS:
            if "metrics.json" not in column.shows:
                continue
            if column.aggregate == "sum":
                entry[f"{column.key}_runs"] = int(getattr(row, f"{column.key}_runs"))
            elif column.source in RUN_SOURCES:
                mean, std = _mean_std(row, column.key)
                if not math.isnan(mean):
                    entry[column.key] = _rounded(mean)
                    entry[f"{column.key}_std"] = _rounded(std)
                if column.key == "cam_miou":
                    entry["cam_miou_ci_low"] = _rounded(row.cam_miou_ci_low)
                    entry["cam_miou_ci_high"] = _rounded(row.cam_miou_ci_high)
            elif column.key == "seeds":
                entry["seeds"] = int(row.seeds)
            elif column.key == "diff_vs_baseline" and not math.isnan(row.diff_vs_baseline):
                entry["vs_baseline"] = {
                    "baseline": row.baseline,
                    "diff": _rounded(row.diff_vs_baseline),
                    "diff_ci_low": _rounded(row.diff_ci_low),
                    "diff_ci_high": _rounded(row.diff_ci_high),
                    "detectable_diff": _rounded(row.detectable_diff),
                    "verdict": row.vs_baseline,
                }
        tree.setdefault(row.dataset, {})[row.method] = entry
    reference = [c for c in COLUMNS if "reference" in c.shows]
    for dataset, group in runs.groupby("dataset"):
        tree[dataset]["reference"] = {c.key: _rounded(group[c.key].iloc[0]) for c in reference}
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
    intervals: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Write table.md, table.csv, runs.csv, metrics.json and the plot CSVs to ``out_dir``.

    ``intervals``: params.yaml ``intervals`` ({n_resamples, seed}; the defaults of
    :func:`add_intervals` where absent). Returns the summary (one row per method)."""
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
    summary = add_intervals(
        summarize_runs(runs, method_order), collect_counts(metric_files), **(intervals or {})
    )
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
