import pytest
import torch
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
