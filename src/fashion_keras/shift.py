"""Accuracy and calibration as the test images drift away from the training images.

Ovadia et al. (2019, "Can you trust your model's uncertainty?") compare uncertainty methods
by how their accuracy and calibration decay under growing dataset shift. `SHIFTS` lists four
kinds of shift, each as a series of intensities from none to severe; `shifted_images` makes
one point of a series (no download), `shift_subset` picks the test images to follow, and
`shift_series` scores any prediction method over them all.
`fashion_keras.plots.plot_shift_series` draws the result.
"""

import numbers

import numpy as np
import pandas as pd
from scipy import ndimage

from fashion_keras.checks import check_int
from fashion_keras.data import NUM_CLASSES
from fashion_keras.errors import UserError
from fashion_keras.metrics import check_labels, expected_calibration_error, negative_log_likelihood
from fashion_keras.uncertainty import Predictions

# Each series starts at its identity (no shift) and grows more severe.
SHIFTS = {
    "rotation": (0, 15, 30, 45, 60, 90, 120, 150, 180),  # degrees, counter-clockwise
    "translation": (0, 2, 4, 6, 8, 10, 12, 14),  # pixels, in a direction drawn per image
    "noise": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),  # standard deviation of added Gaussian noise
    "contrast": (1.0, 0.8, 0.6, 0.4, 0.2, 0.1),  # factor on each pixel's distance to the mean
}
IDENTITY = {name: intensities[0] for name, intensities in SHIFTS.items()}


def _rotate(x, degrees, rng):
    # Positive angles turn counter-clockwise as shown, as np.rot90(x, axes=(1, 2)) does.
    return ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1, mode="constant")


DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (down, right): right, left, down, up


def moved(x, down, right):
    """Images `x` (n, h, w, c) moved `down` and `right` by whole pixels (negative: up, left),
    without resampling: each is a window of the zero-padded batch, the gap filled with 0."""
    pixels = max(abs(down), abs(right))
    padded = np.pad(x, ((0, 0), (pixels, pixels), (pixels, pixels), (0, 0)))
    height, width = x.shape[1:3]
    top, left = pixels - down, pixels - right
    return padded[:, top : top + height, left : left + width]


def _translate(x, pixels, rng):
    which = rng.integers(0, len(DIRECTIONS), size=len(x))
    out = np.empty_like(x)
    for k, (down, right) in enumerate(DIRECTIONS):
        out[which == k] = moved(x[which == k], down * pixels, right * pixels)
    return out


def _add_noise(x, stddev, rng):
    return x + rng.normal(0, 1, size=x.shape) * stddev


def _scale_contrast(x, factor, rng):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return (x - mean) * factor + mean


SHIFT_FUNCTIONS = {
    "rotation": _rotate,
    "translation": _translate,
    "noise": _add_noise,
    "contrast": _scale_contrast,
}


def _check_shift(shift):
    if shift not in SHIFT_FUNCTIONS:
        raise UserError(f"Unknown shift {shift!r}. Known shifts: {', '.join(SHIFT_FUNCTIONS)}")


def _check_intensity(shift, intensity):
    if shift == "translation":
        check_int("intensity", intensity, minimum=0)  # whole pixels
    elif (
        isinstance(intensity, bool)
        or not isinstance(intensity, numbers.Real)
        or not np.isfinite(intensity)
        or (shift != "rotation" and intensity < 0)
    ):
        wanted = "any finite number of degrees" if shift == "rotation" else "a number >= 0"
        raise UserError(
            f"The {shift} intensity must be {wanted}. Received: intensity={intensity!r}"
        )


def _check_x(x):
    x = np.asarray(x, dtype="float32")
    if x.ndim != 4 or len(x) == 0:
        raise UserError(
            f"x must be images shaped (N, height, width, channels). Received: x.shape={x.shape}"
        )
    if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise UserError("x must hold pixels in [0, 1], as `load_data` returns them")
    return x


