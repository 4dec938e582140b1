import keras
import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np
import pytest

from fashion_keras import build_cnn
from fashion_keras.metrics import (
    accuracy_coverage_curve,
    brier_score,
    error_detection_auroc,
    expected_calibration_error,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
)
from fashion_keras.plots import plot_accuracy_coverage, plot_entropy_histograms, plot_ood_auroc
from fashion_keras.uncertainty import (
    AlwaysDropout,
    deterministic_predict,
    dropout_layers,
    ensemble_predict,
    fit_temperature,
    mc_dropout_model,
    mc_predict,
    ood_sets,
    temperature_predict,
    uncertainty_summary,
)

LOG10 = np.log(10)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).random((16, 28, 28, 1), dtype="float32")


def _tiny(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    return build_cnn(filters=(4,), units=8, **kwargs)


@pytest.fixture(scope="module")
def everything_model():
    """Batch norm, augmentation, test-time mirror and strong dropout, all in one."""
    return _tiny(
        batch_norm=True,
        random_translation=0.5,
        random_flip="horizontal",
        test_time_flip=True,
        dropout_rates=(0.5, 0.5),
    )


def _skew_batch_norm(model):
    """Moving statistics far from any batch's, so batch statistics would change everything."""
    bn = model.get_layer("block1_bn")
    bn.moving_mean.assign(np.full(4, 3.0, "float32"))
    bn.moving_variance.assign(np.full(4, 0.01, "float32"))


def _sharpen(model, factor=30.0):
    """Larger logits, so that any change inside the network shows in the probabilities."""
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel * factor, bias])


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "layer_args",
    [
        {"batch_norm": True},
        {"random_translation": 0.9},
        {"random_flip": "horizontal"},
        {"test_time_flip": True},
    ],
    ids=["batch_norm", "translation", "flip", "test_time_mirror"],
)
def test_only_dropout_is_sampled(x, layer_args):
    # With dropout too weak to ever drop, each pass must be the inference output exactly
    # as `predict` gives it; `training=True` would switch the other layer (checked below).
    model = _tiny(dropout_rates=(1e-6, 1e-6), **layer_args)
    if layer_args.get("batch_norm"):
        _skew_batch_norm(model)
    _sharpen(model)
    inference = deterministic_predict(model, x).probabilities
    training = keras.ops.convert_to_numpy(keras.ops.softmax(model(x, training=True)))
    assert np.abs(training - inference).max() > 0.05  # the mistake would show
    sampled = mc_predict(model, x, samples=2, seed=0, verbose=0)
    np.testing.assert_allclose(sampled.probabilities, inference, atol=1e-4)


def test_passes_differ_and_no_state_changes(x, everything_model):
    before = everything_model.get_weights()
    sampler = mc_dropout_model(everything_model, seed=0)
    assert isinstance(sampler.get_layer("block1_dropout"), AlwaysDropout)
    first = sampler.predict(x, verbose=0)
    second = sampler.predict(x, verbose=0)
    assert np.abs(first - second).max() > 1e-3
    for old, new in zip(before, sampler.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)  # batch-norm moving statistics included
    for old, new in zip(before, everything_model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


def test_mc_predict_outputs(x, everything_model):
    result = mc_predict(everything_model, x, samples=5, seed=1, batch_size=7, verbose=0)
    assert result.probabilities.shape == (16, 10)
    assert result.entropy.shape == result.mutual_information.shape == (16,)
    assert (result.samples, result.method) == (5, "mc_dropout")
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1, atol=1e-9)
    assert (result.mutual_information >= -1e-6).all() and result.mutual_information.max() > 0
    assert (result.entropy >= 0).all() and (result.entropy <= LOG10 + 1e-9).all()
    assert (result.mutual_information <= result.entropy + 1e-9).all()


def test_one_pass_has_no_mutual_information(x, everything_model):
    result = mc_predict(everything_model, x, samples=1, seed=0, verbose=0)
    np.testing.assert_allclose(result.mutual_information, 0, atol=1e-9)


def test_seeds_make_it_reproducible(x, everything_model):
    first = mc_predict(everything_model, x, samples=3, seed=7, verbose=0)
    again = mc_predict(everything_model, x, samples=3, seed=7, verbose=0)
    other = mc_predict(everything_model, x, samples=3, seed=8, verbose=0)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)
    np.testing.assert_array_equal(first.mutual_information, again.mutual_information)
    assert np.abs(first.probabilities - other.probabilities).max() > 1e-3


