"""Several seeds of one experiment: each number as mean ± standard deviation, and whether two numbers
differ by more than their spread.

    mean_std([0.81, 0.77, 0.85])                 # (0.81, 0.04): the sample standard deviation (n - 1)
    compare("PPO", (0.81, 0.04), "DPO", (0.79, 0.05))
    # 'PPO vs DPO: within noise (0.81 ± 0.04 vs 0.79 ± 0.05)'

Within noise: the two means differ by less than the spread of the difference between one run of each,
sqrt(std_a² + std_b²) - the scale on which a single rerun of either would move the comparison. With
three seeds a difference larger than that is a hint, not a proof; a smaller one is no evidence at all.
The methods table (`methods.summarize_seeds`) and the pipeline's seed report (`pipeline.aggregate_reports`)
both use this.
"""

from __future__ import annotations

import math
from statistics import mean, stdev


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation) of the values; std NaN for a single value, both NaN if any is NaN
    (e.g. a column only some rows have)."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return mean(values), stdev(values) if len(values) > 1 else math.nan


def within_noise(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """True when the means of a = (mean, std) and b differ by less than sqrt(std_a² + std_b²). A single
    run (std NaN) has no spread to compare with: False."""
    (mean_a, std_a), (mean_b, std_b) = a, b
    if math.isnan(std_a) or math.isnan(std_b):
        return False
    return abs(mean_a - mean_b) < math.hypot(std_a, std_b)


def format_mean_std(stat: tuple[float, float], digits: int = 2) -> str:
    """'0.81 ± 0.04' ('0.81' for a single run)."""
    m, s = stat
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def compare(name_a: str, a: tuple[float, float], name_b: str, b: tuple[float, float], digits: int = 2,
            what: str = "") -> str:
    """One sentence: 'A vs B: within noise (...)' when the difference is within their spread, else which is
    ahead: 'A vs B: A ahead (0.81 ± 0.01 vs 0.70 ± 0.02)'. `what`, the number compared, goes in brackets
    after the names: 'A vs B (win rate vs SFT): ...'."""
    numbers = f"({format_mean_std(a, digits)} vs {format_mean_std(b, digits)})"
    if what:
        name_b = f"{name_b} ({what})"
    if within_noise(a, b):
        return f"{name_a} vs {name_b}: within noise {numbers}"
    if math.isnan(a[1]) or math.isnan(b[1]):
        return f"{name_a} vs {name_b}: one seed, no spread to judge by {numbers}"
    ahead = name_a if a[0] > b[0] else name_b.split(" (")[0]
    return f"{name_a} vs {name_b}: {ahead} ahead {numbers}"
