"""Fashion-MNIST: find, verify and load the four IDX files.

The files are looked for, in order, in:

1. the directory the caller names (`data_dir`, `--data-dir` or `$FASHION_KERAS_DATA`);
   a named directory is authoritative: missing or bad files there are an error;
2. the Keras cache, `$KERAS_HOME/datasets/fashion-mnist` (default `~/.keras/...`);
3. `/usr/share/datasets/fashion-mnist`, where Debian's `dataset-fashion-mnist` puts them;
4. last, a download from the Keras mirror into the Keras cache.

Every file is checked: gzip framing, IDX magic number, dimensions, item count, and the
SHA-256 of the decompressed bytes, so the original files and Debian's recompressed copies
both pass. Verified arrays are cached decoded (`.npz`) in the Keras cache, so later loads
skip the gzip and checksum work. `make_dataset` turns the arrays into training batches.
"""

import dataclasses
import gzip
import hashlib
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from fashion_keras.checks import is_integer
from fashion_keras.errors import UserError
from fashion_keras.files import atomic_path

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SHAPE = (28, 28, 1)

DEFAULT_MIRROR = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FIX_HINT = (
    "run `make data`, or `apt-get install dataset-fashion-mnist`, "
    "or set FASHION_KERAS_DATA to a directory holding the four .gz files"
)


@dataclasses.dataclass(frozen=True)
class IdxFile:
    filename: str
    sha256: str  # of the decompressed bytes
    dims: tuple  # (count, rows, cols) for images, (count,) for labels


FILES = {
    "train_images": IdxFile(
        "train-images-idx3-ubyte.gz",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        (60000, 28, 28),
    ),
    "train_labels": IdxFile(
        "train-labels-idx1-ubyte.gz",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        (60000,),
    ),
    "test_images": IdxFile(
        "t10k-images-idx3-ubyte.gz",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        (10000, 28, 28),
    ),
    "test_labels": IdxFile(
        "t10k-labels-idx1-ubyte.gz",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        (10000,),
    ),
}


class DataError(UserError):
    """The data files are missing, unreadable or not what they should be."""


# --------------------------------------------------------------------------- parsing


def read_idx(path, expected=None, name=None):
    """Reads one gzip-compressed IDX file of unsigned bytes into a NumPy array.

    Args:
        path: the `.gz` file.
        expected: an `IdxFile` to check the dimensions and SHA-256 against, or None to
            check only that the file is well-formed IDX.
        name: how errors call the file (default: `path`), e.g. the URL it came from.

    Returns:
        A `uint8` array shaped as the file's header says.

    Raises:
        DataError: naming the file and what is wrong with it.
    """
    path = Path(path)
    label = name or path
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{label}: is a directory, expected a .gz file") from None
    except PermissionError:
        raise DataError(f"{label}: permission denied") from None
    except gzip.BadGzipFile:
        raise DataError(f"{label}: not a gzip file") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{label}: truncated or corrupt gzip data ({e})") from None
    except OSError as e:
        raise DataError(f"{label}: cannot read: {e.strerror or e}") from None
    if len(raw) < 4:
        raise DataError(f"{label}: empty or too short for an IDX header ({len(raw)} bytes)")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(
            f"{label}: wrong magic number {raw[:4].hex()}, expected 0x0008 (unsigned bytes) "
            "followed by the number of dimensions"
        )
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header_size:
        raise DataError(f"{label}: header declares {ndim} dimensions but is cut short")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if expected is not None and len(dims) != len(expected.dims):
        raise DataError(f"{label}: has {ndim} dimensions, expected {len(expected.dims)}")
    if expected is not None and dims[1:] != expected.dims[1:]:
        raise DataError(f"{label}: item shape is {dims[1:]}, expected {expected.dims[1:]}")
    size = int(np.prod(dims))
    payload = len(raw) - header_size
    if payload < size:
        raise DataError(
            f"{label}: header says {dims[0]} items ({size} bytes) but the file holds only "
            f"{payload} bytes of data"
        )
    if payload > size:
        raise DataError(f"{label}: {payload - size} bytes of trailing data after {dims[0]} items")
    if expected is not None:
        if dims[0] != expected.dims[0]:
            raise DataError(f"{label}: holds {dims[0]} items, expected {expected.dims[0]}")
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected.sha256:
            raise DataError(
                f"{label}: checksum mismatch (SHA-256 of the decompressed data is "
                f"{digest[:16]}…, expected {expected.sha256[:16]}…); the file is corrupt or "
                "not Fashion-MNIST: delete it and run `make data`"
            )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)


def read_split(images_path, labels_path, images_spec=None, labels_spec=None):
    """Reads an images file and its labels file and checks that they agree."""
    images = read_idx(images_path, images_spec)
    labels = read_idx(labels_path, labels_spec)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3 dimensions (count, rows, cols)")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1 dimension (count)")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; they must agree"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise DataError(f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} is outside 0-9")
    return images, labels


# --------------------------------------------------------------------------- finding


def keras_cache_dir():
    """The Keras cache directory for Fashion-MNIST (`$KERAS_HOME` or `~/.keras`)."""
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "datasets" / "fashion-mnist"