def test_nested_models_and_spatial_dropout_are_sampled(x):
    inner = keras.Sequential(
        [keras.layers.Conv2D(4, 3), keras.layers.SpatialDropout2D(0.5)], name="features"
    )
    inputs = keras.Input((28, 28, 1))
    outputs = keras.layers.Dense(10)(keras.layers.Flatten()(inner(inputs)))
    model = keras.Model(inputs, outputs)
    assert [layer.name for layer in dropout_layers(model)] == [inner.layers[1].name]
    result = mc_predict(model, x, samples=4, seed=0, verbose=0)
    assert result.mutual_information.max() > 0


def test_deterministic_predict_is_the_softmax_of_predict(x, everything_model):
    result = deterministic_predict(everything_model, x, batch_size=5)
    expected = keras.ops.softmax(everything_model.predict(x, verbose=0), axis=-1)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(result.mutual_information, np.zeros(16))
    np.testing.assert_allclose(result.entropy, predictive_entropy(result.probabilities))
    assert (result.samples, result.method) == (1, "deterministic")


def _no_rate_model():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Dropout(0.0)(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="zero_rate")


@pytest.mark.parametrize("make_model", [_tiny, _no_rate_model], ids=["no_dropout", "rate_zero"])
def test_model_without_dropout_is_a_clear_error(x, make_model):
    with pytest.raises(ValueError, match=r"no Dropout layer.*deterministic_predict"):
        mc_predict(make_model(), x, samples=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"samples": 0}, "Received: samples=0"),
        ({"samples": True}, "Received: samples=True"),
        ({"samples": 2.5}, "Received: samples=2.5"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"seed": -1}, "Received: seed=-1"),
        ({"verbose": "loud"}, "Received: verbose='loud'"),
        ({"x": np.zeros((3, 28, 28))}, r"Received: x.shape=\(3, 28, 28\)"),
        ({"x": np.zeros((0, 28, 28, 1))}, r"at least one image .*\(N, 28, 28, 1\)"),
    ],
)
def test_bad_arguments_are_clear_errors(x, everything_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        mc_predict(everything_model, **{"x": x, **kwargs})


# --------------------------------------------------------------------------- temperature


def _softmax(logits):
    return np.asarray(keras.ops.softmax(np.asarray(logits, "float64"), axis=-1))


def _labels_drawn_from(probabilities, rng):
    """One class per row, drawn with the row's probabilities."""
    draws = rng.random((len(probabilities), 1))
    return (probabilities.cumsum(axis=1) < draws).sum(axis=1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_temperature_finds_the_temperature_the_labels_were_drawn_with(true_temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20_000, 10))
    y = _labels_drawn_from(_softmax(logits / true_temperature), rng)
    fitted = fit_temperature(logits, y)
    assert fitted == pytest.approx(true_temperature, rel=0.05)
    # And it is the minimum of the likelihood, not just near the truth.
    grid = fitted * np.array([0.9, 0.97, 1.03, 1.1])
    nll = [negative_log_likelihood(_softmax(logits / t), y) for t in [fitted, *grid]]
    assert nll[0] <= min(nll[1:])


def test_fit_temperature_runs_to_the_bounds_when_the_data_asks_for_it():
    y = np.arange(20) % 10
    right = np.eye(10)[y]  # every image right: sharper is always more likely
    wrong = np.eye(10)[(y + 1) % 10]  # every image wrong: flatter is always better
    assert fit_temperature(right, y) == pytest.approx(0.05, rel=1e-3)
    assert fit_temperature(wrong, y) == pytest.approx(20.0, rel=1e-3)
    assert fit_temperature(wrong, y, bounds=(0.5, 3)) == pytest.approx(3, rel=1e-3)


def test_temperature_scaling_softens_an_overconfident_model():
    model = _tiny()
    _sharpen(model, factor=10.0)
    rng = np.random.default_rng(1)
    x_val, x_test = rng.random((2, 64, 28, 28, 1), dtype="float32")
    y_val, y_test = rng.integers(0, 10, (2, 64))  # random labels: any confidence is too much
    temperature = fit_temperature(model.predict(x_val, verbose=0), y_val)
    assert temperature > 2
    plain = deterministic_predict(model, x_test)
    scaled = temperature_predict(model, x_test, temperature, batch_size=7)
    assert (scaled.samples, scaled.method) == (1, "temperature")
    np.testing.assert_array_equal(scaled.mutual_information, np.zeros(64))
    expected = _softmax(model.predict(x_test, verbose=0) / temperature)
    np.testing.assert_allclose(scaled.probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(scaled.probabilities.argmax(1), plain.probabilities.argmax(1))
    assert (scaled.entropy > plain.entropy).all()
    assert negative_log_likelihood(scaled.probabilities, y_test) < negative_log_likelihood(
        plain.probabilities, y_test
    )
    # deterministic_predict is temperature 1, the same pass.
    one = temperature_predict(model, x_test, 1)
    np.testing.assert_array_equal(one.probabilities, plain.probabilities)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: fit_temperature(np.zeros(10), np.array([1])), r"logits.shape=\(10,\)"),
        (lambda: fit_temperature(np.zeros((2, 10)), np.eye(10)[[1, 2]]), "not one-hot"),
        (lambda: fit_temperature(np.zeros((2, 10)), np.array([1, 10])), r"in \[0, 10\)"),
        (lambda: fit_temperature(np.full((2, 10), np.nan), np.array([1, 2])), "finite"),
        (lambda: fit_temperature(np.zeros((2, 10)), [1, 2], bounds=(0, 1)), r"bounds\[0\]=0"),
        (lambda: fit_temperature(np.zeros((2, 10)), [1, 2], bounds=(2, 1)), "low < high"),
    ],
)
def test_fit_temperature_input_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True, "2"])
def test_temperature_must_be_a_positive_number(x, temperature):
    with pytest.raises(ValueError, match=f"above 0. Received: temperature={temperature!r}"):
        temperature_predict(_tiny(), x, temperature)


