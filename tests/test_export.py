"""Exports run by their own runtimes agree with Keras: SavedModel, ONNX and LiteRT, for the
tutorial network, its dropout variant, the improved network, a network with test-time moves
and a residual one, on 1,000 real test images."""

import sys

import keras
import numpy as np
import pytest
from scipy.special import softmax

from fashion_keras import build_model, export, uncertainty
from fashion_keras.config import dump_config, load_config
from fashion_keras.data import load_data
from fashion_keras.errors import UserError

from conftest import SMOKE

pytest.importorskip("onnxruntime", reason="the export extra is not installed")
pytest.importorskip("ai_edge_litert", reason="the export extra is not installed")

VARIANTS = ("baseline", "dropout", "improved", "moves", "residual")
NETWORKS = {  # the variants above that are not registered ones
    # The network of the `fast` presets, predicting each image also moved and mirrored.
    "moves": {"variant": "baseline", "filters": (32, 64), "downsample": "strides",
              "test_time_flip": True, "test_time_shift": 1},
    # `improved` with a shortcut around each block.
    "residual": {"variant": "improved", "residual": True},
}  # fmt: skip


def _build(variant):
    return build_model(**NETWORKS.get(variant, {"variant": variant}))


@pytest.fixture(scope="module")
def images():
    (x_train, y_train), _, (x_test, _) = load_data(train_limit=2000, one_hot=False)
    return x_train, y_train, x_test[:1000]


@pytest.fixture(scope="module")
def trained(images):
    """Each variant after two epochs on 2,000 images."""
    x_train, y_train, _ = images
    models = {}
    keras.utils.set_random_seed(0)  # the same models every run
    for variant in VARIANTS:
        model = _build(variant)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x_train, y_train, batch_size=32, epochs=2, verbose=0)
        models[variant] = model
    return models


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("format", list(export.FORMATS))
def test_every_format_predicts_what_keras_predicts(trained, images, tmp_path, format, variant):
    model = trained[variant]
    path = tmp_path / export.FORMATS[format][1]
    export.export_model(model, path, format)
    parity = export.check_parity(model, export.load_exported(path, format), images[2])
    assert parity.images == 1000 and parity.same_class == 1000
    assert parity.max_difference < 1e-5 and parity.passed
    # The model tells images apart: the same output for all 1,000 is not a given. (`improved`
    # and its residual form may still name few classes: after 126 steps their batch-norm
    # moving statistics lag.)
    probabilities = uncertainty.deterministic_predict(model, images[2]).probabilities
    lagging = variant in ("improved", "residual")
    assert len(np.unique(probabilities.argmax(1))) >= (2 if lagging else 5)
    assert np.ptp(probabilities, axis=0).max() > 0.1


def test_parity_fails_for_a_model_that_differs(trained, images, tmp_path):
    model = trained["baseline"]
    export.export_model(model, tmp_path / "model.onnx", "onnx")
    other = build_model("baseline")
    other.set_weights([w * 1.01 for w in model.get_weights()])  # 1% off: a wrong export
    parity = export.check_parity(
        other, export.load_exported(tmp_path / "model.onnx", "onnx"), images[2]
    )
    assert not parity.passed and parity.max_difference > 1e-3


def test_a_mixed_precision_model_exports_in_float32(trained, images, tmp_path):
    import keras

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_model("improved")
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model.set_weights(trained["improved"].get_weights())
    copy = export.inference_model(model)
    assert {layer.dtype_policy.name for layer in copy.layers} <= {"float32"}
    export.export_model(model, tmp_path / "model.tflite", "litert")
    run = export.load_exported(tmp_path / "model.tflite", "litert")
    assert run(images[2][:10]).dtype == np.float32
    assert export.check_parity(model, run, images[2]).passed


@pytest.mark.parametrize("format", ["onnx", "litert"])
def test_an_ensemble_of_mixed_precision_members_exports_in_float32(
    trained, images, tmp_path, format
):
    from fashion_keras.ensemble import ensemble_model

    members = []
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        for variant in ("moves", "baseline"):
            member = _build(variant)
            member.set_weights(trained[variant].get_weights())
            members.append(member)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    model = ensemble_model(members)  # float32 itself: its members are not
    path = tmp_path / export.FORMATS[format][1]
    export.export_model(model, path, format)
    assert export.check_parity(model, export.load_exported(path, format), images[2]).passed


