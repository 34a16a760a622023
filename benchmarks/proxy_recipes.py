"""Compare fine-tuning recipes of the proxy backbone: attention diagnostics and CAM mIoU.

Each recipe is one pipeline run of the same grid under its own ``results_dir`` (e.g. from
scratch, and the pretrained proxy with different ``train.layer_decay`` /
``train.freeze_blocks``). This script reads, for every recipe, the trained runs'
``attention_diagnostics.json`` and the variants' ``cam_metrics.json`` and prints two
markdown tables, the first in two parts (docs/synthetic.md, "Attention diagnostics and a
pretrained proxy backbone"):

1. diagnostics of one trained run (default ``mctformer_v2``) after fine-tuning: per block
   background-to-object ratio / other-object lift, and the summed patch affinity's
   own-object lift, other-object lift, background-to-object ratio; then per block the
   own-object lift and the normalised entropy; then the summed affinity of each other
   trained run (``--other-runs``, default AReAM's and ClusterCAM's); mean over seeds;
2. CAM mIoU (%) of each variant: the mean over seeds with its 95% interval over seeds
   and images (:func:`wsss.evaluation.bootstrap.miou_interval`, the results table's;
   nan with one seed), the best threshold of each seed (``*``: at an end of the sweep), and the
   paired difference of the ``--paired`` variant to the first recipe (same images and
   seeds, :func:`wsss.evaluation.bootstrap.paired_miou_difference`).

    python benchmarks/proxy_recipes.py --recipe "from scratch=/path/results-scratch" \\
        --recipe "freeze_blocks 1=/path/results-fb1" [--seeds 0 1 2] [--out table.md]

``--before MODEL_PT`` adds two diagnostics rows measured here: the model a training run
starts from (``wsss.models.build_model`` with the trained run's model config) at random
init (torch seed 0) and with its ``model.weights`` loaded, i.e. before fine-tuning, on the
same split, ``min_fraction`` and affinity blocks as the recipes' files. Run it from the
repository root (the dataset root in the config is relative).

The first ``--recipe`` is the reference of the paired difference. A missing file is an
error naming it. The split is the one the files were scored on (reported per table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from wsss.evaluation.bootstrap import miou_interval, paired_miou_difference
from wsss.evaluation.per_image import PerImageCounts

VARIANTS = ["mctformer_v2", "mctformer_v2_affinity", "aream", "aream_unrefined", "clustercam"]


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; build it with the recipe's Snakemake run")
    return json.loads(path.read_text())


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def diagnostics_row(root: Path, dataset: str, run: str, seeds: list[int]) -> dict[str, Any]:
    """Per-block and affinity statistics of trained run ``run``, mean over ``seeds``."""
    files = [
        _read(root / f"runs/{dataset}/train/{run}/seed{s}/attention_diagnostics.json")
        for s in seeds
    ]
    blocks = len(files[0]["blocks"])

    def stat(part: str, key: str, block: int | None = None) -> float:
        pick = (lambda f: f["blocks"][block]) if part == "blocks" else (lambda f: f[part])
        return _mean([pick(f)[key] for f in files])

    train_map = _mean(
        [
            _read(root / f"runs/{dataset}/train/{run}/seed{s}/train_metrics.json")["train_map"]
            for s in seeds
        ]
    )
    return {
        "train_map": train_map,
        "split": files[0]["split"],
        "min_fraction": files[0]["min_fraction"],
        "images": files[0]["images"],
        "affinity_blocks": files[0]["affinity_blocks"],
        "blocks": [
            (
                stat("blocks", "background_to_object_ratio", b),
                stat("blocks", "other_object_lift", b),
            )
            for b in range(blocks)
        ],
        "blocks_detail": [
            (stat("blocks", "own_object_lift", b), stat("blocks", "entropy_normalised", b))
            for b in range(blocks)
        ],
        "affinity": {
            key: stat("affinity", key)
            for key in (
                "own_object_lift",
                "other_object_lift",
                "background_to_object_ratio",
                "entropy_normalised",
            )
        },
    }


def before_rows(model_pt: Path, split: str, min_fraction: float, affinity_blocks: list[int]):
    """[(name, diagnostics row)] of the model ``model_pt``'s training started from: random
    init and the pretrained weights of its config, not fine-tuned."""
    import torch

    from wsss import checkpoint
    from wsss.data.voc import VOCLayout
    from wsss.evaluation.attention_report import diagnose_model
    from wsss.models import build_model

    state = checkpoint.load(model_pt, "cpu", what="trained model")
    config, num_classes = state["config"], len(state["class_names"])
    if not config["model"].get("weights"):
        raise ValueError(f"{model_pt}: its model config names no weights file (model.weights)")
    layout = VOCLayout.locate(config["dataset"]["root"])
    ids = layout.split_ids(split)
    rows = []
    for name, pretrained in (("random init", False), ("pretrained, before fine-tuning", True)):
        torch.manual_seed(0)
        model_config = {**config["model"], "pretrained": pretrained}
        if not pretrained:
            model_config["weights"] = None
        model = build_model(model_config, num_classes)
        result = diagnose_model(
            model,
            layout,
            ids,
            num_classes=num_classes,
            patch_size=model.patch_size,
            affinity_blocks=affinity_blocks,
            min_fraction=min_fraction,
        )
        blocks = result["blocks"]
        rows.append(
            (
                name,
                {
                    "train_map": None,
                    "blocks": [
                        (b["background_to_object_ratio"], b["other_object_lift"]) for b in blocks
                    ],
                    "blocks_detail": [
                        (b["own_object_lift"], b["entropy_normalised"]) for b in blocks
                    ],
                    "affinity": result["affinity"],
                },
            )
        )
    return rows


def cam_cell(root: Path, dataset: str, variant: str, seeds: list[int]) -> dict[str, Any]:
    """mIoU interval, thresholds and counts of one variant over ``seeds``."""
    runs = []
    for s in seeds:
        path = root / f"runs/{dataset}/{variant}/seed{s}/cam_metrics.json"
        runs.append((path, _read(path)["cam"]))
    counts = [PerImageCounts.from_json(cam["per_image"], f"{p}: cam.per_image") for p, cam in runs]
    return {
        "interval": miou_interval(counts),
        "counts": counts,
        "split": runs[0][1]["split"],
        "thresholds": [(cam["threshold"], cam["threshold_at_edge"]) for _, cam in runs],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def tables(
    recipes: list[tuple[str, Path]],
    dataset: str,
    run: str,
    seeds: list[int],
    paired: str,
    variants: list[str] = VARIANTS,
    before: Path | None = None,
    other_runs: list[str] = (),
) -> str:
    """The two markdown tables."""
    lines = []
    diags = [(name, diagnostics_row(root, dataset, run, seeds)) for name, root in recipes]
    first = diags[0][1]
    if before is not None:
        extra = before_rows(before, first["split"], first["min_fraction"], first["affinity_blocks"])
        diags = extra + diags
    nblocks = len(first["blocks"])
    lines.append(
        f"Diagnostics of `{run}` after fine-tuning ({first['split']} split, {first['images']} "
        f"images, mean of seeds {seeds}); blocks: bg->object / other-object lift; affinity "
        f"summed over blocks {first['affinity_blocks']}; train mAP of its classifier "
        "(train_metrics.json):"
    )
    lines.append("")
    head = [
        "recipe",
        *[f"b{b}" for b in range(nblocks)],
        "affinity own",
        "affinity other",
        "affinity bg->object",
        "train mAP",
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name, d in diags:
        cells = [f"{bg:.2f} / {other:.2f}" for bg, other in d["blocks"]]
        aff = d["affinity"]
        cells += [
            f"{aff['own_object_lift']:.2f}",
            f"{aff['other_object_lift']:.2f}",
            f"{aff['background_to_object_ratio']:.2f}",
            "" if d["train_map"] is None else f"{d['train_map']:.3f}",
        ]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines.append("")
    lines.append(
        "Per block own-object lift / entropy divided by log N (uniform: 1 / 1); last column: "
        "the summed affinity's normalised entropy:"
    )
    lines.append("")
    head = ["recipe", *[f"b{b}" for b in range(nblocks)], "affinity entropy / log N"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for name, d in diags:
        cells = [f"{own:.2f} / {ent:.2f}" for own, ent in d["blocks_detail"]]
        cells.append(f"{d['affinity']['entropy_normalised']:.2f}")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    lines.append("")

    if other_runs:
        lines.append(
            "Summed patch affinity of each trained run (bg->object / other-object lift; the "
            f"block with the highest bg->object ratio in brackets), mean of seeds {seeds}:"
        )
        lines.append("")
        head = ["recipe", *[f"`{r}`" for r in [run, *other_runs]]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for name, root in recipes:
            cells = []
            for r in [run, *other_runs]:
                d = diagnostics_row(root, dataset, r, seeds)
                aff = d["affinity"]
                worst = max(range(len(d["blocks"])), key=lambda b: d["blocks"][b][0])
                cells.append(
                    f"{aff['background_to_object_ratio']:.2f} / {aff['other_object_lift']:.2f} "
                    f"(b{worst} {d['blocks'][worst][0]:.2f})"
                )
            lines.append("| " + " | ".join([name, *cells]) + " |")
        lines.append("")

    cams = {
        name: {v: cam_cell(root, dataset, v, seeds) for v in variants} for name, root in recipes
    }
    split = cams[recipes[0][0]][variants[0]]["split"]
    lines.append(
        f"CAM mIoU (%) on the {split} split, mean of seeds {seeds} [95% bootstrap interval "
        "over images] (best threshold per seed, * at a sweep end); last column: "
        f"`{paired}` minus the first row's, paired on the same images and seeds:"
    )
    lines.append("")
    head = ["recipe", *[f"`{v}`" for v in variants], f"`{paired}` vs {recipes[0][0]}"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    reference = cams[recipes[0][0]][paired]["counts"]
    for name, _ in recipes:
        cells = []
        for v in variants:
            c = cams[name][v]
            ci = c["interval"]
            thr = ", ".join(f"{t:.2f}{'*' if edge else ''}" for t, edge in c["thresholds"])
            bounds = "one seed" if math.isnan(ci.low) else f"{_pct(ci.low)}, {_pct(ci.high)}"
            cells.append(f"{_pct(ci.estimate)} [{bounds}] ({thr})")
        if name == recipes[0][0]:
            cells.append("")
        else:
            d = paired_miou_difference(
                list(zip(cams[name][paired]["counts"], reference, strict=True))
            )
            bounds = "one seed" if math.isnan(d.low) else f"{100 * d.low:+.1f}, {100 * d.high:+.1f}"
            cells.append(f"{100 * d.estimate:+.1f} [{bounds}]")
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--recipe",
        action="append",
        required=True,
        metavar="NAME=RESULTS_DIR",
        help="a recipe's name and results_dir; the first is the reference",
    )
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--run", default="mctformer_v2", help="trained run to diagnose")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--paired", default="mctformer_v2", help="variant compared with the first recipe's"
    )
    parser.add_argument("--variants", nargs="+", default=VARIANTS, help="CAM columns")
    parser.add_argument(
        "--before",
        type=Path,
        metavar="MODEL_PT",
        help="a pretrained recipe's model.pt: add rows for its starting point (see above)",
    )
    parser.add_argument(
        "--other-runs",
        nargs="*",
        default=["aream", "clustercam"],
        help="further trained runs whose summed affinity is tabulated",
    )
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    recipes = []
    for item in args.recipe:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            parser.error(f"--recipe {item!r}: expected NAME=RESULTS_DIR")
        recipes.append((name, Path(root)))
    text = tables(
        recipes,
        args.dataset,
        args.run,
        args.seeds,
        args.paired,
        args.variants,
        args.before,
        args.other_runs,
    )
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