# --------------------------------------------------------------------------- ensembles


@pytest.fixture(scope="module")
def members():
    return [_tiny(seed) for seed in (1, 2, 3)]


def test_ensemble_predict_is_the_mean_of_its_members(x, members):
    result = ensemble_predict(members, x, batch_size=5, verbose=0)
    each = np.stack([_softmax(m.predict(x, verbose=0)) for m in members])
    mean = each.mean(axis=0)
    np.testing.assert_allclose(result.probabilities, mean, atol=1e-6)
    np.testing.assert_allclose(result.entropy, predictive_entropy(mean), atol=1e-6)
    disagreement = predictive_entropy(mean) - predictive_entropy(each).mean(axis=0)
    np.testing.assert_allclose(result.mutual_information, disagreement, atol=1e-6)
    assert result.mutual_information.min() > 1e-4  # three different models disagree
    assert (result.samples, result.method) == (3, "ensemble")


def test_an_ensemble_of_copies_has_no_mutual_information(x, members):
    result = ensemble_predict([members[0]] * 2, x, verbose=0)
    np.testing.assert_allclose(result.mutual_information, 0, atol=1e-9)
    expected = deterministic_predict(members[0], x).probabilities
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-12)


@pytest.mark.parametrize(
    "make_models, message",
    [
        (lambda m: [], r"non-empty list of keras.Model. Received: models=\[\]"),
        (lambda m: m[0], r"Received: one model; pass \[model\]"),
        (lambda m: [m[0], "model.keras"], r"models\[1\] of type str"),
        (
            lambda m: [m[0], build_cnn(input_shape=(32, 32, 1), filters=(4,), units=8)],
            r"models\[1\] takes \(32, 32, 1\) -> 10 classes",
        ),
        (
            lambda m: [m[0], build_cnn(num_classes=5, filters=(4,), units=8)],
            r"models\[1\] takes \(28, 28, 1\) -> 5 classes",
        ),
    ],
    ids=["empty", "not_a_list", "not_a_model", "other_images", "other_classes"],
)
def test_ensembles_that_do_not_fit_are_clear_errors(x, members, make_models, message):
    with pytest.raises(ValueError, match=message):
        ensemble_predict(make_models(members), x, verbose=0)


# --------------------------------------------------------------------------- metrics


