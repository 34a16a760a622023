"""Pretrain a plain timm ViT on the synthetic corpus and save it in timm's layout.

The result is a state dict of the backbone that ``model.pretrained: true`` +
``model.weights: <file>`` loads through timm's own loader (no classifier keys:
the backbone is built with ``num_classes=0``), exactly as an ImageNet
checkpoint would be. One checkpoint serves every method and seed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss import checkpoint
from wsss.data.classification import normalize
from wsss.data.pretrain_corpus import Corpus, CorpusConfig, generate_corpus
from wsss.evaluation.attention_diagnostics import patch_instance_labels
from wsss.io import write_json
from wsss.models.mct_vit import ModelConfig, block_forward, create_backbone
from wsss.models.param_groups import param_groups
from wsss.pretrain.objectives import (
    PRETRAIN_OBJECTIVES,
    BackboneOutput,
    PretrainBatch,
    PretrainObjective,
)
from wsss.runtime import seed_everything

log = logging.getLogger("wsss")


@dataclass
class PretrainConfig:
    """The ``pretrain`` block: corpus, backbone shape, objective and optimisation."""

    corpus: dict[str, Any] = field(default_factory=dict)  # CorpusConfig keys
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig keys (no weights)
    objective: str = "grouping"
    objective_params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1.0e-3
    min_lr: float = 1.0e-5
    weight_decay: float = 0.05
    warmup_frac: float = 0.05  # share of the steps spent warming up linearly
    hflip: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"pretrain: unknown key(s) {unknown}; known: {known}")
        config = cls(**d)
        if config.epochs < 1 or config.batch_size < 1:
            raise ValueError("pretrain: epochs and batch_size must be >= 1")
        if config.model.get("pretrained") or config.model.get("weights"):
            raise ValueError(
                "pretrain.model: pretraining starts from scratch; drop pretrained/weights"
            )
        return config


def backbone_forward(
    backbone: torch.nn.Module, images: torch.Tensor, cls_readout: bool = False
) -> BackboneOutput:
    """timm's ``forward_features`` with each block's softmax attention kept.

    ``cls_readout``: also run the class token a second time, block by block, through
    :func:`cls_readout_block` over the same blocks' *detached* patch keys and values
    (``BackboneOutput.cls_readout``, B x D after the final norm). Its value equals the
    final class token's (up to float rounding); a loss on it reaches the backbone only
    through the class token's own query, key, value and MLP path, never through a patch
    token, so it cannot reshape patch attention through the patches' keys and values."""
    x = backbone.patch_embed(images)
    x = backbone._pos_embed(x)
    x = backbone.patch_drop(x)
    x = backbone.norm_pre(x)
    cls = x[:, :1] if cls_readout else None
    attentions = []
    for block in backbone.blocks:
        if cls is not None:
            cls = cls_readout_block(block, cls, x[:, 1:])
        x, weights, _ = block_forward(block, x, want_logits=False)
        attentions.append(weights)
    readout = None if cls is None else backbone.norm(cls)[:, 0]
    return BackboneOutput(backbone.norm(x), attentions, readout)


def cls_readout_block(block: torch.nn.Module, cls: torch.Tensor, patches: torch.Tensor):
    """One timm ViT block for the class token alone (B x 1 x D), attending over itself and
    ``patches`` (B x N x D, the block's input patch tokens) with the patches' keys and values
    computed without gradient. The arithmetic is :func:`block_forward`'s for the class
    token's row (timm's non-fused path); returns the class token's output, B x 1 x D."""
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise NotImplementedError("gated attention blocks are not supported")

    def qkv(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, t, _ = tokens.shape
        parts = attn.qkv(block.norm1(tokens))
        q, k, v = parts.reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        return attn.q_norm(q), attn.k_norm(k), v

    q, k_cls, v_cls = qkv(cls)
    with torch.no_grad():
        _, k_patch, v_patch = qkv(patches)
    k = torch.cat([k_cls, k_patch], dim=2)
    v = torch.cat([v_cls, v_patch], dim=2)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    mixed = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(len(cls), 1, -1)
    mixed = attn.proj_drop(attn.proj(attn.norm(mixed)))
    cls = cls + block.drop_path1(block.ls1(mixed))
    return cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))


