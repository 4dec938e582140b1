"""Class probabilities for image files and `.npy` batches, one clear error per bad file.

Images (PNG, JPEG, anything Pillow reads) are converted to grayscale (16-bit ones keep their
range; 32-bit and float images are refused) and, when not 28×28, resized to 28×28; pixels
are scaled to [0, 1] and *not* inverted, so they should look like Fashion-MNIST: a light
garment on a dark background. `.npy` files must hold
28×28 images, shaped (28, 28), (28, 28, 1), (N, 28, 28) or (N, 28, 28, 1), as uint8
(0–255) or floats in [0, 1]; they are read without pickle and never resized.
"""

import os
import warnings
from pathlib import Path

import numpy as np

from fashion_keras.checks import check_int, check_positive, is_integer
from fashion_keras.data import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES
from fashion_keras.errors import UserError

MAX_PIXELS = 4096 * 4096  # larger images are refused rather than decoded
MAX_BATCH = 1_000_000


class InputError(UserError):
    """One input file cannot be predicted; the message says why."""


def _read_npy(path):
    try:
        with warnings.catch_warnings():  # a lying header overflows numpy's size arithmetic
            warnings.simplefilter("ignore", RuntimeWarning)
            array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError, OverflowError, MemoryError) as e:
        raise InputError(f"not a readable .npy array ({str(e).splitlines()[0][:200]})") from None
    if not isinstance(array, np.ndarray):
        raise InputError("holds no array")
    shape = array.shape
    if array.ndim == 2:
        shape = (1, *shape, 1)
    elif array.ndim == 3 and shape[-1] == 1 and shape[:2] == (28, 28):
        shape = (1, *shape)
    elif array.ndim == 3:
        shape = (*shape, 1)
    if len(shape) != 4 or shape[1:] != (28, 28, 1):
        raise InputError(
            f"array shape {array.shape} is not 28×28 images; expected (28, 28), (28, 28, 1), "
            "(N, 28, 28) or (N, 28, 28, 1)"
        )
    if not 1 <= shape[0] <= MAX_BATCH:
        raise InputError(f"holds {shape[0]} images; expected 1 to {MAX_BATCH}")
    if array.dtype == np.uint8:
        return np.asarray(array, dtype="float32").reshape(shape) / 255.0
    if array.dtype.kind != "f":
        hint = (
            "; pixels of 0-255: save them with .astype('uint8')" if array.dtype.kind in "iu" else ""
        )
        raise InputError(f"dtype {array.dtype} is not uint8 or float{hint}")
    images = np.asarray(array, dtype="float32").reshape(shape)
    finite = np.isfinite(images).all()
    if not finite or images.min() < 0 or images.max() > 1:
        bytes_like = finite and images.min() >= 0 and images.max() <= 255
        hint = "; pixels of 0-255: divide them by 255" if bytes_like else ""
        raise InputError(f"float pixels must be finite and within [0, 1]{hint}")
    return images


def _grayscale(image):
    """`image` as a float32 image ("F") in [0, 1]. Pillow's own conversion to 8 bits ("L")
    would clip 16-bit pixels at 255, not scale them."""
    from PIL import Image

    if image.mode.startswith("I;16") or (image.mode == "I" and image.format == "PNG"):
        # a PNG holds at most 16 bits a pixel; older Pillow opens 16-bit ones as "I"
        return Image.fromarray(np.asarray(image, dtype="float32") / 65535)
    if image.mode in ("I", "F"):
        raise InputError(
            f"a {image.mode} image (32-bit integer or float pixels) has no fixed range; "
            "save it as an 8- or 16-bit image"
        )
    return Image.fromarray(np.asarray(image.convert("L"), dtype="float32") / 255)


