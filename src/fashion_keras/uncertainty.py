"""How sure is the model? Monte Carlo dropout, its alternatives, and out-of-distribution inputs.

`mc_predict(model, x)` averages the softmax of many forward passes in which only the Dropout
layers are active (Gal & Ghahramani 2016, "Dropout as a Bayesian approximation"); batch
normalisation, augmentation layers and the test-time mirror keep their inference behaviour.
`deterministic_predict` gives the same structure for one ordinary pass, so a model without
dropout gets the same metrics from its softmax alone. The alternatives give it too:
`temperature_predict` divides one pass's logits by a temperature fitted on validation data
(`fit_temperature`, Guo et al. 2017), and `ensemble_predict` averages independently trained
models (Lakshminarayanan et al. 2017), their disagreement taking the place of dropout's.

`ood_sets` makes out-of-distribution images without a download; `uncertainty_summary`
computes everything a run report needs for one model, with the scores of
`fashion_keras.metrics`; `fashion_keras.plots` draws it.
"""

import dataclasses
import sys

import keras
import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from sklearn.datasets import load_digits

from fashion_keras.checks import check_int, check_positive
from fashion_keras.errors import UserError
from fashion_keras.metrics import (
    accuracy_coverage_curve,
    brier_score,
    check_labels,
    error_detection_auroc,
    expected_calibration_error,
    log_softmax,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
)

NOISE_STDDEV = 0.3  # of the Gaussian noise in the "noise" out-of-distribution set


@dataclasses.dataclass(frozen=True)
class Predictions:
    """Mean class probabilities of one or more forward passes, and their uncertainty.

    Attributes:
        probabilities: mean softmax over the passes, float64 (N, num_classes).
        entropy: predictive entropy of `probabilities` per image, in nats
            (0 for a one-hot prediction, log(num_classes) for a uniform one).
        mutual_information: `entropy` minus the mean entropy of the single passes: the part
            of the uncertainty that comes from disagreement between the passes (epistemic).
            At least 0; all zeros for one deterministic pass.
        samples: the number of forward passes (of the members, for an ensemble).
        method: `"mc_dropout"`, `"deterministic"`, `"temperature"` or `"ensemble"`.
    """

    probabilities: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    samples: int
    method: str

    def select(self, index):
        """The predictions of the images `index` (a slice, mask or index array) only."""
        return dataclasses.replace(
            self,
            probabilities=self.probabilities[index],
            entropy=self.entropy[index],
            mutual_information=self.mutual_information[index],
        )


