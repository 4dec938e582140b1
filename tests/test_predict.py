import io
import json
import os
import shutil
import signal
import zlib

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fashion_keras import CLASS_NAMES, build_cnn, build_model
from fashion_keras.errors import UserError
from fashion_keras.predict import InputError, predict_files, read_inputs

from conftest import run_cli


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    model = build_model("baseline")
    # Distinct logits for a blank image (whose activations are all zero): no ties to order.
    model.get_layer("logits").bias.assign(np.random.default_rng(0).normal(size=10))
    model.save(path)
    return path


def test_reads_png_jpeg_and_npy(tmp_path):
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((100, 60, 3), np.uint8)).save(tmp_path / "b.jpg")
    np.save(tmp_path / "c.npy", np.zeros((5, 28, 28), np.uint8))
    np.save(tmp_path / "d.npy", np.full((28, 28, 1), 0.5, np.float32))
    assert read_inputs(tmp_path / "a.png").max() == 1.0
    assert read_inputs(tmp_path / "b.jpg").shape == (1, 28, 28, 1)  # converted and resized
    assert read_inputs(tmp_path / "c.npy").shape == (5, 28, 28, 1)
    assert read_inputs(tmp_path / "d.npy").max() == 0.5


@pytest.mark.parametrize(
    "content, message",
    [
        (np.zeros((3, 32, 32)), "is not 28×28 images"),
        (np.zeros((28, 28), np.int32), "dtype int32 is not uint8 or float; pixels of 0-255: "),
        (np.full((28, 28), 2.0), "within [0, 1]; pixels of 0-255: divide them by 255"),
        (np.full((28, 28), np.nan), "finite"),
        (np.array(["x"] * 784).reshape(28, 28), "dtype <U1"),
    ],
)
def test_bad_npy_arrays_are_clear_errors(tmp_path, content, message):
    np.save(tmp_path / "x.npy", content)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_inputs(tmp_path / "x.npy")


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a readable .npy array"):
        read_inputs(tmp_path / "obj.npy")


def test_huge_image_header_is_refused_without_decoding(tmp_path):
    buffer = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buffer, "PNG")
    (tmp_path / "huge.png").write_bytes(buffer.getvalue())
    with pytest.raises(InputError, match="5000×5000"):
        read_inputs(tmp_path / "huge.png")
    # Beyond Pillow's own limit (about 179 million pixels): a header that claims 20000×20000.
    raw = bytearray(buffer.getvalue())
    raw[16:24] = (20000).to_bytes(4, "big") * 2  # IHDR's width and height, then its CRC
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    (tmp_path / "bomb.png").write_bytes(bytes(raw))
    with pytest.raises(InputError, match="far too large; at most 16777216 pixels"):
        read_inputs(tmp_path / "bomb.png")


def test_16_bit_images_keep_their_range_and_32_bit_ones_are_refused(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28))
    Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "8.png")
    Image.fromarray((pixels * 257).astype(np.uint16)).save(tmp_path / "16.png")  # same image
    assert Image.open(tmp_path / "16.png").mode in ("I;16", "I")  # "I" in older Pillow
    np.testing.assert_allclose(read_inputs(tmp_path / "16.png"), read_inputs(tmp_path / "8.png"))
    Image.fromarray(pixels.astype(np.float32) / 255).save(tmp_path / "float.tiff")
    with pytest.raises(InputError, match="a F image .* save it as an 8- or 16-bit image"):
        read_inputs(tmp_path / "float.tiff")
    with pytest.raises(InputError, match=r"is a folder; give the files in it \(e\.g\."):
        read_inputs(tmp_path)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg", ".npy", ".bin"]))
