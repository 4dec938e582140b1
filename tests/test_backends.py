"""Every Keras backend: a model saved on one loads and predicts the same on the others, and
`fashion-keras train` runs on JAX and PyTorch. `make test-backends` runs these (with JAX and
PyTorch installed) and the unit tier on each backend."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, SMOKE, run_cli, tensorflow_only

pytestmark = [pytest.mark.backends, tensorflow_only]  # run from TensorFlow, the default
OTHERS = ("jax", "torch")

# On a backend: load the models TensorFlow saved, predict, then save its own for the reverse.
ROUND_TRIP = """
import sys, numpy as np, keras
import fashion_keras.layers
from fashion_keras import build_model
folder, backend = sys.argv[1], keras.backend.backend()
x = np.load(f"{folder}/x.npy")
for variant in ("dropout", "improved"):
    loaded = keras.saving.load_model(f"{folder}/{variant}-tensorflow.keras", safe_mode=True)
    np.save(f"{folder}/{variant}-tensorflow-on-{backend}.npy", loaded.predict(x, verbose=0))
    keras.utils.set_random_seed(1)
    model = build_model(variant)
    model.save(f"{folder}/{variant}-{backend}.keras")
    np.save(f"{folder}/{variant}-{backend}.npy", model.predict(x, verbose=0))
"""


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _assert_same(expected, got):
    expected, got = _softmax(expected), _softmax(got)
    assert (expected.argmax(1) == got.argmax(1)).all()
    assert np.abs(expected - got).max() < 1e-5


def _on(backend, *args):
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**__import__("os").environ, "KERAS_BACKEND": backend},
    )


@pytest.mark.parametrize("backend", OTHERS)
def test_a_model_saved_on_one_backend_predicts_the_same_on_another(tmp_path, backend):
    import keras

    from fashion_keras import build_model
    from fashion_keras.data import load_data

    x = load_data(eval_limit=200)[2][0]
    np.save(tmp_path / "x.npy", x)
    expected = {}
    for variant in ("dropout", "improved"):
        model = build_model(variant)
        model.save(tmp_path / f"{variant}-tensorflow.keras")
        expected[variant] = model.predict(x, verbose=0)
    done = _on(backend, "-c", ROUND_TRIP, str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    for variant in ("dropout", "improved"):
        _assert_same(
            expected[variant], np.load(tmp_path / f"{variant}-tensorflow-on-{backend}.npy")
        )
        theirs = keras.saving.load_model(tmp_path / f"{variant}-{backend}.keras", safe_mode=True)
        _assert_same(np.load(tmp_path / f"{variant}-{backend}.npy"), theirs.predict(x, verbose=0))


@pytest.mark.parametrize("backend", OTHERS)
def test_train_and_report_run_on_another_backend(tmp_path, backend):
    run_dir = tmp_path / "run"
    sets = [a for s in SMOKE for a in ("--set", s)]
    done = run_cli(
        "train", "--config", "dropout", *sets, "--output", run_dir, env={"KERAS_BACKEND": backend}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["backend"] == backend and metrics["epochs"] == 1
    assert metrics["test_accuracy"] > 0.3  # it learned: chance is 0.1
    done = run_cli("report", run_dir, "--mc-samples", "3", env={"KERAS_BACKEND": backend})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "report" / "index.html").is_file()
    refused = run_cli(
        "train", "--config", "baseline", *sets, "--set", "distribute.strategy=mirrored",
        "--output", tmp_path / "mirrored", env={"KERAS_BACKEND": backend},
    )  # fmt: skip
    assert refused.returncode == 2
    assert f"needs the TensorFlow backend (KERAS_BACKEND={backend} now)" in refused.stderr


@pytest.mark.parametrize("backend", OTHERS)
def test_export_on_another_backend_says_to_use_tensorflow(tmp_path, backend):
    done = run_cli("export", tmp_path, "--format", "onnx", env={"KERAS_BACKEND": backend})
    assert done.returncode == 2
    assert f"exporting needs the TensorFlow backend (KERAS_BACKEND={backend} now)" in done.stderr
