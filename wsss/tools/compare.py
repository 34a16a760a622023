"""Command ``compare``: this checkout's CAM mIoU against another commit's, with intervals.

    wsss compare HEAD~1                   # rows in both, paired by seed and image
    wsss compare v1.0 --out compare.md

The other commit's per-run metrics are read through DVC (its cache, else the remote);
nothing is retrained (wsss.report.compare). ``dvc metrics diff`` still shows the raw
numbers of results/metrics.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "paired CAM mIoU differences between this checkout and another commit (via DVC)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("rev", help="the other commit (any git revision: HEAD~1, a tag, a hash)")
    p.add_argument("--results-dir", default="results", help="params.yaml results_dir")
    p.add_argument("--repo", default=".", help="the project's git repository")
    p.add_argument("--out", help="also write the markdown table here")
    p.add_argument("--log", help="also write the log to this file")


def run(args: argparse.Namespace) -> int:
    from wsss.report.compare import compare_runs, dvc_runs, local_runs, markdown

    ours = local_runs(Path(args.repo) / args.results_dir)
    theirs = dvc_runs(args.rev, args.results_dir, args.repo)
    rows = compare_runs(ours, theirs)
    if not rows:
        raise ValueError(
            f"no (dataset, method, seed) run is in both this checkout ({len(ours)} runs) and "
            f"{args.rev!r} ({len(theirs)} runs)"
        )
    text = markdown(rows, args.rev)
    print(text, end="")
    if args.out:
        from wsss.io import write_text

        write_text(args.out, text)
    return 0