def test_fuzz_random_bytes_never_crash(tmp_path, data, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    try:
        images = read_inputs(path)
    except InputError:
        return
    assert images.ndim == 4 and images.shape[1:] == (28, 28, 1)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shape=st.lists(st.integers(0, 40), min_size=0, max_size=5),
    dtype=st.sampled_from(["uint8", "int16", "float32", "float64", "bool", "complex64"]),
    fake_count=st.one_of(st.none(), st.integers(2**31, 2**62)),
)
def test_fuzz_npy_shapes_dtypes_and_lying_headers(tmp_path, shape, dtype, fake_count):
    path = tmp_path / "f.npy"
    array = np.zeros(shape, dtype=dtype)
    np.save(path, array)
    if fake_count is not None and array.ndim:  # header claims far more data than the file has
        raw = path.read_bytes().replace(f"({shape[0]},".encode(), f"({fake_count},".encode(), 1)
        path.write_bytes(raw)
    try:
        images = read_inputs(path)
    except InputError:
        return
    assert images.shape[1:] == (28, 28, 1) and images.dtype == np.float32


def test_predict_files_reports_bad_files_and_predicts_the_rest(tmp_path, model_path):
    np.save(tmp_path / "two.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    results = predict_files(
        model_path, [tmp_path / "bad.png", tmp_path / "two.npy", tmp_path / "gone.png"]
    )
    assert [("error" in r) for r in results] == [True, False, False, True]
    # The top three are the model's three most likely classes, with their softmax
    # probabilities, most likely first.
    logits = keras.saving.load_model(model_path).predict(np.zeros((1, 28, 28, 1)), verbose=0)[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    expected = [(CLASS_NAMES[i], probabilities[i]) for i in np.argsort(-probabilities)[:3]]
    for result in results[1:3]:
        assert [name for name, _ in result["top"]] == [name for name, _ in expected]
        np.testing.assert_allclose([p for _, p in result["top"]], [p for _, p in expected], 1e-5)


def test_predict_cli_json_and_exit_status(tmp_path, model_path):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    result = run_cli(
        "predict", "--model", model_path, "--json", tmp_path / "ok.png", tmp_path / "bad.png"
    )
    assert result.returncode == 3  # not 1 (unexpected) nor 2 (a mistake in the command)
    payload = json.loads(result.stdout)
    assert payload[0]["top"][0][0] in CLASS_NAMES
    assert "bad.png: not an image" in result.stderr and "Traceback" not in result.stderr


def test_monte_carlo_dropout_predictions_carry_their_uncertainty(tmp_path):
    path = tmp_path / "dropout.keras"
    build_model("dropout").save(path)
    np.save(tmp_path / "two.npy", np.random.default_rng(0).random((2, 28, 28)).astype("float32"))
    plain = predict_files(path, [tmp_path / "two.npy"])
    sampled = predict_files(path, [tmp_path / "two.npy"], mc_samples=5, seed=1)
    assert "mutual_information" not in plain[0] and plain[0]["entropy"] > 0
    assert all(r["mutual_information"] > 0 for r in sampled)  # the passes disagree
    assert sampled == predict_files(path, [tmp_path / "two.npy"], mc_samples=5, seed=1)
    result = run_cli(
        "predict", "--model", path, "--mc-samples", "3", "--json", tmp_path / "two.npy"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"top", "entropy", "mutual_information"} <= set(json.loads(result.stdout)[0])


def test_monte_carlo_dropout_on_a_network_without_dropout_is_one_line(tmp_path, model_path):
    np.save(tmp_path / "x.npy", np.zeros((28, 28), np.uint8))
    result = run_cli("predict", "--model", model_path, "--mc-samples", "3", tmp_path / "x.npy")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()[-1:]
    assert "has no Dropout layer" in line and line.startswith("fashion-keras: error:")


def test_monte_carlo_dropout_clones_the_model_once_per_call(tmp_path, monkeypatch):
    from fashion_keras import build_cnn, uncertainty

    clones = []
    original = uncertainty.mc_dropout_model
    monkeypatch.setattr(
        uncertainty, "mc_dropout_model", lambda *a, **k: clones.append(1) or original(*a, **k)
    )
    model = build_cnn(filters=(4,), units=8, dropout_rates=(0.5, 0.5))
    paths = [tmp_path / f"{i}.npy" for i in range(3)]
    for path in paths:
        np.save(path, np.random.default_rng(0).random((2, 28, 28)).astype("float32"))
    results = predict_files(model, paths, mc_samples=2, seed=0)
    assert len(results) == 6 and all(r["mutual_information"] >= 0 for r in results)
    assert len(clones) == 1  # one sampler for the three files
    # The masks run on from file to file: the same images get other passes.
    assert results[0]["entropy"] != results[2]["entropy"]
    assert results == predict_files(model, paths, mc_samples=2, seed=0)


# --------------------------------------------------------------------------- ensembles, temperature


@pytest.fixture(scope="module")
def tiny_paths(tmp_path_factory):
    """Two small models that differ only in their random initialisation, saved."""
    directory = tmp_path_factory.mktemp("tiny")
    paths = []
    for seed in (1, 2):
        keras.utils.set_random_seed(seed)
        paths.append(directory / f"seed{seed}.keras")
        build_cnn(filters=(4,), units=8).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "three.npy"
    np.save(path, np.random.default_rng(0).random((3, 28, 28)).astype("float32"))
    return path


def _softmax_of(path, images, temperature=1.0):
    logits = keras.saving.load_model(path).predict(read_inputs(images), verbose=0)
    return np.asarray(keras.ops.softmax(np.asarray(logits, "float64") / temperature, axis=-1))


def _top(result):
    return dict(result["top"])


def test_an_ensemble_averages_its_models_and_reports_their_disagreement(tiny_paths, images):
    results = predict_files(tiny_paths, [images], top=10)
    mean = (_softmax_of(tiny_paths[0], images) + _softmax_of(tiny_paths[1], images)) / 2
    assert len(results) == 3
    for result, expected in zip(results, mean, strict=True):
        np.testing.assert_allclose([_top(result)[c] for c in CLASS_NAMES], expected, atol=1e-6)
        assert result["mutual_information"] > 0  # two different initialisations disagree
    # A list of one model is that model: the same output as today, no mutual information.
    assert predict_files(tiny_paths[:1], [images]) == predict_files(tiny_paths[0], [images])
    assert "mutual_information" not in predict_files(tiny_paths[:1], [images])[0]


def test_temperature_divides_the_logits(tiny_paths, images):
    plain = predict_files(tiny_paths[0], [images], top=10)
    scaled = predict_files(tiny_paths[0], [images], top=10, temperature=0.25)
    expected = _softmax_of(tiny_paths[0], images, temperature=0.25)
    for result, before, p in zip(scaled, plain, expected, strict=True):
        assert set(result) == set(before) == {"file", "index", "top", "entropy"}
        np.testing.assert_allclose([_top(result)[c] for c in CLASS_NAMES], p, atol=1e-6)
        assert result["entropy"] < before["entropy"]  # T < 1 sharpens


def test_temperature_run_reads_the_runs_fitted_temperature(tiny_paths, images, tmp_path):
    model = tmp_path / "model.keras"
    shutil.copy(tiny_paths[0], model)
    with pytest.raises(UserError, match=r"holds no fitted temperature.*--temperature T"):
        predict_files(model, [images], temperature="run")
    with pytest.raises(UserError, match=r"model.keras: expected an existing \.keras file"):
        predict_files(tmp_path / "typo" / "model.keras", [images], temperature="run")
    (tmp_path / "cut.keras").write_bytes(tiny_paths[0].read_bytes()[:1000])  # a copy cut short
    with pytest.raises(UserError, match="cut.keras: not a Keras model .* cut short"):
        predict_files(tmp_path / "cut.keras", [images])
    (tmp_path / "metrics.json").write_text("{")
    with pytest.raises(UserError, match=r"metrics.json is damaged; give --temperature T"):
        predict_files(model, [images], temperature="run")
    (tmp_path / "metrics.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(UserError, match=r"holds temperature=-1, not a number above 0"):
        predict_files(model, [images], temperature="run")
    (tmp_path / "metrics.json").write_text(json.dumps({"temperature": 0.25}))
    scaled = predict_files(model, [images], top=10, temperature="run")
    assert scaled == predict_files(model, [images], top=10, temperature=0.25)
    assert scaled != predict_files(model, [images], top=10)
    # The run's directory names its model.keras; the temperature is that network's only.
    assert predict_files(tmp_path, images, top=10, temperature="run") == scaled  # one path
    shutil.copy(model, tmp_path / "best.keras")
    with pytest.raises(UserError, match="fitted for its model.keras, not best.keras"):
        predict_files(tmp_path / "best.keras", [images], temperature="run")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 2.0, "mc_samples": 3}, "Give --temperature or --mc-samples, not both"),
        ({"temperature": 2.0, "ensemble": True}, "Received: 2 models and temperature=2.0"),
        ({"mc_samples": 3, "ensemble": True}, "Received: 2 models and mc_samples=3"),
        ({"temperature": 0}, "Received: temperature=0"),
        ({"temperature": "warm"}, "Received: temperature='warm'"),
    ],
)
def test_options_that_do_not_go_together_are_clear_errors(tiny_paths, images, kwargs, message):
    model = tiny_paths if kwargs.pop("ensemble", False) else tiny_paths[0]
    with pytest.raises(ValueError, match=message):
        predict_files(model, [images], **kwargs)


