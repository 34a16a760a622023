import json
import math

import numpy as np
import pytest
import torch

from wsss.methods import TRAINING_METHODS
from wsss.methods.aream import (
    AReAM,
    affinity_target,
    balanced_affinity_loss,
    block_entropy,
    compute_entropy_weights,
    downsample_labels,
    entropy_weights_from_attention,
    load_entropy_weights,
    save_entropy_weights,
    shallow_refined_cam,
)
from wsss.models import build_model

NUM_CLASSES = 4


def _batch(size: int = 32, batch: int = 2):
    images = torch.randn(batch, 3, size, size)
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])[:batch]
    return images, labels


def _model(config, depth=None):
    if depth is not None:
        config = dict(config, overrides=dict(config["overrides"], depth=depth))
    return build_model(config, NUM_CLASSES).train()


def test_registered():
    cls = TRAINING_METHODS.get("aream")
    assert cls is AReAM and cls.label == "AReAM" and not cls.reconstructed
    assert cls.defaults["layer_index"] == 7 and cls.defaults["cls_epochs"] == 10
    with pytest.raises(ValueError):
        AReAM({"bg_low": 0.6, "bg_high": 0.5})
    with pytest.raises(ValueError):
        AReAM({"nope": 1})


def test_affinity_target_by_hand():
    label_map = torch.tensor([[[0, 1], [1, 255]]])  # patches 0..3 = labels 0, 1, 1, ignore
    expected = torch.tensor(
        [
            [
                [1, 0, 0, 255],
                [0, 1, 1, 255],
                [0, 1, 1, 255],
                [255, 255, 255, 255],
            ]
        ]
    )
    assert torch.equal(affinity_target(label_map), expected)
    # nearest downsampling keeps the top-left pixel of each 2x2 cell
    seg = torch.tensor([[[0, 9, 1, 9], [9, 9, 9, 9], [1, 9, 255, 9], [9, 9, 9, 9]]])
    assert torch.equal(downsample_labels(seg, (2, 2)), label_map)


def test_balanced_affinity_loss_by_hand():
    # S = sigmoid(logits) = [[0.5, 0.75], [0.25, 0.5]]; target = [[1, 0], [255, 1]]
    # positives (0,0), (1,1): sum(1 - S) = 0.5 + 0.5 = 1.0, #pos = 2 -> 1.0 / 3
    # negatives (0,1):        sum(S) = 0.75,            #neg = 1 -> 0.75 / 2 = 0.375
    # (1,0) is ignored. loss = 0.5 * 1/3 + 0.5 * 0.375 = 0.3541666...
    logits = torch.tensor([[[0.0, math.log(3)], [-math.log(3), 0.0]]])
    target = torch.tensor([[[1, 0], [255, 1]]])
    loss = balanced_affinity_loss(logits, target)
    assert loss.shape == ()
    assert math.isclose(loss.item(), 0.5 / 3 + 0.5 * 0.375, rel_tol=1e-6)
    # leading dims (blocks) give one loss each
    stacked = balanced_affinity_loss(torch.stack([logits, torch.zeros_like(logits)]), target)
    assert stacked.shape == (2,)
    # zeros: S = 0.5 -> 0.5 * (2 * 0.5) / 3 + 0.5 * 0.5 / 2
    assert math.isclose(stacked[1].item(), 0.5 / 3 + 0.125, rel_tol=1e-6)


def test_before_cls_epochs_the_loss_is_mctformers(tiny_model_config):
    model = _model(tiny_model_config)
    images, labels = _batch()
    base_loss, base_parts = TRAINING_METHODS.get("mctformer_v2")().loss(model, images, labels, 0)
    loss, parts = AReAM({"cls_epochs": 2, "layer_index": 2}).loss(model, images, labels, 1)
    assert torch.equal(loss, base_loss)
    assert parts == {**base_parts, "loss_aff": 0.0}


def test_affinity_loss_gradients_reach_deep_blocks_only_through_attention(tiny_model_config):
    model = _model(tiny_model_config, depth=4)
    method = AReAM({"cls_epochs": 0, "layer_index": 2})
    method.on_train_start(model, None, torch.device("cpu"))
    images, labels = _batch()
    output = model(images, want_logits=True)
    cam = method.batch_cam(model, output, images, labels)
    seg = method.pseudo_labels(model, output, images, labels)
    assert not cam.requires_grad and not seg.requires_grad
    assert cam.shape == (2, NUM_CLASSES, 32, 32) and 0 <= cam.min() and cam.max() <= 1
    assert (cam[0, 1] == 0).all()  # not a GT class
    target = affinity_target(downsample_labels(seg, output.grid))
    assert (target == 1).any() and (target == 0).any()  # a real loss, not all-ignored

    loss_aff = method.affinity_loss(output, seg)
    params = dict(model.named_parameters())
    grads = dict(
        zip(
            params,
            torch.autograd.grad(loss_aff, list(params.values()), allow_unused=True),
            strict=True,
        )
    )

    def norm(name):
        g = grads[name]
        return 0.0 if g is None else g.abs().sum().item()

    assert norm("blocks.2.attn.qkv.weight") > 0 and norm("blocks.3.attn.qkv.weight") > 0
    # PatchCAM is only used detached (pseudo-labels), and the last block's attention logits
    # are computed before its projection/MLP: none of these can receive gradient.
    for name in (
        "patch_head.weight",
        "patch_head.bias",
        "blocks.3.attn.proj.weight",
        "blocks.3.mlp.fc1.weight",
    ):
        assert norm(name) == 0.0, name


