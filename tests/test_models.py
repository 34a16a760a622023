import math

import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import Block

from wsss.models import build_model
from wsss.models.mct_vit import block_forward


def test_block_forward_matches_timm_block():
    block = Block(dim=32, num_heads=4, qkv_bias=True).eval()
    x = torch.randn(2, 10, 32)
    out, weights, logits = block_forward(block, x, want_logits=True)
    assert torch.allclose(out, block(x), atol=1e-5)
    assert weights.shape == (2, 4, 10, 10)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 10), atol=1e-6)
    assert torch.allclose(logits.softmax(-1), weights, atol=1e-6)


def test_output_shapes_and_attention_rows(tiny_model_config):
    model = build_model(tiny_model_config, num_classes=5).eval()
    out = model(torch.randn(2, 3, 32, 32), want_logits=True)
    tokens = 5 + 16
    assert out.class_logits.shape == (2, 5)
    assert out.patch_logits.shape == (2, 5)
    assert out.patch_cam.shape == (2, 5, 4, 4)
    assert len(out.attentions) == 3 and len(out.attention_logits) == 3
    assert out.attentions[0].shape == (2, 2, tokens, tokens)
    assert torch.allclose(out.attentions[-1].sum(-1), torch.ones(2, 2, tokens), atol=1e-5)
    assert torch.allclose(out.patch_logits, out.patch_cam.mean(dim=(2, 3)))
    assert torch.allclose(out.class_logits, out.class_tokens.mean(-1))


def test_partial_attention_pass_keeps_outputs_and_class_rows(tiny_model_config):
    model = build_model(tiny_model_config, num_classes=5).train()  # drop-path 0: deterministic
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model(images)
        partial = model(images, full_attention=[0])
    assert partial.attentions[0].shape == full.attentions[0].shape  # kept whole
    assert torch.allclose(partial.attentions[0], full.attentions[0])
    for block in (1, 2):  # class-token rows only
        assert partial.attentions[block].shape == (2, 2, 5, 5 + 16)
        assert torch.allclose(
            partial.attentions[block], full.attentions[block][:, :, :5], atol=1e-6
        )
    assert torch.allclose(partial.patch_cam, full.patch_cam, atol=1e-5)
    assert torch.allclose(partial.class_logits, full.class_logits, atol=1e-5)


def test_block_hooks_force_full_attention(tiny_model_config):
    model = build_model(tiny_model_config, num_classes=5).eval()
    seen = []
    model.block_hooks.append(
        lambda i, x_in, x_out, attention, ctx: seen.append(attention.shape) or x_out
    )
    model(torch.randn(1, 3, 32, 32), full_attention=[])
    assert seen == [(1, 2, 21, 21)] * 3


def test_non_square_input_resamples_positions(tiny_model_config):
    model = build_model(tiny_model_config, num_classes=3).eval()
    out = model(torch.randn(1, 3, 24, 48))
    assert out.grid == (3, 6)
    assert out.patch_cam.shape == (1, 3, 3, 6)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_class_tokens_start_as_copies_of_cls(tiny_model_config):
    model = build_model(tiny_model_config, num_classes=4)
    tokens = model.class_tokens.detach()[0]
    assert torch.equal(tokens, tokens[:1].expand_as(tokens))
    pos = model.class_pos_embed.detach()[0]
    assert torch.equal(pos, pos[:1].expand_as(pos))


def test_losses_reach_every_parameter_group(tiny_model_config):
    from wsss.methods import TRAINING_METHODS

    model = build_model(tiny_model_config, num_classes=4)
    method = TRAINING_METHODS.get("mctformer_v2")()
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])
    loss, parts = method.loss(model, torch.randn(2, 3, 32, 32), labels, epoch=0)
    loss.backward()
    assert set(parts) == {"loss_cls", "loss_patch"}
    assert model.class_tokens.grad.abs().sum() > 0
    assert model.patch_head.weight.grad.abs().sum() > 0
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_multilabel_soft_margin_by_hand():
    # MLSM = mean over classes of BCE-with-logits; logits 0 give log(2) per class.
    logits = torch.zeros(1, 3)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    loss = torch.nn.functional.multilabel_soft_margin_loss(logits, labels)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_unknown_backbone_names_the_key(tiny_model_config):
    with pytest.raises(ValueError, match="model.backbone: unknown timm model 'no_such_vit'"):
        build_model(dict(tiny_model_config, backbone="no_such_vit"), num_classes=2)
    with pytest.raises(ValueError, match="not a timm ViT"):
        build_model(dict(tiny_model_config, backbone="resnet18", overrides={}), num_classes=2)


