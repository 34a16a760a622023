"""Confidence intervals of a row's CAM mIoU and of its difference to a baseline row.

A row of the results table is one method on one dataset over several training seeds;
its value is the mean over seeds of each run's mIoU, every run scored on the same
images. A rerun would redraw two things: the **training seeds** (the models) and the
**images** (the evaluation sample). The interval covers both (docs/statistics.md):

``Var(mean) = s^2 / S + C``

- ``s^2 / S``: the sample variance over the S seeds of the per-seed statistic (a run's
  mIoU, or a paired difference row minus baseline of the same seed), over S. It holds
  the seed-to-seed variation and the part of the image noise that differs by seed.
- ``C``: the image noise the seeds share, because every seed scores the same images.
  It is the mean covariance, between different seeds, of the per-seed statistic under
  a bootstrap of the images in which **one image draw is shared by every seed** (and,
  for a difference, by the row and its baseline). Clipped at 0. A covariance, not the
  variance, so the per-seed image noise already in ``s^2`` is not counted twice.

The interval gives each part its own t quantile (``rule="components"``, the default):

``half-width = sqrt(t(S - 1)^2 * s^2/S + t(n - 1)^2 * C)``

(n images; C is scaled by n / (n - 1), the plug-in bootstrap's bias). With seed noise
dominating it is Student's t over the seeds (S - 1 df), with image noise dominating a
t with n - 1 df, and in between it is never narrower than either part alone would ask
(the form of a modified large-sample interval for a sum of variance components,
Graybill and Wang 1980). The earlier rule (``rule="welch"``) used one t with the
Welch-Satterthwaite degrees of freedom ``df = (s^2/S + C)^2 / ((s^2/S)^2 / (S - 1) +
C^2 / (n - 1))``; with 3 seeds it under-covered (91-92% of 95%) because the df are
computed from the *estimated* s^2: a draw whose seeds happen to agree has a small s^2,
hence more df and a smaller quantile, exactly when its interval is already too narrow.
``rule="seed_df"`` (one t with S - 1 df) fixes that but over-covers when image noise
dominates. The default was chosen by measured coverage on simulated tables with known
seed- and image-level variance (wsss.evaluation.coverage, benchmarks/coverage.py;
numbers in docs/statistics.md and results/coverage.md), where a percentile bootstrap
over 3 seeds under-covers too. :attr:`Interval.df` is then the df of the t whose
quantile gives the same half-width (between S - 1 and n - 1), for
:func:`detectable_difference`. At least 2 seeds are needed; with one seed the interval
is undefined (NaN) and no verdict is given.

mIoU is a ratio of sums over images, so a resample's mIoU is recomputed from the
summed per-image intersection and union counts (wsss.evaluation.per_image), never
averaged from per-image IoUs. Resampling is ``scipy.stats.bootstrap``. The counts are
held fixed at each run's selected background threshold, so the threshold choice is
not resampled, and the platform (CPU kernels, thread count) is covered only as far
as it acts like another seed.

A row is called better (worse) than its baseline only when the whole interval of the
difference lies above (below) 0; such a verdict implies a one-sided 95% t-test over
the per-seed paired differences rejects 0 in that direction (tests check it).
:func:`detectable_difference` gives the smallest true difference the interval would
call at 80% power.

:func:`image_only_miou_interval` and :func:`image_only_paired_difference` are the
earlier image-only scheme (seeds as fixed strata, each seed's images drawn on their
own, percentile interval), kept only so the coverage comparison can be rerun.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wsss.evaluation.per_image import PerImageCounts, miou_from_sums

CONFIDENCE = 0.95
POWER = 0.80
N_RESAMPLES = 4000
BATCH = 250  # resamples per vectorised call: memory ~ BATCH x images x labels x 8 bytes


@dataclass(frozen=True)
class Interval:
    """A statistic on the full data (``estimate``) and its interval [low, high].

    ``seeds``: how many seeds it pools; ``se``: its standard error and ``df`` the degrees
    of freedom of the t quantile used (NaN for the image-only scheme)."""

    estimate: float
    low: float
    high: float
    seeds: int = 0
    se: float = math.nan
    df: float = math.nan

    def verdict(self) -> str:
        """``better`` if the interval lies above 0, ``worse`` if below, ``no difference``
        when it touches or contains 0, empty when it is undefined (one seed)."""
        if math.isnan(self.low):
            return ""
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


def _aligned(groups: Sequence[Sequence[PerImageCounts]], what: str) -> list[list[PerImageCounts]]:
    """Every run reordered to the first run's image order; ValueError unless all share images."""
    if not groups:
        raise ValueError(f"{what}: no runs to bootstrap")
    ids = groups[0][0].ids
    if len(ids) < 2:
        raise ValueError(f"{what}: a run has {len(ids)} image(s); the bootstrap needs at least 2")
    out = []
    for group in groups:
        aligned = []
        for run in group:
            if run.ids != ids:
                if set(run.ids) != set(ids):
                    differ = sorted(set(run.ids) ^ set(ids))[:5]
                    raise ValueError(
                        f"{what}: runs were scored on different images (e.g. {differ}); "
                        "every seed and a row's baseline must score the same split"
                    )
                order = [run.ids.index(i) for i in ids]
                run = PerImageCounts(ids, run.intersection[order], run.union[order], run.threshold)
            aligned.append(run)
        out.append(aligned)
    return out