def _rows(confidences, predicted):
    """Probability rows with the given top probability on the given class, rest spread evenly."""
    rows = np.empty((len(confidences), 10))
    for row, top, cls in zip(rows, confidences, predicted, strict=True):
        row[:] = (1 - top) / 9
        row[cls] = top
    return rows


def test_metrics_of_perfect_and_uniform_predictions():
    y = np.array([0, 3, 9, 3])
    perfect = np.eye(10)[y]
    assert negative_log_likelihood(perfect, y) == 0
    assert brier_score(perfect, y) == 0
    assert expected_calibration_error(perfect, y) == 0
    uniform = np.full((4, 10), 0.1)
    assert negative_log_likelihood(uniform, y) == pytest.approx(LOG10)
    assert brier_score(uniform, y) == pytest.approx(0.9)
    # Confidence 0.1 everywhere, and argmax (class 0) right for one image in four.
    assert expected_calibration_error(uniform, y) == pytest.approx(0.25 - 0.1)
    np.testing.assert_allclose(predictive_entropy(uniform), LOG10)


def test_metrics_of_hand_computed_cases():
    half = np.zeros((1, 10))
    half[0, :2] = 0.5
    assert negative_log_likelihood(half, np.array([0])) == pytest.approx(np.log(2))
    assert brier_score(half, np.array([0])) == pytest.approx(0.5)  # 0.5² + 0.5²
    assert brier_score(np.eye(10)[[1]], np.array([0])) == pytest.approx(2.0)  # sure and wrong
    assert np.isfinite(negative_log_likelihood(np.eye(10)[[1]], np.array([0])))
    # Three right at confidence 0.8 (gap 0.2), one wrong at 0.5 (gap 0.5): (3·0.2 + 0.5) / 4.
    probabilities = _rows([0.8, 0.8, 0.8, 0.5], [1, 2, 3, 4])
    y = np.array([1, 2, 3, 5])
    assert expected_calibration_error(probabilities, y, bins=10) == pytest.approx(0.275)
    # One bin: |mean confidence 0.725 - accuracy 0.75|.
    assert expected_calibration_error(probabilities, y, bins=1) == pytest.approx(0.025)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: brier_score(np.full((2, 10), 0.1), np.eye(10)[[0, 1]]), "not one-hot"),
        (lambda: brier_score(np.full((2, 10), 0.1), np.array([0, 10])), r"in \[0, 10\)"),
        (lambda: negative_log_likelihood(np.full(10, 0.1), np.array([0])), r"\(N, num_classes\)"),
        (lambda: expected_calibration_error(np.eye(10), np.arange(10), bins=0), "bins=0"),
    ],
)
def test_metric_input_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_error_detection_auroc_known_values():
    correct = np.array([True, True, False, False])
    assert error_detection_auroc([0.1, 0.2, 0.8, 0.9], correct) == 1.0
    assert error_detection_auroc([0.8, 0.9, 0.1, 0.2], correct) == 0.0
    # Of the four (wrong, right) pairs, only 0.35 vs 0.4 is ranked the wrong way round.
    assert error_detection_auroc([0.1, 0.4, 0.35, 0.8], correct) == 0.75
    assert np.isnan(error_detection_auroc([0.1, 0.2], np.array([True, True])))
    assert np.isnan(error_detection_auroc([0.1, 0.2], np.array([False, False])))
    with pytest.raises(ValueError, match="boolean"):
        error_detection_auroc([0.1, 0.2], [1, 0])


def test_ood_auroc_known_values():
    assert ood_auroc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert ood_auroc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert ood_auroc([0.1, 0.4], [0.35, 0.8]) == 0.75
    with pytest.raises(ValueError, match="uncertainty_out must be 1-D with at least one"):
        ood_auroc([0.1], [])