def test_local_weights_file_loads_through_timm(tiny_model_config, tmp_path):
    import timm

    reference = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, **tiny_model_config["overrides"]
    )
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(dict(tiny_model_config, weights=str(path)), num_classes=3)
    assert torch.equal(model.blocks[1].attn.qkv.weight, reference.blocks[1].attn.qkv.weight)
    # Class tokens and their positions come from the checkpoint's CLS token.
    assert torch.equal(model.class_tokens[0, 2], reference.cls_token[0, 0])
    assert torch.equal(model.class_pos_embed[0, 1], reference.pos_embed[0, 0])
    with pytest.raises(FileNotFoundError, match="model.weights"):
        build_model(dict(tiny_model_config, weights=str(tmp_path / "missing.pth")), num_classes=3)


# --------------------------------------------------------------------------- fidelity


def _ramp_embedding(grid: tuple[int, int], dim: int = 3) -> torch.Tensor:
    """1 x (gh*gw) x dim: channel 0 = row index, channel 1 = column index, channel 2 = a fixed
    pseudo-random pattern (so the comparison is not only on linear ramps)."""
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pattern = torch.sin(1.7 * rows + 0.9 * cols**2)
    return torch.stack([rows, cols, pattern], dim=-1).float().reshape(1, gh * gw, dim)


