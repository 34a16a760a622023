"""ClusterCAM: cluster attention pieces, the model's outputs, CAM, loss and decoder inference."""

import pytest
import torch
from timm.models.vision_transformer import Block

from wsss.methods import CAM_REFINERS, TRAINING_METHODS, CamRecipe
from wsss.methods.cam_inference import CamSettings, cams_for_batch
from wsss.methods.clustercam import (
    ClusterAttentionBlock,
    ClusterCAM,
    ClusterCAMViT,
    balanced_seg_loss,
    class_to_cluster_patch,
    cluster_patches,
    map_to_patches,
    mix_attention,
)
from wsss.methods.decoder_evaluation import segmentation_probabilities

NUM_CLASSES = 4
LABELS = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
SMALL = {"decoder_channels": 8}


@pytest.fixture(autouse=True)
def _one_thread():
    # runs after conftest's 2-thread setting: on a shared 2-core machine two
    # OpenMP threads contend with other processes and tiny ops get ~100x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _method(**params):
    return ClusterCAM({**SMALL, **params})


def _model(method, config):
    return method.build_model(config, NUM_CLASSES).train()


def test_registered_and_validated():
    cls = TRAINING_METHODS.get("clustercam")
    assert cls is ClusterCAM and cls.label == "ClusterCAM" and not cls.reconstructed
    d = cls.defaults
    assert (d["cluster_iters"], d["cam_kernel"], d["cluster_cell"], d["cluster_blocks"]) == (
        3,
        3,
        2,
        "all",
    )
    assert (d["seg_weight"], d["seg_start_epoch"], d["bg_thr"], d["ignore_delta"]) == (
        0.1,
        50,
        0.4,
        0.1,
    )
    assert ClusterCAM().thresholds == pytest.approx((0.3, 0.5))
    for bad in (
        {"cam_kernel": 5},
        {"cluster_iters": 0},
        {"cluster_blocks": "some"},
        {"bg_thr": 0.05},
        {"cam_scales": []},
        {"nope": 1},
    ):
        with pytest.raises(ValueError):
            ClusterCAM(bad)


def test_cluster_assignment_rows_sum_to_one_and_update_by_hand():
    patches = torch.randn(2, 15, 8)
    q, s = cluster_patches(patches, (3, 5), cell=2, iters=3)
    assert q.shape == (2, 15, 2) and s.shape == (2, 2, 8)  # (3 // 2) x (5 // 2) clusters
    assert torch.allclose(q.sum(dim=-1), torch.ones(2, 15), atol=1e-6)
    # one iteration by hand: init = mean of each 2x2 cell (adaptive pooling of 3x5 to 1x2)
    q1, s1 = cluster_patches(patches, (3, 5), cell=2, iters=1)
    grid = patches.view(2, 3, 5, 8)
    init = torch.stack([grid[:, :, :3].mean(dim=(1, 2)), grid[:, :, 2:].mean(dim=(1, 2))], dim=1)
    expected_q = (patches @ init.transpose(1, 2) / 8**0.5).softmax(dim=-1)
    assert torch.allclose(q1, expected_q, atol=1e-6)
    expected_s = (expected_q.transpose(1, 2) @ patches) / (expected_q.sum(dim=1)[..., None] + 1e-8)
    assert torch.allclose(s1, expected_s, atol=1e-5)
    # tiny grids still get one cluster
    q, s = cluster_patches(torch.randn(1, 1, 8), (1, 1), cell=2, iters=2)
    assert q.shape == (1, 1, 1) and torch.allclose(q, torch.ones(1, 1, 1))


def test_back_mapping_of_a_constant_cluster_output_is_constant():
    q, _ = cluster_patches(torch.randn(2, 15, 8), (3, 5))
    values = torch.randn(2, 1, 8).expand(2, q.shape[-1], 8)
    back = map_to_patches(q, values)
    assert back.shape == (2, 15, 8)
    assert torch.allclose(back, values[:, :1].expand(2, 15, 8), atol=1e-6)


def test_class_to_cluster_patch_by_hand():
    # C = 1 class, M = 2 clusters, N = 3 patches, one head
    g = torch.tensor([[[[0.2, 0.5, 0.3], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]])
    q = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]])
    c2sp = class_to_cluster_patch(g, q, 1)
    assert torch.allclose(c2sp, torch.tensor([[[[0.5, 0.4, 0.3]]]]))
    c2p = torch.tensor([[[[0.1, 0.2, 0.5]]]])
    assert torch.equal(mix_attention(c2p, c2sp, 0.0), c2p)
    assert torch.allclose(mix_attention(c2p, c2sp, 0.25), 0.75 * c2p + 0.25 * c2sp)