def test_top_takes_numpy_integers_not_bools(tiny_paths, images):
    expected = predict_files(tiny_paths[0], images, top=2)
    assert predict_files(tiny_paths[0], images, top=np.int64(2)) == expected
    for top in (True, 2.0, 11):
        with pytest.raises(UserError, match=rf"top must be between 1 and 10 .* top={top!r}$"):
            predict_files(tiny_paths[0], images, top=top)


def test_an_ensemble_of_models_that_do_not_fit_is_a_clear_error(tiny_paths, images, tmp_path):
    build_cnn(num_classes=5, filters=(4,), units=8).save(tmp_path / "five.keras")
    with pytest.raises(ValueError, match=r"models\[1\] takes \(28, 28, 1\) -> 5 classes"):
        predict_files([tiny_paths[0], tmp_path / "five.keras"], [images])
    with pytest.raises(UserError, match=r"gives \(None, 5\); a Fashion-MNIST model .* 10\)"):
        predict_files(tmp_path / "five.keras", [images])  # not one of Fashion-MNIST's


def test_a_model_with_python_code_is_refused_in_safe_mode(images, tmp_path):
    inputs = keras.Input((28, 28, 1))
    logits = keras.layers.Dense(10)(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x)(inputs))
    )
    keras.Model(inputs, logits).save(tmp_path / "lambda.keras")
    with pytest.raises(UserError, match="lambda.keras: refused in Keras' safe mode: it holds"):
        predict_files(tmp_path / "lambda.keras", [images])
    with pytest.raises(UserError, match="mc_samples must be an integer of at least 0"):
        predict_files(tmp_path / "lambda.keras", [images], mc_samples=-1)  # before loading