def test_shallow_refined_cam_weights_and_blocks(tiny_model_config):
    model = _model(tiny_model_config)
    images, labels = _batch()
    with torch.no_grad():
        output = model(images)
    cam = shallow_refined_cam(output.attentions, output.patch_cam, [0, 1])
    assert cam.shape == output.patch_cam.shape
    ones = shallow_refined_cam(output.attentions, output.patch_cam, [0, 1], torch.ones(2))
    assert torch.allclose(cam, ones)
    # weight (2, 0) on blocks (0, 1) with a mean = block 0 alone
    only0 = shallow_refined_cam(
        output.attentions, output.patch_cam, [0, 1], torch.tensor([2.0, 0.0])
    )
    assert torch.allclose(
        only0, shallow_refined_cam(output.attentions, output.patch_cam, [0]), atol=1e-6
    )
    summed = shallow_refined_cam(output.attentions, output.patch_cam, [0, 1], reduce="sum")
    assert torch.allclose(summed, 2 * cam, atol=1e-6)


def test_block_entropy_of_uniform_attention_is_log2_n():
    # 2 classes + 4 patches, uniform attention: every patch gets the same response
    attention = torch.full((1, 1, 6, 6), 1 / 6)
    patch_cam = torch.rand(1, 2, 2, 2)
    entropy = block_entropy([attention, attention], patch_cam, torch.tensor([[1.0, 0.0]]))
    assert entropy.shape == (1, 2)
    assert torch.allclose(entropy, torch.full((1, 2), 2.0))  # log2(4)


def test_entropy_weights_are_minmax_normalised(tiny_model_config, tmp_path):
    # trunc-normal head: PyTorch's default init gives a random tiny model near-zero PatchCAMs,
    # hence equal (uniform) entropies in every block and all-zero weights
    model = _model({**tiny_model_config, "patch_head_init": "trunc_normal"})
    images, labels = _batch()
    with torch.no_grad():
        output = model(images)
    weights = entropy_weights_from_attention(output.attentions, output.patch_cam, labels)
    assert weights.shape == (3,) and weights.min() == 0.0 and weights.max() == 1.0
    loader = [(images, labels), (images[:1], labels[:1])]
    computed = compute_entropy_weights(model, AReAM(), loader, "cpu")
    assert computed.shape == (3,) and computed.min() == 0.0 and computed.max() == 1.0
    for name in ("ent.npy", "ent.json"):
        save_entropy_weights(tmp_path / name, np.array([3.0, 5.0, 4.0]))  # raw entropies
        assert np.allclose(load_entropy_weights(tmp_path / name), [0.0, 1.0, 0.5])
    with pytest.raises(FileNotFoundError):
        load_entropy_weights(tmp_path / "missing.npy")


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"entropy_weights": [0.2, 0.9, 0.5], "cam_flip": False, "par": False},
        {
            "loss_layers": "all",
            "refine_layers": "all",
            "cam_scales": [1.0, 0.5],
            "shallow_reduce": "sum",
        },
    ],
)
def test_full_loss_on_tiny_model_is_finite(tiny_model_config, params):
    model = _model(tiny_model_config)
    method = AReAM({"cls_epochs": 1, "layer_index": 2, **params})
    method.on_train_start(model, None, torch.device("cpu"))
    images, labels = _batch()
    loss, parts = method.loss(model, images, labels, epoch=1)
    assert torch.isfinite(loss) and set(parts) == {"loss_cls", "loss_patch", "loss_aff"}
    assert all(math.isfinite(v) for v in parts.values()) and parts["loss_aff"] > 0
    expected = parts["loss_cls"] + parts["loss_patch"] + 0.1 * parts["loss_aff"]
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    loss.backward()


def test_layer_split_is_checked_against_the_model(tiny_model_config):
    model = _model(tiny_model_config)  # 3 blocks: the official layer_index 7 does not fit
    with pytest.raises(ValueError, match="layer_index"):
        AReAM().on_train_start(model, None, torch.device("cpu"))
    assert AReAM({"layer_index": 2}).blocks(3) == ([0, 1], [2])
    assert AReAM({"layer_index": 2, "loss_layers": "all"}).blocks(3) == ([0, 1], [0, 1, 2])
    assert AReAM({"layer_index": 1, "refine_layers": [0, 2], "loss_layers": 1}).blocks(3) == (
        [0, 2],
        [2],
    )
    with pytest.raises(ValueError, match="entropy_weights"):
        AReAM({"layer_index": 2, "entropy_weights": [0.0, 1.0]}).on_train_start(model, None, "cpu")


