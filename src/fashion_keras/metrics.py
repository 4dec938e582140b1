"""Scores for class probabilities: likelihood, Brier, calibration, and uncertainty as a detector.

Numpy in, floats or DataFrames out. Probabilities are `(N, num_classes)` rows that sum to 1,
labels are class indices, and an uncertainty is one score per image, higher meaning less sure
(e.g. `predictive_entropy`).
"""

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from fashion_keras.checks import check_int
from fashion_keras.errors import UserError

COVERAGES = tuple(np.round(np.arange(1, 21) / 20, 2))  # 0.05, 0.10, ..., 1.0
PROBABILITY_FLOOR = 1e-12  # probabilities are clipped to this before a log


def predictive_entropy(probabilities):
    """Entropy of each row of class probabilities, in nats (0 log 0 counts as 0).

    Example:
        >>> predictive_entropy(np.full((1, 10), 0.1))  # log(10)
        array([2.30258509])
    """
    p = np.asarray(probabilities, dtype="float64")
    return -(p * np.log(np.clip(p, np.finfo("float64").tiny, None))).sum(axis=-1)


def log_softmax(logits):
    """The log of the softmax of each row of `logits`, in float64.

    Example:
        >>> np.exp(log_softmax(np.zeros((1, 10))))  # 0.1 each
    """
    logits = np.asarray(logits, dtype="float64")
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def logit_scores(logits, y_true):
    """`(loss, accuracy)` of a network's logits: the cross-entropy of the true class, in
    nats, and the share of rows whose largest logit is the true class.

    Example:
        >>> logit_scores(np.eye(10)[[3, 7]], np.array([3, 1]))[1]
        0.5
    """
    log_p = log_softmax(logits)
    y = check_labels(y_true, len(log_p), log_p.shape[1])
    loss = -log_p[np.arange(len(y)), y].mean()
    return float(loss), float(np.mean(log_p.argmax(axis=1) == y))


def _check_probabilities(probabilities, y_true):
    """Probabilities as float64 (N, K) and labels as int (N,) in [0, K), or a ValueError."""
    p = np.asarray(probabilities, dtype="float64")
    if p.ndim != 2 or len(p) == 0:
        raise UserError(
            f"probabilities must be shaped (N, num_classes) with N >= 1. Received: shape {p.shape}"
        )
    return p, check_labels(y_true, len(p), p.shape[1])


def check_labels(y_true, n, num_classes):
    """Labels as an int array (n,) in [0, num_classes), or a ValueError."""
    y = np.asarray(y_true)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise UserError(
            f"y_true must be {n} integer class indices (not one-hot), one per image. "
            f"Received: y_true with shape {y.shape} and dtype {y.dtype}"
        )
    if y.min() < 0 or y.max() >= num_classes:
        raise UserError(
            f"y_true must be class indices in [0, {num_classes}). "
            f"Received: values from {y.min()} to {y.max()}"
        )
    return y


def negative_log_likelihood(probabilities, y_true):
    """Mean negative log probability of the true class, in nats (lower is better).

    Probabilities are clipped to at least 1e-12 first, so a confident mistake costs at most
    about 27.6 instead of infinity.

    Example:
        >>> negative_log_likelihood(np.full((2, 10), 0.1), np.array([3, 7]))  # log(10)
        2.302585092994046
    """
    p, y = _check_probabilities(probabilities, y_true)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], PROBABILITY_FLOOR, 1.0)).mean())


def brier_score(probabilities, y_true):
    """Brier score: mean over images of the summed squared error against the one-hot label.

    This is the multi-class convention of Brier (1950): the sum over classes, not the mean,
    so it ranges from 0 (certain and right) to 2 (certain and wrong); a uniform prediction
    over 10 classes scores 0.9.

    Example:
        >>> brier_score(np.full((1, 10), 0.1), np.array([0]))
        0.9
    """
    p, y = _check_probabilities(probabilities, y_true)
    one_hot = np.eye(p.shape[1])[y]
    return float(((p - one_hot) ** 2).sum(axis=1).mean())


def expected_calibration_error(probabilities, y_true, bins=15):
    """ECE: the count-weighted mean |confidence - accuracy| over equal-width confidence bins.

    The confidence of an image is its top class probability; bin b holds the confidences in
    [b / bins, (b + 1) / bins), the last bin includes 1. Empty bins do not count.

    Args:
        probabilities: class probabilities (N, num_classes).
        y_true: class indices (N,).
        bins: number of bins, at least 1.

    Returns:
        A float in [0, 1]; 0 when, in every bin, accuracy equals mean confidence.

    Example:
        >>> expected_calibration_error(np.eye(10)[[1, 2]], np.array([1, 2]))
        0.0
    """
    check_int("bins", bins, minimum=1)
    p, y = _check_probabilities(probabilities, y_true)
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1])
    counts = np.bincount(which, minlength=bins)
    gaps = np.abs(
        np.bincount(which, weights=confidence, minlength=bins)
        - np.bincount(which, weights=correct, minlength=bins)
    )
    return float(gaps.sum() / counts.sum())