def _probabilities(results):
    return [[_top(result)[c] for c in CLASS_NAMES] for result in results]


@pytest.mark.parametrize("softmax", ["activation", "layer", "float32 layer, mixed precision"])
def test_a_model_that_ends_in_a_softmax_is_not_softmaxed_twice(images, tmp_path, softmax):
    keras.utils.set_random_seed(3)
    previous = keras.mixed_precision.dtype_policy()
    if softmax.endswith("mixed precision"):  # the policy Keras' guide sets, kept while predicting
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        x = keras.layers.Dropout(0.2)(keras.layers.Flatten()(inputs := keras.Input((28, 28, 1))))
        if softmax == "activation":
            outputs = keras.layers.Dense(10, activation="softmax")(x)
        else:
            outputs = keras.layers.Softmax(dtype="float32")(keras.layers.Dense(10)(x))
        model = keras.Model(inputs, outputs)
        model.save(tmp_path / "probabilities.keras")
        expected = model.predict(read_inputs(images), verbose=0)
        for model_or_path in (model, tmp_path / "probabilities.keras"):
            results = predict_files(model_or_path, [images], top=10)
            np.testing.assert_allclose(_probabilities(results), expected, atol=1e-6)
        logits = np.log(expected.astype("float64")) / 0.5
        sharper = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
        results = predict_files(model, [images], top=10, temperature=0.5)
        np.testing.assert_allclose(_probabilities(results), sharper, atol=1e-6)
        assert len(predict_files(model, [images], mc_samples=3)) == 3  # the copy keeps dropout
        np.testing.assert_array_equal(model.predict(read_inputs(images), verbose=0), expected)
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def test_a_model_whose_softmax_is_followed_by_more_is_taken_as_it_is(images):
    inputs = keras.Input((28, 28, 1))
    probabilities = keras.layers.Dense(10, activation="softmax")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.ops.log(probabilities))  # already logits
    expected = np.asarray(keras.ops.softmax(model.predict(read_inputs(images), verbose=0)))
    results = predict_files(model, [images], top=10)
    np.testing.assert_allclose(_probabilities(results), expected, atol=1e-6)


