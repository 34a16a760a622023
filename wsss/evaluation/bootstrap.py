"""Confidence intervals of a row's CAM mIoU and of its difference to a baseline row.

A row of the results table is one method on one dataset over several seeds; its
value is the mean over seeds of each run's mIoU on the same images. Two sources of
variation are in it: which images were scored, and which seed trained the model.
The interval is a **stratified bootstrap** (the scheme of rliable-style benchmark
reporting, Agarwal et al., "Deep RL at the edge of the statistical precipice",
NeurIPS 2021): each seed is a stratum, and each resample draws that seed's images
with replacement (as many as it has) and recomputes the statistic. With few seeds
the strata stay fixed, so the interval covers image sampling given these seeds;
the seed spread shows in the std column beside it.

mIoU is a ratio of sums over images, so a resample's mIoU is recomputed from the
summed per-image intersection and union counts (wsss.evaluation.per_image), never
averaged from per-image IoUs. Resampling and the percentile interval are
``scipy.stats.bootstrap`` (``method="percentile"``: the 2.5% and 97.5% quantiles of
the resampled statistic for a 95% interval); the counts are held fixed at each run's
selected background threshold, so the threshold choice is not resampled.

The **paired difference** to a baseline uses the same resampled images for the row
and its baseline in every seed (same images, same seeds), so what the two share
(hard images, easy images) cancels. A row is called better (worse) than its
baseline only when the whole interval of the difference lies above (below) 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsss.evaluation.per_image import PerImageCounts, miou_from_sums

CONFIDENCE = 0.95
N_RESAMPLES = 4000
BATCH = 250  # resamples per vectorised call: memory ~ BATCH x images x labels x 8 bytes


@dataclass(frozen=True)
class Interval:
    """A statistic on the full data (``estimate``) and its bootstrap interval [low, high]."""

    estimate: float
    low: float
    high: float

    def verdict(self) -> str:
        """``better`` if the interval lies above 0, ``worse`` if below, else ``no difference``
        (an interval that touches or contains 0 does not tell the two apart)."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no difference"


def _resample_weights(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each of n images is drawn: (..., n) indices -> (..., n) int64 counts."""
    indices = np.asarray(indices, np.intp)
    flat = indices.reshape(-1, n)
    offsets = (np.arange(flat.shape[0]) * n)[:, None]
    weights = np.bincount((flat + offsets).ravel(), minlength=flat.size)
    return weights.reshape(indices.shape).astype(np.int64)


def _miou(weights: np.ndarray, counts: PerImageCounts) -> np.ndarray:
    # Integer matrix products: exact, and numpy runs them without BLAS, whose thread
    # pool spin-waits when the pipeline's other jobs hold the cores (10x slower here).
    return miou_from_sums(weights @ counts.intersection, weights @ counts.union)


def _check_strata(strata: Sequence[PerImageCounts], what: str) -> None:
    if not strata:
        raise ValueError(f"{what}: no runs to bootstrap")
    for counts in strata:
        if len(counts.ids) < 2:
            raise ValueError(
                f"{what}: a run has {len(counts.ids)} image(s); the bootstrap needs at least 2"
            )


def _bootstrap(
    sizes: list[int],
    statistic,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float]:
    from scipy.stats import bootstrap

    # The data are image indices, one array per stratum; scipy resamples each array on
    # its own (paired=False), which is the stratified scheme.
    result = bootstrap(
        [np.arange(n) for n in sizes],
        statistic,
        n_resamples=n_resamples,
        batch=BATCH,
        vectorized=True,
        paired=False,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def miou_interval(
    strata: Sequence[PerImageCounts],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean over strata (seeds) of the mIoU, with its stratified percentile-bootstrap interval.

    ``strata``: one :class:`PerImageCounts` per seed (at least 2 images each). ``seed``
    seeds the resampling, so a table is reproducible. The estimate is the mean of the
    runs' mIoUs on all their images; the interval is in the same units (fraction).
    """
    _check_strata(strata, "miou_interval")

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        per_seed = [
            _miou(_resample_weights(ix, len(c.ids)), c)
            for ix, c in zip(indices, strata, strict=True)
        ]
        return np.mean(per_seed, axis=0)

    estimate = float(np.mean([c.miou() for c in strata]))
    low, high = _bootstrap([len(c.ids) for c in strata], statistic, confidence, n_resamples, seed)
    return Interval(estimate, low, high)


def paired_miou_difference(
    pairs: Sequence[tuple[PerImageCounts, PerImageCounts]],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Mean over seeds of mIoU(row) - mIoU(baseline), resampling the same images for both.

    ``pairs``: one ``(row, baseline)`` per seed, both scored on the same images (same
    ids; ValueError otherwise). Positive: the row scores higher.
    """
    for row, base in pairs:
        if row.ids != base.ids:
            missing = sorted(set(row.ids) ^ set(base.ids))[:5]
            raise ValueError(
                "paired_miou_difference: a run and its baseline were scored on different "
                f"images (e.g. {missing}); pair runs of the same split"
            )
    _check_strata([row for row, _ in pairs], "paired_miou_difference")

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        per_seed = []
        for ix, (row, base) in zip(indices, pairs, strict=True):
            weights = _resample_weights(ix, len(row.ids))
            per_seed.append(_miou(weights, row) - _miou(weights, base))
        return np.mean(per_seed, axis=0)

    estimate = float(np.mean([row.miou() - base.miou() for row, base in pairs]))
    low, high = _bootstrap(
        [len(row.ids) for row, _ in pairs], statistic, confidence, n_resamples, seed
    )
    return Interval(estimate, low, high)
