import gzip
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "fashion_keras" / "presets"
# The Keras backend the tests run on (`make test-backends` runs a tier on JAX and PyTorch).
BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
tensorflow_only = pytest.mark.skipif(
    BACKEND != "tensorflow", reason="TensorFlow itself is the point (tf.data, tf.distribute, ...)"
)
# Small real-data runs: 1 epoch on a class-balanced subset.
SMOKE = ["training.epochs=1", "data.train_limit=1000", "data.eval_limit=500"]


def idx_bytes(array, magic=None):
    """Raw IDX bytes for a uint8 array (header + data); `magic` overrides the first 4 bytes."""
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + dims + array.tobytes()


def write_idx(path, array=None, raw=None, **kwargs):
    """Writes a gzip IDX file; returns the SHA-256 of its decompressed bytes."""
    raw = raw if raw is not None else idx_bytes(array, **kwargs)
    Path(path).write_bytes(gzip.compress(raw))
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture
def small_dataset(tmp_path, monkeypatch):
    """A directory with four tiny but valid Fashion-MNIST-shaped files, and FILES patched
    to expect them (counts and checksums)."""
    from fashion_keras import data

    rng = np.random.default_rng(0)
    directory = tmp_path / "small"
    directory.mkdir()
    specs = {}
    for key, spec in data.FILES.items():
        n = 60 if key.startswith("train") else 20
        shape = (n, 28, 28) if key.endswith("images") else (n,)
        array = rng.integers(0, 256, shape) if key.endswith("images") else np.arange(n) % 10
        sha = write_idx(directory / spec.filename, array)
        specs[key] = data.IdxFile(spec.filename, sha, shape)
    monkeypatch.setattr(data, "FILES", specs)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("FASHION_KERAS_DATA", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    return directory


def run_cli(*args, timeout=600, env=None, cwd=ROOT):
    """Runs `fashion-keras ARGS` in a subprocess; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "fashion_keras.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def epochs_logged(output):
    """The epochs a `fashion-keras train` process trained, from its own log ("Epoch 3/3")."""
    return [int(m) for m in re.findall(r"^Epoch (\d+)/\d+", output, flags=re.MULTILINE)]
