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


def cmd_convert_coco(args: argparse.Namespace) -> int:
    from wsss.data.coco import CocoConversion, convert_coco, dataset_conversion
    from wsss.io import write_json

    if args.config is not None:
        if args.split or args.root:
            raise ValueError("give either --config or --root with --split, not both")
        conversion, root = dataset_conversion(args.config), args.config["root"]
    elif args.root and args.split:
        splits = {name: {"annotations": ann, "images": img} for name, ann, img in args.split}
        source = {"splits": splits, "link": args.link, "crowd": args.crowd}
        conversion = CocoConversion.from_source({**source, "keep_empty": args.keep_empty})
        root = args.root
    else:
        raise ValueError(
            "give --config, or --root and at least one --split NAME ANNOTATIONS IMAGES"
        )
    manifest = convert_coco(conversion, root, progress=not args.no_progress)
    if args.out:
        write_json(args.out, manifest)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wsss.methods.entropy_weights import with_entropy_weights
    from wsss.methods.training import train

    config = with_entropy_weights(args.config, args.entropy_weights)
    summary = train(config, args.seed, args.out_dir, progress=not args.no_progress)
    print(json.dumps(summary))
    return 0


def cmd_entropy_weights(args: argparse.Namespace) -> int:
    from wsss.io import write_json
    from wsss.methods.entropy_weights import baseline_entropy_weights

    result = baseline_entropy_weights(args.config, args.model, progress=not args.no_progress)
    write_json(args.out, result)
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


def cmd_pseudo_labels(args: argparse.Namespace) -> int:
    from wsss.cams.pseudo_labels import make_pseudo_labels
    from wsss.io import write_json

    config = args.config
    result = make_pseudo_labels(
        config, args.cams, args.out_dir, args.cam_metrics, progress=not args.no_progress
    )
    write_json(args.metrics, {"meta": config.get("meta", {}), "pseudo_labels": result})
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from wsss.io import write_json
    from wsss.segmentation.train import run_segmentation

    config = args.config
    result = run_segmentation(
        config, args.labels, args.seed, args.model, progress=not args.no_progress
    )
    write_json(args.metrics, {"meta": config.get("meta", {}), "seg": result})
    return 0


