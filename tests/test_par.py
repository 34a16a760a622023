import math

import pytest
import torch
import torch.nn.functional as F

from wsss.data.classification import IMAGENET_MEAN, IMAGENET_STD
from wsss.ops.par import PAR, denormalize, fuse_pseudo_labels, refine_cams_to_labels


def _two_colour_image(size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Left half dark red, right half light blue (plus faint noise); truth = 0 left, 1 right."""
    image = torch.empty(1, 3, size, size)
    image[:, :, :, : size // 2] = torch.tensor([0.7, 0.1, 0.1]).view(1, 3, 1, 1)
    image[:, :, :, size // 2 :] = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    image += 0.01 * torch.rand_like(image)
    truth = torch.zeros(1, size, size, dtype=torch.long)
    truth[:, :, size // 2 :] = 1
    return image, truth


def test_shapes_and_affinity_rows():
    par = PAR()
    assert par.num_neighbours == 48
    images, masks = torch.rand(2, 3, 20, 13), torch.rand(2, 5, 20, 13)
    out = par(images, masks)
    assert out.shape == masks.shape and out.dtype == torch.float32
    weights = par.affinity(images)
    assert weights.shape == (2, 48, 20, 13)
    # softmax(colour) + w2 * softmax(position): every pixel's weights sum to 1 + w2
    assert torch.allclose(weights.sum(dim=1), torch.full((2, 20, 13), 1.01), atol=1e-5)
    assert torch.allclose(
        PAR(renormalize=True).affinity(images).sum(dim=1), torch.ones(2, 20, 13), atol=1e-5
    )
    with pytest.raises(ValueError):
        par(images, torch.rand(2, 5, 10, 13))


def test_positional_weights_favour_near_and_axis_neighbours():
    position = PAR().positional_weights()
    assert position.shape == (48,) and math.isclose(position.sum().item(), 1.0, rel_tol=1e-6)
    # dilation 1: axis neighbours (index 1) outweigh diagonal ones (index 0); dilation 1 > dilation 24
    assert position[1] > position[0] > position[40]
    assert torch.equal(position[:8][[1, 3, 4, 6]], position[1].expand(4))


def test_constant_mask_stays_constant_on_any_image():
    images = torch.rand(2, 3, 16, 16)
    masks = torch.full((2, 3, 16, 16), 0.4)
    masks[:, 1] = 0.7
    out = PAR()(images, masks)
    # the official affinity sums to 1 + w2, so every iteration scales by 1.01
    assert torch.allclose(out, masks * 1.01**10, atol=1e-5)
    assert torch.allclose(PAR(renormalize=True)(images, masks), masks, atol=1e-5)


def test_constant_image_preserves_mass_and_keeps_constant_masks():
    images = torch.full((1, 3, 16, 16), 0.5)
    par = PAR(renormalize=True)
    constant = torch.full((1, 2, 16, 16), 0.25)
    assert torch.allclose(par(images, constant), constant, atol=1e-6)
    # On a constant image every neighbour is equally similar, so PAR just smooths the mask
    # spatially and keeps its mass, up to the replicate-padded borders; dilations much
    # smaller than the image keep the border effect small.
    par = PAR(dilations=(1, 2), renormalize=True)
    images = torch.full((1, 3, 32, 32), 0.5)
    blob = torch.zeros(1, 1, 32, 32)
    blob[..., 12:20, 12:20] = 1.0
    out = par(images, blob)
    assert abs(out.sum().item() / blob.sum().item() - 1) < 0.02
    assert out.max() < 1.0 and out[..., 10, 16] > 0  # spread out beyond the blob


def test_noisy_mask_moves_toward_the_colour_boundary():
    image, truth = _two_colour_image()
    generator = torch.Generator().manual_seed(1)
    noisy = truth.clone()
    flip = torch.rand(truth.shape, generator=generator) < 0.3
    noisy[flip] = 1 - noisy[flip]
    masks = F.one_hot(noisy, 2).permute(0, 3, 1, 2).float()
    before = (masks.argmax(dim=1) == truth).float().mean().item()
    after = (PAR()(image, masks).argmax(dim=1) == truth).float().mean().item()
    assert before < 0.75 and after > 0.95


def test_backends_agree_and_match_one_hand_iteration():
    par = PAR()
    images, masks = torch.rand(2, 3, 11, 9), torch.rand(2, 4, 11, 9)
    weights = par.affinity(images)
    shifts = par.propagate(masks, weights, backend="shifts")
    sparse = par.propagate(masks, weights, backend="sparse")
    assert torch.allclose(shifts, sparse, atol=1e-5)
    # one iteration by hand at pixel (5, 4): sum over the 48 clamped neighbours
    one = PAR(num_iters=1)
    expected = sum(
        weights[0, n, 5, 4] * masks[0, :, min(max(5 + dy, 0), 10), min(max(4 + dx, 0), 8)]
        for n, (dy, dx) in enumerate(one._offsets)
    )
    assert torch.allclose(
        one.propagate(masks, weights, backend="shifts")[0, :, 5, 4], expected, atol=1e-6
    )
    with pytest.raises(ValueError):
        par.propagate(masks, weights, backend="nope")


def test_affinity_is_scale_invariant_and_denormalize_inverts_normalisation():
    images = torch.rand(1, 3, 12, 12)
    par = PAR()
    assert torch.allclose(par.affinity(images), par.affinity(images * 255), atol=1e-5)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(denormalize((images - mean) / std), images, atol=1e-6)


def test_fusion_truth_table():
    # high-threshold label, low-threshold label -> fused (0 = bg, c + 1 = class c)
    high = torch.tensor([3, 3, 0, 0, 0, 2])
    low = torch.tensor([3, 0, 0, 3, 1, 5])
    expected = torch.tensor(
        [3, 3, 0, 255, 255, 2]
    )  # fg(high) wins; bg only if both bg; else ignore
    assert torch.equal(fuse_pseudo_labels(high, low), expected)
    assert torch.equal(
        fuse_pseudo_labels(high, low, ignore_index=-1), torch.tensor([3, 3, 0, -1, -1, 2])
    )


def test_refine_cams_to_labels_thresholds_without_par():
    cams = torch.zeros(1, 3, 8, 8)
    cams[0, 1] = 0.1
    cams[0, 1, 2:6, 2:6] = 0.45  # between the thresholds: uncertain
    cams[0, 1, 3:5, 3:5] = 0.9  # above both: class 1 -> label 2
    cams[0, 2] = 1.0  # not a GT class: must be ignored
    labels = torch.tensor([[0.0, 1.0, 0.0]])
    images = torch.rand(1, 3, 8, 8)
    seg = refine_cams_to_labels(images, cams, labels, 0.35, 0.55, par=None)
    assert seg.shape == (1, 8, 8) and seg.dtype == torch.int64
    assert (seg[0, 3:5, 3:5] == 2).all()
    assert seg[0, 2, 2] == 255 and seg[0, 0, 0] == 0
    assert set(seg.unique().tolist()) == {0, 2, 255}


def _reference_labels(par, images, labels, cams, score):
    """The official per-image ``cam_to_seg`` (kept channels, softmax, PAR at half size)."""
    batch, _, height, width = images.shape
    cams = torch.cat([torch.full((batch, 1, height, width), score), cams], dim=1)
    keys = torch.cat([torch.ones(batch, 1), labels], dim=1)
    size = (height // 2, width // 2)
    small_images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    small_cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
    segs = []
    for b in range(batch):
        key = torch.nonzero(keys[b])[:, 0]
        refined = par(small_images[b : b + 1], small_cams[b : b + 1, key].softmax(dim=1))
        refined = F.interpolate(refined, size=(height, width), mode="bilinear", align_corners=False)
        segs.append(key[refined.argmax(dim=1)][0])
    return torch.stack(segs)


def test_batched_refinement_matches_per_image_reference():
    par = PAR()
    images = torch.rand(3, 3, 16, 16)
    cams = torch.rand(3, 4, 16, 16)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]])
    cams = cams * labels[..., None, None]
    fused = refine_cams_to_labels(images, cams, labels, 0.35, 0.55, par)
    low = _reference_labels(par, images, labels, cams, 0.35)
    high = _reference_labels(par, images, labels, cams, 0.55)
    assert torch.equal(fused, fuse_pseudo_labels(high, low))
    assert set(fused[1].unique().tolist()) <= {0, 4, 255}  # only bg and its one GT class (3 -> 4)


def test_neighbours_are_the_clamped_offsets_of_the_official_kernel():
    par = PAR(dilations=(1, 3, 8))
    x = torch.rand(2, 3, 7, 10)
    # the definition: shifted views of a replicate-padded tensor, one per offset
    pad = max(par.dilations)
    padded = F.pad(x, [pad] * 4, mode="replicate")
    expected = torch.stack(
        [padded[..., pad + dy : pad + dy + 7, pad + dx : pad + dx + 10] for dy, dx in par._offsets],
        dim=2,
    )
    assert torch.equal(par.neighbours(x), expected)
    index = par.neighbour_index(7, 10, x.device)
    assert index.shape == (70, 24)
    # pixel (0, 9) at offset (+3, +3): row 3, column clamped to 9
    assert index[9, par._offsets.index((3, 3))] == 3 * 10 + 9


def test_chunked_affinity_and_cached_pattern_give_identical_results(monkeypatch):
    import wsss.ops.par as par_module

    par = PAR()
    images, masks = torch.rand(5, 3, 12, 9), torch.rand(5, 4, 12, 9)
    whole = par.affinity(images)
    refined = par(images, masks)
    assert par.images_per_chunk(images) == 5
    monkeypatch.setattr(par_module, "_CHUNK_VALUES", 2 * 3 * 12 * 9 * par.num_neighbours)
    assert par.images_per_chunk(images) == 2
    assert torch.equal(par.affinity(images), whole)  # each image's weights are its own
    assert torch.equal(par(images, masks), refined)  # the second call reuses the cached pattern
    assert torch.equal(par(images[1:3], masks[1:3]), refined[1:3])
    shifts = par.propagate(masks, par.affinity(images), backend="shifts")
    assert torch.allclose(shifts, refined, atol=1e-5)


def test_gradients_flow_through_the_affinity_and_the_masks():
    par = PAR()
    images = torch.rand(2, 3, 9, 8, requires_grad=True)
    masks = torch.rand(2, 4, 9, 8, requires_grad=True)
    weights = par.affinity(images)
    with torch.no_grad():
        assert torch.equal(par.affinity(images), weights)  # in-place path: same values
    par.propagate(masks, weights).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0 and masks.grad.abs().sum() > 0


def test_bilinear_weights_reproduce_interpolate_at_chosen_pixels():
    from wsss.ops.par import bilinear_weights

    x = torch.rand(2, 3, 5, 7)
    full = F.interpolate(x, size=(20, 13), mode="bilinear", align_corners=False)
    rows, cols = [0, 3, 10, 19], [0, 6, 12]
    ry, rx = bilinear_weights(20, 5, rows), bilinear_weights(13, 7, cols)
    assert torch.allclose(ry.sum(dim=1), torch.ones(len(rows)))
    picked = torch.einsum("yh,bkhw,xw->bkyx", ry, x, rx)
    assert torch.allclose(picked, full[:, :, rows][:, :, :, cols], atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        bilinear_weights(20, 5, [20])


def test_nearest_indices_match_nearest_interpolation():
    from wsss.ops.par import nearest_indices

    x = torch.arange(64.0).view(1, 1, 8, 8)
    for size in (8, 3, 5):
        small = F.interpolate(x, size=(size, size), mode="nearest")[0, 0]
        index = nearest_indices(size, 8)
        assert torch.equal(small, x[0, 0][index][:, index])


@pytest.mark.parametrize("with_par", [True, False])
def test_sampled_labels_equal_the_full_labelling_read_there(with_par):
    from wsss.ops.par import nearest_indices

    par = PAR() if with_par else None
    images = torch.rand(3, 3, 32, 32)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 0]])
    cams = torch.rand(3, 4, 32, 32) * labels[..., None, None]
    full = refine_cams_to_labels(images, cams, labels, 0.35, 0.55, par)
    rows, cols = nearest_indices(4, 32), nearest_indices(4, 32)
    sampled = refine_cams_to_labels(images, cams, labels, 0.35, 0.55, par, sample=(rows, cols))
    assert sampled.shape == (3, 4, 4)
    assert torch.equal(sampled, full[:, rows][:, :, cols])


def test_batch_without_gt_classes_is_all_background():
    cams = torch.rand(2, 3, 8, 8)
    labels = torch.zeros(2, 3)
    for par in (None, PAR()):
        seg = refine_cams_to_labels(torch.rand(2, 3, 8, 8), cams, labels, 0.35, 0.55, par)
        assert seg.shape == (2, 8, 8) and (seg == 0).all()


def test_gain_is_what_a_constant_mask_is_multiplied_by():
    images = torch.rand(1, 3, 12, 12)
    for renormalize in (False, True):
        par = PAR(renormalize=renormalize)
        out = par(images, torch.full((1, 1, 12, 12), 0.5))
        assert torch.allclose(out, torch.full_like(out, 0.5 * par.gain), atol=1e-5)


@pytest.mark.parametrize("eps", [1e-8, 1e-5])
def test_colour_affinity_by_hand_with_eps(eps):
    """Centre of a 3 x 3 grey image: 0, its diagonal neighbours s = 1e-5, the axis ones 0.
    The 8 values' unbiased std is s * sqrt(2/7); a diagonal's colour logit is
    -(s / (std + eps) / 0.3)^2, an axis one's 0; softmax, plus w2 x the positional weights.
    At this contrast the eps decides the weights (1e-5: ClusterCAM's PAR.py)."""
    s = 1e-5
    image = torch.zeros(1, 3, 3, 3)
    image[:, :, ::2, ::2] = s  # the four corners: the centre's diagonal neighbours
    image[:, :, 1, 1] = 0.0
    std = s * math.sqrt(2 / 7)
    diagonal = math.exp(-((s / (std + eps) / 0.3) ** 2))
    colour = torch.tensor([diagonal, 1, diagonal, 1, 1, diagonal, 1, diagonal])
    colour = colour / colour.sum()
    par = PAR(dilations=[1], eps=eps)
    expected = colour + 0.01 * par.positional_weights()
    got = par.affinity(image)[0, :, 1, 1]
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got[0] > 1e-3) == (eps == 1e-5)  # the diagonals only count with the larger eps