RULES = ("components", "welch", "seed_df")
DEFAULT_RULE = "components"


def _combine(
    per_seed: np.ndarray, shared_cov: float, images: int, confidence: float, rule: str
) -> tuple[float, float, float, float, float]:
    """(estimate, low, high, se, df) from the per-seed values and the shared image covariance
    (estimated from ``images`` images: n - 1 degrees of freedom), by ``rule`` (:data:`RULES`)."""
    if rule not in RULES:
        raise ValueError(f"unknown interval rule {rule!r}; known: {list(RULES)}")
    seeds = len(per_seed)
    estimate = float(np.mean(per_seed))
    if seeds < 2:
        return estimate, math.nan, math.nan, math.nan, math.nan
    from scipy.stats import t

    seed_part = float(np.var(per_seed, ddof=1)) / seeds
    image_part = max(float(shared_cov), 0.0)
    var = seed_part + image_part
    if var == 0:
        return estimate, estimate, estimate, 0.0, math.inf
    se = math.sqrt(var)
    p = 0.5 + confidence / 2
    if rule == "welch":
        df = var**2 / (seed_part**2 / (seeds - 1) + image_part**2 / (images - 1))
        half = float(t.ppf(p, df)) * se
    elif rule == "seed_df":
        df = float(seeds - 1)
        half = float(t.ppf(p, df)) * se
    else:
        q_seed, q_image = float(t.ppf(p, seeds - 1)), float(t.ppf(p, images - 1))
        half = math.sqrt(q_seed**2 * seed_part + q_image**2 * image_part)
        df = _equivalent_df(half / se, p, seeds - 1, images - 1)
    return estimate, estimate - half, estimate + half, se, df


def _equivalent_df(quantile: float, p: float, low: float, high: float) -> float:
    """The df in [low, high] whose t quantile at ``p`` is ``quantile`` (the ends when outside)."""
    from scipy.optimize import brentq
    from scipy.stats import t

    if quantile >= t.ppf(p, low):
        return float(low)
    if quantile <= t.ppf(p, high):
        return float(high)
    return float(brentq(lambda df: t.ppf(p, df) - quantile, low, high, xtol=1e-9))


@dataclass(frozen=True)
class Components:
    """The two variance parts of a mean over seeds, before an interval rule is applied.

    ``per_seed``: the statistic of each seed (a run's mIoU, or a paired difference);
    ``shared_cov``: C, the image covariance the seeds share (bias-corrected, unclipped);
    ``images``: n. :meth:`interval` turns them into an :class:`Interval`; computing the
    bootstrap once lets the coverage study compare rules on the same draws."""

    per_seed: np.ndarray
    shared_cov: float
    images: int

    def interval(self, confidence: float = CONFIDENCE, rule: str = DEFAULT_RULE) -> Interval:
        estimate, low, high, se, df = _combine(
            self.per_seed, self.shared_cov, self.images, confidence, rule
        )
        return Interval(estimate, low, high, len(self.per_seed), se, df)


