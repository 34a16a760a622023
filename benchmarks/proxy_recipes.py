"""Compare fine-tuning recipes of the proxy backbone: attention diagnostics and CAM mIoU.

Each recipe is one pipeline run of the same grid under its own ``results_dir`` (e.g. from
scratch, and the pretrained proxy with different ``train.layer_decay`` /
``train.freeze_blocks``). This script reads, for every recipe, the trained runs'
``attention_diagnostics.json`` and the variants' ``cam_metrics.json`` and prints two
markdown tables (docs/synthetic.md, "Attention diagnostics and a pretrained proxy
backbone"):

1. diagnostics of one trained run (default ``mctformer_v2``) after fine-tuning: per block
   background-to-object ratio / other-object lift, and the summed patch affinity's
   own-object lift, other-object lift, background-to-object ratio; mean over seeds;
2. CAM mIoU (%) of each variant: the mean over seeds with its 95% stratified bootstrap
   interval over images (:func:`wsss.evaluation.bootstrap.miou_interval`, the results
   table's), the best threshold of each seed (``*``: at an end of the sweep), and the
   paired difference of the ``--paired`` variant to the first recipe (same images and
   seeds, :func:`wsss.evaluation.bootstrap.paired_miou_difference`).

    python benchmarks/proxy_recipes.py --recipe "from scratch=/path/results-scratch" \\
        --recipe "freeze_blocks 1=/path/results-fb1" [--seeds 0 1 2] [--out table.md]

The first ``--recipe`` is the reference of the paired difference. A missing file is an
error naming it. The split is the one the files were scored on (reported per table).
"""

from __future__ import annotations

import argparse
import json
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
        "images": files[0]["images"],
        "affinity_blocks": files[0]["affinity_blocks"],
        "blocks": [
            (
                stat("blocks", "background_to_object_ratio", b),
                stat("blocks", "other_object_lift", b),
            )
            for b in range(blocks)
        ],
        "affinity": {
            key: stat("affinity", key)
            for key in ("own_object_lift", "other_object_lift", "background_to_object_ratio")
        },
    }


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
) -> str:
    """The two markdown tables."""
    lines = []
    diags = [(name, diagnostics_row(root, dataset, run, seeds)) for name, root in recipes]
    first = diags[0][1]
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
            f"{d['train_map']:.3f}",
        ]
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
            cells.append(f"{_pct(ci.estimate)} [{_pct(ci.low)}, {_pct(ci.high)}] ({thr})")
        if name == recipes[0][0]:
            cells.append("")
        else:
            d = paired_miou_difference(
                list(zip(cams[name][paired]["counts"], reference, strict=True))
            )
            cells.append(f"{100 * d.estimate:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
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
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    recipes = []
    for item in args.recipe:
        name, sep, root = item.partition("=")
        if not sep or not name or not root:
            parser.error(f"--recipe {item!r}: expected NAME=RESULTS_DIR")
        recipes.append((name, Path(root)))
    text = tables(recipes, args.dataset, args.run, args.seeds, args.paired, args.variants)
    sys.stdout.write(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