def test_mixed_attention_equals_standard_when_alpha_is_zero(tiny_model_config):
    model = _model(_method(), tiny_model_config)
    with torch.no_grad():
        for block in model.blocks:
            block.alpha.zero_()
    out = model(torch.randn(2, 3, 32, 32))
    for mixed, attention in zip(out.extras["mixed_class_to_patch"], out.attentions, strict=True):
        assert torch.equal(mixed, attention[:, :, :NUM_CLASSES, NUM_CLASSES:])
    with torch.no_grad():
        model.blocks[-1].alpha.fill_(1.0)
    out = model(torch.randn(2, 3, 32, 32))
    standard = out.attentions[-1][:, :, :NUM_CLASSES, NUM_CLASSES:]
    assert not torch.allclose(out.extras["mixed_class_to_patch"][-1], standard)


def test_shapes_for_non_square_inputs(tiny_model_config):
    method = _method()
    model = _model(method, tiny_model_config)
    out = method.forward(model, torch.randn(2, 3, 24, 40), epoch=0)
    c, n, heads, depth, dim = NUM_CLASSES, 15, 2, 3, 32
    assert out.grid == (3, 5)
    assert out.class_logits.shape == (2, c) and out.patch_logits.shape == (2, c)
    assert out.patch_cam.shape == (2, c, 3, 5)
    assert out.class_tokens.shape == (2, c, dim) and out.patch_tokens.shape == (2, n, dim)
    assert len(out.attentions) == depth and out.attentions[0].shape == (2, heads, c + n, c + n)
    assert out.attention_logits is None
    assert out.extras["seg_logits"].shape == (2, c + 1, 3, 5)
    assert len(out.extras["mixed_class_to_patch"]) == depth
    assert out.extras["mixed_class_to_patch"][0].shape == (2, heads, c, n)
    assert out.extras["cluster_assignments"][0].shape == (2, n, 2)  # 1 x 2 clusters on 3 x 5
    assert model.feature_channels == dim + depth * heads * c
    assert method.cam(out, CamRecipe()).shape == (2, c, 3, 5)
    assert method.affinity(out, CamRecipe()).shape == (2, n, n)
    assert method.segment(model, torch.randn(2, 3, 24, 40)).shape == (2, c + 1, 3, 5)
    with_logits = model(torch.randn(1, 3, 24, 40), want_logits=True, decode=False)
    assert with_logits.attention_logits[0].shape == (1, heads, c + n, c + n)
    assert "seg_logits" not in with_logits.extras
    model.eval()
    probs = segmentation_probabilities(
        method, model, torch.randn(2, 3, 30, 44), (0.5, 0.75, 1.0, 1.25, 1.5)
    )
    assert probs.shape == (2, c + 1, 30, 44)
    assert bool((probs >= 0).all()) and bool((probs <= 1).all())


def test_initialisation_copies_the_timm_block_weights(tiny_model_config):
    method = _method()
    reference = TRAINING_METHODS.get("mctformer_v2")().build_model(tiny_model_config, NUM_CLASSES)
    block = reference.blocks[1]
    with torch.no_grad():  # make norm1 distinguishable from a fresh LayerNorm
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm1.bias.normal_()
    timm_state = {k: v.clone() for k, v in block.state_dict().items()}
    wrapped = ClusterAttentionBlock(block)
    for ln in (wrapped.ln_pat2, wrapped.ln_cls, wrapped.ln_st):
        assert torch.equal(ln.weight, timm_state["norm1.weight"]) and torch.equal(
            ln.bias, timm_state["norm1.bias"]
        )
        assert ln.weight.data_ptr() != wrapped.norm1.weight.data_ptr()  # a copy, not shared
    assert torch.equal(wrapped.qkv_stsa.weight, timm_state["attn.qkv.weight"])
    assert torch.equal(wrapped.qkv_stsa.bias, timm_state["attn.qkv.bias"])
    assert torch.equal(wrapped.proj_cls.weight, timm_state["attn.proj.weight"])
    assert torch.equal(wrapped.proj_cls.bias, timm_state["attn.proj.bias"])
    assert (
        wrapped.ln_pat is wrapped.norm1
        and wrapped.qkv is wrapped.attn.qkv
        and wrapped.proj is wrapped.attn.proj
    )
    assert 0.0 <= float(wrapped.alpha.detach()) <= 1.0 and wrapped.alpha.requires_grad
    # a timm block's state dict loads key for key; only the cluster branch is new
    fresh = ClusterAttentionBlock(Block(32, 2, qkv_bias=True))
    result = fresh.load_state_dict(timm_state, strict=False)
    assert not result.unexpected_keys
    assert {k.split(".")[0] for k in result.missing_keys} == {
        "proj_st",
        "ln_pat2",
        "ln_cls",
        "ln_st",
        "qkv_stsa",
        "proj_cls",
        "alpha",
    }
    fresh.init_cluster_branch()
    assert torch.equal(fresh.ln_cls.weight, timm_state["norm1.weight"])
    assert torch.equal(fresh.qkv_stsa.weight, timm_state["attn.qkv.weight"])
    # the model: timm weights end up in the standard branch of every cluster block
    model = method.build_model(tiny_model_config, NUM_CLASSES)
    assert all(isinstance(b, ClusterAttentionBlock) for b in model.blocks)
    assert torch.equal(model.blocks[0].ln_cls.weight, model.blocks[0].norm1.weight)


