"""Intervals and paired tests for accuracies: Wilson score intervals, paired bootstrap, exact McNemar.

Credits are per problem in [0, 1] (a tie earns a fraction). The Wilson interval counts total credit as the
number of successes, which is exact for 0/1 credits and the usual approximation for fractional ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion successes / n; (0.0, 1.0) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    phat = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: P(X <= min) * 2 under Binomial(b + c, 1/2),
    capped at 1 (1.0 when there are no discordant problems)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedComparison:
    """Run A against run B on their common problems."""

    n: int
    credit_a: float  # total credit of A on the common problems
    credit_b: float
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_a - accuracy_b
    ci_low: float
    ci_high: float
    only_a: int  # problems A solves (credit 1) and B does not (credit 0)
    only_b: int
    both: int
    neither: int
    wins: int  # problems where A earns more credit than B (a tie's share counts: 0.5 -> 1 is a win)
    losses: int  # problems where A earns less
    ties: int  # problems where both earn the same credit
    p_mcnemar: float
    resamples: int
    seed: int


def paired_bootstrap(credits_a: Sequence[float], credits_b: Sequence[float], *, resamples: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b), resampling problems (pairs) with replacement, seeded."""
    a = np.asarray(credits_a, dtype=np.float64)
    b = np.asarray(credits_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired credits need the same length, got {a.shape} and {b.shape}")
    if a.size == 0:
        return 0.0, 0.0
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // a.size)  # bound the index matrix's memory on large runs
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        idx = rng.integers(0, a.size, size=(stop - start, a.size))
        means[start:stop] = diff[idx].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def compare_paired(credits_a: Sequence[float], credits_b: Sequence[float], *, resamples: int = 10_000,
                   seed: int = 0) -> PairedComparison:
    """Accuracy difference with a paired bootstrap interval, and an exact McNemar test on the problems where
    exactly one run earns full credit (fractional tie credits count in the accuracies, not in the test)."""
    a = np.asarray(credits_a, dtype=np.float64)
    b = np.asarray(credits_b, dtype=np.float64)
    low, high = paired_bootstrap(a, b, resamples=resamples, seed=seed)
    solved_a, solved_b = a == 1.0, b == 1.0
    only_a = int(np.sum(solved_a & ~solved_b & (b == 0.0)))
    only_b = int(np.sum(solved_b & ~solved_a & (a == 0.0)))
    n = int(a.size)
    credit_a, credit_b = float(a.sum()), float(b.sum())
    acc_a = credit_a / n if n else 0.0
    acc_b = credit_b / n if n else 0.0
    return PairedComparison(n=n, credit_a=credit_a, credit_b=credit_b, accuracy_a=acc_a, accuracy_b=acc_b,
                            difference=acc_a - acc_b, ci_low=low, ci_high=high, only_a=only_a, only_b=only_b,
                            both=int(np.sum(solved_a & solved_b)), neither=int(np.sum((a == 0.0) & (b == 0.0))),
                            wins=int(np.sum(a > b)), losses=int(np.sum(a < b)), ties=int(np.sum(a == b)),
                            p_mcnemar=mcnemar_exact(only_a, only_b), resamples=resamples, seed=seed)


def compare_credits(credits_a: Mapping[int, float], credits_b: Mapping[int, float], *,
                    resamples: int = 10_000, seed: int = 0) -> PairedComparison:
    """Run A against run B, each given as its credit per problem id, on the problems both predicted (in sorted
    order, so the seeded bootstrap draws the same pairs whoever asks): what `rplat report compare` and the
    dashboard's baseline comparisons show. n is 0 when they share no problem."""
    common = sorted(credits_a.keys() & credits_b.keys())
    return compare_paired([credits_a[p] for p in common], [credits_b[p] for p in common], resamples=resamples,
                          seed=seed)
