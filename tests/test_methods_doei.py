import math

import pytest
import torch

from wsss.data.classification import normalize
from wsss.methods import CAM_REFINERS, TRAINING_METHODS, CamRecipe
from wsss.methods.aream import AReAM
from wsss.methods.cam_inference import CamSettings, cams_for_batch, load_trained
from wsss.methods.doei import (
    DOEI,
    DOEI_DEFAULTS,
    AReAMDOEI,
    DOEIConfig,
    DOEIHook,
    amplify_suppress,
    colour_affinity,
    doei_hooks,
    doei_matrices,
    hybrid_term,
    install_doei,
    patch_class_confidence,
    row_normalize,
    token_similarity,
)
from wsss.models import build_model

NUM_CLASSES = 4


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def _labels(batch: int = 2) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])[:batch]


def _pair(config, **params):
    """(plain model, DOEI model with ``params``) sharing the same weights."""
    plain = build_model(config, NUM_CLASSES)
    wrapped = DOEI(params).build_model(config, NUM_CLASSES)
    wrapped.load_state_dict(plain.state_dict())
    return plain, wrapped


def _outputs_equal(a, b) -> bool:
    return (
        torch.equal(a.class_logits, b.class_logits)
        and torch.equal(a.patch_cam, b.patch_cam)
        and all(torch.equal(x, y) for x, y in zip(a.attentions, b.attentions, strict=True))
    )


def _block_context(batch=2, classes=3, grid=(4, 4), dim=16, heads=2, seed=0):
    """Hand-built hook arguments for one block: x_in, x_out, attention, context."""
    g = torch.Generator().manual_seed(seed)
    tokens = classes + grid[0] * grid[1]
    images = torch.randn(batch, 3, grid[0] * 8, grid[1] * 8, generator=g)
    embedded = torch.randn(batch, tokens, dim, generator=g)
    x_in = torch.randn(batch, tokens, dim, generator=g)
    x_out = torch.randn(batch, tokens, dim, generator=g)
    attention = torch.randn(batch, heads, tokens, tokens, generator=g).softmax(dim=-1)
    context = {"images": images, "embedded": embedded, "grid": grid, "num_classes": classes}
    return x_in, x_out, attention, context


# ----------------------------------------------------------------- registration, parameters


def test_registered_and_parameters():
    doei = TRAINING_METHODS.get("doei")
    combo = TRAINING_METHODS.get("aream_doei")
    assert doei is DOEI and doei.reconstructed and doei.label == "DOEI"
    assert combo is AReAMDOEI and combo.reconstructed and combo.label == "AReAM + DOEI"
    assert issubclass(combo, AReAM)
    assert DOEI.defaults == DOEI_DEFAULTS
    assert combo.defaults["doei"] == DOEI_DEFAULTS and combo.defaults["layer_index"] == 7
    # a partial nested doei block keeps the other DOEI defaults
    method = AReAMDOEI({"layer_index": 1, "doei": {"eta": 0.3}})
    assert method.params["doei"] == {**DOEI_DEFAULTS, "eta": 0.3}
    assert method.doei_config().eta == 0.3
    for bad in (
        {"nope": 1},
        {"components": ["hfa", "xyz"]},
        {"gamma": 1.5},
        {"threshold": 1.0},
        {"threshold": "median"},
        {"eta": -0.1},
        {"colour_sigma": 0},
        {"progressive": "linear"},
        {"blocks": 0},
        {"hfa_mode": "sum"},
    ):
        with pytest.raises(ValueError):
            DOEI(bad)
    with pytest.raises(ValueError, match="aream_doei.doei"):
        AReAMDOEI({"doei": {"gamma": 2.0}})
    assert DOEI({"threshold": 0.75, "blocks": [0, -1]}).doei_config().threshold == 0.75


# ----------------------------------------------------------------- exactness, weights


@pytest.mark.parametrize(
    "params",
    [{"eta": 0.0}, {"gamma": 0.0, "components": []}, {"eta": 0.0, "progressive": "none"}],
)
def test_inactive_equals_plain_model_exactly(tiny_model_config, params):
    plain, wrapped = _pair(tiny_model_config, **params)
    assert doei_hooks(wrapped) and not plain.block_hooks
    images = _images()
    for mode in ("train", "eval"):
        plain.train(mode == "train")
        wrapped.train(mode == "train")
        with torch.no_grad():
            assert _outputs_equal(
                plain(images, want_logits=True), wrapped(images, want_logits=True)
            )


