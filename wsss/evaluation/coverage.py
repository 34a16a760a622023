"""Simulated results tables with known noise, to measure how often an interval covers the truth.

:func:`simulate_pair` draws a row and its baseline over S seeds, each run as per-image
intersection/union counts on the same n images (as the pipeline scores them). A run's
per-image, per-label IoU is

``p = base_iou + delta_m + image[i, l] + method_image[m, i, l] + seed[m, s] + run_image[m, s, i, l]``

clipped to [0, 1]; intersection = round(p * union) with unions drawn independently of p.

- ``image``: the difficulty of an image, shared by both methods and every seed;
- ``method_image``: how much an image suits one method (image noise of the difference);
- ``seed``: a run's shift from its training seed, correlated ``seed_correlation``
  between the row's and its baseline's run of the same seed;
- ``run_image``: the seed x image interaction.

All effects are zero-mean normals drawn independently of the unions, so the expected
mIoU over new images and new seeds is ``base_iou`` (baseline) and ``base_iou +
true_difference`` (row), and the true paired difference is ``true_difference`` (up to
the clipping, which the default sizes keep below 1e-4). :func:`coverage` counts how
often each scheme's 95% intervals contain these truths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from wsss.evaluation.bootstrap import (
    image_only_miou_interval,
    image_only_paired_difference,
    miou_components,
    paired_components,
)
from wsss.evaluation.per_image import PerImageCounts


@dataclass(frozen=True)
class NoiseModel:
    """Sizes of the simulated noise, on the IoU scale (fractions).

    The default resembles the committed synthetic grid: seed sd of a run's mIoU ~2-4
    points, image-only interval half-widths ~0.5 point (results/table.md, issue notes).
    """

    images: int = 80
    labels: int = 3
    base_iou: float = 0.45
    true_difference: float = 0.02
    image_sd: float = 0.12
    method_image_sd: float = 0.05
    seed_sd: float = 0.025
    seed_correlation: float = 0.3
    run_image_sd: float = 0.04
    union_range: tuple[int, int] = (200, 2000)


# The two settings of the coverage study (benchmarks/coverage.py, the suite's fast check).
NOISE_MODELS = {
    "seed noise dominates (like the synthetic grid)": NoiseModel(),
    "image noise dominates": replace(
        NoiseModel(), seed_sd=0.002, run_image_sd=0.01, method_image_sd=0.08, images=60
    ),
}


def simulate_pair(
    model: NoiseModel, seeds: int, rng: np.random.Generator
) -> tuple[list[PerImageCounts], list[PerImageCounts]]:
    """(row runs, baseline runs), one :class:`PerImageCounts` per seed, on the same images."""
    n, k = model.images, model.labels
    ids = tuple(f"img{i:04d}" for i in range(n))
    union = rng.integers(*model.union_range, size=(n, k), endpoint=True)
    image = rng.normal(0.0, model.image_sd, (n, k))
    base_seed = rng.normal(0.0, model.seed_sd, seeds)
    rho = model.seed_correlation
    row_seed = rho * base_seed + np.sqrt(1 - rho**2) * rng.normal(0.0, model.seed_sd, seeds)
    runs = {}
    for name, delta, seed_effect in (
        ("row", model.true_difference, row_seed),
        ("base", 0.0, base_seed),
    ):
        method_image = rng.normal(0.0, model.method_image_sd, (n, k))
        runs[name] = []
        for s in range(seeds):
            p = (
                model.base_iou
                + delta
                + image
                + method_image
                + seed_effect[s]
                + rng.normal(0.0, model.run_image_sd, (n, k))
            )
            inter = np.rint(np.clip(p, 0.0, 1.0) * union).astype(np.int64)
            runs[name].append(PerImageCounts(ids, inter, union.copy(), 0.5))
    return runs["row"], runs["base"]


# scheme name -> the two-level interval rule (wsss.evaluation.bootstrap.RULES), or None for
# the earlier image-only scheme. The two-level schemes share one bootstrap per table.
SCHEMES: dict[str, str | None] = {
    "seeds+images": "components",
    "seeds+images, Welch-Satterthwaite df": "welch",
    "seeds+images, S - 1 df": "seed_df",
    "image-only": None,
}


def coverage_by_scheme(
    model: NoiseModel,
    seeds: int,
    tables: int,
    schemes: Sequence[str] = tuple(SCHEMES),
    n_resamples: int = 1000,
    rng_seed: int = 0,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """:func:`coverage` of several schemes on the same simulated tables: scheme -> result.

    The two-level schemes differ only in how the interval is formed from the same
    bootstrap (wsss.evaluation.bootstrap.Components), so their comparison is paired."""
    unknown = [name for name in schemes if name not in SCHEMES]
    if unknown:
        raise ValueError(f"unknown scheme {unknown[0]!r}; known: {sorted(SCHEMES)}")
    rng = np.random.default_rng(rng_seed)
    truth_row = model.base_iou + model.true_difference
    tally = {name: {"row": 0, "difference": 0, "called": 0, "widths": []} for name in schemes}
    two_level = any(SCHEMES[name] is not None for name in schemes)
    for table in tqdm(range(tables), disable=not progress, desc=f"{seeds} seeds"):
        row, base = simulate_pair(model, seeds, rng)
        pairs = list(zip(row, base, strict=True))
        if two_level:
            row_parts = miou_components(row, n_resamples=n_resamples, seed=table)
            diff_parts = paired_components(pairs, n_resamples=n_resamples, seed=table)
        for name in schemes:
            rule = SCHEMES[name]
            if rule is None:
                ci = image_only_miou_interval(row, n_resamples=n_resamples, seed=table)
                diff = image_only_paired_difference(pairs, n_resamples=n_resamples, seed=table)
            else:
                ci, diff = row_parts.interval(rule=rule), diff_parts.interval(rule=rule)
            counts = tally[name]
            counts["row"] += ci.low <= truth_row <= ci.high
            counts["difference"] += diff.low <= model.true_difference <= diff.high
            counts["called"] += diff.verdict() in ("better", "worse")
            counts["widths"].append((diff.high - diff.low) / 2)
    return {
        name: {
            "row": counts["row"] / tables,
            "difference": counts["difference"] / tables,
            "half_width": float(np.mean(counts["widths"])),
            "called": counts["called"] / tables,
        }
        for name, counts in tally.items()
    }


def coverage(
    model: NoiseModel,
    seeds: int,
    tables: int,
    scheme: str = "seeds+images",
    n_resamples: int = 1000,
    rng_seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Share of ``tables`` simulated tables whose 95% intervals contain the truth.

    Returns ``{"row": coverage of the row's mIoU interval, "difference": coverage of the
    paired difference's interval, "half_width": mean half-width of the difference's
    interval, "called": share of tables whose difference got a verdict}``. ``scheme``:
    a key of :data:`SCHEMES` (ValueError otherwise). Deterministic in ``rng_seed``.
    """
    results = coverage_by_scheme(model, seeds, tables, (scheme,), n_resamples, rng_seed, progress)
    return results[scheme]
