"""A trained model for serving: SavedModel, ONNX and LiteRT, each checked against Keras.

`export_model` writes one format with Keras' own `model.export`; `load_exported` runs it with
the runtime a deployer would use (TensorFlow's serving signature, ONNX Runtime, the LiteRT
interpreter); `check_parity` compares the two on the same images. `export_run` does all three
for a finished run and publishes the file only when the check passes.

What is exported is the model's inference pass (`training=False`: no augmentation, no
dropout, batch normalisation on its moving statistics, the test-time mirror included), in
float32: a mixed-precision model computes in float32 after export (its weights are float32
already). The exporters and runtimes are the `export` extra: `pip install ".[export]"` in the
project's folder (`make install` has it).
"""

import contextlib
import dataclasses
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from fashion_keras import files
from fashion_keras.checks import check_int
from fashion_keras.errors import UserError

# format -> (Keras' name for it, file name in RUN/export/, the packages it needs)
FORMATS = {
    "savedmodel": ("tf_saved_model", "savedmodel", ("tensorflow",)),
    "onnx": ("onnx", "model.onnx", ("tf2onnx", "onnxruntime")),
    "litert": ("litert", "model.tflite", ("ai_edge_litert",)),
}
# Largest difference of a class probability allowed between Keras and an export. Measured
# differences are below 1e-6 (float32 arithmetic in another order); 1e-4 leaves room for
# other CPUs' kernels while still catching any real difference (a wrong layer moves them by
# 1e-2 or more).
TOLERANCE = 1e-4


class ExportError(Exception):
    """An export differs from the Keras model it came from (not a user's mistake)."""


@dataclasses.dataclass(frozen=True)
class Parity:
    """How an export's predictions compare with Keras' on the same images."""

    images: int
    same_class: int  # images whose most probable class is the same
    max_difference: float  # largest absolute difference of any class probability

    @property
    def passed(self):
        return self.same_class == self.images and self.max_difference <= TOLERANCE


def check_format(format):
    """`format` if it is one of `FORMATS`, after checking its packages import."""
    if format not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}. Received: format={format!r}")
    for package in FORMATS[format][2]:
        try:
            __import__(package)
        except ImportError as e:
            raise UserError(
                f"exporting to {format} needs the package {package} ({e}); install the "
                'export extra: pip install ".[export]" in the fashion_keras folder '
                "(make install has it)"
            ) from None
    return format


def _check_backend():
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":  # the exporters convert TensorFlow graphs
        raise UserError(
            f"exporting needs the TensorFlow backend (KERAS_BACKEND={backend} now); a .keras "
            "file saved on any backend loads there: rerun with KERAS_BACKEND=tensorflow"
        )


def _layers(model):
    """`model` and every layer in it, those of nested models (an ensemble's members) too."""
    yield model
    for layer in model.layers:
        yield from _layers(layer) if hasattr(layer, "layers") else [layer]


def inference_model(model):
    """A float32 copy of `model` whose call always runs in inference mode.

    `training=False` is fixed when the copy is built, so no exporter can trace a training
    branch (see `fashion_keras.layers` on keras-team/keras#23166).

    Example:
        >>> inference_model(model).export("model.onnx", format="onnx")
    """
    import keras

    def float32_layer(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    if any(layer.dtype_policy.name != "float32" for layer in _layers(model)):
        copy = keras.models.clone_model(model, clone_function=float32_layer, recursive=True)
        copy.set_weights(model.get_weights())
        model = copy
    shape = tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape=shape, name="image")
    copy = keras.Model(inputs, model(inputs, training=False), name=model.name)
    copy(np.zeros((1, *shape), "float32"))  # the ONNX exporter wants a model called once
    return copy


def export_model(model, path, format):
    """Writes `inference_model(model)` to `path` in `format` ("savedmodel", "onnx" or
    "litert"); a SavedModel is a directory, the others one file.

    Example:
        >>> export_model(model, "model.tflite", "litert")
    """
    _check_backend()
    check_format(format)
    with warnings.catch_warnings():  # Keras' tf2onnx patch trips NumPy's np.object notice
        warnings.simplefilter("ignore", FutureWarning)
        inference_model(model).export(str(path), format=FORMATS[format][0], verbose=False)


def load_exported(path, format):
    """The exported model at `path`, run by its runtime: a function from images
    (n, 28, 28, 1) float32 to logits (n, 10) as a NumPy array.

    Example:
        >>> logits = load_exported("runs/improved/export/model.onnx", "onnx")(x_test)
    """
    check_format(format)
    return {"savedmodel": _saved_model, "onnx": _onnx_session, "litert": _litert}[format](str(path))