def test_standard_branch_is_the_timm_block():
    from wsss.models.mct_vit import block_forward

    block = Block(32, 2, qkv_bias=True)
    x = torch.randn(2, 4 + 12, 32)
    expected, weights, _ = block_forward(block, x, want_logits=False)
    wrapped = ClusterAttentionBlock(block)
    with torch.no_grad():  # silence the cluster branch's residual: zero values and class projection
        wrapped.qkv_stsa.weight[64:].zero_()
        wrapped.qkv_stsa.bias[64:].zero_()
        wrapped.proj_cls.weight.zero_()
        wrapped.proj_cls.bias.zero_()
    out, attention, _, _, _ = wrapped(x, (3, 4), 4)
    assert torch.allclose(out, expected, atol=1e-6) and torch.equal(attention, weights)


def test_cluster_blocks_subset(tiny_model_config):
    method = _method(cluster_blocks=1)  # the last block only, like st_attn_depth 1
    model = _model(method, tiny_model_config)
    kinds = [isinstance(b, ClusterAttentionBlock) for b in model.blocks]
    assert kinds == [False, False, True]
    out = model(torch.randn(1, 3, 32, 32))
    # plain blocks contribute their standard class->patch attention
    assert torch.equal(
        out.extras["mixed_class_to_patch"][0], out.attentions[0][:, :, :NUM_CLASSES, NUM_CLASSES:]
    )
    assert len(out.extras["cluster_assignments"]) == 1
    assert out.extras["seg_logits"].shape == (1, NUM_CLASSES + 1, 4, 4)


