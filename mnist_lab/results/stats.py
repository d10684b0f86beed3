"""Statistics over the seeds of one recipe (scipy.stats): mean, standard deviation, Student's t
95% confidence interval of the mean, Welch's t-test against the best row, and the Pareto front
when a section was selected on several objectives."""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95


def describe(values) -> dict:
    """Mean, sample std and the two-sided Student t interval of the mean (std and interval only
    from two values on)."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "low": math.nan, "high": math.nan}
    mean = float(values.mean())
    if n < 2:
        return {"mean": mean, "std": math.nan, "low": math.nan, "high": math.nan}
    from scipy import stats

    std = float(values.std(ddof=1))
    half = float(stats.t.ppf((1 + CONFIDENCE) / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "low": mean - half, "high": mean + half}


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances) that the two means are equal; NaN
    when either side has fewer than two values. Equal constant samples cannot be told apart (1)."""
    a, b = (np.asarray([v for v in x if not math.isnan(v)], dtype=float) for x in (a, b))
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def pareto(points: np.ndarray, maximise: list[bool]) -> np.ndarray:
    """Which rows of `points` (one column per objective) no other row dominates: at least as good
    on every objective and better on one. Rows with a missing value are never on the front."""
    signed = np.where(maximise, points, -points)  # larger is better on every column
    known = ~np.isnan(signed).any(axis=1)
    front = np.zeros(len(points), dtype=bool)
    for i in np.flatnonzero(known):
        others = signed[known]
        dominated = ((others >= signed[i]).all(axis=1) & (others > signed[i]).any(axis=1)).any()
        front[i] = not dominated
    return front