class AlwaysDropout(keras.layers.Layer):
    """Wraps a Dropout layer so that it drops in every call, in training or not.

    `mc_dropout_model` puts it where the model's Dropout layers were. The wrapped layer is
    called with `training=True`; the model's `training` flag never reaches it, so every other
    layer keeps its inference behaviour.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer
        self.supports_masking = True

    def call(self, inputs):
        return self.layer(inputs, training=True)

    def compute_output_shape(self, input_shape):
        return input_shape


def _check_seed(name, value):
    if value is not None:
        check_int(name, value, minimum=0)


def dropout_layers(model):
    """The Dropout layers (rate above 0) of `model` that `mc_predict` samples.

    Includes `keras.layers.Dropout` subclasses (`SpatialDropout2D`, ...) and the layers of
    nested models.

    Example:
        >>> [layer.name for layer in dropout_layers(build_model("dropout"))]
        ['block1_dropout', 'block2_dropout', 'block3_dropout', 'dense1_dropout']
    """
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += dropout_layers(layer)
        elif isinstance(layer, keras.layers.Dropout) and layer.rate > 0:
            found.append(layer)
    return found


def mc_dropout_model(model, seed=None):
    """A copy of `model` whose Dropout layers drop at every call, inference included.

    Built with `keras.models.clone_model`: each Dropout layer is rebuilt from its config
    with its own seed and wrapped in `AlwaysDropout`; every other layer is rebuilt from its
    config; then the copy gets `model`'s weights. `model` itself is not changed.

    Args:
        model: a functional or Sequential Keras model with at least one Dropout layer.
        seed: None, or an integer from which each Dropout layer gets its own seed, so
            the copy's sequence of predictions is reproducible. With None, Keras draws
            the seeds (reproducible after `keras.utils.set_random_seed`).

    Returns:
        The copy, a `keras.Model`; each `predict` call on it is one stochastic pass.

    Raises:
        ValueError: `model` has no Dropout layer with a rate above 0.

    Example:
        >>> sampler = mc_dropout_model(build_model("dropout"), seed=0)
        >>> logits = sampler.predict(x_test)  # one Monte Carlo dropout pass
    """
    _check_seed("seed", seed)
    layers = dropout_layers(model)
    if not layers:
        raise UserError(
            f"Model {model.name!r} has no Dropout layer with a rate above 0, so Monte Carlo "
            "dropout would repeat one deterministic prediction. Use "
            "`deterministic_predict(model, x)` (or `model.predict`) for this model, or train "
            'a variant with dropout, e.g. `build_model("dropout")` or `build_model("improved")`.'
        )
    if seed is None:
        seeds = {id(layer): None for layer in layers}
    else:
        drawn = np.random.default_rng(seed).integers(0, 2**31 - 1, size=len(layers))
        seeds = {id(layer): int(s) for layer, s in zip(layers, drawn, strict=True)}

    def clone_layer(layer):
        config = layer.get_config()
        if id(layer) not in seeds:
            return layer.__class__.from_config(config)
        config["seed"] = seeds[id(layer)]
        dropout = layer.__class__.from_config(config)
        return AlwaysDropout(dropout, name=layer.name, dtype=layer.dtype_policy)

    sampler = keras.models.clone_model(model, clone_function=clone_layer, recursive=True)
    sampler.set_weights(model.get_weights())
    return sampler


def _check_images(model, x):
    """`x` as a float32 array shaped like the model's input, or a ValueError."""
    if len(model.inputs) != 1:
        raise UserError(f"Expected a model with one input. Received: {len(model.inputs)} inputs")
    expected = tuple(model.inputs[0].shape)
    x = np.asarray(x, dtype="float32")
    fits = x.ndim == len(expected) and all(
        want is None or want == got for want, got in zip(expected[1:], x.shape[1:], strict=True)
    )
    if not fits or len(x) == 0:
        shape = ", ".join("N" if d is None else str(d) for d in expected)
        raise UserError(
            f"x must hold at least one image shaped like the model's input, ({shape}). "
            f"Received: x.shape={x.shape}"
        )
    return x


def _resolve_verbose(verbose):
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 0
    if verbose not in (0, 1, 2):  # True and False count as 1 and 0
        raise UserError(f'verbose must be "auto", 0, 1 or 2. Received: verbose={verbose!r}')
    return int(verbose)


def _average_passes(logits_of_passes, passes, method):
    """`Predictions` of the mean softmax of `passes` logit arrays (an iterable, read once)."""
    probabilities, pass_entropy = 0.0, 0.0
    for logits in logits_of_passes:
        log_p = log_softmax(logits)
        p = np.exp(log_p)
        probabilities = probabilities + p / passes
        pass_entropy = pass_entropy - (p * log_p).sum(axis=-1) / passes
    entropy = predictive_entropy(probabilities)
    # Never negative in exact arithmetic (entropy is concave); clip the float rounding.
    mutual_information = np.maximum(entropy - pass_entropy, 0.0)
    return Predictions(probabilities, entropy, mutual_information, passes, method)


