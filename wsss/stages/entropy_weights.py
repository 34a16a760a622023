"""AReAM's per-block entropy weights as a step of the pipeline (``entropy_weights: baseline``).

The official code computes the weights offline (``ent_voc_mctformer.py``) from an
already trained MCTformer-V2 and hands the file to AReAM's training. Here the
same two steps are DAG jobs:

1. ``wsss entropy-weights`` (rule ``entropy_weights``) loads the trained
   baseline of one dataset and seed, runs it over the dataset's train_split
   resized to the model's training input size (no augmentation, as the official
   script on train_aug at 224 x 224), and writes the normalised weights with the
   raw entropies beside them (:func:`baseline_entropy_weights`).
2. ``wsss train --entropy-weights FILE`` puts the file's values in place of the
   keyword in the training config (:func:`with_entropy_weights`). The values,
   not the path, are then part of the config: the resume digest and the saved
   ``model.pt`` both carry them, so a checkpoint trained with other weights is
   never resumed, and CAM extraction needs no file.

Pipeline glue, not a method: importing ``wsss.methods`` does not import it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from wsss.data.classification import normalize
from wsss.data.datasets import OpenedDataset, open_dataset
from wsss.io import write_json
from wsss.methods.aream import mean_block_entropy, normalize_entropy
from wsss.methods.cam_inference import load_trained
from wsss.runtime import EXECUTION, resolve_device
from wsss.runtime import progress as tqdm
from wsss.stages import add_common, add_execution, json_arg

log = logging.getLogger("wsss")


class ResizedImages(Dataset):
    """A split's images resized to ``size`` x ``size`` (bilinear, as the training crops are),
    normalised, with their image-level labels; no augmentation."""

    def __init__(self, dataset: OpenedDataset, split: str, size: int) -> None:
        self.dataset = dataset
        self.ids = dataset.layout.split_ids(split)
        if not self.ids:
            raise ValueError(f"dataset {dataset.name}: split {split!r} is empty")
        self.size = size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_id = self.ids[index]
        layout = self.dataset.layout
        image = torch.from_numpy(np.array(layout.load_image(image_id)))  # a writable copy
        image = image.permute(2, 0, 1).float()[None]
        if tuple(image.shape[-2:]) != (self.size, self.size):
            image = F.interpolate(
                image, size=(self.size, self.size), mode="bilinear", align_corners=False
            )
        labels = layout.image_labels(
            image_id, self.dataset.num_classes, self.dataset.label_source()
        )
        return normalize(image[0].clamp(0, 255)), torch.from_numpy(labels.astype(np.float32))


def baseline_entropy_weights(
    config: dict[str, Any], model_path: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Entropy weights of the trained model at ``model_path`` over the dataset's train_split.

    ``config``: ``{"dataset", "batch_size"}``
    (:func:`wsss.config.entropy_config`). Returns what the entropy_weights rule
    writes: ``weights`` (min-max normalised, one per block: what
    :func:`~wsss.methods.aream.load_entropy_weights` reads), ``entropy_bits``
    (the raw mean entropies) and where they come from.
    """
    device = resolve_device()
    dataset = open_dataset(config["dataset"])
    model, method, state = load_trained(model_path, device)
    if len(state["class_names"]) != dataset.num_classes:
        raise ValueError(
            f"{model_path} was trained on {len(state['class_names'])} classes, dataset "
            f"{dataset.name} has {dataset.num_classes}"
        )
    split = config["dataset"]["train_split"]
    size = int(state["config"]["model"]["img_size"])  # the baseline's training input size
    images = ResizedImages(dataset, split, size)
    loader = DataLoader(
        images,
        batch_size=min(int(config["batch_size"]), len(images)),
        shuffle=False,
        num_workers=EXECUTION.workers,
        pin_memory=device.type == "cuda",
    )
    log.info(
        "entropy weights: %s (%s, seed %s) on %s %s (%d images at %d px), device %s",
        model_path,
        state.get("method"),
        state.get("seed"),
        dataset.name,
        split,
        len(images),
        size,
        device,
    )
    batches = tqdm(loader, desc=f"entropy {split}", disable=not progress)
    entropy = mean_block_entropy(model, method, batches, device)
    weights = normalize_entropy(entropy)
    log.info("per-block entropy (bits): %s", " ".join(f"{e:.4f}" for e in entropy))
    log.info("per-block weights e_l:    %s", " ".join(f"{w:.4f}" for w in weights))
    if not weights.any():
        log.warning(
            "all blocks have the same entropy: every e_l is 0, so AReAM's affinity loss gets "
            "weight 0 (is the baseline trained?)"
        )
    return {
        "weights": weights.tolist(),
        "entropy_bits": entropy.tolist(),
        "blocks": len(weights),
        "images": len(images),
        "split": split,
        "img_size": size,
        "dataset": dataset.name,
        "model": str(model_path),
        "method": state.get("method"),
        "seed": state.get("seed"),
    }


HELP = "AReAM's per-block entropy weights from a trained MCTformer-V2 (JSON)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="{dataset, batch_size}; the dataset's train_split is read",
    )
    p.add_argument("--model", required=True, help="the baseline's model.pt from the train stage")
    p.add_argument("--out", required=True, help="JSON to write (weights, raw entropies)")
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    result = baseline_entropy_weights(args.config, args.model, progress=not args.no_progress)
    write_json(args.out, result)
    return 0
