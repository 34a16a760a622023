"""Coverage of the table's intervals on simulated tables with known truth (fast settings).

The full version (1000 tables per cell, 1000 resamples; every scheme; numbers in
docs/statistics.md and results/coverage.md) is ``python benchmarks/coverage.py``. Here:
200 tables per seed count and 200 resamples, so a measured coverage has a binomial
standard error of sqrt(0.95 * 0.05 / 200) = 1.5 points; the test accepts 95% ± 3
standard errors (90.4% .. 99.6%), which the earlier image-only scheme fails by far. The
rules it was chosen over are scored on the same tables and bootstrap draws (paired).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from wsss.evaluation.coverage import (
    NOISE_MODELS,
    NoiseModel,
    coverage,
    coverage_by_scheme,
    simulate_pair,
)

TABLES = 200
BAND = 3 * math.sqrt(0.95 * 0.05 / TABLES)
FAST = NoiseModel(images=40)
WELCH, SEED_DF = "seeds+images, Welch-Satterthwaite df", "seeds+images, S - 1 df"


@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_intervals_over_seeds_and_images_cover_the_truth(seeds):
    results = coverage_by_scheme(
        FAST, seeds, TABLES, ("seeds+images", WELCH), n_resamples=200, rng_seed=seeds
    )
    result = results["seeds+images"]
    assert abs(result["row"] - 0.95) <= BAND, result
    assert abs(result["difference"] - 0.95) <= BAND, result
    # On the same tables, the per-part t quantiles cover at least as often as the Welch df
    # (which under-covered at 3 seeds), at a bounded cost in width.
    assert (
        result["row"] >= results[WELCH]["row"]
        and result["difference"] >= results[WELCH]["difference"]
    )
    assert result["half_width"] <= 1.25 * results[WELCH]["half_width"], results


def test_image_noise_dominated_tables_are_not_over_covered():
    # Where image noise dominates, one t with S - 1 df (the simple conservative fix) is
    # needlessly wide; each part's own quantile keeps the interval near 95%.
    model = replace(NOISE_MODELS["image noise dominates"], images=40)
    results = coverage_by_scheme(
        model, 3, 100, ("seeds+images", SEED_DF), n_resamples=200, rng_seed=3
    )
    result = results["seeds+images"]
    assert abs(result["difference"] - 0.95) <= 3 * math.sqrt(0.95 * 0.05 / 100), result
    assert results[SEED_DF]["half_width"] > 1.5 * result["half_width"], results


def test_the_image_only_scheme_under_covers():
    # Seeds held fixed: the seed noise (the larger part here) is left out of the interval.
    result = coverage(FAST, 3, 100, "image-only", n_resamples=200, rng_seed=1)
    assert result["difference"] < 0.95 - BAND and result["row"] < 0.95 - BAND, result


def test_simulated_runs_have_the_stated_truth():
    # Over many seeds and images, mean mIoUs approach base_iou and base_iou + difference.
    model = NoiseModel(images=400, seed_sd=0.01)
    row, base = simulate_pair(model, 40, np.random.default_rng(0))
    assert np.mean([r.miou() for r in base]) == pytest.approx(model.base_iou, abs=0.01)
    diff = np.mean([r.miou() - b.miou() for r, b in zip(row, base, strict=True)])
    assert diff == pytest.approx(model.true_difference, abs=0.01)
    assert all(r.ids == base[0].ids for r in [*row, *base])  # every run scores the same images


def test_unknown_scheme_is_named():
    with pytest.raises(ValueError, match="unknown scheme 'bogus'; known"):
        coverage(FAST, 3, 1, "bogus")
