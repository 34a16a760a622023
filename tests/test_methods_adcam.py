"""AD-CAM (reconstructed) and the plain CAM x attention coupling, on hand-checkable matrices."""

import pytest
import torch

from wsss.methods import CAM_REFINERS, TRAINING_METHODS, CamRecipe, Variant
from wsss.methods.adcam import (
    REFINES,
    adcam_refine,
    conservative_attention,
    diffuse,
    patch_attention,
    row_normalize,
    transition_matrix,
    transition_power,
    use_squaring,
)
from wsss.methods.cam_inference import CamSettings, cams_for_batch
from wsss.methods.couplings import couple, normalized_class_attention
from wsss.models import ModelOutput, build_model

# 3 patches, row-stochastic attention; patches 0 and 1 attend to {0, 1}, patch 2 to {1, 2}.
A3 = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]])
# G = A Aᵀ, G_ij = sum_k A_ik A_jk:
#   G00 = .25 + .25 = .5   G01 = .25 + .25 = .5   G02 = 0 + .25 + 0 = .25
#   G11 = .5               G12 = .25              G22 = .25 + .25 = .5
# A ⊙ G = [[.25, .25, 0], [.25, .25, 0], [0, .5*.25, .5*.5]] = [[.25, .25, 0], [.25, .25, 0], [0, .125, .25]]
# row-normalised: rows 0, 1 -> [.5, .5, 0]; row 2 -> [0, .125, .25] / .375 = [0, 1/3, 2/3]
# (patch 2's attention to patch 1, whose neighbourhood differs, is damped from 1/2 to 1/3).
T3 = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 1 / 3, 2 / 3]]])


def random_attention(batch=2, n=6, generator=None, sparse=False):
    logits = torch.randn(batch, n, n, generator=generator)
    a = logits.softmax(dim=-1)
    if sparse:
        mask = torch.rand(batch, n, n, generator=generator) < 0.6
        a = a * mask
        a[:, 0] = 0  # an empty row
        a = row_normalize(a)
    return a


def block_diagonal_attention(batch=2, sizes=(3, 4)):
    n = sum(sizes)
    a = torch.zeros(batch, n, n)
    start = 0
    for size in sizes:
        a[:, start : start + size, start : start + size] = torch.randn(batch, size, size).softmax(
            -1
        )
        start += size
    return a


def assert_row_stochastic(t):
    assert (t >= 0).all()
    assert torch.allclose(t.sum(-1), torch.ones(t.shape[:-1]), atol=1e-5)


# ------------------------------------------------------------ pure functions


def test_hand_example_product_then_row_normalisation():
    refined = conservative_attention(A3, "product")
    assert torch.allclose(
        refined, torch.tensor([[[0.25, 0.25, 0], [0.25, 0.25, 0], [0, 0.125, 0.25]]])
    )
    assert torch.allclose(transition_matrix(refined, power=1.0), T3)
    # cosine: cos_01 = .5/sqrt(.5*.5) = 1, cos_12 = .25/.5 = .5 -> row 2 = [0, .25, .5] -> [0, 1/3, 2/3]
    assert torch.allclose(transition_matrix(conservative_attention(A3, "cosine")), T3)
    # cooccurrence: G itself, row 2 = [.25, .25, .5] / 1
    cooc = transition_matrix(conservative_attention(A3, "cooccurrence"))
    assert torch.allclose(cooc[0, 2], torch.tensor([0.25, 0.25, 0.5]))
    assert torch.allclose(cooc[0, 0], torch.tensor([0.4, 0.4, 0.2]))  # [.5, .5, .25] / 1.25
    assert torch.equal(conservative_attention(A3, "none"), A3)


