"""Statistics over runs: t confidence intervals of means and of differences, from scipy.stats.

Used by `fashion_keras.compare` (two variants over seeds), `fashion_keras.study` (a grid
over seeds) and `fashion_keras.methods` (uncertainty methods over seeds, and one ensemble).
"""

import numpy as np
from scipy import stats


def difference_interval(a, b, paired, confidence=0.95):
    """The mean difference `a - b` with its t confidence interval: paired, or Welch's.

    Args:
        a, b: the two samples (e.g. test accuracies over seeds).
        paired: True when `a[i]` and `b[i]` belong together (the same seed): a paired t
            interval (`scipy.stats.ttest_rel`); False for Welch's (`ttest_ind`, unequal
            variances).
        confidence: the interval's confidence level.

    Returns:
        `(mean difference, low, high)` as floats.

    Example:
        >>> difference_interval([0.91, 0.94, 0.94, 0.955], [0.90, 0.91, 0.92, 0.915], True)
        (0.025..., 0.0044..., 0.0455...)
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    result = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(confidence)
    return float(a.mean() - b.mean()), float(interval.low), float(interval.high)


def mean_half_width(values, confidence=0.95):
    """Half the width of the t confidence interval of the mean of `values` (NaN for fewer
    than two values).

    Example:
        >>> mean_half_width([0.68, 0.70, 0.72])  # 0.02 * t(0.975, 2) / sqrt(3)
        0.0496...
    """
    values = np.asarray(values, float)
    if len(values) < 2:
        return np.nan
    quantile = stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
    return float(quantile * values.std(ddof=1) / np.sqrt(len(values)))


def paired_p_value(a, b):
    """The two-sided p-value of a paired t test of `a` against `b` (`scipy.stats.ttest_rel`);
    NaN for fewer than two pairs."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(stats.ttest_rel(a, b).pvalue) if len(a) > 1 else np.nan


def holm(p_values):
    """Holm's step-down correction of p-values for multiple comparisons.

    The k-th smallest of m p-values is multiplied by m - k + 1, and each adjusted value is at
    least the one before it (capped at 1), so that rejecting every adjusted p below alpha
    keeps the chance of any false claim among the m below alpha. NaN stays NaN.

    Example:
        >>> holm([0.01, 0.04, 0.03, 0.20])
        [0.04, 0.09, 0.09, 0.2]
    """
    p = np.asarray(p_values, float)
    adjusted = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(valid) - k) * p[i]))
        adjusted[i] = running
    return [float(round(a, 12)) for a in adjusted]


def one_sample_p_value(values, value):
    """The two-sided p-value of a one-sample t test of `values` against the number `value`
    (`scipy.stats.ttest_1samp`): does their mean differ from it? NaN for fewer than two values.

    Example:
        >>> one_sample_p_value([0.30, 0.32, 0.31], 0.25)  # three seeds against one ensemble
        0.0091...
    """
    values = np.asarray(values, float)
    return float(stats.ttest_1samp(values, value).pvalue) if len(values) > 1 else np.nan