def calibration_bins(probabilities, y_true, bins=15):
    """Per-bin confidence, accuracy and count of the top prediction, as a DataFrame."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = which == b
        rows.append(
            {
                "low": edges[b],
                "high": edges[b + 1],
                "count": int(mask.sum()),
                "confidence": float(confidence[mask].mean()) if mask.any() else np.nan,
                "accuracy": float(correct[mask].mean()) if mask.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _check_scores(name, values, length=None):
    values = np.asarray(values, dtype="float64")
    if values.ndim != 1 or len(values) == 0 or (length is not None and len(values) != length):
        wanted = f"{length} values" if length is not None else "at least one value"
        raise UserError(f"{name} must be 1-D with {wanted}. Received: shape {values.shape}")
    if not np.isfinite(values).all():
        raise UserError(f"{name} must be finite. Received: {np.sum(~np.isfinite(values))} not")
    return values


def error_detection_auroc(uncertainty, correct):
    """How well the uncertainty tells wrong predictions from right ones, as a ROC AUC.

    The wrong predictions are the positive class: 1.0 when every wrong prediction is more
    uncertain than every right one, 0.5 for a score that knows nothing, 0.0 when reversed.

    Args:
        uncertainty: a score per image, higher meaning less sure (e.g. entropy).
        correct: whether each image's prediction is right (booleans).

    Returns:
        The AUROC, or NaN when all predictions are right or all are wrong (then there is
        nothing to detect; NaN, rather than an error, keeps a report of a perfect model).

    Example:
        >>> error_detection_auroc([0.1, 0.4, 0.35, 0.8], [True, True, False, False])
        0.75
    """
    correct = np.asarray(correct)
    if correct.ndim != 1 or correct.dtype != bool:
        raise UserError(
            f"correct must be a 1-D boolean array. Received: shape {correct.shape}, "
            f"dtype {correct.dtype}"
        )
    uncertainty = _check_scores("uncertainty", uncertainty, length=len(correct))
    if correct.all() or not correct.any():
        return float("nan")
    return float(roc_auc_score(~correct, uncertainty))


def ood_auroc(uncertainty_in, uncertainty_out):
    """How well the uncertainty tells out-of-distribution images apart, as a ROC AUC.

    Out-of-distribution images are the positive class: 1.0 when each of them is more
    uncertain than every in-distribution image, 0.5 for no separation.

    Args:
        uncertainty_in: scores of in-distribution images (e.g. the test set's entropy).
        uncertainty_out: scores of out-of-distribution images.

    Example:
        >>> ood_auroc([0.1, 0.4], [0.35, 0.8])
        0.75
    """
    inside = _check_scores("uncertainty_in", uncertainty_in)
    outside = _check_scores("uncertainty_out", uncertainty_out)
    labels = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
    return float(roc_auc_score(labels, np.concatenate([inside, outside])))


def accuracy_coverage_curve(probabilities, y_true, uncertainty, coverages=COVERAGES):
    """Accuracy on the most certain images, for each share of images kept.

    For a coverage c, the `round(c * N)` images (at least 1) with the lowest uncertainty
    are kept (ties keep the earlier image) and predicted; the rest would go to a human.

    Args:
        probabilities: class probabilities (N, num_classes).
        y_true: class indices (N,).
        uncertainty: a score per image, higher meaning less sure.
        coverages: shares of images to keep, each in (0, 1].

    Returns:
        A DataFrame with one row per coverage: `coverage`, `count` (images kept),
        `accuracy` on them, and `threshold`, the highest uncertainty kept.

    Example:
        >>> curve = accuracy_coverage_curve(result.probabilities, y_test, result.entropy)
        >>> curve.set_index("coverage")["accuracy"][0.8]  # accuracy on the surest 80 %
    """
    p, y = _check_probabilities(probabilities, y_true)
    uncertainty = _check_scores("uncertainty", uncertainty, length=len(y))
    coverages = np.atleast_1d(np.asarray(coverages, dtype="float64"))
    if coverages.ndim != 1 or len(coverages) == 0 or not ((coverages > 0) & (coverages <= 1)).all():
        raise UserError(f"coverages must be shares in (0, 1]. Received: coverages={coverages}")
    order = np.argsort(uncertainty, kind="stable")
    correct = (p.argmax(axis=1) == y)[order]
    rows = []
    for coverage in coverages:
        count = max(1, round(coverage * len(y)))
        rows.append(
            {
                "coverage": float(coverage),
                "count": count,
                "accuracy": float(correct[:count].mean()),
                "threshold": float(uncertainty[order[count - 1]]),
            }
        )
    return pd.DataFrame(rows)
