"""The ``wsss`` command: one subcommand per pipeline stage, called by the Snakemake rules.

Rules pass each job its resolved settings as JSON (``--config``), built from
``params.yaml`` by wsss.config, so a job never reads params.yaml itself and
Snakemake sees every setting a job depends on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _json_arg(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"--config is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--config must be a JSON object")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", help="also write the log to this file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_check_params(args: argparse.Namespace) -> int:
    from wsss.config import load_params

    params = load_params(args.params, *args.configfile)
    grid = params["grid"]
    print(
        f"{args.params}: valid ({len(grid['datasets'])} datasets x {len(grid['methods'])} methods "
        f"x {len(grid['seeds'])} seeds)"
    )
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from wsss.data.datasets import prepare_dataset
    from wsss.io import write_json

    manifest = prepare_dataset(args.config, progress=not args.no_progress)
    write_json(args.out, manifest)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wsss.methods.training import train

    summary = train(args.config, args.seed, args.out_dir, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def cmd_cams(args: argparse.Namespace) -> int:
    from wsss.cams.extract import extract_cams
    from wsss.io import write_json

    split = args.split or args.config["dataset"]["eval_split"]
    info = extract_cams(args.config, args.model, split, args.out, progress=not args.no_progress)
    if args.timing:
        write_json(args.timing, info)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wsss.evaluation.cam_eval import evaluate_cams
    from wsss.io import write_json

    config = args.config
    result = evaluate_cams(
        config["dataset"], config["evaluate"], args.cams, progress=not args.no_progress
    )
    write_json(args.out, {"meta": config["meta"], "cam": result})
    return 0


def cmd_evaluate_decoder(args: argparse.Namespace) -> int:
    from wsss.evaluation.seg_eval import evaluate_decoder
    from wsss.io import write_json

    config = args.config
    split = args.split or config["dataset"]["seg_split"]
    result = evaluate_decoder(
        config, args.model, split, config["scales"], progress=not args.no_progress
    )
    write_json(args.out, {"meta": config["meta"], "decoder": result})
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from wsss.report.table import write_report

    summary = write_report(
        args.metrics,
        args.out_dir,
        method_order=args.method_order,
        decoder_files=args.decoder_metrics,
    )
    print(summary.to_string(index=False))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from wsss.bench import markdown, run_bench, write_bench
    from wsss.config import load_params

    params = load_params(args.params, *args.configfile)
    report = run_bench(params, args.shared_data, quick=args.quick)
    write_bench(report, args.out_dir)
    print(markdown(report))
    return 0


def cmd_tune_refiner(args: argparse.Namespace) -> int:
    from wsss.cams.tune import tune_refiner
    from wsss.config import cam_config, load_params, training_key
    from wsss.io import atomic_path

    params = load_params(args.params, *args.configfile)
    config = cam_config(params, args.dataset, args.method)
    key = training_key(params, args.method)
    model = args.model or f"results/runs/{args.dataset}/train/{key}/seed{args.seed}/model.pt"
    table = tune_refiner(
        config, params["evaluate"], model, args.split, json.loads(args.grid), not args.no_progress
    )
    print(table.to_string(index=False))
    if args.out:
        with atomic_path(args.out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.6f")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsss", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-params", help="validate params.yaml (and override files) and exit")
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--configfile", action="append", default=[], help="override file merged on top")
    p.set_defaults(func=cmd_check_params)

    p = sub.add_parser("prepare-data", help="generate or check a dataset; write its manifest")
    p.add_argument("--config", type=_json_arg, required=True, help="the dataset block (JSON)")
    p.add_argument("--out", required=True, help="manifest JSON to write")
    _common(p)
    p.set_defaults(func=cmd_prepare_data)

    p = sub.add_parser("train", help="train one (dataset, method, seed) classifier")
    p.add_argument("--config", type=_json_arg, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("cams", help="extract (and refine) the CAMs of a split")
    p.add_argument("--config", type=_json_arg, required=True)
    p.add_argument("--model", required=True, help="model.pt from the train stage")
    p.add_argument("--split", help="default: the dataset's eval_split")
    p.add_argument("--out", required=True, help="CAM artifact (.npz)")
    p.add_argument("--timing", help="write extraction timing JSON here")
    _common(p)
    p.set_defaults(func=cmd_cams)

    p = sub.add_parser(
        "evaluate", help="score CAMs: mIoU, per-class IoU, precision/recall, threshold sweep"
    )
    p.add_argument("--config", type=_json_arg, required=True)
    p.add_argument("--cams", required=True)
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "evaluate-decoder", help="score a single-stage method's segmentation decoder"
    )
    p.add_argument("--config", type=_json_arg, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--split", help="default: the dataset's seg_split")
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_evaluate_decoder)

    p = sub.add_parser(
        "table", help="aggregate run metrics into results/table.{md,csv}, metrics.json, plots"
    )
    p.add_argument("--metrics", nargs="+", required=True, help="cam_metrics.json of every run")
    p.add_argument(
        "--decoder-metrics", nargs="*", default=[], help="decoder_metrics.json of single-stage runs"
    )
    p.add_argument("--out-dir", default="results")
    p.add_argument("--method-order", nargs="*", default=None)
    _common(p)
    p.set_defaults(func=cmd_table)
    p = sub.add_parser(
        "tune-refiner", help="score refiner settings on a held-out split (not the scored one)"
    )
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--configfile", action="append", default=[])
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--method", required=True, help="a variant under methods: whose refiner is tuned"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model", help="default: the trained model of the variant's run in results/runs"
    )
    p.add_argument("--split", required=True, help="held-out split, e.g. val")
    p.add_argument(
        "--grid", required=True, help="JSON {param: [values]}, e.g. '{\"steps\": [1, 2, 4]}'"
    )
    p.add_argument("--out", help="write the table as CSV")
    _common(p)
    p.set_defaults(func=cmd_tune_refiner)

    p = sub.add_parser(
        "bench", help="measure every stage as ratios (writes bench.json and bench.md)"
    )
    p.add_argument("params", nargs="?", default="params.yaml")
    p.add_argument("--configfile", action="append", default=[])
    p.add_argument(
        "--shared-data",
        default=str(Path(__file__).resolve().parents[2] / "shared" / "data"),
        help="folder with voc_masks/ (the real VOC masks the evaluation benchmark reads)",
    )
    p.add_argument("--out-dir", default="results")
    p.add_argument(
        "--quick", action="store_true", help="fewer repetitions (a check, not a measurement)"
    )
    _common(p)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from wsss.runtime import set_threads, setup_logging

    setup_logging(getattr(args, "log", None))
    set_threads(getattr(args, "threads", None))
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        # Bad input (a missing file, a malformed value) gets its message, not a
        # traceback; WSSS_DEBUG=1 shows the traceback too. Bugs still raise.
        import os

        if os.environ.get("WSSS_DEBUG"):
            raise
        print(f"wsss {args.command}: error: {err}", file=sys.stderr)
        if getattr(args, "log", None):
            with open(args.log, "a") as f:
                f.write(f"error: {err}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
