"""Where a grid run's time goes, per rule: wall time of its jobs (from Snakemake's run
log) against the start-up of one job (interpreter + `wsss <command>` imports, measured
here as `wsss <command> --help`, which imports exactly the command's stage module).

    python benchmarks/grid_time.py .snakemake/log/<run>.log [--repeat 3 | --quick] [--out results/bench_grid.md]
    python benchmarks/grid_time.py .snakemake/log/<run>.log --seed-section results/bench.md

The second form writes what one more seed adds to the grid (per rule: job-seconds,
start-up, compute) into the seed-cost section of results/bench.md.

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
SEED = re.compile(r"^\s+wildcards: .*\bseed=(\d+)")
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


def seed_jobs(log: Path) -> dict[str, dict[str, list[float]]]:
    """{rule: {seed (or "" for a job of no seed): [wall seconds of each job]}}."""
    started: dict[str, tuple[str, datetime]] = {}
    seeds: dict[str, str] = {}
    walls: dict[str, dict[str, list[float]]] = {}
    stamp = rule = None
    job = None
    for line in log.read_text().splitlines():
        if m := STAMP.match(line):
            stamp = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            rule = rule_family(m.group(1))
        elif (m := JOBID.match(line)) and rule and stamp:
            job = m.group(1)
            started[job] = (rule, stamp)
            seeds[job] = ""
        elif (m := SEED.match(line)) and job in started:
            seeds[job] = m.group(1)
        elif (m := DONE.match(line)) and stamp:
            done = m.group(1) or m.group(2)
            if done in started:
                name, start = started.pop(done)
                per = walls.setdefault(name, {})
                per.setdefault(seeds[done], []).append((stamp - start).total_seconds())
    return walls


def per_seed_section(log: Path, repeat: int) -> str:
    """Markdown: what one more seed adds to the grid of ``log``, per rule, split into
    start-up (measured now) and the rest (compute)."""
    walls = seed_jobs(log)
    seeds = sorted({s for per in walls.values() for s in per if s})
    n = len(seeds)
    rows = []
    for rule, per in walls.items():
        seeded = [t for s, ts in per.items() if s for t in ts]
        if not seeded:
            continue
        command = COMMANDS.get(rule)
        startup = startup_seconds(command, repeat) if command else 0.0
        jobs = len(seeded) / n
        wall = sum(seeded) / n
        rows.append((rule, jobs, wall, startup * jobs))
    rows.sort(key=lambda r: -r[2])
    total = sum(r[2] for r in rows)
    fixed = sum(t for per in walls.values() for t in per.get("", []))
    lines = [
        f"One seed of `{log.name}` ({n} seeds: {', '.join(seeds)}): per rule, the mean over "
        "seeds of the wall time of that seed's jobs (1 s resolution; each job has one "
        "thread, so on an idle machine its wall time is about its CPU time), start-up = "
        "jobs x `wsss <command> --help` measured now, compute = the rest.",
        "",
        "| rule | jobs per seed | job-seconds per seed | start-up (s) | compute (s) | start-up share |",
        "|---|---|---|---|---|---|",
    ]
    inconsistent = False

    def split(wall: float, startups: float) -> str:
        nonlocal inconsistent
        if startups > wall:  # start-up now slower than the whole job then: load differs
            inconsistent = True
            return "— | —"
        return f"{wall - startups:.0f} | {startups / wall if wall else 0:.0%}"

    for rule, jobs, wall, startups in rows:
        lines.append(
            f"| {rule} | {jobs:g} | {wall:.0f} | {startups:.0f} | {split(wall, startups)} |"
        )
    startups = sum(r[3] for r in rows)
    lines.append(
        f"| **one seed** | {sum(r[1] for r in rows):g} | {total:.0f} | {startups:.0f} | "
        f"{split(total, startups)} |"
    )
    lines += [
        "",
        f"Jobs of no seed (data, tables, figures): {fixed:.0f} job-seconds in all, paid once.",
    ]
    if inconsistent:
        lines += [
            "",
            "—: the start-up measured now exceeds the job's whole wall time in the logged "
            "run, so the two were taken under different loads and no split is given; "
            "rerun this script right after the grid on an idle machine.",
        ]
    return "\n".join(lines) + "\n"


def _trained_runs(params_path: str) -> tuple[dict, dict[str, dict], int, int]:
    """The grid's trained runs on its first dataset: (model config, training method spec per
    training key, number of classes, batch size), as the train jobs would build them."""
    from wsss import config as wsss_config

    params = wsss_config.load_params(params_path)
    dataset = params["grid"]["datasets"][0]
    keys = sorted({wsss_config.training_key(params, m) for m in params["grid"]["methods"]})
    specs = {k: wsss_config.training_config(params, dataset, k)["method"] for k in keys}
    model = wsss_config.training_config(params, dataset, keys[0])["model"]
    classes = params["datasets"][dataset]["generator"]["num_classes"]
    return model, specs, classes, params["train"]["batch_size"]


def floor_section(params_path: str, rounds: int) -> str:
    """Markdown: training steps of the grid's trained runs against a plain timm ViT of the
    same shape (forward, backward, AdamW; benchmarks/bench.py's floor), in this process."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import bench_training

    model, specs, classes, batch = _trained_runs(params_path)
    result = bench_training(model, specs, classes, batch, steps=2, rounds=rounds)
    lines = [
        "",
        f"Training step against the plain-timm floor (same process, interleaved, {rounds} "
        f"rounds, batch {batch} of random images, every method past its warm-up): floor "
        f"{result['floor_images_per_s']:.0f} images/s under this run's load.",
        "",
        "| trained run | images/s | ratio to the floor (time per image) |",
        "|---|---|---|",
    ]
    for name, entry in result["methods"].items():
        lines.append(f"| {name} | {entry['images_per_s']:.0f} | {entry['ratio_to_floor']:.2f}x |")
    return "\n".join(lines) + "\n"


def bf16_section(params_path: str, rounds: int) -> str:
    """Markdown: each trained run's step under ``train.cpu_bf16`` against its fp32 step
    (benchmarks/bench.py's bench_cpu_bf16), in this process, interleaved."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from bench import bench_cpu_bf16

    from wsss.runtime import native_bf16

    if not native_bf16(torch.device("cpu")):
        return "\nThis CPU has no native bf16 (avx512_bf16 or AMX): train.cpu_bf16 not timed.\n"
    model, specs, classes, batch = _trained_runs(params_path)
    result = bench_cpu_bf16(model, specs, classes, batch, steps=2, rounds=rounds)
    lines = [
        "",
        f"Training step under `train.cpu_bf16` (bf16 autocast) against the fp32 step of the "
        f"same model (same process, interleaved, {rounds} rounds of 2 steps, batch {batch} of "
        "random images, every method past its warm-up):",
        "",
        "| trained run | fp32 images/s | bf16 / fp32 time (median) | range over rounds |",
        "|---|---|---|---|",
    ]
    for name, entry in result["methods"].items():
        low, high = entry["range"]
        lines.append(
            f"| {name} | {entry['fp32_images_per_s']:.0f} | {entry['ratio']:.2f}x "
            f"| {low:.2f}–{high:.2f} |"
        )
    return "\n".join(lines) + "\n"


def stacked_seeds_section(params_path: str, rounds: int, seeds: int) -> str:
    """Markdown: ``seeds`` floor models trained as one vectorised step against one after
    another (benchmarks/bench.py's bench_stacked_seeds), in this process, interleaved."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import bench_stacked_seeds

    model, _, classes, batch = _trained_runs(params_path)
    r = bench_stacked_seeds(model, classes, batch, seeds, steps=2, rounds=rounds)
    low, high = r["range"]
    return (
        f"\n{seeds} seeds' floor models (plain ViT of the proxy's shape, AdamW, batch {batch} "
        f"each) as one stacked step (torch.func vmap) against one after another, same process, "
        f"interleaved, {rounds} rounds of 2 steps: stacked / one-at-a-time time "
        f"{r['ratio']:.2f}x (range {low:.2f}–{high:.2f}); one-at-a-time "
        f"{r['one_at_a_time_images_per_s']:.0f} images/s; the stacked gradients match the "
        f"one-at-a-time ones to {r['max_rel_grad_diff']:.1e} (relative).\n"
    )


BEGIN, END = "<!-- seed-cost: benchmarks/grid_time.py --seed-section -->", "<!-- /seed-cost -->"


def replace_section(path: Path, text: str) -> None:
    """Put ``text`` between the section's markers in ``path`` (appended when absent)."""
    old = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{text}{END}\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        new = head + block + ("\n" + after if after else "")
    else:
        new = old.rstrip("\n") + "\n\n" + block
    path.write_text(new)


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
    parser.add_argument("log", type=Path, nargs="?", help="a Snakemake log (all modes but --bf16)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one start-up run per command (a check, not a measurement)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--seed-section",
        type=Path,
        metavar="MD",
        help="write the per-seed cost into this markdown file's seed-cost section and exit",
    )
    parser.add_argument(
        "--floor",
        metavar="PARAMS",
        help="with --seed-section: also time the grid's trainings against the timm floor",
    )
    parser.add_argument(
        "--bf16",
        metavar="PARAMS",
        help="print the trained runs' bf16-autocast step against fp32 (train.cpu_bf16) and exit",
    )
    parser.add_argument(
        "--stacked-seeds",
        metavar="PARAMS",
        help="print several seeds' floor models as one vmapped step against one at a time, exit",
    )
    parser.add_argument("--seeds", type=int, default=3, help="with --stacked-seeds: models")
    parser.add_argument(
        "--rounds", type=int, default=5, help="with --bf16/--stacked-seeds: timing rounds"
    )
    parser.add_argument("--note", default="", help="a line put under the section (load, machine)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat = 1
    if args.bf16:
        print(bf16_section(args.bf16, rounds=args.rounds))
        return 0
    if args.stacked_seeds:
        print(stacked_seeds_section(args.stacked_seeds, rounds=args.rounds, seeds=args.seeds))
        return 0
    if args.log is None:
        parser.error("a Snakemake log is needed (only --bf16 runs without one)")
    if args.seed_section:
        text = per_seed_section(args.log, args.repeat)
        if args.floor:
            text += floor_section(args.floor, rounds=max(3, args.repeat))
        if args.note:
            text += "\n" + args.note + "\n"
        print(text)
        replace_section(args.seed_section, text)
        return 0
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
