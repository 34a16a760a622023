"""Pretraining objectives for a plain timm ViT, registered by name.

Every objective sees the same batch: normalised images, the patch-grid
instance labels of :func:`wsss.evaluation.attention_diagnostics.patch_instance_labels`
(0 background, k object k, -1 mixed) and the multi-hot image labels, plus the
backbone's per-block attention and final tokens. What each one uses:

- ``grouping`` (**uses the corpus's instance masks**): for every query patch
  that is not mixed, the head-mean patch -> patch attention row (class-token
  column dropped, renormalised) is pushed to put its mass on the query's own
  region -- its own object, or the background for a background patch:
  ``-log sum_{j in own(i)} a_ij``, averaged over queries and supervised blocks.
  This is dense, class-agnostic mask supervision (closer to mask pretraining
  than to ImageNet classification).
- ``grouping_soft`` (**uses the masks**): the row is pulled to the uniform
  distribution over the own region, ``-sum_{j in own(i)} log(a_ij) / |own(i)|``
  (cross-entropy to that target); weaker than ``grouping`` because it also
  spreads the mass inside the region.
- ``grouping_rest`` (**uses the masks**): as ``grouping``, but an object
  query's own region excludes the query itself: ``-log sum_{j in own(i), j != i} a_ij``
  for object patches (objects of 2+ patches; a one-patch object is not a query),
  ``-log sum_{j in background} a_ij`` for background patches. It rewards what the
  affinity refinement needs (mass on the *rest* of the object, the
  ``rest_of_object_share`` diagnostic) and gives self-attention of an object patch
  no credit, unlike ``grouping``, whose optimum includes near-identity rows.
- ``classification`` (image labels only, no masks): multi-label soft-margin
  loss of a linear head on the final class token, as ImageNet-style
  classification pretraining.

The grouping objectives take ``classification_weight`` (default 0) to add the
classification term, ``classification_target`` (``"class"``: the 48 shape/fill
classes, default; ``"shape"``: the 8 shapes, an easier task the CLS token can learn
in a short run; a corpus class c has shape ``c // FILLS``), ``classification_path``
(``"shared"``, default: the head reads the final class token of the ordinary forward
pass, so its gradient also flows through every patch token's key and value;
``"cls_readout"``: the head reads the class token run a second time over the blocks'
detached patch keys and values, :func:`wsss.pretrain.run.backbone_forward`, so the
class token learns where to look without the classification term reshaping patch
attention) and ``blocks`` (``"all"`` or a list of block indices) to choose the
supervised blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsss.data.pretrain_corpus import FILLS
from wsss.evaluation.attention_diagnostics import MIXED
from wsss.registry import Registry

PRETRAIN_OBJECTIVES: Registry[type[PretrainObjective]] = Registry("pretraining objective")


@dataclass
class PretrainBatch:
    """B images (normalised, B x 3 x S x S), patch labels (B x N, long), labels (B x K)."""

    images: torch.Tensor
    patch_labels: torch.Tensor
    labels: torch.Tensor


@dataclass
class BackboneOutput:
    """Final tokens (B x (1 + N) x D, after the final norm) and per-block attention
    (L x (B x H x (1 + N) x (1 + N)), softmax, the class token first); ``cls_readout``
    (B x D) only for an objective with ``cls_readout`` (wsss.pretrain.run.backbone_forward)."""

    tokens: torch.Tensor
    attentions: list[torch.Tensor]
    cls_readout: torch.Tensor | None = None


def own_region(patch_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x N x N own-region mask, B x N valid-query mask) from B x N patch labels.

    Patch j is in query i's region when both carry the same label (an object,
    or the background); mixed patches are never queries and never in a region.
    """
    valid = patch_labels != MIXED
    same = patch_labels[:, :, None] == patch_labels[:, None, :]
    return same & valid[:, :, None] & valid[:, None, :], valid


def patch_rows(attention: torch.Tensor) -> torch.Tensor:
    """B x H x T x T (one class token first) -> head-mean patch rows B x N x N, renormalised."""
    rows = attention[:, :, 1:, 1:].mean(dim=1)
    return rows / rows.sum(dim=-1, keepdim=True).clamp_min(1e-12)


def rest_region(patch_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B x N x N region mask, B x N valid-query mask) of ``grouping_rest``: an object
    query's own object without itself (queries of one-patch objects dropped), a background
    query's background (itself included)."""
    region, valid = own_region(patch_labels)
    n = patch_labels.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=patch_labels.device)[None]
    is_object = (patch_labels > 0)[:, :, None]
    region = region & ~(eye & is_object)
    valid = valid & region.any(dim=-1)
    return region, valid


