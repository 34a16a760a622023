"""The training loop shared by every method: the method supplies the model and the loss.

Resumable: a checkpoint is written atomically after every epoch and picked up
again by a rerun with the same configuration (a different configuration, or a
checkpoint that cannot be read, starts over). It holds every state the remaining
epochs draw on (weights, optimizer, the global RNG and the shuffle generator; the
learning rate is a function of the step, augmentation is seeded per image and
epoch, bf16 autocast needs no loss scaler), so a run killed at any point and rerun
writes the same ``model.pt`` bytes as an uninterrupted one. The final ``model.pt``
only appears once training has finished.

Under ``torchrun`` (several GPUs, or CPU processes with gloo) each process trains on its
share of every global batch of ``train.batch_size`` and the gradients are averaged
(:mod:`wsss.distributed`); rank 0 alone writes the checkpoint, ``model.pt``, the history
and the metrics, and every rank resumes from that checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from wsss import checkpoint, distributed
from wsss.checkpoint import resume_checkpoint, save_checkpoint
from wsss.data.classification import ClassificationDataset
from wsss.data.datasets import open_dataset
from wsss.evaluation.metrics import mean_average_precision
from wsss.io import atomic_path, remove_temporaries, write_json
from wsss.methods.base import TRAINING_METHODS, TrainingMethod, Upstream
from wsss.models.param_groups import param_groups
from wsss.runtime import (
    EXECUTION,
    config_digest,
    native_bf16,
    platform_info,
    resolve_device,
    seed_everything,
)
from wsss.runtime import progress as tqdm
from wsss.stages import add_common, add_execution, json_arg

log = logging.getLogger("wsss")


def lr_at(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    """Linear warm-up from ``floor`` to ``peak``, then cosine decay back to ``floor``."""
    if warmup and step < warmup:
        return floor + (peak - floor) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def step_autocast(settings: dict[str, Any], device: torch.device) -> bool:
    """Whether the training step (forward and loss) runs under bf16 autocast: ``train.amp`` on
    CUDA, ``train.cpu_bf16`` on a CPU. The CPU option needs native bf16 (avx512_bf16 or AMX;
    emulated bf16 is slower than fp32): without it, ValueError rather than a silent slowdown.
    The weights, the optimizer step and everything after training stay fp32."""
    if device.type == "cuda":
        return bool(settings["amp"])
    if device.type == "cpu" and settings.get("cpu_bf16", False):
        if not native_bf16(device):
            raise ValueError(
                "train.cpu_bf16 is true, but this CPU has no native bf16 (avx512_bf16 or AMX): "
                "bf16 would be emulated, slower than fp32; set train.cpu_bf16 false"
            )
        return True
    return False


def build_method(config: dict[str, Any]) -> TrainingMethod:
    return TRAINING_METHODS.get(config["method"]["name"])(config["method"]["params"])


def train(
    config: dict[str, Any], seed: int, out_dir: str | Path, progress: bool = True
) -> dict[str, Any]:
    """Train one (dataset, method, seed) run into ``out_dir``; return its summary metrics
    (on ranks other than 0 of a torchrun group, which write nothing: an empty dict)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = config["train"]
    seed_everything(seed)
    ranks, device = distributed.start(resolve_device())
    progress = progress and ranks.is_main
    dataset = open_dataset(config["dataset"])
    method = build_method(config)
    model = method.build_model(config["model"], dataset.num_classes).to(device)
    data = ClassificationDataset(
        dataset,
        config["dataset"]["train_split"],
        img_size=config["model"]["img_size"],
        crop_scale=tuple(settings["crop_scale"]),
        hflip=settings["hflip"],
        cache_images=EXECUTION.cache_images,
        seed=seed,
    )
    batch_size = min(settings["batch_size"], len(data))  # the global batch, over all ranks
    # Its state goes into every checkpoint: it draws each epoch's order from where the
    # previous epoch left it, so a resumed run must continue it, not reseed it.
    shuffle = torch.Generator().manual_seed(seed)
    loader = distributed.training_loader(
        data, batch_size, shuffle, ranks, "train.batch_size", EXECUTION.workers, device
    )
    peak_lr = settings["lr"] * (batch_size / 512 if settings["lr_batch_scaling"] else 1.0)
    floor_lr = min(settings["min_lr"], peak_lr)
    # Layer-wise lr decay and frozen early blocks (fine-tuning a pretrained backbone); the
    # defaults (1.0, 0) give every group lr_scale 1 and freeze nothing.
    groups = param_groups(
        model,
        settings["weight_decay"],
        settings.get("layer_decay", 1.0),
        settings.get("freeze_blocks", 0),
    )
    optimizer = torch.optim.AdamW(groups, lr=peak_lr)
    epochs = settings["epochs"]
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch
    warmup_steps = settings["warmup_epochs"] * steps_per_epoch
    use_amp = step_autocast(settings, device)

    digest = config_digest({"config": config, "seed": seed})
    checkpoint_path = out_dir / "checkpoint.pt"
    outputs = ("model.pt", "train_log.tsv", "train_metrics.json")
    if ranks.is_main:
        for stale in remove_temporaries(checkpoint_path, *(out_dir / name for name in outputs)):
            log.info("removed %s, left by an interrupted run", stale)
    # Rank 0 first: it alone sets an unreadable checkpoint aside; the others read the same file.
    start_epoch, history = distributed.main_first(
        ranks,
        lambda: resume_checkpoint(checkpoint_path, digest, model, optimizer, device, shuffle),
    )

    method.on_train_start(model, data, device)
    log.info(
        "training %s on %s (%d images, %d classes), seed %d, %d epochs x %d steps, device %s, %s",
        method.name,
        dataset.name,
        len(data),
        dataset.num_classes,
        seed,
        epochs,
        steps_per_epoch,
        device,
        "bf16 autocast" if use_amp else "fp32",
    )
    train_seconds = sum(h["seconds"] for h in history)
    for epoch in range(start_epoch, epochs):
        model.train()
        data.set_epoch(epoch)
        sums: dict[str, float] = {}
        started = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for step, (images, labels) in enumerate(bar):
            global_step = epoch * steps_per_epoch + step
            lr = lr_at(global_step, total_steps, warmup_steps, peak_lr, floor_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]  # layer-wise decay; 1 by default
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, parts = method.loss(model, images, labels, epoch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(model, ranks)
            optimizer.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        sums = distributed.mean_over_ranks(sums, ranks, device)  # the global batches' means
        seconds = time.perf_counter() - started
        train_seconds += seconds
        row = {"epoch": epoch + 1, "lr": lr, "seconds": seconds}  # the scheduled (peak-layer) lr
        row.update({k: v / steps_per_epoch for k, v in sums.items()})
        history.append(row)
        log.info(
            "epoch %d/%d %s",
            epoch + 1,
            epochs,
            " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
        )
        if ranks.is_main:
            save_checkpoint(checkpoint_path, digest, model, optimizer, epoch + 1, history, shuffle)

    if not ranks.is_main:
        return {}
    checkpoint.save(
        out_dir / "model.pt",
        {
            "model": model.state_dict(),
            "config": config,
            "seed": seed,
            "class_names": dataset.class_names,
            "method": method.name,
        },
    )
    checkpoint_path.unlink(missing_ok=True)
    # Wall-clock times differ run to run: they go to the rule's log (untracked), not to the
    # tracked outputs, so the same params give byte-identical train_log.tsv/train_metrics.json.
    _write_history(out_dir / "train_log.tsv", [_without_seconds(row) for row in history])
    log.info(
        "trained in %.1f s (%.1f images/s)",
        train_seconds,
        epochs * steps_per_epoch * batch_size / max(train_seconds, 1e-9),
    )
    mean_ap = train_map(model, method, data, device)
    summary = {
        "final_loss": history[-1]["loss"],
        "epochs": epochs,
        # null when no class has a positive image (mAP undefined): NaN is not JSON
        "train_map": None if math.isnan(mean_ap) else mean_ap,
        # Where the weights were computed: CPU kernels and thread count move a run like
        # another seed would (README), so the training platform is recorded with it.
        "platform": {**platform_info(device=str(device)), "processes": ranks.world_size},
    }
    write_json(out_dir / "train_metrics.json", summary)
    return summary


def _without_seconds(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "seconds"}


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    keys = list(history[0])
    lines = ["\t".join(keys)] + [
        "\t".join(f"{row.get(k, float('nan')):.6g}" for k in keys) for row in history
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


@torch.no_grad()
def train_map(model, method: TrainingMethod, data: ClassificationDataset, device) -> float:
    """Mean average precision of the class-token scores on the (augmented) training split."""
    model.eval()
    scores, labels = [], []
    loader = DataLoader(data, batch_size=64, shuffle=False)
    for images, target in loader:
        scores.append(method.forward(model, images.to(device), epoch=-1).class_logits.float().cpu())
        labels.append(target)
    return mean_average_precision(torch.cat(scores).numpy(), torch.cat(labels).numpy())


HELP = "train one (dataset, method, seed) classifier"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=json_arg,
        required=True,
        help="JSON {dataset, model, method, train} (wsss.config.training_config; "
        "`snakemake -n -p` prints each job's), or @FILE holding it",
    )
    p.add_argument("--seed", type=int, required=True, help="the run's seed (grid.seeds)")
    p.add_argument(
        "--out-dir",
        required=True,
        help="run folder: model.pt, train_log.tsv, train_metrics.json (checkpoint.pt while training)",
    )
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="PARAM=FILE",
        help="an artifact of another trained run that the method declares it reads (e.g. "
        "AReAM's entropy_weights=FILE, from `wsss entropy-weights`); repeatable",
    )
    add_common(p)
    add_execution(p)