def mc_predict(model, x, samples=30, seed=None, batch_size=512, verbose="auto"):
    """Monte Carlo dropout: the mean of `samples` passes with only the Dropout layers active.

    Calling the model with `training=True` would also switch batch normalisation to batch
    statistics (and update its moving averages) and turn on the augmentation layers; here
    only the Dropout layers drop (see `mc_dropout_model`), everything else runs as in
    `model.predict`, and `model` is left unchanged.

    Args:
        model: a Keras model that outputs logits and has Dropout layers.
        x: images shaped like the model's input, e.g. (N, 28, 28, 1).
        samples: number of stochastic forward passes, at least 1.
        seed: None or an integer; the same seed gives the same result.
        batch_size: images per batch in each pass.
        verbose: 0 (silent), 1 or 2 (a `keras.utils.Progbar` over the passes, in Keras'
            modes), or `"auto"`: 1 when standard output is a terminal, else 0.

    Returns:
        `Predictions` with the mean probabilities, predictive entropy and mutual information.

    Raises:
        ValueError: the model has no Dropout layer, or an argument is out of range.

    Example:
        >>> result = mc_predict(model, x_test, samples=30, seed=0)
        >>> result.probabilities.shape, result.mutual_information.shape
        ((10000, 10), (10000,))
    """
    check_int("samples", samples, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    verbose = _resolve_verbose(verbose)
    x = _check_images(model, x)
    return mc_passes(mc_dropout_model(model, seed=seed), x, samples, batch_size, verbose)


def _samples_dropout(model):
    return any(
        isinstance(layer, AlwaysDropout)
        or (isinstance(layer, keras.Model) and _samples_dropout(layer))
        for layer in model.layers
    )


def mc_passes(sampler, x, samples=30, batch_size=512, verbose="auto"):
    """`mc_predict` with a sampler already built by `mc_dropout_model`: for many batches of
    images, one copy of the model instead of one per call.

    The sampler's dropout masks go on where the last call left them, so a batch's result
    depends on the calls before it (and is reproducible with the sampler's seed).

    Args:
        sampler: `mc_dropout_model(model, seed)`.
        x, samples, batch_size, verbose: as for `mc_predict`.

    Returns:
        `Predictions`, as `mc_predict` returns them.

    Example:
        >>> sampler = mc_dropout_model(model, seed=0)
        >>> results = [mc_passes(sampler, batch, samples=30) for batch in batches]
    """
    check_int("samples", samples, minimum=1)
    check_int("batch_size", batch_size, minimum=1)
    verbose = _resolve_verbose(verbose)
    x = _check_images(sampler, x)
    if not _samples_dropout(sampler):
        raise UserError(
            f"sampler must be a model made by `mc_dropout_model(model)`. Received: "
            f"sampler={sampler.name!r} (its Dropout layers would not drop)"
        )
    progbar = keras.utils.Progbar(samples, verbose=verbose, unit_name="pass")

    def passes():
        for i in range(samples):
            yield sampler.predict(x, batch_size=batch_size, verbose=0)
            progbar.update(i + 1)

    return _average_passes(passes(), samples, "mc_dropout")


def deterministic_predict(model, x, batch_size=512):
    """One ordinary inference pass (`model.predict`), as `Predictions`.

    Mutual information is all zeros: one pass has nothing to disagree with.

    Args:
        model: a Keras model that outputs logits.
        x: images shaped like the model's input, e.g. (N, 28, 28, 1).
        batch_size: images per batch.

    Returns:
        `Predictions` with `samples=1`.

    Example:
        >>> deterministic_predict(build_model("baseline"), x_test).entropy.max() <= np.log(10)
        True
    """
    return _one_pass(model, x, batch_size, temperature=1.0, method="deterministic")


def _one_pass(model, x, batch_size, temperature, method):
    """`Predictions` of one inference pass with the logits divided by `temperature`."""
    check_int("batch_size", batch_size, minimum=1)
    x = _check_images(model, x)
    logits = np.asarray(model.predict(x, batch_size=batch_size, verbose=0), dtype="float64")
    probabilities = np.exp(log_softmax(logits / temperature))
    entropy = predictive_entropy(probabilities)
    return Predictions(probabilities, entropy, np.zeros_like(entropy), 1, method)


# --------------------------------------------------------------------------- temperature


def _check_logits(logits):
    logits = np.asarray(logits, dtype="float64")
    if logits.ndim != 2 or len(logits) == 0 or logits.shape[1] < 2:
        raise UserError(
            "logits must be shaped (N, num_classes) with N >= 1 and at least 2 classes, "
            f"e.g. model.predict(x_val). Received: logits.shape={logits.shape}"
        )
    if not np.isfinite(logits).all():
        raise UserError(
            f"logits must be finite. Received: {np.sum(~np.isfinite(logits))} values that are not"
        )
    return logits


def _temperature_nll(log_temperature, logits, y):
    log_p = log_softmax(logits / np.exp(log_temperature))
    return -log_p[np.arange(len(y)), y].mean()


def fit_temperature(logits, y, bounds=(0.05, 20.0)):
    """Temperature scaling (Guo et al. 2017): the one T > 0 that minimises the negative
    log-likelihood of softmax(logits / T) on held-out labels.

    Dividing by T keeps every prediction's top class, so accuracy does not change; T > 1
    softens an overconfident model, T < 1 sharpens an underconfident one. The likelihood is
    convex in 1 / T, so the bounded search over log T (scipy's `minimize_scalar`, float64)
    finds its one minimum. Fit T on the validation split, then report on the test split.

    Args:
        logits: the model's outputs on validation images, (N, num_classes), e.g.
            `model.predict(x_val)`.
        y: their class indices (N,).
        bounds: the smallest and largest temperature searched, `0 < low < high`. A result
            at a bound says the data wants a more extreme temperature (e.g. at `low` when
            every validation image is classified correctly).

    Returns:
        The temperature, a float within `bounds`.

    Raises:
        UserError: the logits or labels have the wrong shape or values, or `bounds` is not
            an increasing pair of positive numbers.

    Example:
        >>> temperature = fit_temperature(model.predict(x_val), y_val)
        >>> scaled = temperature_predict(model, x_test, temperature)
    """
    logits = _check_logits(logits)
    y = check_labels(y, len(logits), logits.shape[1])
    low, high = _check_bounds(bounds)
    found = minimize_scalar(
        _temperature_nll,
        bounds=(np.log(low), np.log(high)),
        args=(logits, y),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.clip(np.exp(found.x), low, high))


def _check_bounds(bounds):
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise UserError(f"bounds must be a pair (low, high). Received: bounds={bounds!r}")
    low, high = check_positive("bounds[0]", bounds[0]), check_positive("bounds[1]", bounds[1])
    if low >= high:
        raise UserError(f"bounds must be increasing, low < high. Received: bounds={bounds!r}")
    return low, high


def temperature_predict(model, x, temperature, batch_size=512):
    """One ordinary inference pass with the logits divided by `temperature`, as `Predictions`.

    The same pass as `deterministic_predict` (which is `temperature=1`): the top class of
    every image stays, only the confidence changes. Mutual information is all zeros.

    Args:
        model: a Keras model that outputs logits.
        x: images shaped like the model's input, e.g. (N, 28, 28, 1).
        temperature: a number above 0, usually `fit_temperature` on validation data.
        batch_size: images per batch.

    Returns:
        `Predictions` with `samples=1` and `method="temperature"`.

    Raises:
        UserError: `temperature` is not a finite number above 0, or `x` does not fit.

    Example:
        >>> temperature = fit_temperature(model.predict(x_val), y_val)
        >>> temperature_predict(model, x_test, temperature).probabilities.shape
        (10000, 10)
    """
    temperature = check_positive("temperature", temperature)
    return _one_pass(model, x, batch_size, temperature=temperature, method="temperature")


# --------------------------------------------------------------------------- ensembles


def check_ensemble(models):
    """The members of an ensemble as a list, or a `UserError` that says what does not fit.

    Args:
        models: a list or tuple of at least one `keras.Model`, each with one input of the
            same shape and the same number of output classes.

    Returns:
        `models` as a list.

    Example:
        >>> members = check_ensemble([fashion_keras.load_model(p) for p in paths])
    """
    if isinstance(models, keras.Model):
        raise UserError(
            "models must be a list of keras.Model. Received: one model; pass [model] for an "
            "ensemble of one"
        )
    if not isinstance(models, (list, tuple)) or not models:
        raise UserError(
            f"models must be a non-empty list of keras.Model. Received: models={models!r}"
        )
    for i, model in enumerate(models):
        if not isinstance(model, keras.Model):
            raise UserError(
                f"models must all be keras.Model. Received: models[{i}] of type "
                f"{type(model).__name__}"
            )
    shapes = [(tuple(m.inputs[0].shape[1:]), m.outputs[0].shape[-1]) for m in models]
    for i, shape in enumerate(shapes):
        if len(models[i].inputs) != 1 or shape != shapes[0]:
            raise UserError(
                "The members of an ensemble must take the same images and predict the same "
                f"classes. Received: models[0] takes {shapes[0][0]} -> {shapes[0][1]} classes, "
                f"models[{i}] takes {shape[0]} -> {shape[1]} classes"
            )
    return list(models)


def ensemble_predict(models, x, batch_size=512, verbose="auto"):
    """A deep ensemble: the mean softmax of several models, with their disagreement.

    The same average as Monte Carlo dropout's (`mc_passes`), with one pass per member
    instead of one per dropout mask: `entropy` is the predictive entropy of the mean, and
    `mutual_information` is that entropy minus the members' mean entropy.

    Args:
        models: a list of Keras models that output logits, e.g. one architecture trained
            with different seeds (see `check_ensemble`).
        x: images shaped like the models' input, e.g. (N, 28, 28, 1).
        batch_size: images per batch.
        verbose: 0 (silent), 1 or 2 (a progress bar over the members), or `"auto"`: 1 when
            standard output is a terminal, else 0.

    Returns:
        `Predictions` with `samples=len(models)` and `method="ensemble"`.

    Raises:
        UserError: `models` is empty, holds something other than Keras models or models
            that do not fit together, or an argument is out of range.

    Example:
        >>> members = [fashion_keras.load_model(f"runs/seed{s}/model.keras") for s in (1, 2, 3)]
        >>> ensemble_predict(members, x_test).mutual_information.mean()
    """
    models = check_ensemble(models)
    check_int("batch_size", batch_size, minimum=1)
    verbose = _resolve_verbose(verbose)
    x = _check_images(models[0], x)
    progbar = keras.utils.Progbar(len(models), verbose=verbose, unit_name="model")

    def passes():
        for i, model in enumerate(models):
            yield model.predict(x, batch_size=batch_size, verbose=0)
            progbar.update(i + 1)

    return _average_passes(passes(), len(models), "ensemble")


# --------------------------------------------------------------------------- OOD sets


def _subset(rng, n, limit):
    """Sorted indices of `limit` of `n` items drawn by `rng`, or all of them."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=limit, replace=False))


def ood_sets(x_test, rng_seed=0, limit=None):
    """Out-of-distribution images, none of which needs a download.

    - `"digits"`: scikit-learn's 1,797 bundled 8x8 handwritten digits (values 0-16, light
      strokes on a dark background like Fashion-MNIST's garments), scaled to [0, 1] and
      resized to 28x28 (bilinear).
    - `"inverted"`: test images as negatives, `1 - x` (dark garments on white).
    - `"rotated"`: test images turned 90 degrees counter-clockwise.
    - `"noise"`: test images plus Gaussian noise of standard deviation 0.3, clipped to
      [0, 1]: the garment stays visible under heavy grain (a covariate shift, not noise
      alone, which would be too easy to detect to tell methods apart).

    Args:
        x_test: Fashion-MNIST test images, float32 (N, 28, 28, 1) in [0, 1].
        rng_seed: seed of the random subsets and of the noise.
        limit: None, or the most images per set: a random subset (the same test images
            in the three shifted sets), fixed by `rng_seed`.

    Returns:
        A dict name -> float32 images (n, 28, 28, 1) in [0, 1], in the order above.

    Example:
        >>> {name: len(x) for name, x in ood_sets(x_test, limit=1000).items()}
        {'digits': 1000, 'inverted': 1000, 'rotated': 1000, 'noise': 1000}
    """
    x_test = np.asarray(x_test, dtype="float32")
    if x_test.ndim != 4 or x_test.shape[1:] != (28, 28, 1) or len(x_test) == 0:
        raise UserError(
            f"x_test must be images shaped (N, 28, 28, 1). Received: x_test.shape={x_test.shape}"
        )
    if not (np.isfinite(x_test).all() and x_test.min() >= 0 and x_test.max() <= 1):
        raise UserError("x_test must hold pixels in [0, 1], as `load_data` returns them")
    _check_seed("rng_seed", rng_seed)
    if limit is not None:
        check_int("limit", limit, minimum=1)
    rng = np.random.default_rng(rng_seed)
    digits = load_digits().images
    digits = digits[_subset(rng, len(digits), limit), :, :, None].astype("float32") / 16
    digits = keras.ops.image.resize(digits, (28, 28), interpolation="bilinear")
    shown = x_test[_subset(rng, len(x_test), limit)]
    noise = rng.normal(0, NOISE_STDDEV, size=shown.shape).astype("float32")
    return {
        "digits": np.clip(keras.ops.convert_to_numpy(digits), 0, 1),
        "inverted": 1 - shown,
        "rotated": np.ascontiguousarray(np.rot90(shown, k=1, axes=(1, 2))),
        "noise": np.clip(shown + noise, 0, 1),
    }


# --------------------------------------------------------------------------- summary


def _method_metrics(test, y_test, bins):
    correct = test.probabilities.argmax(axis=1) == y_test
    by_mi = test.method != "deterministic"  # one pass has no mutual information to rank by
    return {
        "accuracy": float(correct.mean()),
        "negative_log_likelihood": negative_log_likelihood(test.probabilities, y_test),
        "brier_score": brier_score(test.probabilities, y_test),
        "expected_calibration_error": expected_calibration_error(test.probabilities, y_test, bins),
        "error_auroc_entropy": error_detection_auroc(test.entropy, correct),
        "error_auroc_mutual_information": (
            error_detection_auroc(test.mutual_information, correct) if by_mi else float("nan")
        ),
    }


def _ood_rows(method, test, shifted):
    rows = []
    for name, result in shifted.items():
        by_mi = method != "deterministic"
        rows.append(
            {
                "method": method,
                "dataset": name,
                "images": len(result.entropy),
                "auroc_entropy": ood_auroc(test.entropy, result.entropy),
                "auroc_mutual_information": (
                    ood_auroc(test.mutual_information, result.mutual_information)
                    if by_mi
                    else float("nan")
                ),
            }
        )
    return rows


def uncertainty_summary(
    model, x_test, y_test, *, samples=30, seed=0, limit_ood=2000, bins=15, batch_size=512, verbose=0
):
    """Everything a run report shows about one model's uncertainty.

    Predicts the test set and the `ood_sets` once deterministically and, when the model has
    Dropout layers, once with Monte Carlo dropout (`mc_predict`).

    Args:
        model: a Keras model that outputs logits.
        x_test: test images (N, 28, 28, 1) in [0, 1].
        y_test: their class indices (N,).
        samples: Monte Carlo dropout passes.
        seed: seed of the dropout masks and of the out-of-distribution sets.
        limit_ood: the most images per out-of-distribution set (None for all).
        bins: confidence bins of the expected calibration error.
        batch_size: images per batch.
        verbose: progress bar over the Monte Carlo passes (see `mc_predict`).

    Returns:
        A dict:
        - `"metrics"`: DataFrame indexed by method (`"deterministic"`, `"mc_dropout"`) with
          accuracy, negative_log_likelihood, brier_score, expected_calibration_error,
          error_auroc_entropy and error_auroc_mutual_information (NaN for deterministic).
        - `"coverage"`: DataFrame of `accuracy_coverage_curve` by entropy, with a `method`
          column.
        - `"ood"`: DataFrame with method, dataset, images, auroc_entropy and
          auroc_mutual_information of each out-of-distribution set against the test set.
        - `"entropy"`: method -> {"correct": ..., "incorrect": ...}, the test images'
          predictive entropies, for `plot_entropy_histograms`.
        - `"samples"`: the Monte Carlo passes (0 when the model has no dropout).
        - `"predictions"`: method -> the test images' `Predictions` (so a caller that needs
          the test set's probabilities does not predict it again).

    Example:
        >>> summary = uncertainty_summary(model, x_test, y_test, samples=30)
        >>> summary["metrics"].loc["mc_dropout", "negative_log_likelihood"]
    """
    x_test = _check_images(model, x_test)
    y_test = check_labels(y_test, len(x_test), model.outputs[0].shape[-1])
    shifted = ood_sets(x_test, rng_seed=seed, limit=limit_ood)
    # One prediction over all images: one Monte Carlo sampler, one progress bar.
    images = np.concatenate([x_test, *shifted.values()])
    ends = np.cumsum([len(x_test), *(len(v) for v in shifted.values())])
    results = {"deterministic": deterministic_predict(model, images, batch_size)}
    if dropout_layers(model):
        results["mc_dropout"] = mc_predict(model, images, samples, seed, batch_size, verbose)
    metrics, coverage, ood, entropy, predictions = {}, [], [], {}, {}
    for method, result in results.items():
        test, *parts = (
            result.select(slice(a, b)) for a, b in zip([0, *ends[:-1]], ends, strict=True)
        )
        predictions[method] = test
        metrics[method] = _method_metrics(test, y_test, bins)
        curve = accuracy_coverage_curve(test.probabilities, y_test, test.entropy)
        coverage.append(curve.assign(method=method))
        ood += _ood_rows(method, test, dict(zip(shifted, parts, strict=True)))
        correct = test.probabilities.argmax(axis=1) == y_test
        entropy[method] = {"correct": test.entropy[correct], "incorrect": test.entropy[~correct]}
    return {
        "metrics": pd.DataFrame(metrics).T.rename_axis("method"),
        "coverage": pd.concat(coverage, ignore_index=True),
        "ood": pd.DataFrame(ood),
        "entropy": entropy,
        "samples": samples if "mc_dropout" in results else 0,
        "predictions": predictions,
    }
