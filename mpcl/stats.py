"""Summary statistics of repeated runs: mean and standard deviation over seeds, and the
difference of two methods with a 95 % confidence interval paired by seed (paired t interval).

No scipy: Student's t quantile t_{0.975, df} is a table for df 1..30 and the Cornish-Fisher
expansion (Abramowitz & Stegun 26.7.5) above, accurate to 1e-4 there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

# t_{0.975, df}, df = 1..30
T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
        2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
        2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
        2.048407, 2.045230, 2.042272)
Z975 = 1.959963985


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95 %)."""
    if df < 1:
        raise ValueError(f"t quantile: df must be >= 1 (got {df})")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation (n - 1) of ``n`` values; sd is None for n < 2."""

    n: int
    mean: float | None
    sd: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Summary(0, None, None)
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return Summary(n, mean, sd)


@dataclass(frozen=True)
class Difference:
    """``variant - base`` over ``n`` paired seeds: mean, sd of the differences, and the 95 %
    paired t interval [low, high] (None for n < 2: one pair has no interval)."""

    n: int
    mean: float | None
    sd: float | None
    low: float | None
    high: float | None

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely on one side of 0: a difference beyond the seed noise."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def as_dict(self) -> dict:
        return {**asdict(self), "excludes_zero": self.excludes_zero}


def paired_difference(base: dict[int, float], variant: dict[int, float]) -> Difference:
    """Differences ``variant[s] - base[s]`` over the seeds ``s`` both have; mean +/- t_{0.975,n-1}
    * sd / sqrt(n)."""
    seeds = sorted(set(base) & set(variant))
    s = summarize([variant[k] - base[k] for k in seeds])
    if s.sd is None:
        return Difference(s.n, s.mean, None, None, None)
    half = t975(s.n - 1) * s.sd / math.sqrt(s.n)
    return Difference(s.n, s.mean, s.sd, s.mean - half, s.mean + half)
