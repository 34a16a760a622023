"""Dense CRF (wsss.ops.crf). pydensecrf2 is in the "test" extra, so these run in CI."""

import importlib
import sys

import numpy as np
import pytest

from wsss.ops.crf import (
    CrfSettings,
    CrfUnavailableError,
    crf_labels_from_cams,
    dense_crf,
)

HEIGHT, WIDTH = 32, 48
EDGE = WIDTH // 2  # columns < EDGE are red, the rest blue
SETTINGS = [
    pytest.param(CrfSettings.pseudo_label(), id="pseudo_label"),
    pytest.param(CrfSettings.segmentation_inference(), id="segmentation_inference"),
]


def _red_blue_image(seed: int = 0) -> np.ndarray:
    """Left half red, right half blue, with a little per-pixel noise."""
    rng = np.random.default_rng(seed)
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.int16)
    image[:, :EDGE] = (200, 30, 30)
    image[:, EDGE:] = (30, 60, 220)
    image += rng.integers(-8, 9, size=image.shape).astype(np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _noisy_right_half_cam(shift: int = 6, salt: float = 0.1, seed: int = 1) -> np.ndarray:
    """A CAM of the right (blue) half whose edge sits ``shift`` px too far left, plus salt noise."""
    rng = np.random.default_rng(seed)
    cam = np.full((HEIGHT, WIDTH), 0.1, dtype=np.float32)
    cam[:, EDGE - shift :] = 0.8
    flipped = rng.random(cam.shape) < salt
    cam[flipped] = 1.0 - cam[flipped]
    return cam


def _truth() -> np.ndarray:
    truth = np.zeros((HEIGHT, WIDTH), dtype=bool)
    truth[:, EDGE:] = True
    return truth


def _assert_boundary_at_edge(is_object: np.ndarray, tolerance: int = 1) -> None:
    """Every row is background then object, switching within ``tolerance`` px of the colour edge."""
    for row in is_object:
        switch = int(np.argmax(row))
        assert row[switch:].all() and not row[:switch].any(), "row is not one clean split"
        assert abs(switch - EDGE) <= tolerance, f"boundary at column {switch}, edge at {EDGE}"


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize(
    "rule", [{"bg_threshold": 0.5}, {"bg_threshold": None, "bg_power": 1.0}], ids=["const", "pow"]
)
def test_noisy_cam_snaps_to_colour_edge(settings, rule):
    image, cam, truth = _red_blue_image(), _noisy_right_half_cam(), _truth()
    before = cam > 0.5  # what the constant threshold 0.5 gives without a CRF
    labels = crf_labels_from_cams(image, cam[None], np.array([7]), settings=settings, **rule)
    assert set(np.unique(labels)) <= {0, 7}
    accuracy_before = (before == truth).mean()
    accuracy_after = ((labels == 7) == truth).mean()
    assert accuracy_before < 0.85  # 6 of 24 columns wrong plus 10% salt
    assert accuracy_after > 0.97
    _assert_boundary_at_edge(labels == 7)


def test_two_object_classes_split_at_colour_edge():
    """Two foreground CAMs overlapping by 8 columns: the CRF assigns each half to its own class."""
    image = _red_blue_image(seed=3)
    left = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
    left[:, : EDGE + 4] = 0.7
    right = np.zeros_like(left)
    right[:, EDGE - 4 :] = 0.7
    labels = crf_labels_from_cams(image, np.stack([left, right]), np.array([2, 5]), 0.05)
    assert set(np.unique(labels)) == {2, 5}
    _assert_boundary_at_edge(labels == 5)


@pytest.mark.parametrize("settings", SETTINGS)
def test_dense_crf_snaps_noisy_probabilities(settings):
    image, truth = _red_blue_image(), _truth()
    cam = _noisy_right_half_cam()
    probs = np.stack([1.0 - cam, cam])
    posterior = dense_crf(image, probs, settings)
    assert posterior.shape == probs.shape and posterior.dtype == np.float32
    np.testing.assert_allclose(posterior.sum(axis=0), 1.0, atol=1e-4)
    assert (posterior.argmax(axis=0) == truth).mean() > 0.97
    _assert_boundary_at_edge(posterior.argmax(axis=0) == 1)


@pytest.mark.parametrize("settings", SETTINGS)
def test_uniform_image_keeps_confident_mask(settings):
    image = np.full((HEIGHT, WIDTH, 3), 120, dtype=np.uint8)
    square = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    square[8:24, 10:30] = 1
    one_hot = (square[None] == np.arange(2)[:, None, None]).astype(np.float32)
    assert np.array_equal(dense_crf(image, one_hot, settings).argmax(axis=0), square)
    # the power rule makes the background as confident as the CAM ((1 - 1)^1 = 0 inside);
    # a constant bg of 0.5 against a CAM of 1 would be only 2:1 inside the square
    labels = crf_labels_from_cams(image, one_hot[1:], np.array([3]), None, settings, bg_power=1.0)
    assert np.array_equal(labels, square * 3)
    # a split into halves holds at 99% confidence too
    half = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    half[:, EDGE:] = 1
    probs = np.where(half[None] == np.arange(2)[:, None, None], 0.99, 0.01).astype(np.float32)
    assert np.array_equal(dense_crf(image, probs, settings).argmax(axis=0), half)


def test_normalising_scores_matches_the_official_unnormalised_unary():
    """The official code feeds unnormalised [bg, cams] scores to unary_from_softmax."""
    import pydensecrf.densecrf as densecrf
    from pydensecrf.utils import unary_from_softmax

    rng = np.random.default_rng(4)
    image = _red_blue_image()
    cams = rng.random((2, HEIGHT, WIDTH), dtype=np.float32)
    settings = CrfSettings()
    scores = np.concatenate([np.full((1, HEIGHT, WIDTH), 0.3, np.float32), cams])
    crf = densecrf.DenseCRF2D(WIDTH, HEIGHT, 3)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(scores)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=image.copy(), compat=10)
    reference = np.array(crf.inference(10)).reshape(3, HEIGHT, WIDTH)

    clipped = np.clip(scores, 1e-5, 1.0)
    ours = dense_crf(image, clipped / clipped.sum(axis=0), settings)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    labels = crf_labels_from_cams(image, cams, np.array([4, 9]), 0.3, settings)
    assert np.array_equal(labels, np.array([0, 4, 9], np.uint8)[reference.argmax(axis=0)])