def _key_value(item: str, option: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise ValueError(f"{option}: expected NAME=VALUE, got {item!r}")
    return key, value


def cmd_table(args: argparse.Namespace) -> int:
    from wsss.report.table import write_report

    summary = write_report(
        args.metrics,
        args.out_dir,
        method_order=args.method_order,
        decoder_files=args.decoder_metrics,
        pseudo_label_files=args.pseudo_label_metrics,
        seg_files=args.seg_metrics,
        dataset_kinds=dict(_key_value(item, "--dataset-kinds") for item in args.dataset_kinds),
    )
    print(summary.to_string(index=False))
    return 0


def cmd_plots(args: argparse.Namespace) -> int:
    from wsss.io import read_json
    from wsss.report.plots import write_plots

    class_names = read_json(args.manifest)["class_names"] if args.manifest else None
    for path in write_plots(
        args.metrics, args.out_dir, args.csv, class_names, method_order=args.method_order
    ):
        print(path)
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from wsss.report.gallery import GalleryMethod, write_gallery

    config = args.config
    methods = config["methods"]
    pseudo = args.pseudo_labels or [None] * len(methods)
    if not len(methods) == len(args.cams) == len(pseudo):
        raise ValueError(
            f"gallery: {len(methods)} methods in --config, {len(args.cams)} --cams files and "
            f"{len(args.pseudo_labels or [])} --pseudo-labels folders; give one of each per method"
        )
    columns = [
        GalleryMethod(m["name"], m["label"], Path(c), None if d is None else Path(d))
        for m, c, d in zip(methods, args.cams, pseudo, strict=True)
    ]
    ids = write_gallery(config["dataset"], config["report"], columns, args.out, config.get("seed"))
    print(" ".join(ids))
    return 0


def cmd_table_html(args: argparse.Namespace) -> int:
    from wsss.report.html import write_table_html

    write_table_html(args.table, args.out)
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

    p = sub.add_parser(
        "convert-coco", help="COCO instance annotations -> the VOC-style layout (once per dataset)"
    )
    p.add_argument("--config", type=_json_arg, help="a kind: coco dataset block (JSON)")
    p.add_argument("--root", help="output folder (without --config)")
    p.add_argument(
        "--split",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "ANNOTATIONS", "IMAGES"),
        help="output split name, its instances_*.json and its image folder (repeatable)",
    )
    p.add_argument("--link", default="symlink", choices=["symlink", "hardlink", "copy"])
    p.add_argument("--crowd", default="class", choices=["class", "ignore"])
    p.add_argument("--keep-empty", action="store_true", help="list images without foreground")
    p.add_argument("--out", help="also write the conversion manifest here")
    _common(p)
    p.set_defaults(func=cmd_convert_coco)

    p = sub.add_parser("train", help="train one (dataset, method, seed) classifier")
    p.add_argument("--config", type=_json_arg, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument(
        "--entropy-weights",
        metavar="FILE",
        help="AReAM's per-block weights (from `wsss entropy-weights`) where the method params "
        "say entropy_weights: baseline",
    )
    _common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "entropy-weights",
        help="AReAM's per-block entropy weights from a trained MCTformer-V2 (JSON)",
    )
    p.add_argument(
        "--config",
        type=_json_arg,
        required=True,
        help="{dataset, device, batch_size, num_workers}; the dataset's train_split is read",
    )
    p.add_argument("--model", required=True, help="the baseline's model.pt from the train stage")
    p.add_argument("--out", required=True, help="JSON to write (weights, raw entropies)")
    _common(p)
    p.set_defaults(func=cmd_entropy_weights)

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
        "pseudo-labels",
        help="CAMs of the train split -> pseudo-label PNGs (threshold, PAR or CRF), scored",
    )
    p.add_argument("--config", type=_json_arg, required=True, help="{dataset, pseudo_labels, meta}")
    p.add_argument("--cams", required=True, help="CAM artifact of the dataset's train_split")
    p.add_argument("--cam-metrics", help="cam_metrics.json whose best threshold 'best' uses")
    p.add_argument(
        "--out-dir", required=True, help="folder of <image id>.png (replaced atomically)"
    )
    p.add_argument("--metrics", required=True, help="pseudo_label_metrics.json to write")
    _common(p)
    p.set_defaults(func=cmd_pseudo_labels)

    p = sub.add_parser(
        "segment", help="stage 2: train a segmenter on pseudo-labels, score it on the seg split"
    )
    p.add_argument(
        "--config",
        type=_json_arg,
        required=True,
        help="{dataset, segmentation, scales, device, meta}",
    )
    p.add_argument("--labels", required=True, help="pseudo-label folder of the train split")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--model", required=True, help="segmenter.pt to write")
    p.add_argument("--metrics", required=True, help="seg_metrics.json to write")
    _common(p)
    p.set_defaults(func=cmd_segment)

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
    p.add_argument(
        "--pseudo-label-metrics",
        nargs="*",
        default=[],
        help="pseudo_label_metrics.json of every run",
    )
    p.add_argument("--seg-metrics", nargs="*", default=[], help="seg_metrics.json of every run")
    p.add_argument(
        "--dataset-kinds",
        nargs="*",
        default=[],
        help="DATASET=KIND (voc, coco, synthetic): picks the papers' numbers shown beside ours",
    )
    p.add_argument("--out-dir", default="results")
    p.add_argument("--method-order", nargs="*", default=None)
    _common(p)
    p.set_defaults(func=cmd_table)

    p = sub.add_parser(
        "plots", help="figures of one dataset: mIoU per method, threshold curves, per-class IoU"
    )
    p.add_argument(
        "--metrics", nargs="+", required=True, help="cam_metrics.json of the dataset's runs"
    )
    p.add_argument(
        "--manifest", help="the dataset's manifest (results/data/<dataset>.json): class order"
    )
    p.add_argument("--out-dir", required=True, help="folder for the PNGs")
    p.add_argument("--csv", required=True, help="per-class IoU table (a DVC plot)")
    p.add_argument("--method-order", nargs="*", default=None)
    _common(p)
    p.set_defaults(func=cmd_plots)

    p = sub.add_parser(
        "gallery", help="CAM gallery of one dataset: the same images for every method"
    )
    p.add_argument(
        "--config", type=_json_arg, required=True, help="{dataset, report, methods, seed}"
    )
    p.add_argument("--cams", nargs="+", required=True, help="one CAM file per method, in order")
    p.add_argument(
        "--pseudo-labels", nargs="*", default=None, help="one pseudo-label folder per method"
    )
    p.add_argument("--out", required=True, help="PNG to write")
    _common(p)
    p.set_defaults(func=cmd_gallery)

    p = sub.add_parser("table-html", help="results/table.md as an HTML page (for the HTML report)")
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True)
    _common(p)
    p.set_defaults(func=cmd_table_html)
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
    finally:
        # Interpreter shutdown runs garbage collections over every object torch and timm
        # created at import, about 1 s of CPU per job (measured: `import torch, timm`
        # alone, 3.7 s -> 2.6 s); frozen objects are skipped. Files are still closed and
        # buffers flushed at exit as usual, and every output is already written.
        import gc

        gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
