"""Coverage of the table's 95% intervals on simulated tables with known truth.

    python benchmarks/coverage.py [--tables 1000] [--resamples 1000] [--out results/coverage.md]
    python benchmarks/coverage.py --quick     # a few tables, to check that it runs

For each noise model (wsss.evaluation.coverage.NoiseModel: the default, close to the
committed synthetic grid, and one where image noise dominates), each seed count (3, 5,
10) and each scheme (wsss.evaluation.coverage.SCHEMES: seeds+images, the table's; the
same bootstrap with the Welch-Satterthwaite df or S - 1 df, the rules it was chosen
over; image-only, the scheme before), the share of simulated tables whose row interval
and paired-difference interval contain the true value, and the mean half-width of the
difference's interval. The two-level schemes are scored on the same tables and the same
bootstrap draws (a paired comparison). A share from T tables has a binomial standard
error sqrt(p (1 - p) / T), ~0.7 point at T = 1000. The numbers are copied into
docs/statistics.md.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from wsss.evaluation.coverage import NOISE_MODELS, coverage_by_scheme

SEEDS = (3, 5, 10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", type=int, default=1000)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--out", default=None, help="also write the markdown table here")
    p.add_argument("--quick", action="store_true", help="4 tables, 100 resamples")
    args = p.parse_args(argv)
    tables, resamples = (4, 100) if args.quick else (args.tables, args.resamples)
    se = math.sqrt(0.95 * 0.05 / tables) * 100
    lines = [
        f"{tables} simulated tables per cell, {resamples} bootstrap resamples per interval; "
        f"binomial standard error of a coverage near 95%: {se:.1f} points.",
        "",
        "| noise | seeds | scheme | row coverage | difference coverage "
        "| mean half-width of the difference (points) | verdicts (true difference 2 points) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, model in NOISE_MODELS.items():
        for seeds in SEEDS:
            results = coverage_by_scheme(model, seeds, tables, n_resamples=resamples, progress=True)
            for scheme, result in results.items():
                lines.append(
                    f"| {name} | {seeds} | {scheme} | {result['row'] * 100:.1f}% "
                    f"| {result['difference'] * 100:.1f}% | {result['half_width'] * 100:.2f} "
                    f"| {result['called'] * 100:.0f}% |"
                )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