def _two_level(
    groups: list[list[PerImageCounts]],
    contrast: tuple[float, ...],
    n_resamples: int,
    seed: int,
) -> Components:
    """Variance parts of mean_s sum_k contrast[k] * mIoU(groups[s][k]) over seeds and images."""
    from scipy.stats import bootstrap

    n = len(groups[0][0].ids)
    per_seed = np.array(
        [sum(c * run.miou() for c, run in zip(contrast, g, strict=True)) for g in groups]
    )
    shared_cov = 0.0
    if len(groups) >= 2:

        def statistic(indices: np.ndarray, axis: int = -1) -> np.ndarray:
            # One image draw (``indices``) shared by every seed and every run of a pair.
            weights = _resample_weights(indices, n)
            return np.stack(
                [
                    sum(c * _miou(weights, run) for c, run in zip(contrast, g, strict=True))
                    for g in groups
                ]
            )

        result = bootstrap(
            (np.arange(n),),
            statistic,
            n_resamples=n_resamples,
            batch=BATCH,
            vectorized=True,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        cov = np.atleast_2d(np.cov(result.bootstrap_distribution))
        seeds = len(groups)
        # n / (n - 1): the bootstrap's plug-in covariance is biased low by (n - 1) / n.
        shared_cov = float((cov.sum() - np.trace(cov)) / (seeds * (seeds - 1))) * n / (n - 1)
    return Components(per_seed, shared_cov, n)


def miou_components(
    runs: Sequence[PerImageCounts], n_resamples: int = N_RESAMPLES, seed: int = 0
) -> Components:
    """:class:`Components` of :func:`miou_interval` (same arguments, same errors)."""
    groups = _aligned([[run] for run in runs], "miou_interval")
    return _two_level(groups, (1.0,), n_resamples, seed)


def paired_components(
    pairs: Sequence[tuple[PerImageCounts, PerImageCounts]],
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Components:
    """:class:`Components` of :func:`paired_miou_difference` (same arguments, same errors)."""
    groups = _aligned([list(pair) for pair in pairs], "paired_miou_difference")
    return _two_level(groups, (1.0, -1.0), n_resamples, seed)


def miou_interval(
    runs: Sequence[PerImageCounts],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    rule: str = DEFAULT_RULE,
) -> Interval:
    """Mean over seeds of the mIoU, with its interval over seeds and images.

    ``runs``: one :class:`PerImageCounts` per seed, all on the same images (at least 2;
    ValueError otherwise). ``seed`` seeds the resampling, so a table is reproducible.
    Fractions in [0, 1]; NaN bounds with one seed. ``rule``: :data:`RULES` (module doc).
    """
    return miou_components(runs, n_resamples, seed).interval(confidence, rule)


def paired_miou_difference(
    pairs: Sequence[tuple[PerImageCounts, PerImageCounts]],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    rule: str = DEFAULT_RULE,
) -> Interval:
    """Mean over seeds of mIoU(row) - mIoU(baseline), paired by seed and by image.

    ``pairs``: one ``(row, baseline)`` per seed, the row's and its baseline's run of that
    seed, all scored on the same images (ValueError otherwise). Positive: the row
    scores higher. NaN bounds with one seed. ``rule``: :data:`RULES` (module doc).
    """
    return paired_components(pairs, n_resamples, seed).interval(confidence, rule)


def detectable_difference(
    se: float, df: float, confidence: float = CONFIDENCE, power: float = POWER
) -> float:
    """Smallest true difference the interval would call (exclude 0) with probability ``power``.

    For an estimate with standard error ``se`` and ``df`` degrees of freedom (from
    :func:`paired_miou_difference`): the delta solving ``P(T > t_crit) = power`` with T
    noncentral t(df, delta / se) and ``t_crit`` the two-sided quantile of the interval
    (normal when df is infinite). Same units as ``se``; NaN when se is NaN.
    """
    if math.isnan(se) or math.isnan(df):
        return math.nan
    if se == 0:
        return 0.0
    from scipy.optimize import brentq
    from scipy.stats import nct, norm, t

    if math.isinf(df) or df > 1e4:
        return float((norm.ppf(0.5 + confidence / 2) + norm.ppf(power)) * se)
    crit = float(t.ppf(0.5 + confidence / 2, df))
    ncp = brentq(lambda d: nct.sf(crit, df, d) - power, 0.0, 100.0 * (crit + 10))
    return float(ncp * se)


def one_sided_t_test(values: Sequence[float]) -> float:
    """p-value of a one-sided one-sample t-test of mean 0, in the direction of the mean.

    ``values``: per-seed paired differences (at least 2; NaN otherwise, or when all are
    equal). The check a verdict must agree with (p < 0.05)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2 or np.ptp(values) == 0:
        return math.nan
    from scipy.stats import ttest_1samp

    side = "greater" if values.mean() > 0 else "less"
    return float(ttest_1samp(values, 0.0, alternative=side).pvalue)


# The earlier image-only scheme, for the coverage comparison (docs/statistics.md) only.


def _image_only(
    groups: list[list[PerImageCounts]],
    contrast: tuple[float, ...],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    from scipy.stats import bootstrap

    sizes = [len(g[0].ids) for g in groups]

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        # Each seed's images drawn on their own (paired=False): seeds are fixed strata.
        per_seed = []
        for ix, g in zip(indices, groups, strict=True):
            weights = _resample_weights(ix, len(g[0].ids))
            per_seed.append(
                sum(c * _miou(weights, run) for c, run in zip(contrast, g, strict=True))
            )
        return np.mean(per_seed, axis=0)

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
    estimate = float(
        np.mean([sum(c * r.miou() for c, r in zip(contrast, g, strict=True)) for g in groups])
    )
    low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high), len(groups))


def image_only_miou_interval(
    runs: Sequence[PerImageCounts],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The earlier scheme's row interval (images only, seeds fixed; under-covers)."""
    groups = _aligned([[run] for run in runs], "image_only_miou_interval")
    return _image_only(groups, (1.0,), confidence, n_resamples, seed)


def image_only_paired_difference(
    pairs: Sequence[tuple[PerImageCounts, PerImageCounts]],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The earlier scheme's paired difference (images only, seeds fixed; under-covers)."""
    groups = _aligned([list(pair) for pair in pairs], "image_only_paired_difference")
    return _image_only(groups, (1.0, -1.0), confidence, n_resamples, seed)