def test_entropy_weights_file_may_be_an_object_with_a_weights_list(tmp_path):
    path = tmp_path / "entropy_weights.json"
    path.write_text(json.dumps({"weights": [3.0, 5.0, 4.0], "entropy_bits": [1.0, 2.0, 3.0]}))
    assert np.allclose(load_entropy_weights(path), [0.0, 1.0, 0.5])
    path.write_text(json.dumps({"entropy_bits": [1.0, 2.0]}))
    with pytest.raises(ValueError, match="without a 'weights' list"):
        load_entropy_weights(path)


def test_baseline_keyword_needs_the_weights_file(tiny_model_config):
    model = _model(tiny_model_config)
    method = AReAM({"layer_index": 2, "entropy_weights": "baseline"})  # valid params
    with pytest.raises(ValueError, match=r"is 'baseline': give the weights file with `wsss train"):
        method.on_train_start(model, None, torch.device("cpu"))


def _reference_batch_cam(method, model, images, labels):
    """``gen_msf_cam`` as the official code writes it: every pass upsampled to the crop,
    the flipped ones flipped back, summed, ReLU, per-class min-max, GT-masked."""
    import torch.nn.functional as F

    size = images.shape[-2:]
    refine, _ = method.blocks(model.depth)
    passes = []
    for scale in method.params["cam_scales"]:
        x = (
            images
            if scale == 1.0
            else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        for flipped in (False, True):
            output = model(x.flip(-1) if flipped else x)
            cam = shallow_refined_cam(output.attentions, output.patch_cam, refine)
            cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
            passes.append(cam.flip(-1) if flipped else cam)
    cam = torch.stack(passes).sum(dim=0).relu()
    cam = cam - cam.amin(dim=(-2, -1), keepdim=True)
    cam = cam / (cam.amax(dim=(-2, -1), keepdim=True) + 1e-6)
    return cam * labels[..., None, None]


@pytest.mark.parametrize("scales", [[1.0], [1.0, 0.5]])
def test_batch_cam_sums_passes_on_the_grid_like_the_per_pass_reference(tiny_model_config, scales):
    model = _model(tiny_model_config)
    with torch.no_grad():  # an untrained PatchCAM is nearly flat: min-max would magnify rounding
        model.patch_head.weight.mul_(1000.0)
    method = AReAM({"layer_index": 2, "cam_scales": scales})
    images, labels = _batch()
    with torch.no_grad():
        output = model(images)
        ours = method.batch_cam(model, output, images, labels)
        reference = _reference_batch_cam(method, model, images, labels)
    # float32 rounding of maps ~150x larger than their spread, magnified by the min-max;
    # a wrong flip or a dropped pass moves values by 0.1-1
    assert torch.allclose(ours, reference, atol=3e-4)


def test_grid_pseudo_labels_are_the_full_labels_nearest_sampled(tiny_model_config):
    model = _model(tiny_model_config)
    method = AReAM({"layer_index": 2})
    method.on_train_start(model, None, torch.device("cpu"))
    images, labels = _batch()
    with torch.no_grad():
        output = model(images)
        full = method.pseudo_labels(model, output, images, labels)
        on_grid = method.pseudo_labels(model, output, images, labels, grid=output.grid)
    assert on_grid.shape == (2, *output.grid)
    assert torch.equal(on_grid, downsample_labels(full, output.grid))


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("scales", [[1.0], [1.0, 0.5]])
def test_label_pass_bf16_runs_only_the_extra_passes_in_bf16(tiny_model_config, bf16, scales):
    model = _model(tiny_model_config)
    method = AReAM({"layer_index": 2, "cam_scales": scales, "label_pass_bf16": bf16})
    seen = []
    forward = method.forward

    def recording_forward(model, images, epoch, want_logits=False, full_attention=None):
        autocast = torch.is_autocast_enabled("cpu")
        seen.append((want_logits, autocast and torch.get_autocast_dtype("cpu") == torch.bfloat16))
        return forward(model, images, epoch, want_logits, full_attention)

    method.forward = recording_forward
    images, labels = _batch()
    loss, _ = method.loss(model, images, labels, epoch=method.params["cls_epochs"])
    loss.backward()
    # the training forward (want_logits) keeps the loop's precision; one extra pass per scale
    assert seen[0] == (True, False)
    assert seen[1:] == [(False, bf16)] * len(scales)
    assert torch.isfinite(loss)


def test_label_pass_bf16_must_be_a_boolean():
    with pytest.raises(
        ValueError, match=r"method_params.aream.label_pass_bf16: expected true or false"
    ):
        AReAM({"label_pass_bf16": "yes"})


@pytest.mark.parametrize("native", [False, True])
def test_label_pass_bf16_warns_where_the_cpu_has_no_native_bf16(
    tiny_model_config, monkeypatch, caplog, native
):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    model = _model(tiny_model_config)
    with caplog.at_level("WARNING", logger="wsss"):
        AReAM({"layer_index": 2, "label_pass_bf16": True}).on_train_start(model, None, "cpu")
        AReAM({"layer_index": 2}).on_train_start(model, None, "cpu")  # fp32: nothing to say
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == (0 if native else 1)
    if warnings:
        assert (
            "method_params.aream.label_pass_bf16" in warnings[0] and "no native bf16" in warnings[0]
        )