def test_hand_example_scatter_and_gather():
    m = torch.tensor([[[0.0, 0.0, 3.0]]])  # B=1, C=1, N=3
    # scatter: M'_i = sum_j T_ji M_j = 3 * T_2i = [0, 1, 2] (the total 3 is kept)
    assert torch.allclose(diffuse(m, T3, 1, "scatter"), torch.tensor([[[0.0, 1.0, 2.0]]]))
    # gather: M'_i = sum_j T_ij M_j = 3 * T_i2 = [0, 0, 2]
    assert torch.allclose(diffuse(m, T3, 1, "gather"), torch.tensor([[[0.0, 0.0, 2.0]]]))
    # two scatter steps: [0, 1, 2] -> [.5, .5+2/3, 4/3]
    assert torch.allclose(diffuse(m, T3, 2, "scatter"), torch.tensor([[[0.5, 0.5 + 2 / 3, 4 / 3]]]))
    # through adcam_refine on a 1x3 grid, with mix .5: .5*[0,0,3] + .5*[0,1,2]
    out = adcam_refine(m.reshape(1, 1, 1, 3), A3, "product", 1.0, 1, "scatter", 0.5, squaring=False)
    assert torch.allclose(out, torch.tensor([[[[0.0, 0.5, 2.5]]]]))


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("power", [0.0, 0.5, 1.0, 8.0])
def test_transition_matrix_is_row_stochastic(refine, sparse, power):
    g = torch.Generator().manual_seed(1)
    a = random_attention(batch=3, n=7, generator=g, sparse=sparse)
    assert_row_stochastic(a)
    assert_row_stochastic(transition_matrix(conservative_attention(a, refine), power))


def test_transition_matrix_edge_rows_and_power():
    x = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 2.0], [1.0, 3.0, 0.0]]])
    t = transition_matrix(x, power=1.0)
    # an all-zero row becomes the identity row; others are plain row-normalisation
    assert torch.allclose(t, torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.25, 0.75, 0.0]]]))
    # power 0: uniform over the row's support (zeros stay zero)
    t0 = transition_matrix(x, power=0.0)
    assert torch.allclose(t0, torch.tensor([[[1.0, 0.0, 0.0], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]]))
    # power 2: [1, 9] / 10
    assert torch.allclose(transition_matrix(x, power=2.0)[0, 2], torch.tensor([0.1, 0.9, 0.0]))
    # a large power does not underflow a row of small values to nothing
    tiny = torch.tensor([[[1e-6, 2e-6], [1.0, 1.0]]])
    big = transition_matrix(tiny, power=200.0)
    assert_row_stochastic(big)
    assert torch.allclose(big[0, 0], torch.tensor([0.0, 1.0]))


def test_power_zero_on_dense_attention_is_the_mean():
    a = random_attention(batch=2, n=5)
    t = transition_matrix(a, power=0.0)
    assert torch.allclose(t, torch.full_like(t, 0.2))
    m = torch.rand(2, 3, 5)
    mean = m.mean(-1, keepdim=True).expand_as(m)
    assert torch.allclose(diffuse(m, t, 1, "gather"), mean, atol=1e-6)
    assert torch.allclose(diffuse(m, t, 1, "scatter"), mean, atol=1e-6)


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("squaring", [False, True])
def test_scatter_preserves_class_mass(refine, steps, squaring):
    a = random_attention(batch=2, n=8)
    t = transition_matrix(conservative_attention(a, refine), power=2.0)
    m = torch.rand(2, 3, 8) * torch.tensor([1.0, 10.0, 0.1])[:, None]
    out = diffuse(m, t, steps, "scatter", squaring=squaring)
    assert torch.allclose(out.sum(-1), m.sum(-1), rtol=1e-5)
    assert not torch.allclose(out, m)  # it did move something


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("steps", [1, 3])
def test_gather_keeps_constant_maps_constant(refine, steps):
    t = transition_matrix(conservative_attention(random_attention(batch=2, n=8), refine))
    m = torch.tensor([1.0, 4.0, 0.0])[None, :, None].expand(2, 3, 8)
    assert torch.allclose(diffuse(m, t, steps, "gather"), m, atol=1e-5)


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("mode", ["scatter", "gather"])
@pytest.mark.parametrize("power", [0.0, 1.0, 3.0])
def test_block_diagonal_attention_never_crosses_blocks(refine, mode, power):
    a = block_diagonal_attention(batch=2, sizes=(3, 4))
    m = torch.zeros(2, 2, 7)
    m[:, 0, :3] = torch.rand(2, 3)  # class 0 lives in block 0
    m[:, 1, 3:] = torch.rand(2, 4)  # class 1 lives in block 1
    for steps in (1, 2, 4, 7):
        out = adcam_refine(
            m.reshape(2, 2, 1, 7), a, refine, power, steps, mode, 1.0, squaring=steps == 4
        )
        out = out.reshape(2, 2, 7)
        assert out[:, 0, 3:].abs().max() == 0
        assert out[:, 1, :3].abs().max() == 0
        if mode == "scatter":  # and the mass stays in its block
            assert torch.allclose(out.sum(-1), m.sum(-1), rtol=1e-5)


