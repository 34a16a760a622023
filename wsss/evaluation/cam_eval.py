"""Scoring a CAM artifact against the ground-truth masks of its split.

One pass over the CAMs fills a threshold histogram (wsss.evaluation.sweep);
every background threshold of the sweep, both sweep styles of the literature
and the reference predictions (all background; a uniform CAM over the GT
classes) are then read off it without touching the CAMs again. A second pass
keeps each image's intersection and union at the chosen threshold
(wsss.evaluation.per_image), which the results table resamples for its
confidence intervals.
A sharded split's histograms are filled shard by shard and merged (integer
counts, so the scores are those of the unsharded split exactly).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from wsss.cam_store import CamFile, CamReader
from wsss.data.datasets import OpenedDataset, open_dataset
from wsss.evaluation.failure_modes import score_failure_modes
from wsss.evaluation.metrics import SegmentationScores
from wsss.evaluation.per_image import PerImageCounts, image_counts
from wsss.evaluation.sweep import ThresholdSweep, threshold_at_edge, threshold_grid
from wsss.runtime import platform_info
from wsss.runtime import progress as tqdm

log = logging.getLogger("wsss")


def summarize(scores: SegmentationScores, class_names: list[str]) -> dict[str, Any]:
    """Headline numbers: mIoU, and mean precision/recall/error rates over the foreground
    classes where each is defined (wsss.evaluation.metrics).

    A mean with no defined value is ``None`` (JSON ``null``), never NaN, which is not
    JSON: ``precision`` is null when no foreground class was predicted anywhere (a
    segmenter that labels every pixel background), ``recall`` when no foreground class
    is in the ground truth, ``miou`` and the rates when no label occurs at all.
    """
    fg = slice(1, None)
    return {
        "miou": _mean_or_none(np.array([scores.miou])),
        "precision": _mean_or_none(scores.precision[fg]),
        "recall": _mean_or_none(scores.recall[fg]),
        "fp_rate": _mean_or_none(scores.fp_rate[fg]),
        "fn_rate": _mean_or_none(scores.fn_rate[fg]),
        "per_class": scores.to_dict(["background", *class_names]),
    }


def _mean_or_none(values: np.ndarray) -> float | None:
    """The mean of the non-NaN ``values``; None when there are none (np.nanmean would
    return NaN with a RuntimeWarning)."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def per_image_counts(
    dataset, reader: CamReader, threshold: float, sweep: ThresholdSweep, progress: bool = True
) -> PerImageCounts:
    """Every image's intersection and union at ``threshold``; their sums must equal the
    sweep's confusion there (checked: both paths implement one labelling rule)."""
    num_labels = sweep.num_labels
    inter = np.zeros((len(reader), num_labels), np.int64)
    union = np.zeros((len(reader), num_labels), np.int64)
    ids = []  # in the reader's iteration order (shard by shard)
    for row, record in enumerate(
        tqdm(reader, total=len(reader), desc="per-image counts", disable=not progress)
    ):
        ids.append(record.image_id)
        gt = dataset.layout.load_mask(record.image_id)
        inter[row], union[row] = image_counts(
            gt, record.cams, record.classes, threshold, num_labels, sweep.ignore_index
        )
    conf = sweep.confusion_at(threshold)
    tp = np.diag(conf)
    if not (
        np.array_equal(inter.sum(axis=0), tp)
        and np.array_equal(union.sum(axis=0), conf.sum(axis=0) + conf.sum(axis=1) - tp)
    ):
        raise RuntimeError(
            f"{reader.path}: per-image counts at threshold {threshold} do not add up to the "
            "threshold sweep's confusion matrix (a bug in one of the two paths)"
        )
    return PerImageCounts(tuple(ids), inter, union, float(threshold))


def sweep_part(
    dataset: OpenedDataset, part: CamFile, progress: bool = True
) -> tuple[ThresholdSweep, ThresholdSweep]:
    """The threshold histograms of one CAM file against the masks: (CAMs, uniform CAMs
    over the GT classes). Reads one record at a time."""
    num_labels = dataset.num_classes + 1
    sweep = ThresholdSweep(num_labels)
    uniform = ThresholdSweep(num_labels)
    for record in tqdm(part, total=len(part), desc="evaluate", disable=not progress):
        gt = dataset.layout.load_mask(record.image_id)
        if gt.shape != record.shape:
            raise ValueError(
                f"{part.path}: CAM of {record.image_id} is {record.shape}, its mask "
                f"{dataset.layout.mask_path(record.image_id)} is {gt.shape}"
            )
        sweep.update(gt, record.cams, record.classes)
        uniform.update(gt, np.full_like(record.cams, 255), record.classes)
    return sweep, uniform


