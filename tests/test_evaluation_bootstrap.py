"""Stratified bootstrap intervals of mIoU and paired differences, on hand-checkable counts."""

from __future__ import annotations

import numpy as np
import pytest

from wsss.evaluation.bootstrap import Interval, miou_interval, paired_miou_difference
from wsss.evaluation.per_image import PerImageCounts


def counts(inter, union, ids=None) -> PerImageCounts:
    inter, union = np.array(inter, np.int64), np.array(union, np.int64)
    ids = ids or tuple(f"img{i}" for i in range(len(inter)))
    return PerImageCounts(tuple(ids), inter, union, 0.5)


def test_identical_images_give_a_zero_width_interval():
    run = counts([[3, 1]] * 6, [[4, 2]] * 6)  # every image: IoUs 3/4 and 1/2
    interval = miou_interval([run], n_resamples=500)
    assert interval == Interval(0.625, 0.625, 0.625)


def test_two_images_hand_computed_interval_is_a_ratio_of_sums():
    # Image A: IoU 0/1, image B: 10/10. A resample is AA (p = 1/4), AB or BA (1/2), BB (1/4).
    # mIoU of AB is the ratio of sums 10/11, not the mean of the images' IoUs (0.5).
    run = counts([[0], [10]], [[1], [10]])
    interval = miou_interval([run], n_resamples=4000)
    assert interval.estimate == pytest.approx(10 / 11)
    # 95%: the 2.5% and 97.5% quantiles fall in the AA and BB masses.
    assert (interval.low, interval.high) == (0.0, 1.0)
    # 40%: the 30% and 70% quantiles both fall in the AB mass (25% .. 75%).
    narrow = miou_interval([run], confidence=0.4, n_resamples=4000)
    assert narrow.low == pytest.approx(10 / 11) and narrow.high == pytest.approx(10 / 11)


def test_seeds_are_strata_not_resampled():
    # Each seed's images are identical, so only a resampling of seeds could move the mean;
    # the stratified bootstrap keeps every seed and returns the mean of 0.4 and 0.6 exactly.
    seed0 = counts([[2]] * 5, [[5]] * 5)
    seed1 = counts([[3]] * 7, [[5]] * 7, ids=[f"other{i}" for i in range(7)])
    interval = miou_interval([seed0, seed1], n_resamples=500)
    assert (interval.estimate, interval.low, interval.high) == pytest.approx((0.5, 0.5, 0.5))


def test_resampling_is_seeded():
    rng = np.random.default_rng(3)
    union = rng.integers(10, 100, (40, 3))
    run = counts((union * rng.random((40, 3))).astype(np.int64), union)
    assert miou_interval([run], n_resamples=300, seed=1) == miou_interval(
        [run], n_resamples=300, seed=1
    )
    wide = miou_interval([run], n_resamples=300)
    assert wide.low < wide.estimate < wide.high


def test_verdict_only_when_the_interval_excludes_zero():
    assert Interval(0.02, 0.001, 0.04).verdict() == "better"
    assert Interval(-0.02, -0.04, -0.001).verdict() == "worse"
    assert Interval(0.01, -0.001, 0.03).verdict() == "no difference"
    assert Interval(0.01, 0.0, 0.03).verdict() == "no difference"  # touching 0 is not excluding it
    assert Interval(0.0, 0.0, 0.0).verdict() == "no difference"


def _varied_baseline(rng, n=60):
    """Images of very different difficulty: per-image IoU from ~0.05 to ~0.95."""
    union = rng.integers(50, 200, (n, 2))
    share = rng.uniform(0.05, 0.95, (n, 1))
    return (union * share).astype(np.int64), union


def test_paired_difference_sees_a_small_gain_on_every_image():
    rng = np.random.default_rng(0)
    base_inter, union = _varied_baseline(rng)
    row_inter = np.minimum(base_inter + 3, union)  # 3 more pixels right in every image
    base, row = counts(base_inter, union), counts(row_inter, union)
    diff = paired_miou_difference([(row, base)], n_resamples=1000)
    assert diff.estimate == pytest.approx(row.miou() - base.miou())
    assert 0 < diff.low <= diff.estimate <= diff.high
    assert diff.verdict() == "better"
    # The same gain is invisible in the unpaired intervals, which overlap widely.
    row_ci, base_ci = (
        miou_interval([row], n_resamples=1000),
        miou_interval([base], n_resamples=1000),
    )
    assert row_ci.low < base_ci.high
    # Reversed roles: worse. Identical runs: a zero-width interval at 0, no difference.
    assert paired_miou_difference([(base, row)], n_resamples=1000).verdict() == "worse"
    same = paired_miou_difference([(base, base)], n_resamples=200)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict() == "no difference"


def test_paired_difference_is_the_mean_over_seeds():
    rng = np.random.default_rng(1)
    pairs = []
    for gain in (2, 6):
        base_inter, union = _varied_baseline(rng, 30)
        pairs.append(
            (counts(np.minimum(base_inter + gain, union), union), counts(base_inter, union))
        )
    diff = paired_miou_difference(pairs, n_resamples=300)
    expected = np.mean([row.miou() - base.miou() for row, base in pairs])
    assert diff.estimate == pytest.approx(expected)


def test_paired_runs_must_share_their_images():
    a = counts([[1], [1]], [[2], [2]], ids=["x", "y"])
    b = counts([[1], [1]], [[2], [2]], ids=["x", "z"])
    with pytest.raises(ValueError, match="different images"):
        paired_miou_difference([(a, b)])


def test_a_single_image_cannot_be_bootstrapped():
    with pytest.raises(ValueError, match="at least 2"):
        miou_interval([counts([[1]], [[2]])])
    with pytest.raises(ValueError, match="no runs"):
        miou_interval([])
