"""Where a grid run's time goes, per rule: wall time of its jobs (from Snakemake's run
log) against the start-up of one job (interpreter + `wsss <command>` imports, measured
here as `wsss <command> --help`, which imports exactly the command's stage module).

    python benchmarks/grid_time.py .snakemake/log/<run>.log [--repeat 3 | --quick] [--out results/bench_grid.md]

Start-up is measured on this machine when the script runs; the jobs' wall times are
those of the logged run. Both depend on the machine and its load: compare shares, not
seconds, across machines.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from wsss.config import rule_family  # the per-run CAM rules as one row

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
DONE = re.compile(r"^Finished jobid: (\d+)|^Finished job (\d+)\.")


def job_times(log: Path) -> dict[str, list[float]]:
    """{rule: [wall seconds of each job]} from a Snakemake log (1 s resolution)."""
    started: dict[str, tuple[str, datetime]] = {}
    walls: dict[str, list[float]] = {}
    stamp = rule = None
    for line in log.read_text().splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            rule = rule_family(m.group(1))
        elif (m := JOBID.match(line)) and rule and stamp:
            started[m.group(1)] = (rule, stamp)
        elif (m := DONE.match(line)) and stamp:
            job = m.group(1) or m.group(2)
            if job in started:
                name, start = started.pop(job)
                walls.setdefault(name, []).append((stamp - start).total_seconds())
    return walls


def startup_seconds(command: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run(["wsss", command, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


COMMANDS = {  # rule -> the wsss command its shell runs
    "prepare_data": "prepare-data",
    "train": "train",
    "entropy_weights": "entropy-weights",
    "cams": "cams",
    "cams_shard": "cams",
    "evaluate_cams": "evaluate",
    "evaluate_decoder": "evaluate-decoder",
    "pseudo_labels": "pseudo-labels",
    "segment": "segment",
    "attention_diagnostics": "attention-diagnostics",
    "attention_figure": "attention-figure",
    "table": "table",
    "plots": "plots",
    "gallery": "gallery",
    "table_html": "table-html",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one start-up run per command (a check, not a measurement)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
    walls = job_times(args.log)
    rows, total_wall, total_startup = [], 0.0, 0.0
    for rule, times in sorted(walls.items(), key=lambda kv: -sum(kv[1])):
        command = COMMANDS.get(rule)
        startup = startup_seconds(command, args.repeat) if command else 0.0
        wall = sum(times)
        total_wall += wall
        total_startup += startup * len(times)
        rows.append((rule, len(times), wall, startup, startup * len(times)))
    lines = [
        f"Grid time per rule, from `{args.log.name}` (job wall times, 1 s resolution; jobs "
        "overlap on the cores) and the start-up of one job measured now (`wsss <command> "
        "--help`: interpreter and the stage's imports).",
        "",
        "| rule | jobs | job wall time (s) | start-up per job (s) | start-up share |",
        "|---|---|---|---|---|",
    ]
    for rule, n, wall, startup, startups in rows:
        share = startups / wall if wall else 0.0
        lines.append(f"| {rule} | {n} | {wall:.0f} | {startup:.2f} | {share:.0%} |")
    lines.append(
        f"| **all** | {sum(r[1] for r in rows)} | {total_wall:.0f} | | "
        f"{total_startup / total_wall if total_wall else 0:.0%} |"
    )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
