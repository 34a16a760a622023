"""Pretraining objectives (hand-computed losses) and a tiny pretraining run that loads through timm."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wsss.models import build_model
from wsss.models.mct_vit import ModelConfig, create_backbone
from wsss.pretrain import PRETRAIN_OBJECTIVES, pretrain
from wsss.pretrain.objectives import grouping_loss, own_region, rest_region
from wsss.registry import UnknownNameError

LABELS = torch.tensor([[0, 0, 1, -1]])  # two background patches, one object patch, one mixed
PATCH_ROWS = torch.tensor(
    [
        [0.5, 0.25, 0.25, 0.0],
        [0.25, 0.25, 0.25, 0.25],
        [0.0, 0.0, 1.0, 0.0],
        [0.25, 0.25, 0.25, 0.25],
    ]
)


def _attention() -> torch.Tensor:
    """1 x 1 x 5 x 5: a class token first; each patch row gives it 0.2 and the rest x 0.8."""
    full = torch.zeros(1, 1, 5, 5)
    full[0, 0, :, 0] = 0.2
    full[0, 0, 1:, 1:] = 0.8 * PATCH_ROWS
    full[0, 0, 0, 1:] = 0.2
    return full


def test_own_region():
    region, valid = own_region(LABELS)
    assert valid.tolist() == [[True, True, True, False]]
    assert region[0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]


def test_hard_grouping_loss():
    # Own-region mass: 0.75, 0.5, 1.0 (the mixed query is skipped); class column dropped.
    expected = (-math.log(0.75) - math.log(0.5) - math.log(1.0)) / 3
    loss = grouping_loss([_attention(), _attention()], LABELS, soft=False)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_soft_grouping_loss():
    # Targets: 1/2 on patches {0, 1} for the background queries, 1 on patch 2 for the object.
    q0 = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))
    q1 = math.log(4)
    expected = (q0 + q1 + 0.0) / 3
    assert grouping_loss([_attention()], LABELS, soft=True).item() == pytest.approx(expected)


def test_rest_grouping_gives_self_no_credit():
    # Object 1 on patches 2 and 3 here: each object query's region is the other patch.
    labels = torch.tensor([[0, 0, 1, 1]])
    region, valid = rest_region(labels)
    assert valid.tolist() == [[True, True, True, True]]
    assert region[0].int().tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    # Rows: background as PATCH_ROWS; object query 2 all on itself (identity), 3 half on 2.
    rows = PATCH_ROWS.clone()
    rows[3] = torch.tensor([0.25, 0.0, 0.5, 0.25])
    attention = torch.zeros(1, 1, 5, 5)
    attention[0, 0, 1:, 1:] = rows
    attention[0, 0, :, 0] = 1e-9  # the class column is dropped anyway
    loss = grouping_loss([attention], labels, soft=False, exclude_self=True)
    # Query 2 has no mass on patch 3: its term is -log(1e-12), the clamp, which dominates.
    expected = (-math.log(0.75) - math.log(0.5) - math.log(1e-12) - math.log(0.5)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # A one-patch object is no query of grouping_rest (LABELS: patch 2 alone).
    _, valid = rest_region(LABELS)
    assert valid.tolist() == [[True, True, False, False]]


def test_shape_classification_target_collapses_the_fills():
    from wsss.pretrain.objectives import BackboneOutput, PretrainBatch

    objective = PRETRAIN_OBJECTIVES.get("grouping_rest")(
        {"classification_weight": 1.0, "classification_target": "shape"}, 48, 4, 1
    )
    assert objective.head.out_features == 8
    labels = torch.zeros(1, 48)
    labels[0, 7] = labels[0, 8] = 1.0  # shape 1 (fills 1 and 2)
    labels[0, 47] = 1.0  # shape 7
    tokens = torch.randn(1, 5, 4)
    attention = torch.full((1, 1, 5, 5), 0.2)
    batch = PretrainBatch(torch.zeros(1, 3, 8, 8), torch.tensor([[0, 0, 1, 1]]), labels)
    _, parts = objective.loss(batch, BackboneOutput(tokens, [attention]))
    shapes = torch.zeros(1, 8)
    shapes[0, 1] = shapes[0, 7] = 1.0
    expected = torch.nn.functional.multilabel_soft_margin_loss(objective.head(tokens[:, 0]), shapes)
    assert parts["classification"] == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="classification_target"):
        PRETRAIN_OBJECTIVES.get("grouping")({"classification_target": "fill"}, 48, 4, 1)


def test_grouping_needs_a_query():
    with pytest.raises(ValueError, match="mixed"):
        grouping_loss([_attention()], torch.full((1, 4), -1), soft=False)


def test_registry():
    assert {"classification", "grouping", "grouping_soft", "grouping_rest"} <= set(
        PRETRAIN_OBJECTIVES.names()
    )
    assert PRETRAIN_OBJECTIVES.get("grouping").uses_masks
    assert not PRETRAIN_OBJECTIVES.get("classification").uses_masks
    with pytest.raises(UnknownNameError, match="known: classification"):
        PRETRAIN_OBJECTIVES.get("mim")
    with pytest.raises(ValueError, match="unknown param"):
        PRETRAIN_OBJECTIVES.get("grouping")({"block": 1}, 48, 32, 2)


TINY = {
    "backbone": "vit_tiny_patch16_224",
    "img_size": 32,
    "drop_path_rate": 0.0,
    "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


@pytest.mark.parametrize("objective", ["grouping", "grouping_rest", "classification"])
def test_tiny_pretraining_loads_through_the_pretrained_path(tmp_path, objective):
    out = tmp_path / "proxy.pth"
    config = {
        "corpus": {"num_images": 48, "image_size": 32, "min_object_frac": 0.4},
        "model": TINY,
        "objective": objective,
        "objective_params": {
            "grouping": {"classification_weight": 0.5},
            "grouping_rest": {"classification_weight": 0.5, "classification_path": "cls_readout"},
        }.get(objective, {}),
        "batch_size": 16,
        "epochs": 2,
    }
    summary = pretrain(config, out, progress=False)
    assert summary["steps"] == 6 and len(summary["history"]) == 2
    assert math.isfinite(summary["history"][-1]["loss"])
    assert json.loads(out.with_suffix(".json").read_text())["uses_masks"] == (
        objective != "classification"
    )
    saved = torch.load(out, weights_only=True)
    assert not any(k.startswith("head") for k in saved)
    # model.pretrained + model.weights load it bit-exactly, as an ImageNet file would be.
    loaded = create_backbone(ModelConfig.from_dict({**TINY, "pretrained": True, "weights": out}))
    state = loaded.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[k], saved[k]) for k in saved)
    # ... and the multi-class-token model starts from it (class tokens = the CLS token).
    model = build_model({**TINY, "pretrained": True, "weights": str(out)}, num_classes=3)
    assert torch.equal(model.blocks[1].attn.qkv.weight, saved["blocks.1.attn.qkv.weight"])
    assert torch.equal(model.class_tokens[0, 2], saved["cls_token"][0, 0])


def test_pretrain_config_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        pretrain({"corpus": {}, "steps": 3}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="from scratch"):
        pretrain({"model": {**TINY, "pretrained": True}}, tmp_path / "x.pth")


def test_pretrain_stage_rebuilds_identical_weights(tmp_path):
    """`wsss pretrain` (the pretrain rule's command) twice: byte-identical weights, the
    summary beside them, and a training run starting from them through model.weights."""
    from wsss.cli import main

    config = {
        "corpus": {"num_images": 32, "image_size": 32, "min_object_frac": 0.4},
        "model": TINY,
        "objective": "grouping",
        "objective_params": {},
        "epochs": 1,
        "batch_size": 16,
        "seed": 3,
    }
    outputs = []
    for name in ("a", "b"):
        out = tmp_path / name / "proxy_vit.pth"
        args = ["--config", json.dumps(config), "--out", str(out), "--threads", "1"]
        assert main(["pretrain", *args, "--no-progress"]) == 0
        outputs.append(out)
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    # The summary is a tracked output too: no wall-clock time in it (only its path differs).
    summaries = [json.loads(o.with_suffix(".json").read_text()) for o in outputs]
    assert [{**s, "weights": None} for s in summaries][0] == {**summaries[1], "weights": None}
    summary = summaries[0]
    assert summary["corpus_images"] == 32 and summary["steps"] == 2 and summary["uses_masks"]
    model = build_model({**TINY, "pretrained": True, "weights": str(outputs[0])}, num_classes=2)
    saved = torch.load(outputs[0], weights_only=True)
    assert torch.equal(model.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    args = ["--config", json.dumps(config), "--out", str(tmp_path / "x.pt")]
    assert main(["pretrain", *args]) == 1  # not a .pth: refused before any work


@pytest.mark.parametrize("path", ["shared", "cls_readout"])
def test_cls_readout_equals_the_class_token_and_keeps_gradient_off_the_patches(path):
    """classification_path cls_readout: the head reads the class token's value, but its
    gradient reaches no patch token (patch embedding, patch positions); shared does."""
    from wsss.pretrain.objectives import PretrainBatch
    from wsss.pretrain.run import backbone_forward

    torch.manual_seed(0)
    backbone = create_backbone(ModelConfig.from_dict({**TINY, "pretrained": False}))
    objective = PRETRAIN_OBJECTIVES.get("grouping")(
        {"classification_weight": 1.0, "classification_path": path}, 6, 32, 2
    )
    assert objective.cls_readout == (path == "cls_readout")
    images = torch.randn(2, 3, 32, 32)
    output = backbone_forward(backbone, images, cls_readout=objective.cls_readout)
    if path == "cls_readout":
        torch.testing.assert_close(output.cls_readout, output.tokens[:, 0], atol=1e-5, rtol=1e-5)
    labels = torch.tensor([[1.0, 0, 0, 0, 0, 1], [0, 1.0, 0, 0, 0, 0]])
    batch = PretrainBatch(images, torch.zeros(2, 16, dtype=torch.long), labels)
    objective.head.zero_grad()
    logits = objective.head(output.cls_readout if objective.cls_readout else output.tokens[:, 0])
    torch.nn.functional.multilabel_soft_margin_loss(logits, labels).backward()
    patch_grad = backbone.patch_embed.proj.weight.grad
    position_grad = backbone.pos_embed.grad
    assert backbone.cls_token.grad.abs().sum() > 0
    assert position_grad[:, 0].abs().sum() > 0
    if path == "cls_readout":
        assert patch_grad is None or not patch_grad.any()
        assert not position_grad[:, 1:].any()
    else:
        assert patch_grad.abs().sum() > 0 and position_grad[:, 1:].abs().sum() > 0
    # the objective's own loss reads the same token
    _, parts = objective.loss(batch, output)
    expected = torch.nn.functional.multilabel_soft_margin_loss(logits, labels)
    assert parts["classification"] == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="classification_path"):
        PRETRAIN_OBJECTIVES.get("grouping")({"classification_path": "patches"}, 6, 32, 2)
