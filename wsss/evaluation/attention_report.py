"""Attention diagnostics of a trained model on a dataset with per-object masks.

Runs the model once per image at its stored resolution (no rescaling, no
flip; padded to a multiple of the patch size, as CAM extraction does), takes
the per-block head-mean patch -> patch attention and pools the statistics of
:mod:`wsss.evaluation.attention_diagnostics` over the split, per block and for
the summed patch affinity the refinement uses.

Instance masks are read from ``SegmentationObject/<id>.png`` beside the VOC
layout: VOC ships them for its segmentation images, and the synthetic
generator writes them in the same convention (0 background, k = object k,
255 unlabelled).

This module does not import the training methods: a checkpoint is rebuilt as
the plain multi-class-token ViT by default, and a method whose model has other
parameters (ClusterCAM) needs its own ``build`` function passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsss import checkpoint
from wsss.data.classification import normalize
from wsss.data.palette import load_label_png
from wsss.data.voc import VOCLayout
from wsss.evaluation.attention_diagnostics import (
    IGNORE_VALUE,
    AttentionDiagnostics,
    patch_instance_labels,
)

INSTANCE_DIR = "SegmentationObject"

# (model config dict, number of classes) -> a model whose forward returns an object
# with ``attentions`` (per block, B x heads x T x T with the class tokens first).
ModelBuilder = Callable[[dict[str, Any], int], torch.nn.Module]

log = logging.getLogger("wsss")


def instance_path(layout: VOCLayout, image_id: str) -> Path:
    return layout.root / INSTANCE_DIR / f"{image_id}.png"


def load_instance_map(layout: VOCLayout, image_id: str) -> np.ndarray:
    """The H x W uint8 instance map of ``image_id``; FileNotFoundError names the missing file."""
    path = instance_path(layout, image_id)
    if not path.is_file():
        raise FileNotFoundError(
            f"instance mask {path} does not exist; attention diagnostics need per-object masks "
            f"in {INSTANCE_DIR}/ (VOC ships them; a synthetic dataset generated before they were "
            "written must be deleted and generated again)"
        )
    return load_label_png(path)


def class_attention(attentions: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Per-block attention [B, H, T, T] (class tokens first) -> class -> patch [B, L, H, C, N].

    A block holding only the class-token rows (a partial pass) is fine here.
    """
    return torch.stack([block[:, :, :num_classes, num_classes:] for block in attentions], dim=1)