def grouping_loss(
    attentions: Sequence[torch.Tensor],
    patch_labels: torch.Tensor,
    soft: bool,
    exclude_self: bool = False,
) -> torch.Tensor:
    """Mean over the given blocks and the valid queries of the (hard or soft) grouping loss;
    ``exclude_self``: the regions of :func:`rest_region`."""
    region, valid = (rest_region if exclude_self else own_region)(patch_labels)
    if not valid.any():
        raise ValueError("grouping loss: every patch of the batch is mixed; no query to supervise")
    losses = []
    for attention in attentions:
        rows = patch_rows(attention)
        if soft:
            target = region / region.sum(dim=-1, keepdim=True).clamp_min(1)
            per_query = -(target * rows.clamp_min(1e-12).log()).sum(dim=-1)
        else:
            per_query = -(rows * region).sum(dim=-1).clamp_min(1e-12).log()
        losses.append(per_query[valid].mean())
    return torch.stack(losses).mean()


class PretrainObjective(nn.Module):
    """An objective: parameters of its own (a head), and ``loss(batch, output)``."""

    name = "?"
    uses_masks = False
    cls_readout = False  # whether the forward pass must give BackboneOutput.cls_readout

    def __init__(self, params: dict[str, Any], num_classes: int, embed_dim: int, depth: int):
        super().__init__()
        self.params = dict(params)

    def loss(
        self, batch: PretrainBatch, output: BackboneOutput
    ) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError


def _check_keys(name: str, params: dict[str, Any], known: Sequence[str]) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"pretrain objective {name!r}: unknown param(s) {unknown}; known: {known}")


@PRETRAIN_OBJECTIVES.register("classification")
class ClassificationObjective(PretrainObjective):
    name = "classification"
    uses_masks = False

    def __init__(self, params: dict[str, Any], num_classes: int, embed_dim: int, depth: int):
        super().__init__(params, num_classes, embed_dim, depth)
        _check_keys(self.name, self.params, [])
        self.head = nn.Linear(embed_dim, num_classes)

    def loss(self, batch, output):
        logits = self.head(output.tokens[:, 0])
        loss = F.multilabel_soft_margin_loss(logits, batch.labels)
        return loss, {"classification": loss.item()}


@PRETRAIN_OBJECTIVES.register("grouping")
class GroupingObjective(PretrainObjective):
    name = "grouping"
    uses_masks = True
    soft = False
    exclude_self = False

    def __init__(self, params: dict[str, Any], num_classes: int, embed_dim: int, depth: int):
        super().__init__(params, num_classes, embed_dim, depth)
        _check_keys(
            self.name,
            self.params,
            ["blocks", "classification_weight", "classification_target", "classification_path"],
        )
        blocks = self.params.get("blocks", "all")
        self.blocks = list(range(depth)) if blocks == "all" else [int(b) % depth for b in blocks]
        if not self.blocks:
            raise ValueError(f"pretrain objective {self.name!r}: blocks is empty")
        self.classification_weight = float(self.params.get("classification_weight", 0.0))
        self.target = self.params.get("classification_target", "class")
        if self.target not in ("class", "shape"):
            raise ValueError(
                f"pretrain objective {self.name!r}: classification_target must be 'class' or "
                f"'shape', got {self.target!r}"
            )
        path = self.params.get("classification_path", "shared")
        if path not in ("shared", "cls_readout"):
            raise ValueError(
                f"pretrain objective {self.name!r}: classification_path must be 'shared' or "
                f"'cls_readout', got {path!r}"
            )
        self.cls_readout = bool(self.classification_weight) and path == "cls_readout"
        outputs = num_classes if self.target == "class" else num_classes // len(FILLS)
        self.head = nn.Linear(embed_dim, outputs) if self.classification_weight else None

    def loss(self, batch, output):
        chosen = [output.attentions[i] for i in self.blocks]
        loss = grouping_loss(
            chosen, batch.patch_labels, soft=self.soft, exclude_self=self.exclude_self
        )
        parts = {"grouping": loss.item()}
        if self.head is not None:
            if self.cls_readout and output.cls_readout is None:
                raise ValueError("classification_path cls_readout: the forward gave no readout")
            cls = output.cls_readout if self.cls_readout else output.tokens[:, 0]
            logits = self.head(cls)
            labels = batch.labels
            if self.target == "shape":  # multi-hot over shapes: any fill of the shape present
                labels = labels.reshape(len(labels), -1, len(FILLS)).amax(dim=-1)
            classification = F.multilabel_soft_margin_loss(logits, labels)
            parts["classification"] = classification.item()
            loss = loss + self.classification_weight * classification
        return loss, parts


@PRETRAIN_OBJECTIVES.register("grouping_soft")
class SoftGroupingObjective(GroupingObjective):
    name = "grouping_soft"
    soft = True


@PRETRAIN_OBJECTIVES.register("grouping_rest")
class RestGroupingObjective(GroupingObjective):
    name = "grouping_rest"
    exclude_self = True
