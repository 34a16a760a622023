"""The decoupled affinity test's pieces: majority regions, the oracle affinity on hand-built
maps, and CAMs bitwise the cams stage's for the unrefined and own-affinity variants."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL

from wsss.methods.affinity_transfer import (
    NO_REGION,
    OracleAffinity,
    OwnAffinity,
    majority_regions,
    oracle_affinity,
    transfer_cams,
)
from wsss.methods.base import CAM_REFINERS, TRAINING_METHODS
from wsss.methods.cam_inference import CamSettings, cams_for_batch_variants
from wsss.models.attention import propagate


def test_majority_regions_ties_to_the_lower_label_and_unlabelled_patches():
    instance = np.array(
        [
            [1, 1, 0, 0, 255, 255],
            [2, 2, 0, 2, 255, 255],
            [0, 0, 3, 3, 3, 255],
            [0, 1, 3, 3, 255, 255],
        ]
    )
    # 2 x 2 patches: (1 x2, 2 x2: tie -> 1), (0 x3, 2 -> 0), (all 255 -> none);
    # (0 x3, 1 -> 0), (3 x4 -> 3), (3, 255 x3 -> 3: 255 never counts).
    expected = np.array([[1, 0, NO_REGION], [0, 3, 3]])
    np.testing.assert_array_equal(majority_regions(instance, 2), expected)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        majority_regions(instance, 4)


def test_oracle_rows_are_uniform_over_the_own_region():
    regions = np.array([[1, 1, 0], [0, 2, NO_REGION]])
    a = oracle_affinity(regions)
    half = 1 / 2
    expected = np.array(
        [
            [half, half, 0, 0, 0, 0],
            [half, half, 0, 0, 0, 0],
            [0, 0, half, half, 0, 0],
            [0, 0, half, half, 0, 0],
            [0, 0, 0, 0, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ]
    )
    np.testing.assert_allclose(a, expected)
    objects = oracle_affinity(regions, "objects")
    np.testing.assert_allclose(objects[:2], expected[:2])
    np.testing.assert_allclose(objects[2:4], np.eye(6)[2:4])  # background rows: identity
    background = oracle_affinity(regions, "background")
    np.testing.assert_allclose(background[:2], np.eye(6)[:2])
    np.testing.assert_allclose(background[2:4], expected[2:4])
    with pytest.raises(ValueError, match="oracle rows"):
        oracle_affinity(regions, "some")


def test_the_oracle_spreads_a_part_activation_over_its_object():
    """A CAM active on one patch (the part) of a 2-patch object reaches the whole object
    with half the value, and nothing outside it."""
    regions = np.array([[1, 1], [0, 0]])
    cam = torch.tensor([[[[4.0, 0.0], [1.0, 0.0]]]])  # 1 x 1 x 2 x 2
    refined = propagate(cam, torch.from_numpy(oracle_affinity(regions))[None].float())
    np.testing.assert_allclose(refined[0, 0].numpy(), [[2.0, 2.0], [0.5, 0.5]])
    objects_only = propagate(
        cam, torch.from_numpy(oracle_affinity(regions, "objects"))[None].float()
    )
    np.testing.assert_allclose(objects_only[0, 0].numpy(), [[2.0, 2.0], [1.0, 0.0]])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    method = TRAINING_METHODS.get("mctformer_v2")({})
    model = method.build_model(copy.deepcopy(TINY_MODEL), 3).eval()
    settings = CamSettings.from_dict({"scales": [1.0, 0.75], "flip": True, "batch_size": 2})
    images = torch.randint(0, 256, (2, 3, 32, 24), dtype=torch.uint8)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    instances = torch.zeros(2, 32, 24, dtype=torch.int64)
    instances[:, 8:24, 8:16] = 1
    return model, method, settings, images, labels, instances


def test_unrefined_and_own_are_bitwise_the_cams_stage(tiny):
    model, method, settings, images, labels, instances = tiny
    sources = {"none": None, "own": OwnAffinity(), "oracle": OracleAffinity()}
    got = transfer_cams(model, method, sources, images, instances, labels, settings)
    expected = cams_for_batch_variants(
        model,
        method,
        [(CAM_REFINERS.get("none")(), settings), (CAM_REFINERS.get("affinity")(), settings)],
        images,
        labels,
    )
    assert torch.equal(got["none"], expected[0])
    assert torch.equal(got["own"], expected[1])
    # The oracle is another CAM, zero off the GT classes and in [0, 1].
    assert not torch.equal(got["oracle"], got["none"])
    assert got["oracle"][0, 1].abs().sum() == 0 and got["oracle"].max() <= 1.0


def test_diagnostics_of_the_oracle_as_used(tiny):
    model, method, settings, images, labels, instances = tiny
    diagnostics = {}
    transfer_cams(
        model,
        method,
        {"oracle": OracleAffinity()},
        images,
        instances,
        labels,
        settings,
        diagnostics,
    )
    (stats,) = diagnostics["oracle"].means()
    # One 2 x 1-patch object (rows 8:24, cols 8:16 of a 4 x 3 grid) per image: uniform over
    # it, so 1/2 on self, 1/2 on the rest, nothing on the background.
    assert stats["self_share_queries"] == 4
    assert stats["self_share"] == pytest.approx(0.5)
    assert stats["rest_of_object_share"] == pytest.approx(0.5)
    assert stats["background_to_object_ratio"] == pytest.approx(0.0)