def test_active_changes_outputs_but_not_earlier_blocks(tiny_model_config):
    plain, wrapped = _pair(tiny_model_config, eta=0.5, blocks=1)  # last block only
    plain.eval()
    wrapped.eval()
    images = _images()
    with torch.no_grad():
        a, b = plain(images), wrapped(images)
    # the hook acts after the last block's attention: every attention is unchanged, the tokens are not
    assert all(torch.equal(x, y) for x, y in zip(a.attentions, b.attentions, strict=True))
    assert not torch.allclose(a.class_logits, b.class_logits)
    assert not torch.allclose(a.patch_cam, b.patch_cam)


def test_no_new_parameters_and_checkpoints_interchange(tiny_model_config):
    plain = build_model(tiny_model_config, NUM_CLASSES)
    for method in (DOEI(), AReAMDOEI({"layer_index": 1})):
        wrapped = method.build_model(tiny_model_config, NUM_CLASSES)
        plain_state, wrapped_state = plain.state_dict(), wrapped.state_dict()
        assert list(plain_state) == list(wrapped_state)
        assert all(plain_state[k].shape == wrapped_state[k].shape for k in plain_state)
        assert sum(p.numel() for p in plain.parameters()) == sum(
            p.numel() for p in wrapped.parameters()
        )
    # one DOEI training step, then load into a plain model (and back)
    method = DOEI({"eta": 0.5})
    wrapped = method.build_model(tiny_model_config, NUM_CLASSES).train()
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    loss, _ = method.loss(wrapped, _images(), _labels(), epoch=0)
    loss.backward()
    optimizer.step()
    plain.load_state_dict(wrapped.state_dict())  # strict
    fresh = method.build_model(tiny_model_config, NUM_CLASSES)
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh.class_tokens, wrapped.class_tokens)


@pytest.mark.parametrize("threshold", ["mean", 0.75])
@pytest.mark.parametrize("mode", ["product", "hadamard"])
def test_matrices_are_row_stochastic(threshold, mode):
    _, _, attention, context = _block_context()
    config = DOEIConfig.from_dict({"threshold": threshold, "hfa_mode": mode, "colour_sigma": 1.0})
    hook = DOEIHook(config, depth=1)
    matrices = hook.matrices(0, attention, context)
    classes, tokens = 3, attention.shape[-1]
    shapes = {"H": (tokens, tokens), "W_c": (classes, classes), "W_p": (tokens - classes,) * 2}
    assert set(matrices) == set(shapes)
    for name, matrix in matrices.items():
        assert matrix.shape[1:] == shapes[name]
        assert (matrix >= 0).all(), name
        assert torch.allclose(matrix.sum(dim=-1), torch.ones(()), atol=1e-5), name
    confidence = patch_class_confidence(matrices["H"], classes, 0.5, threshold)
    assert confidence.shape == (2, tokens - classes, classes)
    assert (
        torch.allclose(confidence.sum(dim=-1), torch.ones(()), atol=1e-5)
        and (confidence >= 0).all()
    )
    # the hybrid term is in [0, 1]; H mixes it with Ā
    hybrid = hybrid_term(
        token_similarity(context["embedded"]),
        colour_affinity(context["images"], context["grid"], classes, 1.0),
        classes,
        mode,
    )
    assert hybrid.min() >= 0 and hybrid.max() <= 1 + 1e-6
    assert not torch.allclose(matrices["H"], attention.mean(dim=1))


def test_amplify_suppress_by_hand():
    row = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mean 3: entries >= 3 amplified
    assert torch.equal(amplify_suppress(row, 0.5), torch.tensor([[0.5, 1.0, 4.5, 9.0]]))
    # 0.75-quantile of [1, 2, 3, 6] = 3.75: only 6 amplified
    assert torch.equal(amplify_suppress(row, 0.5, 0.75), torch.tensor([[0.5, 1.0, 1.5, 9.0]]))
    assert torch.equal(amplify_suppress(row, 0.0), row)
    # per row along dim: columns here
    assert torch.equal(
        amplify_suppress(row.T, 0.25, dim=0), torch.tensor([[0.75, 1.5, 3.75, 7.5]]).T
    )
    normalised = row_normalize(amplify_suppress(row, 0.5))
    assert torch.allclose(normalised, torch.tensor([[0.5, 1.0, 4.5, 9.0]]) / 15.0)


