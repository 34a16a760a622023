"""Parameter groups for fine-tuning: layer-wise lr decay, frozen blocks, weight decay."""

from __future__ import annotations

import pytest

from wsss.models import build_model
from wsss.models.param_groups import layer_id, param_groups

TINY = {
    "backbone": "vit_tiny_patch16_224",
    "img_size": 32,
    "overrides": {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2},
}


def test_layer_ids():
    assert layer_id("patch_embed.proj.weight", 3) == 0
    assert layer_id("patch_pos_embed", 3) == 0
    assert layer_id("blocks.0.attn.qkv.weight", 3) == 1
    assert layer_id("blocks.2.mlp.fc1.bias", 3) == 3
    assert layer_id("class_tokens", 3) == 4  # new parameters: full rate
    assert layer_id("patch_head.weight", 3) == 4


def test_layer_decay_scales():
    model = build_model(TINY, num_classes=2)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scales = {g["layer"]: g["lr_scale"] for g in groups}
    assert scales == {0: 0.5**4, 1: 0.5**3, 2: 0.5**2, 3: 0.5, 4: 1.0}
    names = {n: g for g in groups for n in g["names"]}
    assert names["class_tokens"]["lr_scale"] == 1.0 and names["class_tokens"]["weight_decay"] == 0
    assert names["blocks.1.attn.qkv.weight"]["weight_decay"] == 0.05
    assert names["blocks.1.attn.qkv.bias"]["weight_decay"] == 0.0
    total = sum(len(g["params"]) for g in groups)
    assert total == len(list(model.parameters()))


def test_plain_recipe_is_scale_one():
    model = build_model(TINY, num_classes=2)
    assert {g["lr_scale"] for g in param_groups(model, 0.05)} == {1.0}


def test_freeze_blocks():
    model = build_model(TINY, num_classes=2)
    groups = param_groups(model, 0.05, freeze_blocks=2)
    in_groups = {n for g in groups for n in g["names"]}
    for name, param in model.named_parameters():
        frozen = name.startswith(("patch_embed", "patch_pos_embed", "blocks.0.", "blocks.1."))
        assert param.requires_grad is not frozen, name
        assert (name in in_groups) is not frozen, name


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"layer_decay": 0.0}, "layer_decay"), ({"freeze_blocks": 4}, "freeze_blocks")],
)
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        param_groups(build_model(TINY, num_classes=2), 0.05, **kwargs)
