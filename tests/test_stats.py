"""Statistics over seeds against known answers: Student's t quantiles (tables) and R's paired
t.test on Student's sleep data."""

from __future__ import annotations

import math

import pytest

from mpcl.stats import paired_difference, summarize, t975


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423),
                                          (31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799),
                                          (1000, 1.9623)])
def test_t975_matches_the_tables(df, expected):
    assert t975(df) == pytest.approx(expected, abs=1e-4)


def test_t975_refuses_zero_degrees_of_freedom():
    with pytest.raises(ValueError, match="df"):
        t975(0)


def test_paired_interval_is_r_t_test_on_the_sleep_data():
    # R: with(sleep, t.test(extra[group == 2], extra[group == 1], paired = TRUE))
    # mean of the differences 1.58, 95 % CI 0.7001142 .. 2.4598858
    drug1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
    drug2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]
    d = paired_difference(dict(enumerate(drug1)), dict(enumerate(drug2)))
    assert d.n == 10
    assert d.mean == pytest.approx(1.58)
    assert d.low == pytest.approx(0.7001142, abs=1e-6)
    assert d.high == pytest.approx(2.4598858, abs=1e-6)
    assert d.excludes_zero
    # the unpaired view of the same numbers would not exclude 0; pairing is what matters here
    assert summarize(drug2).mean - summarize(drug1).mean == pytest.approx(1.58)


def test_pairs_by_seed_not_by_position():
    base = {0: 10.0, 1: 20.0, 2: 30.0}
    variant = {2: 31.0, 0: 11.0, 1: 21.5, 7: 99.0}  # seed 7 has no base: left out
    d = paired_difference(base, variant)
    assert d.n == 3
    assert d.mean == pytest.approx((1.0 + 1.5 + 1.0) / 3)
    half = 4.302653 * summarize([1.0, 1.5, 1.0]).sd / math.sqrt(3)
    assert (d.low, d.high) == pytest.approx((d.mean - half, d.mean + half))


def test_interval_including_zero_and_single_pairs():
    d = paired_difference({0: 1.0, 1: 2.0}, {0: 2.0, 1: 1.5})  # differences +1, -0.5
    assert d.low < 0 < d.high and not d.excludes_zero
    one = paired_difference({0: 1.0}, {0: 3.0})
    assert (one.n, one.mean, one.sd, one.low, one.high) == (1, 2.0, None, None, None)
    assert not one.excludes_zero
    assert summarize([]).mean is None
    s = summarize([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    assert (s.mean, s.sd) == pytest.approx((5.0, math.sqrt(32 / 7)))