@pytest.mark.parametrize("refine", REFINES)
@pytest.mark.parametrize("mode", ["scatter", "gather"])
@pytest.mark.parametrize("steps", [0, 1, 3, 8])
@pytest.mark.parametrize("mix", [0.0, 0.3, 1.0])
def test_identity_attention_returns_the_input(refine, mode, steps, mix):
    eye = torch.eye(6).expand(2, 6, 6)
    cam = torch.rand(2, 3, 2, 3)
    for power in (0.0, 1.0, 4.0):
        out = adcam_refine(cam, eye, refine, power, steps, mode, mix, squaring="auto")
        assert torch.allclose(out, cam)


def test_repeated_squaring_equals_stepping():
    t = transition_matrix(conservative_attention(random_attention(batch=2, n=9), "product"))
    stepped = torch.eye(9).expand(2, 9, 9)
    for _ in range(8):
        stepped = stepped @ t
    assert torch.allclose(transition_power(t, 8), stepped, atol=1e-6)
    assert torch.allclose(transition_power(t, 5), torch.linalg.matrix_power(t, 5), atol=1e-6)
    assert torch.equal(transition_power(t, 0), torch.eye(9).expand(2, 9, 9))
    m = torch.rand(2, 4, 9)
    for mode in ("scatter", "gather"):
        assert torch.allclose(
            diffuse(m, t, 8, mode, squaring=True), diffuse(m, t, 8, mode, squaring=False), atol=1e-5
        )


def test_use_squaring_resolves_auto_by_cost():
    assert use_squaring(True, 2, 20, 1000) and not use_squaring(False, 64, 20, 1000)
    assert not use_squaring("auto", 2, 20, 1000)  # 2 steps of C N^2 beat one N^3 squaring
    assert not use_squaring("auto", 1, 20, 4)
    assert use_squaring("auto", 64, 20, 16)  # 6 squarings x 16 + 20 < 64 x 20


def test_steps_zero_and_mix_zero_return_the_input():
    a = random_attention(batch=2, n=6)
    cam = torch.rand(2, 3, 2, 3)
    assert torch.equal(adcam_refine(cam, a, steps=0), cam)
    assert torch.equal(adcam_refine(cam, a, steps=3, mix=0.0), cam)
    assert torch.equal(diffuse(cam.reshape(2, 3, 6), a, 0, "gather"), cam.reshape(2, 3, 6))


# ------------------------------------------------------------ refiner on model outputs


def fake_output(batch=2, classes=3, grid=(3, 5), heads=2, depth=3, dtype=torch.float32):
    n = grid[0] * grid[1]
    t = classes + n
    attentions = [torch.randn(batch, heads, t, t).softmax(-1).to(dtype) for _ in range(depth)]
    return ModelOutput(
        class_logits=torch.zeros(batch, classes),
        patch_logits=torch.zeros(batch, classes),
        patch_cam=torch.randn(batch, classes, *grid),
        attentions=attentions,
        attention_logits=None,
        class_tokens=torch.zeros(batch, classes, 4),
        patch_tokens=torch.zeros(batch, n, 4),
        grid=grid,
    )


def test_patch_attention_by_hand():
    out = fake_output(batch=2, classes=3, grid=(3, 5), depth=3)
    a = patch_attention(out.attentions, 3, layers=2)
    manual = sum(out.attentions[i][:, :, 3:, 3:].mean(1) for i in (1, 2)) / 2
    manual = manual / manual.sum(-1, keepdim=True)
    assert a.shape == (2, 15, 15) and a.dtype == torch.float32
    assert torch.allclose(a, manual, atol=1e-6)
    assert_row_stochastic(a)
    assert torch.allclose(
        patch_attention(out.attentions, 3, [0, -1]), patch_attention(out.attentions, 3, [2, 0])
    )