def patch_attention(attentions: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Per-block attention [B, H, T, T] (class tokens first) -> patch -> patch [B, L, H, N, N].

    Raises ValueError when a block holds only the class-token rows (a partial pass).
    """
    blocks = []
    for index, block in enumerate(attentions):
        if block.shape[-2] != block.shape[-1]:
            raise ValueError(
                f"block {index} attention has shape {tuple(block.shape)}: only the class-token "
                "rows; run the model with every block's full attention"
            )
        blocks.append(block[:, :, num_classes:, num_classes:])
    return torch.stack(blocks, dim=1)


@torch.inference_mode()
def diagnose_model(
    model: torch.nn.Module,
    layout: VOCLayout,
    ids: Sequence[str],
    *,
    num_classes: int,
    patch_size: int,
    affinity_blocks: Sequence[int] | None = None,
    class_blocks: Sequence[int] | None = None,
    min_fraction: float = 0.5,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Pooled diagnostics of ``model`` over the images ``ids`` of ``layout``.

    ``model(images)`` (or ``forward(images)`` when given, e.g. a training
    method's own forward pass of ``model``) takes B x 3 x H x W normalised
    images and returns an object with ``attentions`` (see
    :func:`patch_attention`); ``num_classes`` is its number of class tokens. Images run at their stored size, batched
    with others of the same size (``batch_size`` at most), zero-padded (the
    mean colour) to a multiple of ``patch_size``; the instance map is padded
    with 255, so padded patches are never queries but do count in N, as in the
    padded CAM pass. The class mask (the layout's ``SegmentationClass``) is reduced
    to the patch grid the same way for the class-token lift, per block and for the
    class attention summed over ``class_blocks`` (None: all; the CAM's
    ``cam.class_layers``). Returns :meth:`AttentionDiagnostics.result`; the wall time is logged,
    not returned, so the tracked output has the same bytes on every rerun.
    """
    if not ids:
        raise ValueError(f"no image ids to diagnose under {layout.root}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model.eval()
    diagnostics = AttentionDiagnostics(affinity_blocks, class_blocks)
    started = time.perf_counter()
    pending: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def run(batch: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        height, width = batch[0][0].shape[:2]
        pad_h, pad_w = (-height) % patch_size, (-width) % patch_size
        images = torch.from_numpy(np.stack([image for image, _, _ in batch])).permute(0, 3, 1, 2)
        x = F.pad(normalize(images).to(device), (0, pad_w, 0, pad_h))
        output = model(x) if forward is None else forward(x)
        attention = patch_attention(output.attentions, num_classes).float().cpu().numpy()
        to_classes = class_attention(output.attentions, num_classes).float().cpu().numpy()
        for (_, instances, classes), per_image, per_class in zip(
            batch, attention, to_classes, strict=True
        ):
            pad = ((0, pad_h), (0, pad_w))
            padded = np.pad(instances, pad, constant_values=IGNORE_VALUE)
            labels = patch_instance_labels(padded, patch_size, min_fraction)
            class_labels = patch_instance_labels(
                np.pad(classes, pad, constant_values=IGNORE_VALUE), patch_size, min_fraction
            )
            diagnostics.add(per_image, labels, per_class, class_labels)  # L x H x N x N

    for image_id in ids:
        image = layout.load_image(image_id)
        instances = load_instance_map(layout, image_id)
        if instances.shape != image.shape[:2]:
            raise ValueError(
                f"{instance_path(layout, image_id)}: shape {instances.shape} differs from its "
                f"image's {image.shape[:2]}"
            )
        classes = layout.load_mask(image_id)
        if classes.shape != image.shape[:2]:
            raise ValueError(
                f"{layout.mask_path(image_id)}: shape {classes.shape} differs from its "
                f"image's {image.shape[:2]}"
            )
        bucket = pending.setdefault(image.shape, [])
        bucket.append((image, instances, classes))
        if len(bucket) == batch_size:
            run(bucket)
            bucket.clear()
    for bucket in pending.values():
        if bucket:
            run(bucket)
    result = diagnostics.result()
    log.info(
        "attention diagnostics of %d images in %.1f s",
        result.get("images", 0),
        time.perf_counter() - started,
    )
    return result


def _plain_model(model_config: dict[str, Any], num_classes: int) -> torch.nn.Module:
    from wsss.models import build_model

    return build_model(model_config, num_classes)


def diagnose_checkpoint(
    model_path: str | Path,
    dataset_root: str | Path,
    split: str = "train",
    *,
    build: ModelBuilder | None = None,
    max_images: int | None = None,
    affinity_blocks: Sequence[int] | None = None,
    class_blocks: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Per-block attention diagnostics of a trained ``model.pt`` on ``split`` of a dataset.

    ``model_path``: the train stage's ``model.pt`` (keys ``model``, ``config``,
    ``class_names``). ``dataset_root``: a VOC-layout folder (or one holding
    ``VOCdevkit/VOC2012``) with ``SegmentationObject/``. ``build``: how to
    rebuild the model from its config (default: the plain multi-class-token
    ViT, which fits every method whose model adds no parameters); no
    pretrained weights are fetched, they come from the file. ``max_images``:
    the first n ids of the split (None: all).

    Returns ``{"model", "split", "images", "blocks": [per block], "affinity",
    "affinity_blocks"}``; each entry holds the statistics of
    :mod:`wsss.evaluation.attention_diagnostics` and their query counts.
    Raises FileNotFoundError for a missing model, split or instance mask, and
    ValueError for a checkpoint whose parameters do not fit the built model.
    """
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"trained model {path} does not exist; run the train stage first")
    state = checkpoint.load(path, "cpu", what="trained model")
    missing = [k for k in ("model", "config", "class_names") if k not in state]
    if missing:
        raise ValueError(f"{path}: not a trained model.pt, missing key(s) {missing}")
    config = state["config"]
    num_classes = len(state["class_names"])
    model_config = {**config["model"], "pretrained": False, "weights": None}
    model = (build or _plain_model)(model_config, num_classes)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        method = config.get("method", {}).get("name", "?")
        raise ValueError(
            f"{path}: the parameters of method {method!r} do not fit the rebuilt model; pass "
            f"that method's build_model as build= ({err})"
        ) from err
    model.to(device)
    layout = VOCLayout.locate(dataset_root)
    ids = layout.split_ids(split)
    if max_images is not None:
        ids = ids[:max_images]
    result = diagnose_model(
        model,
        layout,
        ids,
        num_classes=num_classes,
        patch_size=model.patch_size,
        affinity_blocks=affinity_blocks,
        class_blocks=class_blocks,
        device=device,
    )
    return {"model": str(path), "split": split, **result}