def shifted_images(x, shift, intensity, seed=0):
    """The images `x` under one kind of shift at one intensity.

    - `"rotation"`: turned by `intensity` degrees counter-clockwise about the centre
      (bilinear, the corners filled with 0).
    - `"translation"`: moved by `intensity` whole pixels right, left, down or up, a direction
      drawn per image from `seed`; what moves out is lost, what moves in is 0.
    - `"noise"`: plus Gaussian noise of standard deviation `intensity`, clipped to [0, 1].
    - `"contrast"`: each image's pixels moved towards its mean, `(x - mean) * intensity +
      mean`, clipped to [0, 1]; 1 leaves the image, 0 makes it flat grey.

    The same seed draws the same directions and the same noise (scaled) at every intensity,
    so a series grows one shift rather than drawing a new one at each step. At the identity
    intensity (`IDENTITY[shift]`: 0, or 1 for contrast) the images come back unchanged.

    Args:
        x: images (N, height, width, channels) with pixels in [0, 1].
        shift: a name of `SHIFTS`.
        intensity: how strong, in the shift's unit (see `SHIFTS`): any number of degrees,
            a whole number of pixels, a standard deviation or a factor, each at least 0.
        seed: seed of the translation directions and of the noise.

    Returns:
        float32 images shaped like `x`, in [0, 1]; a function of (x, shift, intensity,
        seed) only.

    Raises:
        UserError: an unknown shift (the message lists the known ones), an intensity out
            of range, or `x` not images in [0, 1].

    Example:
        >>> rotated = shifted_images(x_test, "rotation", 45)
        >>> [shifted_images(x_test, "noise", s) for s in SHIFTS["noise"]]
    """
    _check_shift(shift)
    _check_intensity(shift, intensity)
    x = _check_x(x)
    check_int("seed", seed, minimum=0)
    if intensity == IDENTITY[shift]:
        return x.copy()  # exactly, without the float rounding of a resampling
    shifted = SHIFT_FUNCTIONS[shift](x, intensity, np.random.default_rng(seed))
    return np.clip(shifted, 0, 1).astype("float32")


def shift_subset(x, y, limit, seed=0):
    """At most `limit` of the images `x` with their labels `y`, for a shift series: each point
    of a series predicts them all once, and a few thousand images are enough.

    Args:
        x: images (N, ...).
        y: their labels (N,).
        limit: the most images kept, at least 1.
        seed: seed of the random subset; the same seed keeps the same images.

    Returns:
        `(x, y)` as given when `limit >= N`, else a random subset in the images' order.

    Example:
        >>> x, y = shift_subset(x_test, y_test, 2000)
        >>> shift_series(lambda images: deterministic_predict(model, images), x, y)
    """
    check_int("limit", limit, minimum=1)
    if len(x) != len(y):
        raise UserError(f"x and y must be as long. Received: {len(x)} images, {len(y)} labels")
    if limit >= len(x):
        return x, y
    index = np.sort(np.random.default_rng(seed).choice(len(x), size=limit, replace=False))
    return x[index], y[index]


def _check_predicted(predicted, n):
    if not isinstance(predicted, Predictions) or len(predicted.probabilities) != n:
        raise UserError(
            f"predict_fn must return the Predictions of all {n} images, e.g. "
            "`lambda images: deterministic_predict(model, images)`. "
            f"Received: {type(predicted).__name__}"
        )


def _score(predicted, y, bins):
    p = predicted.probabilities
    return {
        "accuracy": float((p.argmax(axis=1) == y).mean()),
        "negative_log_likelihood": negative_log_likelihood(p, y),
        "expected_calibration_error": expected_calibration_error(p, y, bins),
    }


def shift_series(predict_fn, x, y, shifts=SHIFTS, seed=0, bins=15):
    """Accuracy, likelihood and calibration of one prediction method along shift series.

    Args:
        predict_fn: images -> `fashion_keras.uncertainty.Predictions`, so any method fits,
            e.g. `lambda images: mc_predict(model, images, samples=30, seed=0)`.
        x: test images (N, 28, 28, 1) in [0, 1]; a few thousand are enough. `predict_fn` is
            called once, on the shifted copies of `x` for every point, one after another.
        y: their class indices (N,), each in [0, 10).
        shifts: dict shift name -> intensities, by default all of `SHIFTS`.
        seed: seed of `shifted_images`.
        bins: confidence bins of the expected calibration error.

    Returns:
        A DataFrame with one row per (shift, intensity), in the order of `shifts`:
        `shift`, `intensity`, `accuracy`, `negative_log_likelihood` and
        `expected_calibration_error`.

    Raises:
        UserError: an unknown shift, an empty series, labels that do not fit `x`, or a
            `predict_fn` that does not return `Predictions` for every image.

    Example:
        >>> frame = shift_series(lambda images: deterministic_predict(model, images), x, y)
        >>> frame.groupby("shift")["accuracy"].min()
    """
    if not callable(predict_fn):
        raise UserError(f"predict_fn must be callable. Received: {type(predict_fn).__name__}")
    x = _check_x(x)
    y = check_labels(y, len(x), NUM_CLASSES)
    check_int("bins", bins, minimum=1)
    for shift, intensities in shifts.items():
        _check_shift(shift)
        if len(intensities) == 0:
            raise UserError(f"shifts[{shift!r}] must hold at least one intensity. Received: ()")
    points = [
        (shift, intensity) for shift, intensities in shifts.items() for intensity in intensities
    ]
    # One call for every point: one Keras predict (and one sampler's passes), not one per point.
    images = np.concatenate([shifted_images(x, *point, seed) for point in points])
    predicted = predict_fn(images)
    _check_predicted(predicted, len(images))
    rows = []
    for i, (shift, intensity) in enumerate(points):
        part = predicted.select(slice(i * len(x), (i + 1) * len(x)))
        rows.append({"shift": shift, "intensity": intensity, **_score(part, y, bins)})
    return pd.DataFrame(rows)