@pytest.mark.parametrize("mode", ["scatter", "gather"])
@pytest.mark.parametrize("refine", REFINES)
def test_refiner_shapes_non_square_grid(mode, refine):
    out = fake_output(batch=2, classes=3, grid=(3, 5))
    method = TRAINING_METHODS.get("mctformer_v2")()
    recipe = CamRecipe()
    refiner = CAM_REFINERS.get("adcam")({"mode": mode, "refine": refine, "steps": 3, "mix": 0.8})
    cam = method.cam(out, recipe)
    refined = refiner(cam, out, method, recipe)
    assert refined.shape == (2, 3, 3, 5) and refined.dtype == torch.float32
    assert torch.isfinite(refined).all()
    if mode == "scatter":
        assert torch.allclose(refined.sum((2, 3)), cam.sum((2, 3)), rtol=1e-4)
    # batch-independent: each image refined alone gives the same maps
    for b in range(2):
        single = fake_output(batch=1, classes=3, grid=(3, 5))
        single.attentions = [x[b : b + 1] for x in out.attentions]
        assert torch.allclose(
            refiner(cam[b : b + 1], single, method, recipe), refined[b : b + 1], atol=1e-5
        )


def test_refiner_accepts_bf16_attention():
    out = fake_output(dtype=torch.bfloat16)
    method = TRAINING_METHODS.get("mctformer_v2")()
    refined = CAM_REFINERS.get("adcam")()(
        torch.rand(2, 3, 3, 5, dtype=torch.bfloat16), out, method, CamRecipe()
    )
    assert refined.dtype == torch.float32 and torch.isfinite(refined).all()


