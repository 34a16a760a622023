"""Attention diagnostics on hand-built attention and instance maps with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from wsss.evaluation.attention_diagnostics import (
    MIXED,
    AttentionDiagnostics,
    class_token_sums,
    locality_sums,
    patch_instance_labels,
    summed_affinity,
)

# A 2 x 4 patch grid (N = 8): object 1 on two patches, object 2 on one, four
# background patches and one mixed patch.
LABELS = np.array([[1, 1, 0, 0], [2, 0, 0, MIXED]])
N = LABELS.size


def _means(attention, labels=LABELS):
    return locality_sums(attention, labels).means()


def _uniform_over(flat_labels: np.ndarray, members) -> np.ndarray:
    row = np.isin(flat_labels, members).astype(float)
    return row / row.sum()


def _own_region_attention() -> np.ndarray:
    """Each object query spreads over its own object, each background query over the
    background, the mixed query over everything: the ideal grouping attention."""
    flat = LABELS.reshape(-1)
    rows = []
    for label in flat:
        if label == MIXED:
            rows.append(np.full(N, 1.0 / N))
        else:
            rows.append(_uniform_over(flat, [label]))
    return np.array(rows)


# --------------------------------------------------------------------------- patch labels


def test_patch_labels_majority_tie_and_mixed():
    instance = np.array(
        [
            [1, 1, 0, 1, 2, 255],
            [0, 0, 0, 0, 255, 255],
            [2, 2, 0, 255, 3, 3],
            [2, 2, 255, 255, 3, 0],
        ]
    )
    # Patches of 2 x 2: (1 on 2 of 4: tie -> object), (1 on 1, bg 3 -> bg),
    # (2, 255 x 3 -> mixed); (2 on 4 -> 2), (255 x 3, bg 1 -> mixed), (3 on 3 -> 3).
    expected = np.array([[1, 0, MIXED], [2, MIXED, 3]])
    np.testing.assert_array_equal(patch_instance_labels(instance, 2), expected)


def test_patch_labels_min_fraction():
    instance = np.array([[1, 1], [1, 0]])
    assert patch_instance_labels(instance, 2, min_fraction=0.75)[0, 0] == 1
    assert patch_instance_labels(instance, 2, min_fraction=0.8)[0, 0] == MIXED


@pytest.mark.parametrize(
    ("instance", "patch", "fraction", "message"),
    [
        (np.zeros((4, 6)), 4, 0.5, "multiple of the patch size"),
        (np.zeros((2, 4, 4)), 2, 0.5, "2-D"),
        (np.zeros((4, 4)), 2, 0.0, "min_fraction"),
    ],
)
def test_patch_labels_errors(instance, patch, fraction, message):
    with pytest.raises(ValueError, match=message):
        patch_instance_labels(instance, patch, min_fraction=fraction)


# --------------------------------------------------------------------------- statistics


def test_uniform_attention_gives_one_everywhere_and_entropy_log_n():
    stats = _means(np.full((2, 3, N, N), 0.25))  # 2 blocks, 3 heads, rows not normalised
    assert len(stats) == 2
    for block in stats:
        for name in (
            "own_object_lift",
            "other_object_lift",
            "background_to_object_ratio",
            "neighbourhood_lift",
            "entropy_normalised",
        ):
            assert block[name] == pytest.approx(1.0), name
        assert block["entropy"] == pytest.approx(math.log(N))
        assert block["own_object_lift_queries"] == 3
        assert block["other_object_lift_queries"] == 3
        assert block["background_to_object_ratio_queries"] == 4
        assert block["entropy_queries"] == N


def test_attention_on_own_region_only():
    (stats,) = _means(_own_region_attention()[None])
    # Object 1 queries: mass 1 on 2 of 8 patches -> lift 4 (twice); object 2: 1 / (1/8) = 8.
    assert stats["own_object_lift"] == pytest.approx((4 + 4 + 8) / 3)
    assert stats["other_object_lift"] == pytest.approx(0.0)
    assert stats["background_to_object_ratio"] == pytest.approx(0.0)
    # Row entropies: object 1 rows log 2 (x2), object 2 row 0, background rows log 4 (x4),
    # the mixed row log 8.
    expected = (2 * math.log(2) + 4 * math.log(4) + math.log(8)) / N
    assert stats["entropy"] == pytest.approx(expected)
    assert stats["entropy_normalised"] == pytest.approx(expected / math.log(N))


def test_salience_attention_background_looks_at_objects():
    """Every query puts all its mass on the objects, spread uniformly over their 3 patches."""
    flat = LABELS.reshape(-1)
    attention = np.tile(_uniform_over(flat, [1, 2]), (N, 1))
    (stats,) = _means(attention[None])
    # Background: mass 1 on 3/8 of the patches -> 8/3. Object 1 query: own 2/3 on 2/8 -> 8/3,
    # other 1/3 on 1/8 -> 8/3; object 2 query: own 1/3 on 1/8 -> 8/3, other 2/3 on 2/8 -> 8/3.
    assert stats["background_to_object_ratio"] == pytest.approx(8 / 3)
    assert stats["own_object_lift"] == pytest.approx(8 / 3)
    assert stats["other_object_lift"] == pytest.approx(8 / 3)
    assert stats["entropy"] == pytest.approx(math.log(3))


def test_neighbourhood_lift_of_self_attention():
    # 1 x 3 grid, each patch attends only to itself: neighbourhoods of 2, 3, 2 patches
    # -> lifts 3/2, 1, 3/2; entropy 0.
    (stats,) = _means(np.eye(3)[None], np.array([[0, 0, 0]]))
    assert stats["neighbourhood_lift"] == pytest.approx(4 / 3)
    assert stats["entropy"] == pytest.approx(0.0)
    # No object on the grid: the object statistics have no queries and are NaN.
    assert math.isnan(stats["own_object_lift"]) and stats["own_object_lift_queries"] == 0
    assert math.isnan(stats["background_to_object_ratio"])


def test_single_object_has_no_other_object_queries():
    labels = np.array([[1, 0], [0, 0]])
    (stats,) = _means(np.full((1, 4, 4), 1.0), labels)
    assert stats["other_object_lift_queries"] == 0
    assert math.isnan(stats["other_object_lift"])
    assert stats["own_object_lift"] == pytest.approx(1.0)


def test_torch_input_matches_numpy():
    rng = np.random.default_rng(0)
    attention = rng.random((3, 2, N, N))
    a = _means(attention)
    b = _means(torch.from_numpy(attention).float())
    for x, y in zip(a, b, strict=True):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-5, nan_ok=True)


@pytest.mark.parametrize(
    ("attention", "message"),
    [
        (np.ones((1, 4, 4)), "does not match"),
        (-np.ones((1, N, N)), "non-negative"),
        (np.full((1, N, N), np.nan), "finite"),
        (np.zeros((1, N, N)), "no mass"),
        (np.ones((N, N)), r"\[blocks, N, N\]"),
    ],
)
def test_locality_errors(attention, message):
    with pytest.raises(ValueError, match=message):
        locality_sums(attention, LABELS)


# --------------------------------------------------------------------------- affinity, pooling


def test_summed_affinity_matches_the_refinement():
    from wsss.models.attention import patch_affinity

    torch.manual_seed(0)
    classes, patches, blocks, heads = 3, 4, 2, 2
    tokens = classes + patches
    attentions = [torch.rand(1, heads, tokens, tokens).softmax(-1) for _ in range(blocks)]
    expected = patch_affinity(attentions, classes, layers="all", reduce="sum")[0]
    stack = torch.stack([a[0, :, classes:, classes:] for a in attentions])  # L x H x N x N
    np.testing.assert_allclose(summed_affinity(stack), expected.numpy(), rtol=1e-6)
    np.testing.assert_allclose(
        summed_affinity(stack, blocks=[1]), stack[1].mean(0).numpy(), rtol=1e-6
    )


def test_pooling_weights_every_query_once():
    diagnostics = AttentionDiagnostics()
    own = _own_region_attention()
    diagnostics.add(np.stack([own, np.full((N, N), 1.0 / N)]), LABELS)  # ideal, uniform
    one_object = np.array([[1, 1], [0, 0]])
    diagnostics.add(np.full((2, 4, 4), 1.0), one_object)  # uniform: lifts 1 (2 object queries)
    result = diagnostics.result()
    assert result["images"] == 2
    block0, block1 = result["blocks"]
    # Own lift, block 0: (4 + 4 + 8 + 1 + 1) / 5 queries.
    assert block0["own_object_lift"] == pytest.approx(18 / 5)
    assert block0["own_object_lift_queries"] == 5
    # Other-object lift only from the first image (the second has one object).
    assert block0["other_object_lift_queries"] == 3
    assert block1["own_object_lift"] == pytest.approx(1.0)
    # The affinity is the raw sum of both blocks: rows (own + uniform) renormalised.
    # Object 2's row: (1 + 1/8) / 2 on itself -> lift 9/16 * 8 = 4.5.
    affinity = result["affinity"]
    assert affinity["own_object_lift_queries"] == 5
    assert affinity["own_object_lift"] == pytest.approx((2.5 + 2.5 + 4.5 + 1 + 1) / 5)


def test_pooling_rejects_a_different_depth_and_empty_result():
    diagnostics = AttentionDiagnostics()
    with pytest.raises(ValueError, match="no image"):
        diagnostics.result()
    diagnostics.add(np.ones((2, N, N)), LABELS)
    with pytest.raises(ValueError, match="blocks"):
        diagnostics.add(np.ones((3, N, N)), LABELS)


# --------------------------------------------------------------------------- shares, class tokens


def test_shares_of_identity_attention_are_all_self():
    """Self-attention: own-object lift is high, yet nothing reaches the rest of the object."""
    (stats,) = _means(np.eye(N)[None])
    # Object 1's two patches are the only queries (object 2 has one patch: no rest).
    assert stats["self_share_queries"] == 2
    assert stats["self_share"] == pytest.approx(1.0)
    assert stats["rest_of_object_share"] == pytest.approx(0.0)
    assert stats["other_objects_share"] == pytest.approx(0.0)
    assert stats["background_share"] == pytest.approx(0.0)
    # ... while the own-object lift counts self: 1 / (2/8) = 4 for object 1, 8 for object 2.
    assert stats["own_object_lift"] == pytest.approx((4 + 4 + 8) / 3)


def test_shares_of_the_oracle_grouping_and_of_a_hand_built_row():
    (stats,) = _means(_own_region_attention()[None])
    # Uniform over its own 2-patch object: 1/2 on self, 1/2 on the rest.
    assert stats["self_share"] == pytest.approx(0.5)
    assert stats["rest_of_object_share"] == pytest.approx(0.5)
    assert stats["background_share"] == pytest.approx(0.0)
    # Patch order: 0, 1 object 1; 2, 3 bg; 4 object 2; 5, 6 bg; 7 mixed. Query 0 puts
    # 0.4 on itself, 0.1 on patch 1, 0.2 on object 2, 0.2 on background (0.1 + 0.1) and
    # 0.1 on the mixed patch; query 1 is uniform: 1/8 on itself, on patch 0 and on
    # object 2, 4/8 on the four background patches.
    attention = np.full((N, N), 1.0 / N)
    attention[0] = [0.4, 0.1, 0.1, 0.1, 0.2, 0.0, 0.0, 0.1]
    (stats,) = _means(attention[None])
    assert stats["self_share"] == pytest.approx((0.4 + 1 / 8) / 2)
    assert stats["rest_of_object_share"] == pytest.approx((0.1 + 1 / 8) / 2)
    assert stats["other_objects_share"] == pytest.approx((0.2 + 1 / 8) / 2)
    assert stats["background_share"] == pytest.approx((0.2 + 4 / 8) / 2)


def test_class_token_lift_on_hand_built_rows():
    # Class grid: class 2 on patches 0, 1; class 5 on patch 4; background elsewhere, 7 mixed.
    classes = np.array([[2, 2, 0, 0], [5, 0, 0, MIXED]])
    attention = np.full((1, 6, N), 1.0)  # 1 block, 6 class tokens, uniform (not normalised)
    attention[0, 1] = [3, 1, 0, 0, 0, 0, 0, 0]  # token of class 2: all on its patches
    attention[0, 4] = [0, 0, 1, 1, 1, 1, 0, 1]  # token of class 5: 1/5 on its patch
    sums = class_token_sums(attention, classes)
    (stats,) = sums.means()
    # Class 2: 1 / (2/8) = 4; class 5: (1/5) / (1/8) = 1.6; the other tokens' rows are unused.
    assert stats["class_token_lift"] == pytest.approx((4 + 1.6) / 2)
    assert stats["class_token_lift_queries"] == 2
    # Uniform rows give 1.
    (uniform,) = class_token_sums(np.ones((1, 2, 6, N)), classes).means()
    assert uniform["class_token_lift"] == pytest.approx(1.0)


def test_class_token_errors():
    classes = np.array([[2, 2, 0, 0], [5, 0, 0, MIXED]])
    with pytest.raises(ValueError, match="only 3 class tokens"):
        class_token_sums(np.ones((1, 3, N)), classes)
    with pytest.raises(ValueError, match="does not match"):
        class_token_sums(np.ones((1, 6, 4)), classes)
    bad = np.ones((1, 6, N))
    bad[0, 1] = 0
    with pytest.raises(ValueError, match="class 2 has no mass"):
        class_token_sums(bad, classes)


def test_pooled_class_attention_per_block_and_summed_over_the_cam_blocks():
    classes = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    block0 = np.ones((1, N))  # uniform: lift 1
    block1 = np.zeros((1, N))
    block1[0, :2] = 1.0  # all on class 1: lift 4
    class_attention = np.stack([block0, block1])  # 2 blocks x 1 token x N
    patch = np.ones((2, N, N))
    # The last block only: its lift, 4. All blocks: the summed row has 2 + 2 on class 1 of
    # a total 8 + 2 -> 0.4 / (2/8) = 1.6.
    for blocks, expected in (([1], 4.0), (None, 1.6)):
        diagnostics = AttentionDiagnostics(class_blocks=blocks)
        diagnostics.add(patch, LABELS, class_attention, classes)
        result = diagnostics.result()
        assert result["blocks"][0]["class_token_lift"] == pytest.approx(1.0)
        assert result["blocks"][1]["class_token_lift"] == pytest.approx(4.0)
        assert result["class_attention"]["class_token_lift"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="some images only"):
        diagnostics.add(patch, LABELS)


def test_affinity_shares_are_of_the_summed_rows():
    # Block 0: identity; block 1: oracle grouping. Summed row of object 1's query:
    # 1 + 1/2 on self, 1/2 on the rest -> 3/4, 1/4 after renormalising.
    diagnostics = AttentionDiagnostics()
    diagnostics.add(np.stack([np.eye(N), _own_region_attention()]), LABELS)
    result = diagnostics.result()
    assert result["affinity"]["self_share"] == pytest.approx(0.75)
    assert result["affinity"]["rest_of_object_share"] == pytest.approx(0.25)
    assert result["blocks"][0]["rest_of_object_share"] == pytest.approx(0.0)
    assert "class_attention" not in result