def run(args: argparse.Namespace) -> int:
    files = {}
    for item in args.upstream:
        param, sep, path = item.partition("=")
        if not sep or not param or not path:
            raise ValueError(f"--upstream: expected PARAM=FILE, got {item!r}")
        files[param] = path
    config = with_upstream(args.config, files)
    ranks = distributed.from_environment()
    try:
        summary = train(config, args.seed, args.out_dir, progress=not args.no_progress)
    finally:
        distributed.stop(ranks)
    if ranks.is_main:
        print(json.dumps(summary))
    return 0


def with_upstream(config: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """The training config with each declared upstream parameter replaced by the value read
    from its file (a copy; returned as is when the method declares none).

    The values, not the paths, are then part of the config: the resume digest and the
    saved ``model.pt`` both carry them, so a checkpoint trained with other values is never
    resumed. Raises ValueError when a declared file is missing from ``files`` or a file
    is given for a parameter the method does not declare.
    """
    method = build_method(config)
    declared: dict[str, Upstream] = {u.param: u for u in method.upstream()}
    key = f"method_params.{method.name}"
    extra = sorted(set(files) - set(declared))
    if extra:
        raise ValueError(
            f"--upstream {extra[0]}=...: {key} declares no upstream artifact for {extra[0]!r} "
            f"(declared: {sorted(declared) or 'none'}); the file would be ignored"
        )
    if not declared:
        return config
    resolved = copy.deepcopy(config)
    for param, upstream in declared.items():
        if param not in files:
            raise ValueError(
                f"{key}.{param} reads the {upstream.stage} artifact of the trained run "
                f"{upstream.run!r}: give it with --upstream {param}=FILE (the workflow's "
                f"{upstream.stage} rule writes results/runs/<dataset>/train/<run>/seed<N>/"
                f"{upstream.stage}.json), or set the parameter to a value"
            )
        resolved["method"]["params"][param] = method.read_upstream(upstream, files[param])
    return resolved