def test_colour_term_groups_two_colour_image():
    # 32 x 32 image, 8-px patches -> 4 x 4 grid; left half red, right half blue
    rgb = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    rgb[:, 0, :, :16] = 255
    rgb[:, 2, :, 16:] = 255
    grid, classes, sigma = (4, 4), 2, 0.5
    colour = colour_affinity(normalize(rgb), grid, classes, sigma)
    red = torch.tensor([j % 4 < 2 for j in range(16)])
    patches = colour[0, classes:, classes:]
    same = red[:, None] == red[None, :]
    assert torch.allclose(patches[same], torch.ones(()), atol=1e-4)
    assert torch.allclose(patches[~same], torch.tensor(math.exp(-2.0 / sigma**2)), rtol=1e-3)
    assert patches[~same].max() < 1e-3
    assert torch.equal(colour[0, :classes], torch.ones(classes, 18))
    assert torch.equal(colour[0, :, :classes], torch.ones(18, classes))

    # Class 0's embedding matches one red patch, class 1's one blue patch, all other
    # patches share a third direction; attention uniform. HFA's colour term spreads
    # each class's evidence over its colour region, so PPDO's W_p mixes within colours.
    embedded = torch.zeros(1, classes + 16, 3)
    embedded[0, 0, 0] = embedded[0, 1, 1] = 1.0
    embedded[0, classes:, 2] = 1.0
    embedded[0, classes + 0] = torch.tensor([1.0, 0.0, 0.0])  # patch (0, 0), red
    embedded[0, classes + 3] = torch.tensor([0.0, 1.0, 0.0])  # patch (0, 3), blue
    attention = torch.full((1, 1, 18, 18), 1.0 / 18)
    context = {"images": normalize(rgb), "embedded": embedded, "grid": grid, "num_classes": classes}

    def gap(sigma):
        hook = DOEIHook({"colour_sigma": sigma, "progressive": "none"}, depth=1)
        w = hook.matrices(0, attention, dict(context))["W_p"][0]
        within = w[same].mean()
        across = w[~same].mean()
        assert torch.allclose(w.sum(dim=-1), torch.ones(()), atol=1e-5)
        return within, across, w

    within, across, w = gap(sigma)
    assert within > 1.2 * across
    for i in range(16):  # every patch keeps more mass in its own colour group
        assert w[i, red == red[i]].sum() > w[i, red != red[i]].sum()
    # no colour information (huge sigma): the shared-direction patches mix evenly
    _, _, flat = gap(1e4)
    plain_patches = [i for i in range(16) if i not in (0, 3)]
    sub = flat[plain_patches][:, plain_patches]
    assert torch.allclose(sub, sub[0:1].expand_as(sub), atol=1e-6)


# ----------------------------------------------------------------- ablation switches, schedule


def test_ablation_switches():
    x_in, x_out, attention, context = _block_context()
    classes = context["num_classes"]

    def run(components, **extra):
        hook = DOEIHook({"components": components, "eta": 0.5, **extra}, depth=1)
        return hook(0, x_in, x_out, attention, dict(context)), hook.matrices(
            0, attention, dict(context)
        )

    mean_attention = attention.mean(dim=1)
    # hfa switches only H: without it H is Ā exactly
    _, without = run(["cpdo", "ppdo"])
    _, with_hfa = run(["hfa", "cpdo", "ppdo"])
    assert torch.equal(without["H"], mean_attention)
    assert not torch.allclose(with_hfa["H"], mean_attention)
    # HFA alone (no decoupling): the update is the undecoupled hybrid mixing H X
    out, m = run(["hfa"])
    assert set(m) == {"H"}
    assert torch.allclose(out, x_out + 0.5 * m["H"] @ x_in, atol=1e-6)
    # CPDO alone changes only class tokens; PPDO alone only patch tokens
    out, _ = run(["cpdo"])
    assert torch.equal(out[:, classes:], x_out[:, classes:]) and not torch.allclose(
        out[:, :classes], x_out[:, :classes]
    )
    out, _ = run(["ppdo"])
    assert torch.equal(out[:, :classes], x_out[:, :classes]) and not torch.allclose(
        out[:, classes:], x_out[:, classes:]
    )
    # both: X_out = Block(X) + η [W_c X_cls; W_p X_pat]
    out, m = run(["hfa", "cpdo", "ppdo"])
    expected = x_out + 0.5 * torch.cat(
        [m["W_c"] @ x_in[:, :classes], m["W_p"] @ x_in[:, classes:]], dim=1
    )
    assert torch.allclose(out, expected, atol=1e-6)
    # source "output": the block output is re-embedded instead
    out, m = run(["cpdo", "ppdo"], source="output")
    expected = x_out + 0.5 * torch.cat(
        [m["W_c"] @ x_out[:, :classes], m["W_p"] @ x_out[:, classes:]], dim=1
    )
    assert torch.allclose(out, expected, atol=1e-6)
    # nothing selected: the block output itself
    assert run([])[0] is x_out
    # functional form agrees with the hook
    config = DOEIConfig.from_dict({"progressive": "none"})
    hook = DOEIHook(config, depth=1)
    direct = doei_matrices(mean_attention, hook._hybrid(dict(context)), classes, config)
    via_hook = hook.matrices(0, attention, dict(context))
    assert all(torch.equal(direct[k], via_hook[k]) for k in direct)