@pytest.fixture
def main(monkeypatch, capsys):
    """`fashion-keras ARGS` in this process: (exit status, stdout, stderr)."""
    from fashion_keras import cli

    monkeypatch.delenv("FASHION_KERAS_DEBUG", raising=False)
    for name, value in {"MPLBACKEND": "Agg", "TF_CPP_MIN_LOG_LEVEL": "2"}.items():
        monkeypatch.setenv(name, os.environ.get(name, value))  # main() sets them; undo after
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # and leave pytest's SIGTERM

    def run(*args):
        status = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def test_predict_cli_takes_several_models_and_a_temperature(main, tiny_paths, images):
    first, second = tiny_paths
    status, out, err = main("predict", "--model", first, "--model", second, "--json", images)
    assert (status, err) == (0, "")
    assert json.loads(json.dumps(predict_files(tiny_paths, [images]))) == json.loads(out)
    status, out, _ = main("predict", "--model", first, "--temperature", "0.25", "--json", images)
    expected = predict_files(first, [images], temperature=0.25)
    assert status == 0 and json.loads(out) == json.loads(json.dumps(expected))
    # One model, as before: a line per image with its entropy only.
    status, out, _ = main("predict", "--model", first, images)
    lines = out.splitlines()
    assert status == 0 and len(lines) == 3
    assert lines[0].startswith(f"{images}[0]: ") and lines[0].endswith(")")
    assert all("(entropy " in line and "mutual" not in line for line in lines)
    status, out, _ = main("predict", "--model", first, "--model", second, images)
    assert all(", mutual information " in line for line in out.splitlines())


def test_predict_cli_refuses_a_temperature_with_monte_carlo_dropout(
    main, capsys, tiny_paths, images
):
    status, out, err = main(
        "predict", "--model", tiny_paths[0], "--temperature", "2", "--mc-samples", "3", images
    )
    assert status == 2 and out == ""
    [line] = err.splitlines()
    assert line.startswith("fashion-keras: error: temperature scales one ordinary prediction")
    with pytest.raises(SystemExit) as e:
        main("predict", "--model", tiny_paths[0], "--temperature", "0", images)
    assert e.value.code == 2
    assert (
        "argument --temperature: expected a number > 0 or 'run', got '0'" in capsys.readouterr().err
    )


def test_predict_help_explains_ensembles_and_temperature(main, capsys):
    with pytest.raises(SystemExit) as e:
        main("predict", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "repeat it for an ensemble" in text and "--temperature T" in text
    assert "--temperature run takes the T that training fitted on the validation" in text
