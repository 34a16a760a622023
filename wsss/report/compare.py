"""This checkout's results against another commit's: paired differences with the table's intervals.

For every (dataset, method) row present in both, the paired difference of the CAM mIoU
(this checkout minus the other commit), over the seeds both ran, on the same images,
with the results table's interval over seeds and images
(wsss.evaluation.bootstrap.paired_miou_difference). The other commit's per-run
``cam_metrics.json`` files are read through DVC (``dvc.api.DVCFileSystem``: the
project's cache, else its remote); nothing is retrained or re-evaluated. This
checkout's are read from the working tree's ``results_dir``.

Errors name what is missing: a revision git does not know, a revision whose DVC data
has no per-run metrics (or whose data is neither in the cache nor in the remote), or
runs scored on different splits or images.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wsss.evaluation.bootstrap import N_RESAMPLES, paired_miou_difference
from wsss.evaluation.per_image import PerImageCounts
from wsss.io import read_json

CAM_METRICS = "cam_metrics.json"


def _runs_from_json(runs: dict[str, dict[str, Any]]) -> dict[tuple[str, str, int], tuple]:
    """{(dataset, method, seed): (split, counts)} from {path: parsed cam_metrics.json}."""
    out = {}
    for path, run in runs.items():
        try:
            meta, cam = run["meta"], run["cam"]
            key = (meta["dataset"], meta["method"], int(meta["seed"]))
            counts = PerImageCounts.from_json(cam["per_image"], f"{path}: cam.per_image")
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a cam_metrics.json with meta and cam.per_image") from err
        out[key] = (cam.get("split"), counts)
    return out


def local_runs(results_dir: str | Path) -> dict[tuple[str, str, int], tuple]:
    """This checkout's runs under ``results_dir/runs``; FileNotFoundError if there are none."""
    root = Path(results_dir) / "runs"
    files = sorted(root.glob(f"*/*/seed*/{CAM_METRICS}"))
    if not files:
        raise FileNotFoundError(
            f"{root}: no */*/seed*/{CAM_METRICS}; run the grid (or `dvc pull`) in this checkout"
        )
    return _runs_from_json({str(p): read_json(p) for p in files})


def dvc_runs(
    rev: str, results_dir: str = "results", repo: str | Path = "."
) -> dict[tuple[str, str, int], tuple]:
    """The runs of commit ``rev`` under ``results_dir/runs``, read through DVC.

    ValueError naming the rev: unknown to git, no DVC-tracked per-run metrics at that
    rev, or data missing from both the cache and the remote."""
    import json

    from dvc.api import DVCFileSystem

    try:
        fs = DVCFileSystem(str(repo), rev=rev)
        files = [
            f for f in fs.find(f"{results_dir}/runs", detail=False) if f.endswith(f"/{CAM_METRICS}")
        ]
    except FileNotFoundError:
        files = []
    except Exception as err:  # dvc/scmrepo raise their own types for an unknown revision
        if _is_commit(rev, repo):  # git knows it: DVC lacks the data of a tracked folder
            raise ValueError(
                f"revision {rev!r}: DVC cannot read its {results_dir}/runs ({err}): the data "
                f"is in neither this checkout's DVC cache nor {_remotes_text(repo)}"
            ) from err
        raise ValueError(f"revision {rev!r}: git or DVC cannot open it ({err})") from err
    if not files:
        raise ValueError(
            f"revision {rev!r}: no DVC data for it: {results_dir}/runs/*/*/seed*/{CAM_METRICS} "
            "is not tracked by DVC there (dvc.lock) or holds no runs"
        )
    runs = {}
    for path in sorted(files):
        try:
            runs[f"{rev}:{path}"] = json.loads(fs.read_text(path))
        except Exception as err:
            raise ValueError(
                f"revision {rev!r}: {path} is tracked but its data is in neither the DVC cache "
                f"nor {_remotes_text(repo)} ({err})"
            ) from err
    return _runs_from_json(runs)


def _is_commit(rev: str, repo: str | Path) -> bool:
    import subprocess

    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=repo,
        capture_output=True,
    )
    return result.returncode == 0


def _remotes_text(repo: str | Path) -> str:
    """Where the missing data could come from, and what to do: the configured DVC
    remotes (then `dvc push` from the machine that made the runs), or none (then add one,
    or rerun the grid at that commit and `dvc commit` it)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        remotes = sorted(dvc_repo.config.get("remote", {}))
    if remotes:
        return (
            f"the DVC remote(s) {', '.join(remotes)}; `dvc push` it from the machine that "
            "made those runs"
        )
    return (
        "a DVC remote: none is configured (`dvc remote list` is empty); add the one that "
        "holds it (`dvc remote add -d <name> <url>`), or check out that commit, run the grid "
        "and `dvc commit` it"
    )


def compare_runs(
    ours: dict[tuple[str, str, int], tuple],
    theirs: dict[tuple[str, str, int], tuple],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One dict per (dataset, method) in both: seeds, both means, the paired difference
    (ours minus theirs, fractions) with its interval and verdict. ValueError when a row's
    runs were scored on different splits or images."""
    rows: dict[tuple[str, str], list[int]] = {}
    for dataset, method, s in sorted(set(ours) & set(theirs)):
        rows.setdefault((dataset, method), []).append(s)
    out = []
    for (dataset, method), seeds in rows.items():
        name = f"{dataset}/{method}"
        pairs = []
        for s in seeds:
            (split_a, a), (split_b, b) = ours[(dataset, method, s)], theirs[(dataset, method, s)]
            if split_a != split_b:
                raise ValueError(
                    f"{name} seed {s}: scored on split {split_a!r} here and {split_b!r} in "
                    "the other commit; a paired comparison needs the same split"
                )
            if set(a.ids) != set(b.ids):
                raise ValueError(
                    f"{name} seed {s}: the two commits scored different images of split "
                    f"{split_a!r} ({len(a.ids)} vs {len(b.ids)}); was the dataset changed?"
                )
            pairs.append((a, b))
        diff = paired_miou_difference(pairs, n_resamples=n_resamples, seed=seed)
        out.append(
            {
                "dataset": dataset,
                "method": method,
                "seeds": seeds,
                "ours": sum(a.miou() for a, _ in pairs) / len(pairs),
                "theirs": sum(b.miou() for _, b in pairs) / len(pairs),
                "diff": diff.estimate,
                "diff_ci_low": diff.low,
                "diff_ci_high": diff.high,
                "verdict": diff.verdict() or "one seed: no interval",
            }
        )
    return out


def markdown(
    rows: list[dict[str, Any]], rev: str, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> str:
    """The comparison as a markdown table (percentages); ``n_resamples``/``seed``: the
    bootstrap settings the rows were computed with, stated in the header."""
    lines = [
        f"CAM mIoU: this checkout vs `{rev}`, paired by seed and image; 95% interval over "
        f"seeds and images (as in results/table.md; {n_resamples} image resamples, "
        f"seed {seed}).",
        "",
        f"| dataset | method | seeds | this checkout | {rev} | Δ [95% CI] | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ci = (
            ""
            if math.isnan(r["diff_ci_low"])
            else f" [{r['diff_ci_low'] * 100:+.1f}, {r['diff_ci_high'] * 100:+.1f}]"
        )
        lines.append(
            f"| {r['dataset']} | {r['method']} | {','.join(map(str, r['seeds']))} "
            f"| {r['ours'] * 100:.1f} | {r['theirs'] * 100:.1f} | {r['diff'] * 100:+.1f}{ci} "
            f"| {r['verdict']} |"
        )
    return "\n".join(lines) + "\n"