def test_output_shapes_and_dtypes():
    image = _red_blue_image()
    cams = np.random.default_rng(0).random((3, HEIGHT, WIDTH), dtype=np.float32)
    labels = crf_labels_from_cams(image, cams, np.array([1, 4, 20], dtype=np.int16), 0.4)
    assert labels.shape == (HEIGHT, WIDTH) and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 4, 20}
    # no ground-truth class: everything is background
    empty = crf_labels_from_cams(
        image, np.zeros((0, HEIGHT, WIDTH), np.float32), np.array([], int), 0.4
    )
    assert empty.shape == (HEIGHT, WIDTH) and empty.dtype == np.uint8 and not empty.any()
    # float64 probabilities are accepted, the posterior is float32
    probs = np.full((2, HEIGHT, WIDTH), 0.5)
    assert dense_crf(image, probs).dtype == np.float32
    # a read-only image (np.asarray of a PIL image) works and is not modified
    image.flags.writeable = False
    assert np.array_equal(crf_labels_from_cams(image, cams, np.array([1, 4, 20]), 0.4), labels)


def test_invalid_inputs_raise_clear_errors():
    image = _red_blue_image()
    cams = np.full((1, HEIGHT, WIDTH), 0.5, dtype=np.float32)
    classes = np.array([1])
    cases = [
        ((image[:, ::2], cams, classes, 0.5), "C-contiguous"),
        ((image.astype(np.float32), cams, classes, 0.5), "uint8"),
        ((image[..., :2].copy(), cams, classes, 0.5), "H x W x 3"),
        ((image, cams[:, :-1], classes, 0.5), "spatially"),
        ((image, (cams * 255).astype(np.uint8), classes, 0.5), "dequantised"),
        ((image, cams * 3, classes, 0.5), r"\[0, 1\]"),
        ((image, cams, np.array([1, 2]), 0.5), "2 classes for 1 CAMs"),
        ((image, cams, np.array([0]), 0.5), "1..255"),
        ((image, cams, np.array([1.0]), 0.5), "integer"),
        ((image, cams, classes, 1.5), "bg_threshold"),
        ((image, cams, classes, None), "exactly one background rule"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            crf_labels_from_cams(*args)
    with pytest.raises(ValueError, match="exactly one background rule"):
        crf_labels_from_cams(image, cams, classes, 0.5, bg_power=2.0)
    with pytest.raises(ValueError, match="sum to 1"):
        dense_crf(image, np.full((2, HEIGHT, WIDTH), 0.6, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        dense_crf(image, np.full((1, HEIGHT, WIDTH), np.nan, np.float32))


def test_missing_package_raises_install_hint(monkeypatch):
    # None in sys.modules makes "import pydensecrf..." raise ImportError, as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    monkeypatch.delitem(sys.modules, "wsss.ops.crf")
    crf = importlib.import_module("wsss.ops.crf")  # importing the module needs no pydensecrf
    image = _red_blue_image()
    probs = np.full((2, HEIGHT, WIDTH), 0.5, np.float32)
    with pytest.raises(
        crf.CrfUnavailableError, match=r'pip install -e "\.\[crf\]" in the wsss checkout'
    ):
        crf.dense_crf(image, probs)
    # also when no CRF would be needed (no class), so a run fails on its first image
    with pytest.raises(ImportError, match="pydensecrf2"):
        crf.crf_labels_from_cams(image, np.zeros((0, HEIGHT, WIDTH), np.float32), [], 0.5)
    with pytest.raises(ImportError, match="pydensecrf2"):
        crf.require_pydensecrf()
    assert issubclass(CrfUnavailableError, ImportError)


def test_settings_defaults_and_literature_presets():
    assert CrfSettings() == CrfSettings.pseudo_label()
    assert CrfSettings().to_dict() == {
        "iterations": 10,
        "gaussian_sxy": 3,
        "gaussian_compat": 3,
        "bilateral_sxy": 80,
        "bilateral_srgb": 13,
        "bilateral_compat": 10,
    }
    seg = CrfSettings.segmentation_inference()
    assert (seg.gaussian_sxy, seg.gaussian_compat) == (4, 3)
    assert (seg.bilateral_sxy, seg.bilateral_srgb, seg.bilateral_compat) == (83, 5, 3)
    assert seg.iterations == 10
    half = CrfSettings().scale_spatial(0.5)
    assert (half.gaussian_sxy, half.bilateral_sxy, half.bilateral_srgb) == (1.5, 40, 13)


def test_from_dict_rejects_unknown_keys_and_bad_values():
    assert CrfSettings.from_dict({}) == CrfSettings()
    assert CrfSettings.from_dict(None) == CrfSettings()
    assert CrfSettings.from_dict({"iterations": 5, "bilateral_srgb": 5}) == CrfSettings(
        iterations=5, bilateral_srgb=5
    )
    assert CrfSettings.from_dict(CrfSettings.segmentation_inference().to_dict()) == (
        CrfSettings.segmentation_inference()
    )
    with pytest.raises(
        ValueError, match=r"pseudo_labels\.crf: unknown CRF setting\(s\) 'srgb', 'sxy'"
    ):
        CrfSettings.from_dict({"sxy": 3, "srgb": 5, "iterations": 5}, where="pseudo_labels.crf")
    with pytest.raises(ValueError, match="iterations must be an integer"):
        CrfSettings.from_dict({"iterations": 2.5})
    with pytest.raises(ValueError, match="bilateral_sxy must be a positive"):
        CrfSettings.from_dict({"bilateral_sxy": 0})
    with pytest.raises(ValueError, match="expected a mapping"):
        CrfSettings.from_dict([("iterations", 3)])