def _finished_run(run_dir, model):
    """A run directory as `train` leaves it: its config and its final model."""
    run_dir.mkdir()
    config = load_config("baseline", [*SMOKE, "data.train_limit=2000"])
    (run_dir / "config.yaml").write_text(dump_config(config))
    model.save(run_dir / "model.keras")
    return run_dir


def test_export_command_publishes_a_checked_file(trained, tmp_path, capsys):
    from fashion_keras import cli

    run_dir = _finished_run(tmp_path / "run", trained["baseline"])
    assert cli.main(["export", str(run_dir), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {run_dir / 'export' / 'model.onnx'} (onnx" in out
    assert "On 500 test images it gives Keras' class for 500;" in out  # the run's eval_limit
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == ["model.onnx"]
    assert cli.main(["export", str(run_dir), "--format", "savedmodel", "--images", "10"]) == 0
    assert (run_dir / "export" / "savedmodel" / "saved_model.pb").is_file()


def test_an_export_that_differs_replaces_nothing(trained, tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path / "run", trained["baseline"])
    good = export.export_run(run_dir, "litert", images=100)
    before = good.path.read_bytes()
    other = build_model("baseline")  # untrained weights: the planted bug
    real_export = export.export_model
    monkeypatch.setattr(export, "export_model", lambda m, p, f: real_export(other, p, f))
    with pytest.raises(export.ExportError, match="differs from the Keras model"):
        export.export_run(run_dir, "litert", images=100)
    assert good.path.read_bytes() == before
    assert sorted(p.name for p in good.path.parent.iterdir()) == ["model.tflite"]
    with pytest.raises(export.ExportError):  # the folders it made for the export go too
        export.export_run(
            run_dir, "litert", output=tmp_path / "new" / "deeper" / "m.tflite", images=10
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_bad_requests_are_one_line_errors(trained, tmp_path, monkeypatch):
    run_dir = _finished_run(tmp_path / "run", trained["baseline"])
    with pytest.raises(UserError, match=r"format must be one of savedmodel, onnx, litert"):
        export.export_run(run_dir, "pb")
    with pytest.raises(UserError, match=r"onnx exports are a file ending in \.onnx"):
        export.export_run(run_dir, "onnx", output=tmp_path / "model.tflite")
    with pytest.raises(UserError, match="config.yaml not found; is .* a run directory"):
        export.export_run(tmp_path, "onnx")
    mine = tmp_path / "notes"  # a folder of the user's: never replaced by a SavedModel
    (mine / "keep.txt").parent.mkdir()
    (mine / "keep.txt").write_text("keep")
    with pytest.raises(UserError, match="is a directory that holds no SavedModel"):
        export.export_run(run_dir, "savedmodel", output=mine)
    assert (mine / "keep.txt").read_text() == "keep"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were missing
    with pytest.raises(UserError, match=r'needs the package onnxruntime .*\[export\]"'):
        export.export_run(run_dir, "onnx")
    assert not (run_dir / "export").exists()


def test_the_mc_dropout_sampler_exports_as_a_saved_model(trained, images, tmp_path):
    """Each call of the exported sampler is one Monte Carlo pass with fresh masks; ONNX and
    LiteRT cannot carry its random ops (docs/export.md)."""
    model = trained["dropout"]
    x = images[2][:200]
    sampler = uncertainty.mc_dropout_model(model, seed=0)
    export.export_model(sampler, tmp_path / "sampler", "savedmodel")
    run = export.load_exported(tmp_path / "sampler", "savedmodel")
    passes = np.stack([softmax(run(x), axis=-1) for _ in range(30)])
    assert np.abs(passes[0] - passes[1]).max() > 1e-2  # masks change from call to call
    expected = uncertainty.mc_predict(model, x, samples=30, seed=1, verbose=0).probabilities
    assert np.abs(passes.mean(0) - expected).mean() < 0.02  # the same distribution