def corpus_patch_labels(corpus: Corpus, patch_size: int) -> np.ndarray:
    """N x (S/p)^2 int64 patch labels of every corpus image (see ``patch_instance_labels``)."""
    return np.stack(
        [patch_instance_labels(inst, patch_size).reshape(-1) for inst in corpus.instances]
    )


def _lr(step: int, total: int, warmup: int, peak: float, floor: float) -> float:
    if step < warmup:
        return floor + (peak - floor) * step / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def pretrain(
    config: PretrainConfig | dict[str, Any],
    out_path: str | Path,
    corpus: Corpus | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain, write the backbone's state dict to ``out_path`` (.pth) and a summary beside it
    (``<out_path stem>.json``); return the summary. ``corpus``: reuse one already generated
    (it must match ``config.corpus``)."""
    if isinstance(config, dict):
        config = PretrainConfig.from_dict(config)
    corpus_config = CorpusConfig.from_dict(config.corpus)
    started = time.perf_counter()
    if corpus is None:
        corpus = generate_corpus(corpus_config)
    elif corpus.config != corpus_config:
        raise ValueError("pretrain: the corpus passed in was generated with another config")
    corpus_seconds = time.perf_counter() - started

    seed_everything(config.seed)
    model_config = ModelConfig.from_dict({**config.model, "pretrained": False, "weights": None})
    backbone = create_backbone(model_config)
    patch = backbone.patch_embed.patch_size[0]
    objective: PretrainObjective = PRETRAIN_OBJECTIVES.get(config.objective)(
        config.objective_params,
        num_classes=len(corpus.class_names),
        embed_dim=backbone.embed_dim,
        depth=len(backbone.blocks),
    )
    patch_labels = torch.from_numpy(corpus_patch_labels(corpus, patch))
    labels = torch.from_numpy(corpus.labels())
    images = torch.from_numpy(corpus.images).permute(0, 3, 1, 2)  # N x 3 x S x S uint8
    grid = corpus_config.image_size // patch

    groups = param_groups(backbone, config.weight_decay) + param_groups_of_head(
        objective, config.weight_decay
    )
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    steps_per_epoch = max(1, len(corpus) // config.batch_size)
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_frac * total)
    history: list[dict[str, float]] = []
    train_started = time.perf_counter()
    backbone.train()
    objective.train()
    for epoch in range(config.epochs):
        order = torch.randperm(len(corpus), generator=generator)
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch_images = normalize(images[index])
            batch_labels = patch_labels[index]
            if config.hflip:
                flip = torch.rand(len(index), generator=generator) < 0.5
                batch_images[flip] = batch_images[flip].flip(-1)
                grids = batch_labels[flip].reshape(-1, grid, grid).flip(-1)
                batch_labels[flip] = grids.reshape(-1, grid * grid)
            batch = PretrainBatch(batch_images, batch_labels, labels[index])
            lr = _lr(epoch * steps_per_epoch + step, total, warmup, config.lr, config.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            output = backbone_forward(backbone, batch.images, cls_readout=objective.cls_readout)
            loss, parts = objective.loss(batch, output)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, value in {"loss": loss.item(), **parts}.items():
                sums[key] = sums.get(key, 0.0) + value
        row = {"epoch": epoch + 1, **{k: v / steps_per_epoch for k, v in sums.items()}}
        history.append(row)
        log.info("pretrain epoch %d/%d %s", epoch + 1, config.epochs, row)
    train_seconds = time.perf_counter() - train_started

    out_path = Path(out_path)
    # checkpoint.save: atomic, and bytes that depend only on the tensors (torch.save to a
    # path names the archive after the temporary file), so a rebuild is byte-identical
    checkpoint.save(out_path, backbone.state_dict())
    summary = {
        "weights": str(out_path),
        "objective": config.objective,
        "uses_masks": objective.uses_masks,
        "config": asdict(config),
        "corpus_images": len(corpus),
        "corpus_classes": len(corpus.class_names),
        "steps": total,
        "history": history,
    }
    write_json(out_path.with_suffix(".json"), summary)
    # Wall-clock times go to the log only: the summary is a tracked output, and a rebuild
    # on the same machine must give the same bytes.
    log.info("pretrain: corpus %.1f s, training %.1f s", corpus_seconds, train_seconds)
    return summary


def param_groups_of_head(objective: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The objective's own parameters (a classification head, if any) at the full rate."""
    params = [p for p in objective.parameters() if p.requires_grad]
    if not params:
        return []
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
