"""Failure-mode metrics: how much a CAM leaks into co-occurring context, and part vs body recall.

The synthetic benchmark builds two failure modes into every image (docs/synthetic.md)
and records where they are in two maps beside the VOC layout
(``SegmentationContext/``, ``SegmentationPart/``; read by
:meth:`wsss.data.voc.VOCLayout.load_failure_maps`). Given the label map a CAM
gives at the chosen background threshold, three rates say which failure a method
suffers from:

- **context false-positive rate** of class c: the share of the context pixels of
  class c (labelled background in the class mask) that the label map labels c.
  The false positives DOEI and AD-CAM attribute to co-occurring context. Only
  contexts of the image's classes (those with a CAM) are scored: a context drawn
  without its object can never get its class, as CAMs are kept for the image's
  classes only, so counting it would only dilute the rate.
- **part recall** of class c: the share of the part pixels (the class-coloured cap,
  the cheapest evidence) of class-c objects labelled c;
- **body recall** of class c: the same over the rest of the objects' pixels, whose
  colour all classes share. Part recall well above body recall is the
  under-activation ClusterCAM and AReAM address.

Pixels the class mask ignores (255) are never scored. Each rate is computed per
class from pixel counts summed over the split, and the headline value is the mean
over the classes that have scored pixels, as the table's precision and recall
(wsss.evaluation.cam_eval.summarize) are means over classes.

Everything above :func:`score_failure_modes` is pure (arrays in, numbers out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from wsss.data.voc import BODY_LABEL, FAILURE_MAP_DIRS, PART_LABEL
from wsss.evaluation.confusion import IGNORE_INDEX
from wsss.evaluation.sweep import Q_VALUES, cam_argmax_and_score
from wsss.runtime import progress as tqdm

METRICS = ("context_fp_rate", "part_recall", "body_recall")


def cam_label_map(cams_q: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """The H x W label map of an image's quantised CAMs at a background threshold.

    The threshold sweep's rule (wsss.evaluation.sweep, wsss.evaluation.per_image): the
    argmax class where the maximum ``q`` has ``q / 255 > threshold`` (float64),
    background (0) elsewhere; ties go to the lower class label. ``cams_q``: k x H x W
    uint8, ``classes``: their k labels (1..C). Returns int64.
    """
    classes = np.asarray(classes)
    order = np.argsort(classes, kind="stable")
    fg_class, fg_score = cam_argmax_and_score(np.asarray(cams_q)[order], classes[order])
    return np.where(Q_VALUES[fg_score] > threshold, fg_class, 0).astype(np.int64)


@dataclass(frozen=True)
class FailureModeCounts:
    """Pixel counts per label (int64 arrays of length ``num_labels``; index = class label,
    index 0 is never used): scored context pixels and those labelled with the context's
    class, part pixels and those recalled, body pixels and those recalled. Additive over
    images, so a split's rates follow from summed counts."""

    context: np.ndarray
    context_fp: np.ndarray
    part: np.ndarray
    part_hit: np.ndarray
    body: np.ndarray
    body_hit: np.ndarray

    @classmethod
    def zeros(cls, num_labels: int) -> FailureModeCounts:
        return cls(*(np.zeros(num_labels, np.int64) for _ in fields(cls)))

    def __add__(self, other: FailureModeCounts) -> FailureModeCounts:
        return FailureModeCounts(
            *(getattr(self, f.name) + getattr(other, f.name) for f in fields(self))
        )

    def rates(self) -> dict[str, np.ndarray]:
        """Per-label rates (float64, NaN where a label has no scored pixels of that kind)."""
        out = {}
        for name, hit, total in (
            ("context_fp_rate", self.context_fp, self.context),
            ("part_recall", self.part_hit, self.part),
            ("body_recall", self.body_hit, self.body),
        ):
            total = total.astype(np.float64)
            out[name] = np.divide(hit, total, out=np.full(total.shape, np.nan), where=total > 0)
        return out

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """Headline rates (mean over the classes with scored pixels; None where no class
        has any), per-class rates (None where a class has none) and the summed pixel counts.

        ``class_names``: the C foreground class names, for labels 1..C.
        """
        if len(class_names) != len(self.context) - 1:
            raise ValueError(
                f"{len(class_names)} class names for {len(self.context) - 1} foreground labels"
            )
        rates = self.rates()
        out: dict[str, Any] = {}
        for name in METRICS:
            fg = rates[name][1:]
            out[name] = float(np.mean(fg[~np.isnan(fg)])) if (~np.isnan(fg)).any() else None
        out["per_class"] = {
            name: {
                metric: None if np.isnan(rates[metric][c]) else float(rates[metric][c])
                for metric in METRICS
            }
            for c, name in enumerate(class_names, start=1)
        }
        out["pixels"] = {f.name: getattr(self, f.name)[1:].tolist() for f in fields(self)}
        return out


