"""Wilson intervals, exact McNemar and the paired bootstrap against values computed by hand."""

from __future__ import annotations

import pytest

from rplat.stats import compare_paired, mcnemar_exact, paired_bootstrap, wilson


def test_wilson_interval_of_8_of_10_is_the_textbook_one() -> None:
    # phat 0.8, z^2/n 0.38415: centre (0.8 + 0.19207) / 1.38415 = 0.71681, half 1.95996 * 0.16001 / 1.38415
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_stays_inside_zero_one_and_is_wide_without_data() -> None:
    assert wilson(0, 5)[0] == 0.0 and wilson(0, 5)[1] == pytest.approx(0.4345, abs=1e-4)
    assert wilson(5, 5)[1] == 1.0 and wilson(5, 5)[0] == pytest.approx(0.5655, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_exact_mcnemar_is_twice_the_binomial_tail_of_the_smaller_discordant_count() -> None:
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 2**7)  # 0.125
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 2**5)
    assert mcnemar_exact(3, 3) == 1.0  # the tail passes one half: capped
    assert mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_of_three_problems_matches_the_enumerated_distribution() -> None:
    # differences (1, 0, 0): a resample's mean is K/3 with K ~ Binomial(3, 1/3); P(K=0) = 8/27 > 2.5% and
    # P(K <= 2) = 26/27 < 97.5%, so the 95% percentile interval is exactly [0, 1]
    assert paired_bootstrap([1, 0, 0], [0, 0, 0], seed=3) == (0.0, 1.0)
    # identical differences leave nothing to resample
    assert paired_bootstrap([1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.5))


def test_paired_bootstrap_is_seeded_and_pairs_the_problems() -> None:
    a = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1] * 5
    b = [0, 0, 1, 0, 0, 1, 0, 1, 0, 1] * 5
    assert paired_bootstrap(a, b, seed=7) == paired_bootstrap(a, b, seed=7)
    low, high = paired_bootstrap(a, b, seed=7)
    assert low > 0 and low < 0.3 < high  # A wins on 15 of 50 problems and never loses
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap([1, 0], [1])


def test_compare_counts_the_problems_each_run_solves_alone() -> None:
    a = [1, 1, 1, 0, 0, 1, 0.5]
    b = [1, 0, 0, 0, 1, 0, 0.0]
    c = compare_paired(a, b, seed=1)
    assert (c.n, c.both, c.only_a, c.only_b, c.neither) == (7, 1, 3, 1, 1)  # the tie problem counts in neither
    assert c.accuracy_a == pytest.approx(4.5 / 7) and c.difference == pytest.approx(2.5 / 7)
    assert c.p_mcnemar == pytest.approx(2 * (1 + 4) / 2**4)
    assert c.ci_low <= c.difference <= c.ci_high
