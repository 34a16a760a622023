"""Command ``compare``: this checkout's CAM mIoU against another commit's, with intervals.

    wsss compare HEAD~1                   # rows in both, paired by seed and image
    wsss compare v1.0 --out compare.md
    wsss compare HEAD~1 --configfile configs/smoke.yaml   # the smoke preset's results_dir

The other commit's per-run metrics are read through DVC (its cache, else the remote);
nothing is retrained (wsss.report.compare). The results folder and the intervals' bootstrap
settings (``intervals: {n_resamples, seed}``) come from this checkout's params, as for the
table, so a comparison uses the table's intervals. ``dvc metrics diff`` still shows the raw
numbers of results/metrics.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "paired CAM mIoU differences between this checkout and another commit (via DVC)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rev", help="the other commit (any git revision: HEAD~1, a tag, a hash)")
    p.add_argument("--repo", default=".", help="the project's git repository")
    p.add_argument(
        "--params",
        default="params.yaml",
        help="this checkout's params file, relative to --repo: results_dir and intervals",
    )
    p.add_argument(
        "--configfile",
        action="append",  # one file per flag, as `wsss run`: a rev after it stays the rev
        default=[],
        help="override file merged on top of --params (repeatable), as for `wsss run`",
    )
    p.add_argument("--results-dir", help="the results folder (default: the params' results_dir)")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--log", help="also write the log to this file")


def run(args: argparse.Namespace) -> int:
    from wsss.config import load_params, results_dir
    from wsss.report.compare import compare_runs, dvc_runs, local_runs, markdown

    repo = Path(args.repo)
    params = load_params(repo / args.params, *(repo / f for f in args.configfile))
    folder = args.results_dir or results_dir(params)
    intervals = dict(params["intervals"])
    ours = local_runs(repo / folder)
    theirs = dvc_runs(args.rev, folder, args.repo)
    rows = compare_runs(ours, theirs, **intervals)
    if not rows:
        raise ValueError(
            f"no (dataset, method, seed) run is in both this checkout ({len(ours)} runs) and "
            f"{args.rev!r} ({len(theirs)} runs)"
        )
    text = markdown(rows, args.rev, **intervals)
    print(text, end="")
    if args.out:
        from wsss.io import write_text

        write_text(args.out, text)
    return 0