def test_accuracy_coverage_curve_on_a_constructed_case():
    y = np.array([0, 1, 2, 3])
    probabilities = np.eye(10)[[0, 1, 5, 3]]  # the third image is wrong
    uncertainty = np.array([0.4, 0.1, 0.3, 0.2])  # surest first: images 1, 3, 2, 0
    curve = accuracy_coverage_curve(probabilities, y, uncertainty, coverages=[0.25, 0.5, 0.75, 1])
    assert list(curve.columns) == ["coverage", "count", "accuracy", "threshold"]
    assert curve["count"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(curve["accuracy"], [1, 1, 2 / 3, 3 / 4])
    np.testing.assert_allclose(curve["threshold"], [0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"coverages must be shares in \(0, 1\]"):
        accuracy_coverage_curve(probabilities, y, uncertainty, coverages=[0.0, 1.0])


# --------------------------------------------------------------------------- OOD sets


def test_ood_sets(x):
    sets = ood_sets(x)
    assert list(sets) == ["digits", "inverted", "rotated", "noise"]
    assert sets["digits"].shape == (1797, 28, 28, 1)
    for name, images in sets.items():
        assert images.dtype == np.float32, name
        assert images.shape[1:] == (28, 28, 1), name
        assert 0 <= images.min() and images.max() <= 1, name
    assert sets["digits"].max() == 1  # 16 in scikit-learn's digits is white
    np.testing.assert_array_equal(sets["inverted"], 1 - x)
    np.testing.assert_array_equal(sets["rotated"][:, 0, :, 0], x[:, :, -1, 0])
    assert 0.1 < np.abs(sets["noise"] - x).mean() < 0.3


def test_ood_sets_limit_is_a_fixed_subset(x):
    sets = ood_sets(x, rng_seed=3, limit=5)
    assert {name: len(images) for name, images in sets.items()} == dict.fromkeys(sets, 5)
    again = ood_sets(x, rng_seed=3, limit=5)
    for name in sets:
        np.testing.assert_array_equal(sets[name], again[name])
    with pytest.raises(ValueError, match="Received: limit=0"):
        ood_sets(x, limit=0)
    with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\)"):
        ood_sets(x[..., 0])


# --------------------------------------------------------------------------- summary, plots


def test_uncertainty_summary_and_plots(x, everything_model, tmp_path):
    y = np.arange(16) % 10
    summary = uncertainty_summary(everything_model, x, y, samples=3, limit_ood=8)
    metrics = summary["metrics"]
    assert metrics.index.tolist() == ["deterministic", "mc_dropout"]
    assert np.isnan(metrics.loc["deterministic", "error_auroc_mutual_information"])
    mc = summary["predictions"]["mc_dropout"]
    assert mc.samples == 3 and mc.method == "mc_dropout" and len(mc.entropy) == 16
    assert metrics.loc["mc_dropout", "accuracy"] == (mc.probabilities.argmax(1) == y).mean()
    ood = summary["ood"]
    assert len(ood) == 8 and set(ood["dataset"]) == {"digits", "inverted", "rotated", "noise"}
    assert (ood["images"] == 8).all()

    # The deterministic rows: each set's entropies against the test images', from one pass
    # over all of them (as the summary makes it, so that no rounding reorders near ties).
    sets = ood_sets(x, rng_seed=0, limit=8)
    entropy = deterministic_predict(everything_model, np.concatenate([x, *sets.values()])).entropy
    rows = ood[ood["method"] == "deterministic"].set_index("dataset")["auroc_entropy"]
    for k, name in enumerate(sets):
        out = entropy[16 + 8 * k : 24 + 8 * k]
        assert rows[name] == pytest.approx(ood_auroc(entropy[:16], out), abs=1e-12)
    assert len(summary["coverage"]) == 2 * 20
    for parts in summary["entropy"].values():
        assert len(parts["correct"]) + len(parts["incorrect"]) == 16
    assert summary["samples"] == 3

    figures = [
        plot_entropy_histograms(summary["entropy"], path=tmp_path / "entropy.png"),
        plot_accuracy_coverage(summary["coverage"], path=tmp_path / "coverage.png"),
        plot_ood_auroc(summary["ood"], path=tmp_path / "ood.png"),
    ]
    assert all(isinstance(f, matplotlib.figure.Figure) for f in figures)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coverage.png", "entropy.png", "ood.png"]
    plt.close("all")


def test_uncertainty_summary_without_dropout(x):
    summary = uncertainty_summary(_tiny(), x, np.arange(16) % 10, limit_ood=4)
    assert summary["metrics"].index.tolist() == ["deterministic"]
    assert summary["samples"] == 0 and len(summary["ood"]) == 4
    plt.close(plot_ood_auroc(summary["ood"]))
