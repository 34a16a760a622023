"""Pseudo-labels for stage 2: CAMs -> label maps (palette PNGs), scored against the masks.

The CAMs are those of the dataset's ``train_split`` (what the segmentation
network trains on: synthetic ``train``, VOC ``train_aug``). Each image's label
map is made from the uint8 CAMs of its ground-truth classes (wsss.cam_store):

* **background threshold** ``t``: a number, or ``best``, the threshold the
  evaluate stage found best on the dataset's ``eval_split`` (its
  ``cam_metrics.json``, key ``cam.threshold``). ``best`` is the literature's
  choice (PSA's ``--bg_thr`` "the optimal one obtained for seeds"); note that it
  is chosen with the ground-truth masks of the training images (VOC ``train``),
  so the pseudo-label mIoU on those images is optimistic. Stage 2 is scored on
  the ``seg_split`` (val), which nothing upstream looks at.
* **plain rule** (no refinement): a pixel is foreground iff its largest CAM
  exceeds ``t`` and then takes that class (ties to the lower label), exactly
  the rule of the threshold sweep (wsss.evaluation.sweep: ``q / 255 > t``), so
  at ``t = best`` the pseudo-label mIoU equals the CAM mIoU.
* **two-threshold fusion** (``ignore_margin`` m > 0, methods.md section 1.4):
  labels at ``t + m`` (high) and ``t - m`` (low); the high label where it is
  foreground, background where both are background, 255 (ignored by the
  segmentation loss) where only the low one is foreground.
* **PAR** (``par.enabled``, wsss.ops.par): the scores ``[t, CAMs]`` are
  softmaxed and refined with pixel-adaptive refinement on the image at
  ``par.scale`` x resolution before the arg-max (AReAM's and ClusterCAM's
  pseudo-label step). Needs torch; the plain rule does not import it.
* **dense CRF** (``crf.enabled``, wsss.ops.crf, the optional ``pydensecrf2``):
  background score ``t`` stacked in front of the CAMs, mean-field inference
  with the settings of ``crf`` (default: the literature's pseudo-label CRF,
  methods.md section 1.3), arg-max. PAR and CRF are alternatives, not a chain.

Scoring: the label maps of the ``eval_split`` images (which must all be in
``train_split``) against their masks, confusion matrix and ``summarize`` as
for CAMs. A pixel labelled 255 counts as a miss for its ground-truth class
and as a prediction of no class (as PSA's ``evaluate.py`` scores PNGs with
255); the fraction of such pixels is reported as ``ignored_fraction``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsss.cam_store import CamReader, CamRecord, dequantize
from wsss.data.datasets import OpenedDataset, open_dataset
from wsss.data.palette import IGNORE_INDEX, voc_palette
from wsss.evaluation.cam_eval import summarize
from wsss.evaluation.confusion import ConfusionAccumulator
from wsss.evaluation.metrics import SegmentationScores, scores_from_confusion
from wsss.evaluation.sweep import Q_VALUES, cam_argmax_and_score
from wsss.io import atomic_directory, read_json
from wsss.runtime import progress as tqdm

log = logging.getLogger("wsss")

PAR_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "dilations": [1, 2, 4, 8, 12, 24],
    "num_iters": 10,
    "w1": 0.3,
    "w2": 0.01,
    "scale": 0.5,
    "batch_size": 16,
}


@dataclass
class PseudoLabelSettings:
    """The ``pseudo_labels`` block of ``params.yaml``."""

    bg_threshold: float | str = "best"
    ignore_margin: float = 0.0
    par: dict[str, Any] = field(default_factory=lambda: dict(PAR_DEFAULTS))
    crf: dict[str, Any] = field(default_factory=lambda: {"enabled": False})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PseudoLabelSettings:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"pseudo_labels: unknown key(s) {unknown}; known: {sorted(known)}")
        settings = cls(**d)
        settings.par = {**PAR_DEFAULTS, **(settings.par or {})}
        unknown = sorted(set(settings.par) - set(PAR_DEFAULTS))
        if unknown:
            raise ValueError(
                f"pseudo_labels.par: unknown key(s) {unknown}; known: {sorted(PAR_DEFAULTS)}"
            )
        settings.crf = {"enabled": False, **(settings.crf or {})}
        threshold = settings.bg_threshold
        if isinstance(threshold, str):
            if threshold != "best":
                raise ValueError(
                    f"pseudo_labels.bg_threshold: expected a number in [0, 1] or 'best', got {threshold!r}"
                )
        elif isinstance(threshold, bool) or not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(
                f"pseudo_labels.bg_threshold: expected a number in [0, 1] or 'best', got {threshold!r}"
            )
        if not 0.0 <= settings.ignore_margin < 1.0:
            raise ValueError(
                f"pseudo_labels.ignore_margin: expected a number in [0, 1), got {settings.ignore_margin!r}"
            )
        if settings.par["enabled"] and settings.crf["enabled"]:
            raise ValueError(
                "pseudo_labels: par.enabled and crf.enabled are alternatives; switch one off"
            )
        settings.crf_settings()  # checks the CRF keys and values (pydensecrf is not needed yet)
        return settings

    def crf_settings(self):
        from wsss.ops.crf import CrfSettings

        values = {k: v for k, v in self.crf.items() if k != "enabled"}
        return CrfSettings.from_dict(values, where="pseudo_labels.crf")

    @property
    def needs_images(self) -> bool:
        return bool(self.par["enabled"] or self.crf["enabled"])


def resolve_threshold(settings: PseudoLabelSettings, cam_metrics: str | Path | None) -> float:
    """The background threshold: the number given, or the evaluate stage's best one."""
    if settings.bg_threshold != "best":
        return float(settings.bg_threshold)
    if cam_metrics is None:
        raise ValueError(
            "pseudo_labels.bg_threshold is 'best' but no cam_metrics.json was given "
            "(the evaluate stage's output holding cam.threshold)"
        )
    path = Path(cam_metrics)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; pseudo_labels.bg_threshold 'best' reads cam.threshold "
            "from the evaluate stage's cam_metrics.json"
        )
    try:
        threshold = read_json(path)["cam"]["threshold"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: no cam.threshold to use as the background threshold") from err
    return float(threshold)


def threshold_edge_flag(
    settings: PseudoLabelSettings, cam_metrics: str | Path | None
) -> bool | None:
    """``cam.threshold_at_edge`` of the evaluate stage when the threshold is its best one
    (the labels then inherit a threshold that may be clipped by the sweep); None for a
    fixed threshold. Call after :func:`resolve_threshold`, which checks the file."""
    if settings.bg_threshold != "best":
        return None
    try:
        return bool(read_json(cam_metrics)["cam"]["threshold_at_edge"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{cam_metrics}: no cam.threshold_at_edge (written by an older evaluate stage; "
            "rerun it)"
        ) from err


# ---------------------------------------------------------------- label rules


def fuse_labels(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Two-threshold fusion (numpy twin of wsss.ops.par.fuse_pseudo_labels)."""
    fused = high.copy()
    fused[(high == 0) & (low != 0)] = IGNORE_INDEX
    return fused


def threshold_labels(cams_q: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """HxW uint8 labels: argmax class where the max quantised CAM is above ``threshold``.

    The rule of the threshold sweep (``q / 255 > t`` in float64, ties to the
    lower label), so the labels score exactly the sweep's mIoU at ``t``.
    """
    classes = np.asarray(classes)
    order = np.argsort(classes, kind="stable")
    fg_class, fg_score = cam_argmax_and_score(cams_q[order], classes[order])
    if fg_class.dtype != np.uint8:
        raise ValueError(f"class labels must be < 255 for label PNGs, got {classes.tolist()}")
    foreground = Q_VALUES[fg_score] > threshold
    return np.where(foreground, fg_class, np.uint8(0)).astype(np.uint8)


def plain_labels(record: CamRecord, threshold: float, margin: float) -> np.ndarray:
    if margin == 0:
        return threshold_labels(record.cams, record.classes, threshold)
    high = threshold_labels(record.cams, record.classes, threshold + margin)
    low = threshold_labels(record.cams, record.classes, threshold - margin)
    return fuse_labels(high, low)


def crf_labels(
    record: CamRecord, image: np.ndarray, threshold: float, margin: float, settings
) -> np.ndarray:
    from wsss.ops.crf import crf_labels_from_cams

    cams = dequantize(record.cams)
    image = np.ascontiguousarray(image)

    def at(t: float) -> np.ndarray:
        return crf_labels_from_cams(image, cams, record.classes, min(1.0, max(0.0, t)), settings)

    if margin == 0:
        return at(threshold)
    return fuse_labels(at(threshold + margin), at(threshold - margin))


def par_labels(
    records: list[CamRecord],
    images: np.ndarray,
    num_classes: int,
    threshold: float,
    margin: float,
    par_settings: dict[str, Any],
) -> np.ndarray:
    """PAR-refined labels of a batch of equal-size images (B x H x W uint8)."""
    import torch

    from wsss.ops.par import PAR, refine_cams_to_labels

    par = PAR(
        dilations=par_settings["dilations"],
        num_iters=par_settings["num_iters"],
        w1=par_settings["w1"],
        w2=par_settings["w2"],
    )
    height, width = records[0].shape
    cams = torch.zeros(len(records), num_classes, height, width)
    labels = torch.zeros(len(records), num_classes)
    for n, record in enumerate(records):
        index = torch.as_tensor(record.classes - 1, dtype=torch.long)
        cams[n, index] = torch.from_numpy(dequantize(record.cams))
        labels[n, index] = 1.0
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.inference_mode():
        fused = refine_cams_to_labels(
            rgb,
            cams,
            labels,
            bg_low=threshold - margin,
            bg_high=threshold + margin,
            par=par,
            scale=par_settings["scale"],
            ignore_index=IGNORE_INDEX,
        )
    return fused.numpy().astype(np.uint8)


# ---------------------------------------------------------------- the stage


class _UnlabelledAwareScorer:
    """Confusion over labels + one extra column for 255 (a miss that predicts no class)."""

    def __init__(self, num_labels: int) -> None:
        self.num_labels = num_labels
        self.accumulator = ConfusionAccumulator(num_labels + 1)
        self.ignored = 0
        self.pixels = 0

    def update(self, gt: np.ndarray, labels: np.ndarray) -> None:
        unlabelled = labels == IGNORE_INDEX
        self.ignored += int(unlabelled.sum())
        self.pixels += labels.size
        pred = np.where(unlabelled, np.uint8(self.num_labels), labels)
        self.accumulator.update(gt, pred)

    def scores(self) -> SegmentationScores:
        k = self.num_labels
        full = scores_from_confusion(self.accumulator.matrix)
        # Rows of the k real labels: their recall/FN count the 255 column; the extra
        # label itself (never in the ground truth) is dropped from every mean.
        iou = full.iou[:k]
        counted = ~np.isnan(iou)
        return SegmentationScores(
            miou=float(iou[counted].mean()) if counted.any() else float("nan"),
            iou=iou,
            precision=full.precision[:k],
            recall=full.recall[:k],
            fp_rate=full.fp_rate[:k],
            fn_rate=full.fn_rate[:k],
            pixel_accuracy=full.pixel_accuracy,
            num_counted=int(counted.sum()),
        )


def _batches(reader: CamReader, batch_size: int) -> Iterator[list[CamRecord]]:
    """Records grouped by image size (PAR runs on equal-size batches)."""
    buckets: dict[tuple[int, int], list[CamRecord]] = {}
    for record in reader:
        bucket = buckets.setdefault(record.shape, [])
        bucket.append(record)
        if len(bucket) == batch_size:
            yield list(bucket)
            bucket.clear()
    for bucket in buckets.values():
        if bucket:
            yield bucket


def _check_splits(dataset: OpenedDataset, reader: CamReader, cams_path: str | Path) -> list[str]:
    config = dataset.config
    train_ids = dataset.layout.split_ids(config["train_split"])
    if sorted(train_ids) != sorted(reader.ids):
        raise ValueError(
            f"{cams_path} holds {len(reader)} images, the train_split {config['train_split']!r} of "
            f"{dataset.name} has {len(train_ids)}: pseudo-labels need the CAMs of the train split"
        )
    scored = dataset.layout.split_ids(config["eval_split"])
    missing = sorted(set(scored) - set(train_ids))
    if missing:
        raise ValueError(
            f"datasets.{dataset.name}: {len(missing)} images of eval_split "
            f"{config['eval_split']!r} (e.g. {missing[0]}) are not in train_split "
            f"{config['train_split']!r}; pseudo-labels are scored on eval_split images"
        )
    return scored


def make_pseudo_labels(
    config: dict[str, Any],
    cams_path: str | Path,
    out_dir: str | Path,
    cam_metrics: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one palette PNG per train-split image into ``out_dir``; return the scores.

    ``config``: ``{"dataset": <dataset block>, "pseudo_labels": <settings>}``.
    ``out_dir`` appears only when complete (filled under a temporary name, then renamed).
    """
    settings = PseudoLabelSettings.from_dict(config["pseudo_labels"])
    dataset = open_dataset(config["dataset"])
    reader = CamReader(cams_path)
    if reader.num_classes != dataset.num_classes:
        raise ValueError(
            f"{cams_path} has {reader.num_classes} classes, dataset {dataset.name} has "
            f"{dataset.num_classes}"
        )
    scored_ids = set(_check_splits(dataset, reader, cams_path))
    threshold = resolve_threshold(settings, cam_metrics)
    at_edge = threshold_edge_flag(settings, cam_metrics)
    if at_edge:
        log.warning(
            "%s: background threshold %.2f is at the edge of the evaluate stage's sweep; "
            "these pseudo-labels may be made at a clipped threshold",
            cam_metrics,
            threshold,
        )
    margin = float(settings.ignore_margin)
    crf = settings.crf_settings() if settings.crf["enabled"] else None
    if crf is not None:
        from wsss.ops.crf import require_pydensecrf

        require_pydensecrf()  # fail before any work, with the install hint
    palette = voc_palette()
    scorer = _UnlabelledAwareScorer(dataset.num_classes + 1)
    batch_size = int(settings.par["batch_size"]) if settings.par["enabled"] else 1
    with (
        atomic_directory(out_dir) as tmp,
        tqdm(total=len(reader), desc="pseudo-labels", disable=not progress) as bar,
    ):
        for records in _batches(reader, batch_size):
            images = (
                np.stack([dataset.layout.load_image(r.image_id) for r in records])
                if settings.needs_images
                else None
            )
            if images is not None and images.shape[1:3] != records[0].shape:
                raise ValueError(
                    f"{cams_path}: CAM of {records[0].image_id} is {records[0].shape}, its image "
                    f"is {images.shape[1:3]}"
                )
            if settings.par["enabled"]:
                labels = par_labels(
                    records, images, dataset.num_classes, threshold, margin, settings.par
                )
            elif crf is not None:
                labels = [
                    crf_labels(r, im, threshold, margin, crf)
                    for r, im in zip(records, images, strict=True)
                ]
            else:
                labels = [plain_labels(r, threshold, margin) for r in records]
            for record, label in zip(records, labels, strict=True):
                png = Image.fromarray(label, mode="P")
                png.putpalette(palette)
                png.save(tmp / f"{record.image_id}.png", format="PNG")
                if record.image_id in scored_ids:
                    gt = dataset.layout.load_mask(record.image_id)
                    if gt.shape != label.shape:
                        raise ValueError(
                            f"{cams_path}: CAM of {record.image_id} is {label.shape}, its mask "
                            f"{dataset.layout.mask_path(record.image_id)} is {gt.shape}"
                        )
                    scorer.update(gt, label)
            bar.update(len(records))
    scores = scorer.scores()
    log.info(
        "wrote %d pseudo-labels to %s (threshold %.3f): mIoU %.4f on %d %s images",
        len(reader),
        out_dir,
        threshold,
        scores.miou,
        len(scored_ids),
        config["dataset"]["eval_split"],
    )
    return {
        "split": config["dataset"]["eval_split"],
        "images": len(scored_ids),
        "labelled_split": config["dataset"]["train_split"],
        "labelled_images": len(reader),
        "threshold": threshold,
        "threshold_at_edge": at_edge,
        "threshold_source": "best CAM threshold on the eval split"
        if settings.bg_threshold == "best"
        else "fixed",
        "ignore_margin": margin,
        "refinement": "par" if settings.par["enabled"] else "crf" if crf is not None else "none",
        "ignored_fraction": scorer.ignored / max(scorer.pixels, 1),
        **summarize(scores, dataset.class_names),
    }