def _keys_cubic(x: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel (IEEE TASSP 1981), as PyTorch's bicubic uses it."""
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def test_official_pos_embed_resize_is_plain_bicubic_with_the_dino_scale_factor():
    from wsss.models.mct_vit import resize_patch_pos_embed

    pos = _ramp_embedding((4, 4))
    out = resize_patch_pos_embed(pos, (4, 4), (8, 6), mode="official")
    # The official interpolate_pos_encoding, written out: scale (g + 0.1) / sqrt(N).
    expected = F.interpolate(
        pos.reshape(1, 4, 4, 3).permute(0, 3, 1, 2),
        scale_factor=(8.1 / 4, 6.1 / 4),
        mode="bicubic",
        align_corners=False,
    )
    assert out.shape == (1, 48, 3)
    assert torch.equal(out, expected.permute(0, 2, 3, 1).reshape(1, 48, 3))
    # By hand, on the row ramp (value = row index): output row i samples source row
    # s = (i + 0.5) * 4 / 8.1 - 0.5 (a size-based resize would use 4 / 8) and sums the four
    # rows around it with Keys' cubic kernel, a = -0.75 (PyTorch's bicubic).
    rows = out.reshape(8, 6, 3)[:, 0, 0]
    for i in (3, 4):  # taps inside the 4-row grid: no border clamping
        s = (i + 0.5) * 4 / 8.1 - 0.5
        by_hand = sum(k * _keys_cubic(s - k) for k in range(math.floor(s) - 1, math.floor(s) + 3))
        assert rows[i].item() == pytest.approx(by_hand, abs=1e-5)
        size_based = (i + 0.5) * 4 / 8 - 0.5
        other = sum(
            k * _keys_cubic(size_based - k)
            for k in range(math.floor(size_based) - 1, math.floor(size_based) + 3)
        )
        assert abs(rows[i].item() - other) > 1e-2
    # Same grid: untouched. timm's antialiased resize is another result (its cubic uses
    # a = -0.5 and a size-based grid), kept as the "timm" option.
    assert resize_patch_pos_embed(pos, (4, 4), (4, 4)) is pos
    timm_out = resize_patch_pos_embed(pos, (4, 4), (8, 6), mode="timm")
    assert torch.equal(
        timm_out, resample_abs_pos_embed(pos, new_size=[8, 6], old_size=[4, 4], num_prefix_tokens=0)
    )
    assert (timm_out - out).abs().max() > 1e-2
    with pytest.raises(ValueError, match="pos_embed_resize"):
        resize_patch_pos_embed(pos, (4, 4), (8, 6), mode="nearest")
    with pytest.raises(ValueError, match="do not fit a 5x5 grid"):
        resize_patch_pos_embed(pos, (5, 5), (8, 6))


@pytest.mark.parametrize("mode", ["official", "timm"])
def test_model_resizes_patch_positions_only(tiny_model_config, mode):
    from wsss.models.mct_vit import resize_patch_pos_embed

    model = build_model(dict(tiny_model_config, pos_embed_resize=mode), num_classes=3).eval()
    assert model.base_grid == (4, 4)
    images = torch.randn(1, 3, 24, 48)  # a 3 x 6 grid
    with torch.no_grad():
        tokens, grid = model.embed(images)
        patches = model.patch_embed(images).reshape(1, 18, -1)
    expected = resize_patch_pos_embed(model.patch_pos_embed, (4, 4), (3, 6), mode)
    assert grid == (3, 6)
    assert torch.allclose(tokens[:, 3:], patches + expected, atol=1e-6)
    # The class tokens' positions are never resized (as the official code).
    assert torch.equal(tokens[:, :3], (model.class_tokens + model.class_pos_embed).detach())


def test_patch_head_keeps_pytorch_default_conv_init(tiny_model_config):
    torch.manual_seed(1)
    model = build_model(tiny_model_config, num_classes=20)  # 20 x 32 x 3 x 3 = 5,760 weights
    weight, bias = model.patch_head.weight.detach(), model.patch_head.bias.detach()
    fan_in = 32 * 3 * 3
    bound = 1 / math.sqrt(fan_in)  # kaiming-uniform, a = sqrt(5): gain sqrt(1/3) * sqrt(3 / fan_in)
    assert weight.abs().max() <= bound and bias.abs().max() <= bound
    # Uniform(-b, b) has std b / sqrt(3) = 0.0340 here; sampling error ~1.2% at 5,760 weights.
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert bias.abs().max() > bound / 4  # a drawn bias, not zeros

    named = build_model(dict(tiny_model_config, patch_head_init="trunc_normal"), num_classes=20)
    assert named.patch_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(named.patch_head.bias, torch.zeros(20))
    with pytest.raises(ValueError, match="model.patch_head_init must be one of"):
        build_model(dict(tiny_model_config, patch_head_init="xavier"), num_classes=2)
    with pytest.raises(ValueError, match="model.pos_embed_resize must be one of"):
        build_model(dict(tiny_model_config, pos_embed_resize="bilinear"), num_classes=2)


def test_pretrained_positions_for_another_grid_are_resized_as_the_official_finetune(
    tiny_model_config, tmp_path
):
    """224 px weights at 448 px, shrunk: weights for a 4x4 grid loaded at img_size 64 (8x8)."""
    import timm

    reference = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, **tiny_model_config["overrides"]
    )
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    patch_pos = reference.pos_embed.detach()[:, 1:]
    config = dict(tiny_model_config, img_size=64, weights=str(path))

    official = build_model(config, num_classes=2)
    # The official --finetune code: plain bicubic to the target size, align_corners False.
    expected = F.interpolate(
        patch_pos.reshape(1, 4, 4, -1).permute(0, 3, 1, 2),
        size=(8, 8),
        mode="bicubic",
        align_corners=False,
    )
    expected = expected.permute(0, 2, 3, 1).reshape(1, 64, -1)
    assert official.base_grid == (8, 8)
    assert torch.allclose(official.patch_pos_embed, expected, atol=1e-6)
    assert torch.equal(official.class_pos_embed[0, 1], reference.pos_embed[0, 0])
    assert torch.equal(official.blocks[0].attn.qkv.weight, reference.blocks[0].attn.qkv.weight)

    timm_model = build_model(dict(config, pos_embed_resize="timm"), num_classes=2)
    antialiased = resample_abs_pos_embed(patch_pos, new_size=[8, 8], num_prefix_tokens=0)
    assert torch.allclose(timm_model.patch_pos_embed, antialiased, atol=1e-6)
    assert (antialiased - expected).abs().max() > 1e-3


# --------------------------------------------------------------------------- local weights files


