"""The attention-diagnostics figure of one dataset, from the runs' ``attention_diagnostics.json``.

Two rows of four panels, one line per trained run (mean over seeds, each seed
a faint point), per block and, apart from the blocks, for the summed patch
affinity the refinement propagates CAMs with:

- top, lifts (log scale; the dashed line at 1 is uniform attention): the
  background-to-object ratio, the own-object lift, the other-object lift and the
  class-token lift (its point apart from the blocks is the CAM's summed class
  attention, ``cam.class_layers``, not the affinity);
- bottom, where an object patch's attention goes (shares in [0, 1]): itself, the
  rest of its own object, other objects, the background.

Attention useful for propagating CAMs has own-object lift well above 1,
other-object lift near or below 1, a background-to-object ratio below 1 and, since
self-attention inflates the own-object lift, a large rest-of-object share
(definitions: :mod:`wsss.evaluation.attention_diagnostics`). Files written before
a statistic existed show it as missing.

Runs whose diagnostics were skipped (a dataset without instance masks) are left
out; when every run was, the figure says why instead of plotting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsss.io import read_json
from wsss.report.plots import _colours, _pyplot, _save

# (statistic, title, log scale): the figure's rows.
LIFT_PANELS = (
    ("background_to_object_ratio", "background-to-object ratio", True),
    ("own_object_lift", "own-object lift (self included)", True),
    ("other_object_lift", "other-object lift", True),
    ("class_token_lift", "class-token lift", True),
)
SHARE_PANELS = (
    ("self_share", "object patch: share on itself", False),
    ("rest_of_object_share", "share on the rest of its object", False),
    ("other_objects_share", "share on other objects", False),
    ("background_share", "share on the background", False),
)
PANELS = (*LIFT_PANELS, *SHARE_PANELS)
# The statistic whose point apart from the blocks is the summed class attention.
CLASS_KEYS = ("class_token_lift",)


@dataclass
class RunDiagnostics:
    """One trained run's diagnostics (``blocks`` per block, ``affinity``; None when skipped)."""

    path: Path
    dataset: str
    run: str
    seed: int
    blocks: list[dict[str, Any]] | None
    affinity: dict[str, Any] | None
    skipped: str | None
    class_attention: dict[str, Any] | None = None


def load_diagnostics(path: str | Path) -> RunDiagnostics:
    """Read one ``attention_diagnostics.json``, naming the file when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"attention diagnostics {path} do not exist; run the attention_diagnostics rule first"
        )
    data = read_json(path)
    try:
        meta = data["meta"]
        skipped = data["skipped"]
        return RunDiagnostics(
            path=path,
            dataset=str(meta["dataset"]),
            run=str(meta["run"]),
            seed=int(meta["seed"]),
            blocks=None if skipped else list(data["blocks"]),
            affinity=None if skipped else dict(data["affinity"]),
            skipped=skipped,
            class_attention=None if skipped else data.get("class_attention"),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not an attention diagnostics file of the attention_diagnostics stage "
            f"(missing {err})"
        ) from err


def _value(entry: dict[str, Any], key: str) -> float:
    value = entry.get(key)
    return math.nan if value is None else float(value)


def run_values(run: RunDiagnostics, key: str) -> np.ndarray:
    """Per block, then the affinity (for :data:`CLASS_KEYS`: the summed class attention):
    the statistic ``key`` of one run (NaN where it had no queries or the file predates it)."""
    if run.blocks is None or run.affinity is None:
        raise ValueError(f"{run.path}: skipped ({run.skipped}); no values")
    last = (run.class_attention or {}) if key in CLASS_KEYS else run.affinity
    return np.array([_value(b, key) for b in run.blocks] + [_value(last, key)])


def plot_attention_diagnostics(
    files: Sequence[str | Path],
    path: str | Path,
    labels: dict[str, str] | None = None,
    order: Sequence[str] | None = None,
) -> Path:
    """Write the figure of one dataset's runs (all ``files`` of one dataset) to ``path``.

    ``labels``: display label per run; ``order``: the runs' order (others follow,
    sorted). Raises ValueError for files of several datasets or runs whose seeds
    have different depths.
    """
    runs = [load_diagnostics(f) for f in files]
    if not runs:
        raise ValueError("no attention diagnostics files given")
    datasets = sorted({r.dataset for r in runs})
    if len(datasets) > 1:
        raise ValueError(f"attention diagnostics of several datasets in one figure: {datasets}")
    dataset = datasets[0]
    plt = _pyplot()
    from matplotlib import ticker

    kept = [r for r in runs if r.skipped is None]
    if not kept:
        fig, ax = plt.subplots(figsize=(8.0, 1.6), layout="constrained")
        ax.axis("off")
        reasons = sorted({r.skipped for r in runs if r.skipped})
        ax.text(
            0.5,
            0.5,
            "no attention diagnostics: " + "; ".join(reasons),
            ha="center",
            va="center",
            wrap=True,
            fontsize=9,
        )
        ax.set_title(f"{dataset}: attention diagnostics", fontsize=10)
        _save(fig, Path(path))
        return Path(path)

    names = list(dict.fromkeys([*(order or []), *sorted({r.run for r in kept})]))
    groups = [(n, [r for r in kept if r.run == n]) for n in names]
    groups = [(n, g) for n, g in groups if g]
    colours = _colours(len(groups))
    fig, grid = plt.subplots(2, len(LIFT_PANELS), figsize=(16.0, 7.6), layout="constrained")
    axes = list(grid.reshape(-1))
    depth = 0
    for (name, group), colour in zip(groups, colours, strict=True):
        depths = {len(r.blocks or []) for r in group}
        if len(depths) > 1:
            raise ValueError(f"{name}: its seeds' models have different depths {sorted(depths)}")
        depth = max(depth, depths.pop())
        for ax, (key, _, _) in zip(axes, PANELS, strict=True):
            values = np.stack([run_values(r, key) for r in group])
            x = np.arange(values.shape[1], dtype=float)
            x[-1] += 0.5  # the affinity sits apart from the blocks
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a statistic no seed has
                mean = np.nanmean(values, axis=0)
            ax.plot(
                x[:-1],
                mean[:-1],
                color=colour,
                marker="o",
                markersize=4,
                linewidth=1.4,
                label=(labels or {}).get(name, name),
            )
            ax.plot(x[-1:], mean[-1:], color=colour, marker="D", markersize=6, linestyle="none")
            if len(group) > 1:
                for row in values:
                    ax.scatter(x, row, color=colour, s=8, alpha=0.35, zorder=3)
    ticks = [*(f"b{i}" for i in range(depth))]
    for ax, (key, title, log) in zip(axes, PANELS, strict=True):
        ax.axvline(depth - 0.25, color="grey", linewidth=0.6, alpha=0.5)
        if log:
            ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            ax.set_yscale("log")
            # plain numbers (0.5, 2, 10) rather than powers of ten on the log axis
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        else:
            ax.set_ylim(0.0, 1.0)
        ax.tick_params(axis="y", which="both", labelsize=7)
        last = "class attn" if key in CLASS_KEYS else "affinity"
        ax.set_xticks([*range(depth), depth + 0.5], [*ticks, last], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("ratio to uniform attention (1 = uniform)")
    axes[len(LIFT_PANELS)].set_ylabel("share of the object patch's attention row")
    seeds = sorted({r.seed for r in kept})
    fig.suptitle(
        f"{dataset}: attention per block and summed patch affinity (lines: mean over seeds "
        f"{seeds}; affinity blocks as the CAM recipe)",
        fontsize=10,
    )
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    _save(fig, Path(path))
    return Path(path)
