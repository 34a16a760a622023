"""Training the stage-2 segmenter on pseudo-labels, then scoring it on the seg split.

Recipe (methods.md section 1.3, DeepLab / the official ``seg/train_seg.py``):
pixel-wise cross-entropy with 255 ignored, a poly learning-rate schedule
``lr * (1 - step / total) ** power`` and the head at ``head_lr_mult`` (10) x the
backbone's rate; SGD with momentum there, AdamW as an option (the tiny
synthetic default trains from scratch, where it converges in fewer epochs).
Resumable like the classifier: a checkpoint after every epoch, picked up by a
rerun with the same configuration; the shuffle order is reseeded from (seed, epoch)
and the global RNG state travels in the checkpoint, so a resumed run gives the
same weights as an uninterrupted one.

Under ``torchrun`` the ranks share every global batch of ``segmentation.batch_size``
(:mod:`wsss.distributed`), the loss is normalized by the labelled pixels of the whole
global batch, and rank 0 alone writes the checkpoint, ``segmenter.pt`` and the metrics.
BatchNorm: on GPUs the backbone's BatchNorm layers become SyncBatchNorm, so that the
batch statistics are the global batch's, as in one process; torch has no CPU
SyncBatchNorm, so CPU processes (gloo, the tests) normalize with their own share's
statistics, and rank 0's running statistics are saved.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss import checkpoint, distributed
from wsss.checkpoint import resume_checkpoint, save_checkpoint
from wsss.data.datasets import open_dataset
from wsss.data.palette import IGNORE_INDEX
from wsss.io import remove_temporaries
from wsss.runtime import EXECUTION, config_digest, resolve_device, seed_everything
from wsss.runtime import progress as tqdm
from wsss.segmentation.data import PseudoLabelDataset
from wsss.segmentation.infer import evaluate_segmenter
from wsss.segmentation.model import Segmenter, SegmenterConfig

log = logging.getLogger("wsss")

OPTIMIZERS = ("sgd", "adamw")


@dataclass
class SegmentationSettings:
    """The ``segmentation`` block of ``params.yaml``: network, training, inference."""

    model: SegmenterConfig
    epochs: int = 30
    batch_size: int = 4
    crop_size: int = 321
    scale_range: tuple[float, float] = (0.5, 1.5)
    hflip: bool = True
    optimizer: str = "sgd"
    lr: float = 7e-4
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-5
    poly_power: float = 0.9
    freeze_bn: bool = False
    eval_batch_size: int = 16
    crf: dict[str, Any] = field(default_factory=lambda: {"enabled": False})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SegmentationSettings:
        model_keys = set(SegmenterConfig.__dataclass_fields__)
        own_keys = set(cls.__dataclass_fields__) - {"model"}
        unknown = sorted(set(d) - model_keys - own_keys)
        if unknown:
            raise ValueError(
                f"segmentation: unknown key(s) {unknown}; known: {sorted(model_keys | own_keys)}"
            )
        settings = cls(
            model=SegmenterConfig.from_dict({k: v for k, v in d.items() if k in model_keys}),
            **{k: v for k, v in d.items() if k in own_keys},
        )
        if settings.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"segmentation.optimizer: {settings.optimizer!r} is not one of {OPTIMIZERS}"
            )
        settings.crf = {"enabled": False, **(settings.crf or {})}
        settings._crf_values()  # checks the CRF keys and values (pydensecrf is not needed yet)
        return settings

    def _crf_values(self):
        from wsss.ops.crf import CrfSettings

        values = {k: v for k, v in self.crf.items() if k != "enabled"}
        return CrfSettings.from_dict(values, where="segmentation.crf")

    def crf_settings(self):
        """CrfSettings for inference, or None when the CRF is off (raises if pydensecrf is missing)."""
        if not self.crf["enabled"]:
            return None
        from wsss.ops.crf import require_pydensecrf

        require_pydensecrf()
        return self._crf_values()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels (255 ignored; 0 if none is labelled)."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (labels != IGNORE_INDEX).sum().clamp(min=1)


def global_segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, ranks: distributed.Group
) -> torch.Tensor:
    """This rank's part of the mean cross-entropy over the labelled pixels of the whole global
    batch: ``N * (this rank's summed loss) / (labelled pixels on all N ranks)``. Averaged over
    the ranks (the gradients, and the logged values), it is :func:`segmentation_loss` of the
    global batch; a per-rank :func:`segmentation_loss` would weight each rank's pixels by its
    own count instead."""
    total = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
    labelled = distributed.all_sum((labels != IGNORE_INDEX).sum(), ranks)
    return total * ranks.world_size / labelled.clamp(min=1)


def poly_lr(base: float, step: int, total: int, power: float) -> float:
    return base * (1.0 - min(step, total) / max(total, 1)) ** power


def _optimizer(model: Segmenter, settings: SegmentationSettings) -> torch.optim.Optimizer:
    backbone, head = model.parameter_groups()
    groups = []
    for params, mult in ((backbone, 1.0), (head, settings.head_lr_mult)):
        decay = [p for p in params if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in params if p.requires_grad and p.ndim <= 1]
        for group, wd in ((decay, settings.weight_decay), (no_decay, 0.0)):
            if group:
                groups.append(
                    {"params": group, "weight_decay": wd, "lr_mult": mult, "lr": settings.lr * mult}
                )
    if settings.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum)
    return torch.optim.AdamW(groups, lr=settings.lr)


def _set_train_mode(model: Segmenter, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:  # DeepLab practice with small batches: keep the pretrained statistics
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_segmenter(
    config: dict[str, Any],
    labels_dir: str | Path,
    seed: int,
    checkpoint_path: str | Path | None = None,
    progress: bool = True,
) -> tuple[Segmenter, list[dict[str, Any]]]:
    """Train on the pseudo-labels of the dataset's ``train_split``; return (model, history).
    Under torchrun only rank 0 writes the checkpoint."""
    settings = SegmentationSettings.from_dict(config["segmentation"])
    seed_everything(seed)
    ranks, device = distributed.start(resolve_device())
    progress = progress and ranks.is_main
    dataset = open_dataset(config["dataset"])
    model = Segmenter(settings.model, dataset.num_classes + 1)
    if ranks.enabled and device.type == "cuda":
        # Global-batch statistics, as one process computes them (same state-dict keys).
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    data = PseudoLabelDataset(
        dataset,
        config["dataset"]["train_split"],
        labels_dir,
        crop_size=settings.crop_size,
        scale_range=tuple(settings.scale_range),
        hflip=settings.hflip,
        cache=EXECUTION.cache_images,
        seed=seed,
    )
    batch_size = min(settings.batch_size, len(data))  # the global batch, over all ranks
    # Reseeded every epoch, so that a resumed run shuffles like an uninterrupted one.
    shuffle = torch.Generator()
    loader = distributed.training_loader(
        data, batch_size, shuffle, ranks, "segmentation.batch_size", EXECUTION.workers, device
    )
    optimizer = _optimizer(model, settings)
    total_steps = settings.epochs * len(loader)
    start_epoch, history = 0, []
    digest = config_digest({"config": config, "seed": seed})
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt is not None:
        start_epoch, history = distributed.main_first(
            ranks, lambda: resume_checkpoint(ckpt, digest, model, optimizer, device)
        )
    log.info(
        "segmenter %s (%s head, stride %d) on %d pseudo-labelled %s images, seed %d, "
        "%d epochs x %d steps, device %s",
        settings.model.backbone,
        settings.model.head,
        model.stride,
        len(data),
        config["dataset"]["train_split"],
        seed,
        settings.epochs,
        len(loader),
        device,
    )
    for epoch in range(start_epoch, settings.epochs):
        _set_train_mode(model, settings.freeze_bn)
        data.set_epoch(epoch)
        shuffle.manual_seed(seed * 1_000_003 + epoch)
        started, loss_sum = time.perf_counter(), 0.0
        bar = tqdm(loader, desc=f"seg epoch {epoch + 1}", disable=not progress, leave=False)
        for step, (images, labels) in enumerate(bar):
            global_step = epoch * len(loader) + step
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(
                    settings.lr * group["lr_mult"], global_step, total_steps, settings.poly_power
                )
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits = model(images)
            if ranks.enabled:
                loss = global_segmentation_loss(logits, labels, ranks)
            else:
                loss = segmentation_loss(logits, labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"segmentation loss became {loss.item()} at epoch {epoch}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(model, ranks)
            optimizer.step()
            loss_sum += loss.item()
        loss_sum = distributed.mean_over_ranks({"loss": loss_sum}, ranks, device)["loss"]
        row = {
            "epoch": epoch + 1,
            "loss": loss_sum / max(len(loader), 1),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        log.info(
            "seg epoch %d/%d loss=%.4f %.1fs",
            epoch + 1,
            settings.epochs,
            row["loss"],
            row["seconds"],
        )
        # The last epoch too: run_segmentation keeps the checkpoint until the trained model
        # has been scored, so a failed evaluation does not lose the training.
        if ckpt is not None and ranks.is_main:
            save_checkpoint(ckpt, digest, model, optimizer, epoch + 1, history)
    model.eval()
    return model, history


def load_segmenter(path: str | Path, device: torch.device | str = "cpu") -> Segmenter:
    """A trained segmenter from ``segmenter.pt`` (built from the config saved with it)."""
    state = checkpoint.load(path, device, what="segmenter (segment stage)")
    settings = SegmentationSettings.from_dict(state["config"]["segmentation"])
    settings.model.pretrained, settings.model.weights = False, None  # the state dict has them
    model = Segmenter(settings.model, state["num_labels"]).to(device)
    model.load_state_dict(state["model"])
    return model.eval()


def run_segmentation(
    config: dict[str, Any],
    labels_dir: str | Path,
    seed: int,
    model_path: str | Path,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on the pseudo-labels, write ``model_path``, score on the seg split.

    The training checkpoint (``<model>_checkpoint.pt``) is removed only after the scoring
    succeeds: a rerun after a failed evaluation does not train again.

    ``config``: ``{"dataset", "segmentation", "scales", "device"}`` (wsss.config.segmentation_config).
    Returns the ``seg`` entry of ``seg_metrics.json``; None on ranks other than 0 of a
    torchrun group, which write nothing (rank 0 alone scores the model).
    """
    model_path = Path(model_path)
    checkpoint_path = model_path.with_name(model_path.stem + "_checkpoint.pt")
    settings = SegmentationSettings.from_dict(config["segmentation"])
    crf_settings = settings.crf_settings()  # a missing pydensecrf fails before training
    if distributed.from_environment().is_main:
        for stale in remove_temporaries(checkpoint_path, model_path):
            log.info("removed %s, left by an interrupted run", stale)
    started = time.perf_counter()
    model, history = train_segmenter(config, labels_dir, seed, checkpoint_path, progress)
    train_seconds = time.perf_counter() - started
    if not distributed.from_environment().is_main:
        return None
    checkpoint.save(
        model_path,
        {
            "model": model.state_dict(),
            "config": config,
            "seed": seed,
            "num_labels": model.num_labels,
        },
    )
    dataset = open_dataset(config["dataset"])
    device = next(model.parameters()).device
    result = evaluate_segmenter(
        model,
        dataset,
        config["dataset"]["seg_split"],
        config["scales"],
        device,
        batch_size=settings.eval_batch_size,
        crf_settings=crf_settings,
        progress=progress,
    )
    # Scored: only now is the training checkpoint redundant. Until here a failed evaluation
    # (a bad seg_split image, say) leaves it, and the rerun resumes past the last epoch and
    # only evaluates (Snakemake deletes the failed job's declared outputs, not this file).
    checkpoint_path.unlink(missing_ok=True)
    # Wall-clock times go to the rule's log only: seg_metrics.json is a tracked output and
    # must not change between runs with the same params.
    log.info("segmenter trained in %.1f s", train_seconds)
    result["train"] = {
        "split": config["dataset"]["train_split"],
        "epochs": settings.epochs,
        "final_loss": history[-1]["loss"] if history else None,
        "history": [{k: v for k, v in row.items() if k != "seconds"} for row in history],
    }
    return result