def _read_image(path):
    from PIL import Image, UnidentifiedImageError

    too_large = f"at most {MAX_PIXELS} pixels are read"
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise InputError(f"image is {width}×{height}; {too_large}")
            image = _grayscale(image)
            if image.size != (28, 28):
                image = image.resize((28, 28), Image.Resampling.LANCZOS)
            pixels = np.asarray(image, dtype="float32")
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours
        raise InputError(f"image is far too large; {too_large}") from None
    except UnidentifiedImageError:
        raise InputError("not an image Pillow can read, nor a .npy file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputError(f"cannot decode the image ({e})") from None
    return np.clip(pixels, 0, 1)[None, :, :, None]  # Lanczos overshoots a little at edges


def read_inputs(path):
    """Reads one input file as a float32 batch (N, 28, 28, 1) in [0, 1].

    Raises:
        InputError: the file is missing, unreadable, or not images of the right kind.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; give the files in it (e.g. FOLDER/*.png)")
    if not path.is_file():
        raise InputError("no such file")
    if path.suffix.lower() == ".npy":
        return _read_npy(path)
    return _read_image(path)


def top_classes(probabilities, top=3):
    """`[(class name, probability), ...]` of the `top` most likely classes."""
    order = np.argsort(probabilities)[::-1][:top]
    return [(CLASS_NAMES[i], float(probabilities[i])) for i in order]


def _check_options(top, mc_samples, temperature, members):
    if not is_integer(top) or not 1 <= top <= len(CLASS_NAMES):
        raise UserError(
            f"top must be between 1 and {len(CLASS_NAMES)} (classes listed per image). "
            f"Received: top={top!r}"
        )
    check_int("mc_samples", mc_samples)
    if temperature is not None and temperature != "run":
        check_positive("temperature", temperature)
    if temperature is not None and mc_samples:
        raise UserError(
            "temperature scales one ordinary prediction; it cannot be combined with Monte "
            "Carlo dropout. Give --temperature or --mc-samples, not both. "
            f"Received: temperature={temperature}, mc_samples={mc_samples}"
        )
    if members > 1 and (temperature is not None or mc_samples):
        option, value = ("temperature", temperature) if temperature else ("mc_samples", mc_samples)
        raise UserError(
            f"An ensemble is predicted by averaging its models; {option} "
            f"(--{option.replace('_', '-')}) applies to one model. Give one --model, or drop "
            f"the option. Received: {members} models and {option}={value}"
        )


def _model_file(model):
    """The `.keras` file `model` names: itself, or a run directory's `model.keras`."""
    path = Path(model)
    if path.is_dir() and (path / "model.keras").is_file():
        return path / "model.keras"
    if not path.is_file() or path.suffix != ".keras":
        raise UserError(f"--model {path}: expected an existing .keras file or run directory")
    return path


def _load_model(model):
    import keras

    from fashion_keras.models import load_model

    return model if isinstance(model, keras.Model) else load_model(_model_file(model))


def _as_logits(model):
    """`model`, or if it ends in a softmax, a copy that gives the logits the softmax takes.

    Every prediction here applies its own softmax (after a temperature, or per Monte Carlo
    pass), so probabilities would be softmaxed twice. A model that is not a graph of layers
    (subclassed) is taken as it is.
    """
    import keras

    try:
        last = model.layers[-1]
        is_output = len(model.outputs) == 1 and last.output is model.outputs[0]
    except (AttributeError, IndexError, ValueError):  # no graph, or a layer called twice
        return model
    if not is_output:
        return model
    if isinstance(last, keras.layers.Softmax):
        return keras.Model(model.inputs, last.input, name=model.name)  # the same layers
    if getattr(last, "activation", None) is not keras.activations.softmax:
        return model

    def clone(layer):  # the last one with a linear activation
        config = layer.get_config()
        if layer is last:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _check_fashion_mnist(model):
    """Refuses a model that does not take 28×28×1 images to 10 classes' logits."""
    shapes = tuple(getattr(model, "input_shape", ())), tuple(getattr(model, "output_shape", ()))
    if shapes != ((None, *IMAGE_SHAPE), (None, NUM_CLASSES)):
        raise UserError(
            f"model {model.name} takes {shapes[0]} and gives {shapes[1]}; a Fashion-MNIST "
            f"model takes (None, 28, 28, 1) images and gives (None, {NUM_CLASSES}) logits"
        )


def run_temperature(model_path):
    """The temperature training fitted for the model at `model_path` (its run's
    `metrics.json`, beside it).

    Raises:
        UserError: `model_path` is a model in memory, or its run has no fitted temperature.
    """
    import keras

    if isinstance(model_path, keras.Model):
        raise UserError(
            'temperature="run" reads the run directory of a model file; give the model as '
            "the path of its .keras file, or give the temperature as a number"
        )
    model_path = _model_file(model_path)
    if model_path.name != "model.keras":
        raise UserError(
            f"--temperature run: the run's temperature was fitted for its model.keras, not "
            f"{model_path.name}; give --temperature T"
        )
    metrics = model_path.parent / "metrics.json"
    from fashion_keras.rundir import read_json

    try:
        found = (read_json(metrics) or {}).get("temperature")
    except (ValueError, AttributeError):  # not JSON, or not an object
        raise UserError(f"--temperature run: {metrics} is damaged; give --temperature T") from None
    if found is None:
        raise UserError(
            f"--temperature run: {metrics} holds no fitted temperature (runs finish with one "
            "since fashion_keras 0.3); give --temperature T, e.g. fitted with "
            "fashion_keras.uncertainty.fit_temperature"
        )
    try:
        return check_positive("temperature", found)
    except UserError:
        raise UserError(
            f"--temperature run: {metrics} holds temperature={found!r}, not a number above 0 "
            "(damaged?); give --temperature T"
        ) from None


def predict_files(model, paths, top=3, mc_samples=0, seed=0, temperature=None):
    """Predicts every image in `paths`; a bad file becomes an error entry, not an exception.

    Args:
        model: a Keras model (logits out; a last softmax is taken off) or the path of a
            `.keras` file (or of a run directory, for its `model.keras`), loaded in safe mode;
            or a list of them, an ensemble of several models, predicted by averaging their
            probabilities (see `fashion_keras.uncertainty.ensemble_predict`). A list of one
            is that one model.
        paths: image or `.npy` files (or one).
        top: how many classes to list per image.
        mc_samples: 0 for one ordinary prediction, or the number of Monte Carlo dropout
            passes (see `fashion_keras.uncertainty.mc_predict`; needs a model with dropout).
        seed: the seed of the Monte Carlo dropout masks (one sequence of masks runs on
            from file to file).
        temperature: None, or a number above 0 that divides the logits before the softmax
            (temperature scaling, see `fashion_keras.uncertainty.fit_temperature`), or
            `"run"`: the temperature that training fitted on the validation split, from the
            `metrics.json` beside the `.keras` file. One model only, and not with
            `mc_samples`.

    Returns:
        A list with, per image, `{"file", "index", "top": [(class, probability), ...],
        "entropy"}` (plus `"mutual_information"` with Monte Carlo dropout or an ensemble),
        and per unreadable file `{"file", "error"}`.

    Raises:
        UserError: a model cannot be loaded, the members of an ensemble do not fit
            together, or the options do not go together.

    Example:
        >>> predict_files("runs/dropout/model.keras", ["shirt.png"], mc_samples=30)
        >>> predict_files([f"runs/seed{s}/model.keras" for s in (1, 2, 3)], ["shirt.png"])
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]  # one file, not its name's letters
    members = list(model) if isinstance(model, (list, tuple)) else [model]
    _check_options(top, mc_samples, temperature, len(members))
    predict = _predictor(members, mc_samples, seed, temperature)
    with_mutual_information = bool(mc_samples) or len(members) > 1
    results = []
    for path in paths:
        try:
            images = read_inputs(path)
        except InputError as e:
            results.append({"file": str(path), "error": str(e)})
            continue
        predicted = predict(images)
        for i, p in enumerate(predicted.probabilities):
            result = {"file": str(path), "index": i, "top": top_classes(p, top)}
            result["entropy"] = float(predicted.entropy[i])
            if with_mutual_information:
                result["mutual_information"] = float(predicted.mutual_information[i])
            results.append(result)
    return results


def _predictor(members, mc_samples, seed, temperature):
    """images -> `Predictions`, by the one method the options ask for; models loaded once."""
    from fashion_keras import uncertainty

    loaded = uncertainty.check_ensemble([_as_logits(_load_model(m)) for m in members])
    _check_fashion_mnist(loaded[0])  # and so every member: they fit together
    if temperature == "run":  # once the model is known to be there
        temperature = run_temperature(members[0])
    members, model = loaded, loaded[0]
    if len(members) > 1:
        return lambda images: uncertainty.ensemble_predict(members, images, verbose=0)
    if mc_samples:  # one sampler for every file; a model without dropout fails here, at once
        sampler = uncertainty.mc_dropout_model(model, seed=seed)
        return lambda images: uncertainty.mc_passes(sampler, images, mc_samples, verbose=0)
    if temperature is not None:
        return lambda images: uncertainty.temperature_predict(model, images, temperature)
    return lambda images: uncertainty.deterministic_predict(model, images)