def _official_mctformer_v2_state(tiny_model_config, num_classes: int, grid: int) -> dict:
    """A state dict with the official MCTformer-V2 key names and shapes (xulianuwa/MCTformer
    models.py): C class tokens, C + N position embeddings (class ones first), a 3x3 conv head,
    the DeiT backbone and its final norm, for a ``grid`` x ``grid`` patch grid."""
    import timm

    backbone = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, **tiny_model_config["overrides"]
    )
    state = {k: v for k, v in backbone.state_dict().items() if k not in ("cls_token", "pos_embed")}
    dim = backbone.embed_dim
    generator = torch.Generator().manual_seed(1)
    state["cls_token"] = torch.randn(1, num_classes, dim, generator=generator)
    state["pos_embed"] = torch.randn(1, num_classes + grid * grid, dim, generator=generator)
    state["head.weight"] = torch.randn(num_classes, dim, 3, 3, generator=generator)
    state["head.bias"] = torch.randn(num_classes, generator=generator)
    return state


def test_an_official_mctformer_v2_checkpoint_loads_through_a_key_mapping(
    tiny_model_config, tmp_path
):
    state = _official_mctformer_v2_state(tiny_model_config, num_classes=3, grid=4)
    path = tmp_path / "MCTformer_v2.pth"
    torch.save({"model": state}, path)  # as the official main.py saves it
    model = build_model(dict(tiny_model_config, weights=str(path)), num_classes=3)
    assert torch.equal(model.class_tokens, state["cls_token"])
    assert torch.equal(model.class_pos_embed, state["pos_embed"][:, :3])
    assert torch.equal(model.patch_pos_embed, state["pos_embed"][:, 3:])  # 32 px / 8 = 4x4
    assert torch.equal(model.patch_head.weight, state["head.weight"])
    assert torch.equal(model.patch_head.bias, state["head.bias"])
    assert torch.equal(model.blocks[2].mlp.fc1.weight, state["blocks.2.mlp.fc1.weight"])

    # At another input size the patch positions are resized as the official --finetune.
    bigger = build_model(dict(tiny_model_config, img_size=64, weights=str(path)), num_classes=3)
    expected = F.interpolate(
        state["pos_embed"][:, 3:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2),
        size=(8, 8),
        mode="bicubic",
        align_corners=False,
    )
    assert torch.allclose(
        bigger.patch_pos_embed, expected.permute(0, 2, 3, 1).reshape(1, 64, -1), atol=1e-6
    )


def test_an_official_mctformer_v2_checkpoint_that_does_not_fit_says_what_to_do(
    tiny_model_config, tmp_path
):
    from wsss.models.mct_vit import ModelConfig, create_backbone

    path = tmp_path / "MCTformer_v2.pth"
    torch.save({"model": _official_mctformer_v2_state(tiny_model_config, 20, 4)}, path)
    with pytest.raises(ValueError, match=r"MCTformer_v2\.pth is an official MCTformer-V2 .*20 "):
        build_model(dict(tiny_model_config, weights=str(path)), num_classes=3)
    with pytest.raises(ValueError, match="does not fit model.backbone"):
        build_model(
            dict(tiny_model_config, weights=str(path), overrides={"patch_size": 8}),
            num_classes=20,
        )
    # A model other than the multi-class-token classifier (ClusterCAM's, pretraining)
    # cannot use it.
    with pytest.raises(ValueError, match="initialises only the multi-class-token classifier"):
        create_backbone(ModelConfig.from_dict(dict(tiny_model_config, weights=str(path))))


def test_weights_with_numpy_metadata_load_and_pickled_objects_are_named(
    tiny_model_config, tmp_path
):
    import numpy as np
    import timm

    reference = timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, img_size=32, **tiny_model_config["overrides"]
    )
    path = tmp_path / "weights.pth"
    torch.save(
        {"model": reference.state_dict(), "epoch": np.int64(3), "best_map": np.float64(0.5)},
        path,
    )
    model = build_model(dict(tiny_model_config, weights=str(path)), num_classes=3)
    assert torch.equal(model.blocks[1].attn.qkv.weight, reference.blocks[1].attn.qkv.weight)

    # A whole pickled module (torch.save(model)) is code, not data.
    torch.save({"model": reference.state_dict(), "head": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match=r"weights\.pth holds pickled objects .*Linear"):
        build_model(dict(tiny_model_config, weights=str(path)), num_classes=3)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"weights\.pth cannot be read as a state dict"):
        build_model(dict(tiny_model_config, weights=str(path)), num_classes=3)