def _has_all_files(directory):
    return all((directory / spec.filename).is_file() for spec in FILES.values())


def find_data_dir(data_dir=None, download=True):
    """Returns `(directory, source)` where the four files are, following the search order.

    Args:
        data_dir: a directory to use instead of searching. Falls back to
            `$FASHION_KERAS_DATA`. A named directory is authoritative.
        download: whether to download into the Keras cache when no copy is found.

    Raises:
        DataError: when the files are found nowhere; it lists every place looked.
    """
    named = data_dir or os.environ.get("FASHION_KERAS_DATA")
    if named:
        directory = Path(named).expanduser()
        origin = "--data-dir" if data_dir else "FASHION_KERAS_DATA"
        if not directory.is_dir():
            raise DataError(f"{directory} (from {origin}): not a directory; {FIX_HINT}")
        if not os.access(directory, os.R_OK | os.X_OK):
            raise DataError(f"{directory} (from {origin}): directory is not readable")
        missing = [s.filename for s in FILES.values() if not (directory / s.filename).is_file()]
        if missing:
            raise DataError(f"{directory} (from {origin}): missing {', '.join(missing)}")
        return directory, origin
    candidates = [(keras_cache_dir(), "Keras cache"), (DEBIAN_DIR, "Debian package")]
    for directory, source in candidates:
        if _has_all_files(directory):
            return directory, source
    looked = ", ".join(str(d) for d, _ in candidates)
    if not download:
        raise DataError(f"Fashion-MNIST not found (looked in {looked}); {FIX_HINT}")
    try:
        return download_files(keras_cache_dir()), "download"
    except OSError as e:
        raise DataError(
            f"Fashion-MNIST not found (looked in {looked}) and the download failed "
            f"({getattr(e, 'reason', None) or e}); {FIX_HINT}"
        ) from None