def evaluate_cams(
    dataset_config: dict[str, Any],
    evaluate_config: dict[str, Any],
    cams_path: str,
    progress: bool = True,
) -> dict[str, Any]:
    """Score one CAM file on its split: the ``cam`` entry of ``cam_metrics.json``.

    Besides the headline scores at the selected threshold: ``threshold_at_edge``
    (the threshold is the first or last of the sweep, so the best one may lie
    outside it; also logged as a warning), ``threshold_range`` (the swept
    [first, last]), ``sweep`` (both selection styles and the mIoU curve),
    ``reference`` (no-model predictions), ``per_image`` (intersection and union per
    image at the selected threshold, format in wsss.evaluation.per_image),
    ``failure_modes`` (context false-positive rate, part and body recall at the
    selected threshold, wsss.evaluation.failure_modes; null with the reason on a
    dataset without failure-mode maps) and ``platform`` (wsss.runtime.platform_info
    of this job).

    Memory holds one image's CAMs and mask and the histograms (K x K x 256 int64
    each), whatever the split's size.
    """
    dataset = open_dataset(dataset_config)
    with CamReader(cams_path) as reader:
        if reader.num_classes != dataset.num_classes:
            raise ValueError(
                f"{cams_path} has {reader.num_classes} classes, dataset {dataset.name} has "
                f"{dataset.num_classes}"
            )
        num_labels = dataset.num_classes + 1
        sweep = ThresholdSweep(num_labels)
        uniform = ThresholdSweep(num_labels)
        for part in reader.parts:
            part_sweep, part_uniform = sweep_part(dataset, part, progress)
            sweep.merge(part_sweep)
            uniform.merge(part_uniform)
        images = len(reader)

        spec = evaluate_config["thresholds"]
        thresholds = threshold_grid(spec["start"], spec["stop"], spec["step"])
        best_t, best_scores, curve = sweep.best(thresholds, style="exhaustive")
        greedy_t, greedy_scores, greedy_curve = sweep.best(thresholds, style="greedy")
        chosen = evaluate_config["select"]
        headline_t, headline = (
            (best_t, best_scores) if chosen == "exhaustive" else (greedy_t, greedy_scores)
        )
        at_edge = threshold_at_edge(headline_t, thresholds)
        if at_edge:
            log.warning(
                "%s: best background threshold %.2f is at the edge of the sweep [%.2f, %.2f]; "
                "the best one may lie outside it: widen evaluate.thresholds",
                cams_path,
                headline_t,
                min(thresholds),
                max(thresholds),
            )
        per_image = per_image_counts(dataset, reader, headline_t, sweep, progress)
        names = dataset.class_names
        return {
            "split": dataset_config["eval_split"],
            "images": images,
            "threshold": headline_t,
            "threshold_select": chosen,
            "threshold_at_edge": at_edge,
            "threshold_range": [min(thresholds), max(thresholds)],
            **summarize(headline, names),
            "sweep": {
                "exhaustive": {"threshold": best_t, "miou": float(best_scores.miou)},
                "greedy": {
                    "threshold": greedy_t,
                    "miou": float(greedy_scores.miou),
                    "steps": len(greedy_curve),
                },
                "curve": [{"threshold": t, "miou": m} for t, m in curve],
            },
            "reference": {
                # A threshold of 1 makes every pixel background; a uniform CAM over the
                # GT classes labels every pixel with the image's first GT class.
                "all_background": float(sweep.sweep([1.0])[0].miou),
                "uniform_gt_classes": float(uniform.sweep([0.0])[0].miou),
            },
            "per_image": per_image.to_json(),
            "failure_modes": score_failure_modes(dataset, reader, headline_t, progress),
            "platform": platform_info(device="cpu"),  # evaluation is numpy on the CPU
        }