def _flat(pairs):
    return [v for pair in pairs for v in pair]


def test_progressive_schedules():
    hook = DOEIHook({"gamma": 0.6, "eta": 0.3, "blocks": [1, 3, 5]}, depth=6)
    assert hook.blocks == [1, 3, 5]
    assert _flat(hook.strength(b) for b in hook.blocks) == pytest.approx(
        [0.2, 0.3, 0.4, 0.3, 0.6, 0.3]
    )
    hook = DOEIHook({"gamma": 0.6, "eta": 0.3, "progressive_on": "eta", "blocks": 2}, depth=4)
    assert hook.blocks == [2, 3]
    assert _flat(hook.strength(b) for b in hook.blocks) == pytest.approx([0.6, 0.15, 0.6, 0.3])
    hook = DOEIHook({"gamma": 0.5, "progressive": "epoch", "ramp_epochs": 4}, depth=2)
    assert hook.strength(0) == pytest.approx((0.5, 0.1))  # no epoch set (CAM time): final
    hook.epoch = 0
    assert hook.strength(1) == pytest.approx((0.125, 0.1))
    hook.epoch = 9
    assert hook.strength(0) == pytest.approx((0.5, 0.1))
    hook.epoch = -1
    assert hook.strength(0) == pytest.approx((0.5, 0.1))


# ----------------------------------------------------------------- CAMs, losses


def test_hook_acts_during_cam_extraction(tiny_model_config, tmp_path):
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    labels = _labels()
    settings = CamSettings(scales=[1.0], flip=True, batch_size=2, recipe=CamRecipe())
    refiner = CAM_REFINERS.get("none")()
    plain, wrapped = _pair(tiny_model_config, eta=0.5)
    base = TRAINING_METHODS.get("mctformer_v2")()
    plain_cams = cams_for_batch(plain.eval(), base, refiner, images, labels, settings)
    doei_cams = cams_for_batch(
        wrapped.eval(), DOEI({"eta": 0.5}), refiner, images, labels, settings
    )
    assert not torch.allclose(plain_cams, doei_cams)
    silent = DOEI({"eta": 0.0}).build_model(tiny_model_config, NUM_CLASSES)
    silent.load_state_dict(plain.state_dict())
    assert torch.equal(
        plain_cams,
        cams_for_batch(silent.eval(), DOEI({"eta": 0.0}), refiner, images, labels, settings),
    )
    # load_trained rebuilds the model through the method, so the hook comes back
    path = tmp_path / "model.pt"
    state = {
        "config": {"method": {"name": "doei", "params": {"eta": 0.5}}, "model": tiny_model_config},
        "class_names": [str(i) for i in range(NUM_CLASSES)],
        "model": wrapped.state_dict(),
    }
    torch.save(state, path)
    model, method, _ = load_trained(path, torch.device("cpu"))
    assert isinstance(method, DOEI) and len(doei_hooks(model)) == 1
    assert torch.equal(doei_cams, cams_for_batch(model, method, refiner, images, labels, settings))


@pytest.mark.parametrize(
    "name, params",
    [
        ("doei", {"progressive": "epoch", "ramp_epochs": 3}),
        ("doei", {"threshold": 0.5, "detach": False, "hfa_mode": "hadamard"}),
        ("aream_doei", {"layer_index": 1, "cls_epochs": 0, "doei": {"eta": 0.2}}),
    ],
)
def test_loss_finite_and_backpropagates(tiny_model_config, name, params):
    method = TRAINING_METHODS.get(name)(params)
    model = method.build_model(tiny_model_config, NUM_CLASSES).train()
    method.on_train_start(model, None, torch.device("cpu"))
    loss, parts = method.loss(model, _images(), _labels(), epoch=1)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in parts.values())
    if name == "aream_doei":
        assert parts["loss_aff"] > 0
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert doei_hooks(model)[0].epoch == 1


def test_install_on_any_model(tiny_model_config):
    model = build_model(tiny_model_config, NUM_CLASSES)
    hook = install_doei(model, {"blocks": [0]})
    assert model.block_hooks == [hook] and hook.blocks == [0]
    with pytest.raises(ValueError):
        install_doei(model, {"blocks": [7]})  # the tiny model has 3 blocks