def test_cam_x_attention_by_hand():
    # 2 classes, 2x2 grid, 1 head, 2 blocks; only the class->patch rows matter.
    blocks = [torch.zeros(1, 1, 6, 6), torch.zeros(1, 1, 6, 6)]
    blocks[0][0, 0, 0, 2:] = torch.tensor([0.1, 0.2, 0.1, 0.4])
    blocks[1][0, 0, 0, 2:] = torch.tensor([0.1, 0.0, 0.1, 0.0])
    # class 1 attends to no patch at all (stays zero)
    out = fake_output(batch=1, classes=2, grid=(2, 2), depth=2)
    out.attentions = blocks
    cam = torch.tensor([[[[2.0, 4.0], [6.0, 8.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    method = TRAINING_METHODS.get("mctformer_v2")()
    # all blocks: mean [.1, .1, .1, .2] / .2 = [.5, .5, .5, 1] -> [[1, 2], [3, 8]]
    refined = CAM_REFINERS.get("cam_x_attention")()(cam, out, method, CamRecipe())
    assert torch.allclose(refined[0, 0], torch.tensor([[1.0, 2.0], [3.0, 8.0]]))
    assert torch.equal(refined[0, 1], torch.zeros(2, 2))
    # last block only: [.1, 0, .1, 0] / .1 = [1, 0, 1, 0] -> [[2, 0], [6, 0]]
    last = CAM_REFINERS.get("cam_x_attention")({"layers": 1})(cam, out, method, CamRecipe())
    assert torch.allclose(last[0, 0], torch.tensor([[2.0, 0.0], [6.0, 0.0]]))
    attention = normalized_class_attention(blocks, 2, (2, 2), [0])
    assert torch.allclose(attention[0, 0], torch.tensor([[0.25, 0.5], [0.25, 1.0]]))
    assert torch.equal(couple(cam, attention), cam * attention)


def test_refiners_registered():
    adcam = CAM_REFINERS.get("adcam")
    assert adcam.label == "AD-CAM" and adcam.reconstructed
    assert set(adcam.defaults) == {"layers", "refine", "power", "steps", "mode", "mix", "squaring"}
    coupling = CAM_REFINERS.get("cam_x_attention")
    assert coupling.label == "CAM × attention" and not coupling.reconstructed
    assert (
        Variant("v", "mctformer_v2", "adcam").display_label()
        == "MCTformer-V2 + AD-CAM (reconstructed)"
    )
    assert (
        Variant("v", "mctformer_v2", "cam_x_attention").display_label()
        == "MCTformer-V2 + CAM × attention"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("layers", 0),
        ("layers", "last"),
        ("layers", []),
        ("layers", [True]),
        ("refine", "sum"),
        ("power", -1),
        ("power", "two"),
        ("power", True),
        ("power", float("nan")),
        ("steps", -1),
        ("steps", 1.5),
        ("steps", True),
        ("mode", "both"),
        ("mix", 1.5),
        ("mix", -0.1),
        ("squaring", "yes"),
    ],
)
def test_bad_adcam_params_name_the_key(key, value):
    with pytest.raises(ValueError, match=rf"method_params\.adcam\.{key}"):
        CAM_REFINERS.get("adcam")({key: value})


def test_bad_params_other_cases():
    with pytest.raises(ValueError, match=r"method_params\.adcam: unknown key"):
        CAM_REFINERS.get("adcam")({"beta": 2})
    with pytest.raises(ValueError, match=r"method_params\.cam_x_attention\.layers"):
        CAM_REFINERS.get("cam_x_attention")({"layers": "first"})
    # block indices are checked against the depth when the model is known
    out = fake_output(depth=3)
    method = TRAINING_METHODS.get("mctformer_v2")()
    with pytest.raises(ValueError, match=r"method_params\.adcam\.layers"):
        CAM_REFINERS.get("adcam")({"layers": [5]})(torch.rand(2, 3, 3, 5), out, method, CamRecipe())
    with pytest.raises(ValueError, match=r"method_params\.cam_x_attention\.layers"):
        CAM_REFINERS.get("cam_x_attention")({"layers": 4})(
            torch.rand(2, 3, 3, 5), out, method, CamRecipe()
        )
    for fn, arg in ((conservative_attention, "x"),):
        with pytest.raises(ValueError, match="refine"):
            fn(A3, arg)
    with pytest.raises(ValueError, match="mode"):
        diffuse(torch.rand(1, 1, 3), T3, 1, "both")
    with pytest.raises(ValueError, match="power"):
        transition_matrix(A3, -1.0)


# ------------------------------------------------------------ through CAM extraction


@pytest.mark.parametrize(
    ("refiner_name", "params", "fusion", "changes"),
    [
        ("adcam", {}, "fused", True),
        # a random tiny model attends almost uniformly, so gather smooths its part to a near
        # constant and, after min-max, this mix is close to the plain CAM: no "changes" check
        (
            "adcam",
            {
                "mode": "gather",
                "refine": "cosine",
                "layers": 2,
                "power": 4,
                "steps": 2,
                "mix": 0.5,
                "squaring": True,
            },
            "fused",
            False,
        ),
        ("cam_x_attention", {}, "patchcam", True),
    ],
)
def test_extraction_with_tiny_model(tiny_model_config, refiner_name, params, fusion, changes):
    # trunc-normal head: with PyTorch's default init a random tiny model's CAM spread is
    # ~1e-4, where the 1e-8 of the min-max shows in the maxima checked below
    model = build_model({**tiny_model_config, "patch_head_init": "trunc_normal"}, 3).eval()
    method = TRAINING_METHODS.get("mctformer_v2")()
    refiner = CAM_REFINERS.get(refiner_name)(params)
    images = torch.randint(0, 256, (3, 3, 24, 40), dtype=torch.uint8)  # 3x5 grid at patch 8
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    settings = CamSettings.from_dict(
        {
            "scales": [1.0, 0.75],
            "flip": True,
            "batch_size": 8,
            "class_layers": 2,
            "class_reduce": "sum",
            "fusion": fusion,
            "affinity_layers": "all",
            "affinity_reduce": "sum",
        }
    )
    cams = cams_for_batch(model, method, refiner, images, labels, settings)
    assert cams.shape == (3, 3, 24, 40)
    assert cams.min() >= 0 and cams.max() <= 1
    assert cams[labels == 0].abs().max() == 0
    on_max = cams.amax(dim=(2, 3))[labels > 0]
    assert torch.allclose(on_max, torch.ones_like(on_max), atol=1e-4)
    flipped = cams_for_batch(model, method, refiner, images.flip(-1), labels, settings)
    assert torch.allclose(flipped, cams.flip(-1), atol=1e-4)
    if changes:
        plain = cams_for_batch(model, method, CAM_REFINERS.get("none")(), images, labels, settings)
        assert not torch.allclose(plain, cams, atol=1e-3)  # the refiner changed something