def _saved_model(path):
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]  # what TF Serving calls

    def run(x):
        (logits,) = serve(tf.constant(x)).values()
        return logits.numpy()

    return run


def _onnx_session(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def _litert(path):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=len(os.sched_getaffinity(0)))
    image = interpreter.get_input_details()[0]["index"]
    logits = interpreter.get_output_details()[0]["index"]
    size = [None]

    def run(x):
        if size[0] != len(x):  # resizing costs an allocation: only when the batch changes
            interpreter.resize_tensor_input(image, x.shape)
            interpreter.allocate_tensors()
            size[0] = len(x)
        interpreter.set_tensor(image, x)
        interpreter.invoke()
        return interpreter.get_tensor(logits).copy()

    return run


def _softmax(logits):
    shifted = np.asarray(logits, "float64")
    shifted = shifted - shifted.max(axis=-1, keepdims=True)
    p = np.exp(shifted)
    return p / p.sum(axis=-1, keepdims=True)


def check_parity(model, exported, x, batch_size=250):
    """Compares `exported` (a function from `load_exported`) with Keras on `x`: with
    `inference_model(model)`, which is `model` itself for a float32 model.

    Returns:
        `Parity` with the images compared, how many get the same class, and the largest
        difference of a class probability.
    """
    x = np.asarray(x, dtype="float32")
    reference = inference_model(model)  # what was exported: float32, mixed precision or not
    keras_p = _softmax(reference.predict(x, batch_size=batch_size, verbose=0))
    export_p = np.concatenate(
        [_softmax(exported(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    )
    return Parity(
        images=len(x),
        same_class=int((keras_p.argmax(axis=1) == export_p.argmax(axis=1)).sum()),
        max_difference=float(np.abs(keras_p - export_p).max()),
    )


@dataclasses.dataclass(frozen=True)
class Exported:
    """What `export_run` wrote and how it compared with Keras."""

    path: Path
    format: str
    bytes: int
    parity: Parity


def disk_size(path):
    """Bytes of an exported file, or of all files under a SavedModel directory."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _publish(tmp, path):
    """Moves the finished export `tmp` to `path`, replacing the export that was there (a
    directory only if it holds a SavedModel: `export_run` checks that first)."""
    if path.is_dir():
        old = path.parent / files.temporary_name(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def export_run(run_dir, format, output=None, checkpoint="model.keras", images=1000, data_dir=None):
    """Exports a finished run's model and checks it on its first `images` test images.

    The export is written beside its final path and moved there only when the check passes,
    so a failed export never replaces a good one.

    Args:
        run_dir: a finished run directory.
        format: "savedmodel", "onnx" or "litert".
        output: where to write (default `RUN_DIR/export/savedmodel`, `model.onnx` or
            `model.tflite`).
        checkpoint: `model.keras` (the final model) or `best.keras`.
        images: test images to compare Keras and the export on (at least 1).
        data_dir: where the data are (default: searched, see `fashion_keras.data`).

    Returns:
        `Exported`.

    Raises:
        ExportError: the export's predictions differ from Keras' beyond `TOLERANCE`.

    Example:
        >>> export_run("runs/improved", "onnx").parity.max_difference
    """
    from fashion_keras.rundir import load_run_model

    _check_backend()
    check_format(format)
    check_int("images", images, minimum=1)
    model, x_test, _ = load_run_model(run_dir, data_dir, checkpoint)
    path = Path(output) if output else Path(run_dir) / "export" / FORMATS[format][1]
    suffix = Path(FORMATS[format][1]).suffix  # a SavedModel is a directory: none
    if path.suffix != suffix or (path.exists() and path.is_dir() != (not suffix)):
        kind = f"a file ending in {suffix}" if suffix else "a directory"
        raise UserError(f"--output {path}: {format} exports are {kind}; choose another name")
    if path.is_dir() and not (path / "saved_model.pb").is_file():  # replaced only if ours
        raise UserError(
            f"--output {path} is a directory that holds no SavedModel; choose a new name"
        )
    new_folders = [folder for folder in path.parents if not folder.exists()]  # deepest first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.WriteError(
            f"--output {path}: cannot make its folder: {e.strerror or e}"
        ) from None
    tmp = path.parent / files.temporary_name(path)
    try:
        export_model(model, tmp, format)
        parity = check_parity(model, load_exported(tmp, format), x_test[:images])
        if not parity.passed:
            raise ExportError(
                f"the {format} export differs from the Keras model: {parity}; nothing written"
            )
        _publish(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
        if not path.exists():  # a failed export leaves no folders of its own behind
            for folder in new_folders:
                with contextlib.suppress(OSError):  # not empty: someone else's files now
                    folder.rmdir()
    return Exported(path, format, disk_size(path), parity)