def download_files(directory, base_url=None):
    """Downloads the four files into `directory`, each verified before it is put in place.

    Args:
        directory: where to put the files (created if needed).
        base_url: the mirror; defaults to `$FASHION_KERAS_MIRROR` or the Keras mirror.

    Returns:
        `directory` as a Path.
    """
    base_url = base_url or os.environ.get("FASHION_KERAS_MIRROR") or DEFAULT_MIRROR
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for spec in FILES.values():
        target = directory / spec.filename
        if target.is_file():
            continue
        url = base_url.rstrip("/") + "/" + spec.filename
        print(f"Downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=60) as response:
            payload = response.read()  # at most 26 MB
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(payload)
            read_idx(tmp, spec, name=url)  # a bad download never replaces a good file
    return directory


# --------------------------------------------------------------------------- loading


def _decoded_cache_path(directory):
    """Where the decoded arrays of `directory`'s files are cached, keyed by their stats."""
    stats = [os.stat(directory / spec.filename) for spec in FILES.values()]
    key = "|".join(f"{directory.resolve()}:{s.st_size}:{s.st_mtime_ns}" for s in stats)
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return keras_cache_dir() / "decoded" / f"{name}.npz"


def _write_npz_atomic(path, **arrays):
    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
    except UserError:
        pass  # the cache is an optimisation: an unwritable cache is not an error


def read_files(data_dir=None, download=True, cache=True):
    """Finds, verifies and decodes the four files.

    Returns:
        A dict with `train_images`, `train_labels`, `test_images`, `test_labels` (uint8),
        plus `directory` and `source` saying where they came from.
    """
    directory, source = find_data_dir(data_dir, download=download)
    cache_path = _decoded_cache_path(directory) if cache else None
    if cache_path is not None and cache_path.is_file():
        try:
            with np.load(cache_path) as npz:
                arrays = {key: npz[key] for key in FILES}
            return {**arrays, "directory": directory, "source": source}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt from the verified files below
    f = {key: directory / spec.filename for key, spec in FILES.items()}
    train = read_split(
        f["train_images"], f["train_labels"], FILES["train_images"], FILES["train_labels"]
    )
    test = read_split(
        f["test_images"], f["test_labels"], FILES["test_images"], FILES["test_labels"]
    )
    arrays = dict(zip(FILES, (*train, *test), strict=True))
    if cache_path is not None:
        _write_npz_atomic(cache_path, **arrays)
    return {**arrays, "directory": directory, "source": source}


def balanced_subset(labels, limit):
    """Indices of `limit` examples spread as evenly over the classes as they allow.

    Every class gets the same share (the first `limit % 10` classes one more); a class with
    fewer examples than its share gives all it has, and the rest is shared among the
    others in the same way. Each class contributes its first examples, in their original
    order, so the subset is the same on every call.

    Raises:
        UserError: `limit` is larger than `len(labels)`.
    """
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if limit > counts.sum():
        raise UserError(f"limit={limit} is larger than the {counts.sum()} examples available")
    level = 0  # the largest share every class can give, or all it has
    while level < counts.max() and np.minimum(counts, level + 1).sum() <= limit:
        level += 1
    take = np.minimum(counts, level)
    take[np.flatnonzero(counts > level)[: limit - take.sum()]] += 1
    picked = [np.flatnonzero(labels == c)[:n] for c, n in enumerate(take)]
    return np.sort(np.concatenate(picked))


def _check_limit(name, value, available):
    """`value` as Python's int (or None), once it is a limit `load_data` can keep."""
    if value is None:
        return None
    if not is_integer(value) or value < NUM_CLASSES:
        raise UserError(
            f"{name} must be an integer of at least {NUM_CLASSES} (one per class) or None. "
            f"Received: {name}={value!r}"
        )
    if value > available:
        raise UserError(
            f"{name}={value} is larger than the {available} examples available; "
            f"use at most {available} or None for all"
        )
    return int(value)


def to_one_hot(labels):
    """Sparse integer labels to one-hot float32 rows."""
    return np.eye(NUM_CLASSES, dtype="float32")[labels]


def load_data(
    data_dir=None,
    validation_size=5000,
    train_limit=None,
    eval_limit=None,
    one_hot=False,
    validation_start=0,
    download=True,
    cache=True,
):
    """Loads Fashion-MNIST split as in the tutorial: 55,000 train, 5,000 validation, 10,000 test.

    The validation set is the *first* `validation_size` images of the official training
    file and the training set the rest, as TensorFlow 1's `read_data_sets` split it; the
    split is fixed, not shuffled. `validation_start` moves the validation images along the
    file, for a second opinion on a choice made on the first split.

    Args:
        data_dir: directory holding the four `.gz` files; None searches (see module doc).
        validation_size: images taken from the start of the training file for validation.
        train_limit: keep only a class-balanced subset of this many training images.
        eval_limit: likewise for the validation and the test set.
        one_hot: return one-hot float32 labels instead of integer class indices.
        validation_start: index in the training file of the first validation image; the
            training set is the images before and after the validation ones.
        download: allow a download when no local copy is found.
        cache: use (and fill) the decoded-array cache in the Keras cache directory.

    Returns:
        `(x_train, y_train), (x_val, y_val), (x_test, y_test)`: images float32 in [0, 1]
        shaped (N, 28, 28, 1), labels int64 (or one-hot).

    Example:
        >>> (x_train, y_train), _, _ = load_data(train_limit=1000)
        >>> x_train.shape
        (1000, 28, 28, 1)
    """
    total = FILES["train_images"].dims[0]
    if not is_integer(validation_size):
        raise UserError(f"validation_size must be an integer. Received: {validation_size!r}")
    validation_size = int(validation_size)  # numpy's small integers would overflow below
    if not 1 <= validation_size < total:
        raise UserError(
            f"validation_size must be between 1 and {total - 1}. Received: "
            f"validation_size={validation_size}"
        )
    if not is_integer(validation_start):
        raise UserError(f"validation_start must be an integer. Received: {validation_start!r}")
    validation_start = int(validation_start)
    if not 0 <= validation_start <= total - validation_size:
        raise UserError(
            f"validation_start must be between 0 and {total - validation_size}, so that the "
            f"{validation_size} validation images lie within the training file's {total}. "
            f"Received: validation_start={validation_start}"
        )
    train_limit = _check_limit("train_limit", train_limit, total - validation_size)
    eval_limit = _check_limit(
        "eval_limit", eval_limit, min(validation_size, FILES["test_images"].dims[0])
    )

    arrays = read_files(data_dir, download=download, cache=cache)
    images, labels = arrays["train_images"], arrays["train_labels"]
    validation = slice(validation_start, validation_start + validation_size)
    train = np.r_[0:validation_start, validation.stop : len(images)]
    splits = [
        (images[train], labels[train], train_limit),
        (images[validation], labels[validation], eval_limit),
        (arrays["test_images"], arrays["test_labels"], eval_limit),
    ]
    result = []
    for x, y, limit in splits:
        if limit is not None:
            keep = balanced_subset(y, limit)
            x, y = x[keep], y[keep]
        x = x.astype("float32")
        x /= np.float32(255)  # in place: several times faster than `x / 255.0` here
        x = x[..., None]
        y = to_one_hot(y) if one_hot else y.astype("int64")
        result.append((x, y))
    return tuple(result)


def train_size(validation_size=5000, train_limit=None):
    """The training images `load_data` returns for these arguments (not checked here)."""
    return train_limit or FILES["train_images"].dims[0] - validation_size


def make_dataset(x, y, batch_size, seed, first_epoch, epochs):
    """Training batches for epochs `first_epoch..epochs-1`, as one stream.

    Each epoch's order is a stateless shuffle seeded by `(seed, epoch)`, so a run resumed
    at epoch k sees exactly the batches an uninterrupted run would.
    """
    import tensorflow as tf

    n = len(x)
    x, y = tf.constant(x), tf.constant(y)

    def epoch_indices(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([seed, epoch]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    # Fixed parallelism, no autotuning: the autotuner's thread made deleting the iterator at
    # the end of fit() block for 4-9 s in 9 of 16 timed runs here (in none of 9 without it).
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_indices)
        .map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx)), num_parallel_calls=2)
        .prefetch(2)
        .with_options(options)
    )