def test_loss_without_then_with_the_seg_term(tiny_model_config):
    method = _method(seg_start_epoch=2, cam_scales=[1.0, 0.75, 1.25])
    model = _model(method, tiny_model_config)
    images = torch.randn(2, 3, 32, 32)
    loss, parts = method.loss(model, images, LABELS, epoch=1)
    assert parts["loss_seg"] == 0.0
    assert loss.item() == pytest.approx(parts["loss_cls"] + parts["loss_patch"], rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert model.blocks[-1].alpha.grad is not None  # the mixed c2p feeds the CAM head
    model.zero_grad(set_to_none=True)

    loss, parts = method.loss(model, images, LABELS, epoch=2)
    assert torch.isfinite(loss) and parts["loss_seg"] > 0
    assert loss.item() == pytest.approx(
        parts["loss_cls"] + parts["loss_patch"] + 0.1 * parts["loss_seg"], rel=1e-5
    )
    loss.backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_pseudo_labels(tiny_model_config):
    method = _method(cam_scales=[1.0, 0.75])
    model = _model(method, tiny_model_config)
    images = torch.randn(2, 3, 32, 32)
    output = method.forward(model, images, epoch=0, decode=False)
    cam = method.batch_cam(model, output, images, LABELS)
    assert cam.shape == (2, NUM_CLASSES, 32, 32) and not cam.requires_grad
    assert float(cam.min()) >= 0 and float(cam.max()) <= 1
    assert bool((cam[0, [1, 3]] == 0).all()) and bool((cam[1, :3] == 0).all())
    labels = method.pseudo_labels(model, output, images, LABELS)
    assert labels.shape == (2, 32, 32)
    assert set(labels[0].unique().tolist()) <= {0, 1, 3, 255}
    assert set(labels[1].unique().tolist()) <= {0, 4, 255}


def test_balanced_seg_loss_by_hand():
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 1, 0, 1] = 2.0
    target = torch.tensor([[[0, 1, 2, 255]]])
    # pixel 0: bg, uniform -> log 3; pixel 1: class 1 with logit 2; pixel 2: class 2, uniform
    fg1 = -torch.log_softmax(torch.tensor([0.0, 2.0, 0.0]), 0)[1]
    expected = 0.5 * (torch.log(torch.tensor(3.0)) + (fg1 + torch.log(torch.tensor(3.0))) / 2)
    assert balanced_seg_loss(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    # no foreground pixel: only the background half, no NaN
    only_bg = balanced_seg_loss(logits, torch.tensor([[[0, 255, 255, 255]]]))
    assert only_bg.item() == pytest.approx(0.5 * torch.log(torch.tensor(3.0)).item(), rel=1e-6)


def test_cam_is_non_negative_and_ignores_the_bias(tiny_model_config):
    method = _method()
    model = _model(method, tiny_model_config).eval()
    images = torch.randn(2, 3, 32, 32)
    recipe = CamRecipe(class_layers=3, class_reduce="sum")
    with torch.no_grad():
        first = method.forward(model, images, epoch=-1)
        cam = method.cam(first, recipe)
        model.patch_head.bias.add_(5.0)
        second = method.forward(model, images, epoch=-1)
    assert cam.shape == (2, NUM_CLASSES, 4, 4) and bool((cam >= 0).all()) and cam.sum() > 0
    assert not torch.allclose(first.patch_cam, second.patch_cam)
    assert torch.allclose(method.cam(second, recipe), cam, atol=1e-5)
    # the recipe controls the blocks: last block only differs from the last 3
    assert not torch.allclose(method.cam(first, CamRecipe(class_layers=1)), cam)
    assert torch.allclose(
        method.cam(first, CamRecipe(fusion="patchcam")),
        torch.relu(first.extras["cam_logits_nobias"]),
    )


@pytest.mark.parametrize(
    "params", [{"cluster_iters": 10}, {"cluster_iters": 3, "cam_kernel": 1}, {"cam_kernel": 3}]
)
def test_code_and_paper_variants_build_and_run(tiny_model_config, params):
    method = _method(seg_start_epoch=0, cam_scales=[1.0], **params)
    model = _model(method, tiny_model_config)
    assert model.patch_head.kernel_size == (method.params["cam_kernel"],) * 2
    assert all(b.cluster_iters == method.params["cluster_iters"] for b in model.blocks)
    loss, parts = method.loss(model, torch.randn(2, 3, 24, 40), LABELS, epoch=0)
    loss.backward()
    assert torch.isfinite(loss) and parts["loss_seg"] > 0


def test_through_cams_for_batch_with_affinity_refiner(tiny_model_config):
    method = _method()
    model = _model(method, tiny_model_config).eval()
    refiner = CAM_REFINERS.get("affinity")()
    settings = CamSettings(scales=[1.0, 0.5], flip=True, batch_size=2, recipe=CamRecipe())
    images = torch.randint(0, 256, (2, 3, 36, 28), dtype=torch.uint8)
    cams = cams_for_batch(model, method, refiner, images, LABELS, settings)
    assert cams.shape == (2, NUM_CLASSES, 36, 28)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1 + 1e-6
    assert bool((cams[0, [1, 3]] == 0).all()) and bool((cams[1, :3] == 0).all())
    assert float(cams[0, 0].max()) == pytest.approx(1.0, abs=1e-4)


def test_model_type_checked(tiny_model_config):
    method = _method()
    baseline = TRAINING_METHODS.get("mctformer_v2")().build_model(tiny_model_config, NUM_CLASSES)
    with pytest.raises(TypeError):
        method.forward(baseline, torch.randn(1, 3, 32, 32), epoch=0)
    assert isinstance(method.build_model(tiny_model_config, NUM_CLASSES), ClusterCAMViT)


def test_training_cam_of_another_scale_is_resized_once_as_the_code(tiny_model_config):
    """At scale 0.5 the 32 px crop is seen at 16 px (a patch multiple: no padding); its
    2 x 2 grid CAM goes straight to 32 x 32 (multi_scale_cam2's one interpolate), not
    through 16 x 16 first."""
    import torch.nn.functional as F

    from wsss.ops.multiscale import to_image
    from wsss.ops.normalize import minmax_per_class

    method = _method(cam_scales=[0.5], cam_flip=False)
    model = _model(method, tiny_model_config)
    images = torch.randn(2, 3, 32, 32)
    output = method.forward(model, images, epoch=0, decode=False)
    cam = method.batch_cam(model, output, images, LABELS)
    small = F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    with torch.no_grad():
        grid = method._pseudo_pass(method.forward(model, small, epoch=-1, decode=False))
    assert grid.shape[-2:] == (2, 2)
    mask = LABELS[..., None, None]
    once = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(cam, minmax_per_class(once.relu(), eps=1e-5) * mask, atol=1e-6)
    twice = to_image(grid, (16, 16), (16, 16), (32, 32))
    assert not torch.allclose(cam, minmax_per_class(twice.relu(), eps=1e-5) * mask, atol=1e-3)


def test_par_uses_the_code_eps():
    """ClusterCAM's PAR.py adds 1e-5 to both standard deviations (ToCo's/AReAM's: 1e-8)."""
    assert _method().par_module.eps == 1e-5
    assert TRAINING_METHODS.get("aream")().par_module.eps == 1e-8