def failure_mode_counts(
    pred: np.ndarray,
    gt: np.ndarray,
    context: np.ndarray,
    part: np.ndarray,
    classes: Sequence[int] | np.ndarray,
    num_labels: int,
    ignore_index: int = IGNORE_INDEX,
) -> FailureModeCounts:
    """Failure-mode pixel counts of one image.

    ``pred``: H x W predicted labels (0..num_labels-1); ``gt``: the class mask
    (``ignore_index`` not scored); ``context``: class label of the context covering each
    pixel (0 none); ``part``: ``PART_LABEL``/``BODY_LABEL`` on objects, 0 elsewhere
    (format: wsss.data.voc); both maps may hold ``ignore_index`` where ``gt`` does.
    ``classes``: the image's classes (those with a CAM); contexts of other classes are
    not scored. Raises ValueError when the maps disagree with the mask (a context on an
    object pixel, a part or body pixel on background) or the shapes differ.
    """
    gt = np.asarray(gt)
    pred, context, part = (np.asarray(a) for a in (pred, context, part))
    for name, array in (("pred", pred), ("context", context), ("part", part)):
        if array.shape != gt.shape:
            raise ValueError(f"{name} map is {array.shape}, the mask {gt.shape}")
    scored = (gt != ignore_index) & (context != ignore_index) & (part != ignore_index)
    gt_s, pred_s, ctx_s, part_s = gt[scored], pred[scored], context[scored], part[scored]

    in_context = ctx_s > 0
    if np.any(gt_s[in_context] != 0):
        raise ValueError(
            "context map marks pixels the class mask labels as a class (contexts are background)"
        )
    on_object = (part_s == PART_LABEL) | (part_s == BODY_LABEL)
    if np.any(gt_s[on_object] == 0) or np.any((part_s != 0) & ~on_object):
        raise ValueError(
            f"part map must hold {PART_LABEL} (part) or {BODY_LABEL} (body) on object pixels "
            "of the class mask and 0 elsewhere"
        )
    scored_context = in_context & np.isin(ctx_s, np.asarray(classes, np.int64))
    ctx = ctx_s[scored_context].astype(np.int64)

    def count(values: np.ndarray) -> np.ndarray:
        if values.size and (values.max() >= num_labels or values.min() < 0):
            raise ValueError(f"labels {np.unique(values).tolist()} outside 0..{num_labels - 1}")
        return np.bincount(values.astype(np.int64), minlength=num_labels)

    hit = pred_s == gt_s
    is_part, is_body = part_s == PART_LABEL, part_s == BODY_LABEL
    return FailureModeCounts(
        context=count(ctx),
        context_fp=count(ctx[pred_s[scored_context] == ctx]),
        part=count(gt_s[is_part]),
        part_hit=count(gt_s[is_part & hit]),
        body=count(gt_s[is_body]),
        body_hit=count(gt_s[is_body & hit]),
    )


def skipped(reason: str) -> dict[str, Any]:
    """The ``failure_modes`` entry of a dataset without failure-mode maps: nulls and why."""
    return {**dict.fromkeys(METRICS), "skipped": reason}


def score_failure_modes(dataset, reader, threshold: float, progress: bool = True) -> dict[str, Any]:
    """The ``cam.failure_modes`` entry of ``cam_metrics.json`` for one CAM file.

    ``dataset``: an opened dataset (wsss.data.datasets.open_dataset), whose layout gives
    the masks and the failure-mode maps; ``reader``: the CAMs (wsss.cam_store.CamReader);
    ``threshold``: the background threshold the headline scores use. Returns
    :meth:`FailureModeCounts.summary` plus ``threshold``, or :func:`skipped` (every
    metric None and the reason) when the dataset has no failure-mode maps (VOC, COCO).
    """
    layout = dataset.layout
    if not layout.has_failure_maps():
        return skipped(
            f"dataset {dataset.name} ({layout.root}) has no failure-mode maps "
            f"({' and '.join(f'{d}/' for d in FAILURE_MAP_DIRS)}; only the synthetic "
            "generator writes them)"
        )
    num_labels = dataset.num_classes + 1
    total = FailureModeCounts.zeros(num_labels)
    for record in tqdm(reader, total=len(reader), desc="failure modes", disable=not progress):
        gt = layout.load_mask(record.image_id)
        context, part = layout.load_failure_maps(record.image_id)
        pred = cam_label_map(record.cams, record.classes, threshold)
        try:
            total = total + failure_mode_counts(pred, gt, context, part, record.classes, num_labels)
        except ValueError as err:
            raise ValueError(f"{record.image_id} ({layout.root}): {err}") from err
    return {"threshold": float(threshold), **total.summary(dataset.class_names)}
