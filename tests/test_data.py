import functools
import gzip
import http.server
import os
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from fashion_keras import data
from fashion_keras.data import DataError, IdxFile, read_idx, read_split
from fashion_keras.errors import UserError

from conftest import idx_bytes, write_idx

IMAGES = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
LABELS = np.array([0, 9, 4], dtype=np.uint8)


def test_read_idx_round_trips_images_and_labels(tmp_path):
    sha = write_idx(tmp_path / "i.gz", IMAGES)
    write_idx(tmp_path / "l.gz", LABELS)
    images = read_idx(tmp_path / "i.gz", IdxFile("i.gz", sha, (3, 28, 28)))
    np.testing.assert_array_equal(images, IMAGES)
    np.testing.assert_array_equal(read_idx(tmp_path / "l.gz"), LABELS)


def _broken(tmp_path, case):
    """Writes one broken file; returns (path, spec or None)."""
    p = tmp_path / "f.gz"
    spec = IdxFile("f.gz", "0" * 64, (3, 28, 28))
    if case == "missing":
        return tmp_path / "absent.gz", None
    if case == "empty":
        p.write_bytes(b"")
    elif case == "empty-gzip":
        p.write_bytes(gzip.compress(b""))
    elif case == "truncated-gzip":
        p.write_bytes(gzip.compress(idx_bytes(IMAGES))[:200])
    elif case == "not-gzip":
        p.write_bytes(idx_bytes(IMAGES))
    elif case == "magic":
        write_idx(p, IMAGES, magic=b"\x00\x00\x0d\x03")
    elif case == "dimensions":
        write_idx(p, IMAGES.reshape(3, 14, 56))
    elif case == "count-larger-than-data":
        write_idx(p, raw=idx_bytes(IMAGES)[:-100])
    elif case == "trailing-data":
        write_idx(p, raw=idx_bytes(IMAGES) + b"\x00" * 7)
    elif case == "checksum":
        write_idx(p, IMAGES)
        spec = IdxFile("f.gz", "0" * 64, (3, 28, 28))
        return p, spec
    elif case == "wrong-count":
        write_idx(p, IMAGES[:2])
    elif case == "directory":
        p.mkdir()
    return p, spec


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "file not found"),
        ("empty", "empty or too short"),
        ("empty-gzip", "empty or too short"),
        ("truncated-gzip", "truncated or corrupt gzip"),
        ("not-gzip", "not a gzip file"),
        ("magic", "wrong magic number"),
        ("dimensions", "item shape is (14, 56)"),
        ("count-larger-than-data", "header says 3 items"),
        ("trailing-data", "trailing data"),
        ("checksum", "checksum mismatch"),
        ("wrong-count", "holds 2 items, expected 3"),
        ("directory", "is a directory"),
    ],
)
def test_read_idx_names_the_file_and_the_problem(tmp_path, case, message):
    path, spec = _broken(tmp_path, case)
    with pytest.raises(DataError) as e:
        read_idx(path, spec)
    assert str(path) in str(e.value)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_read_split_checks_counts_agree_and_label_range(tmp_path):
    write_idx(tmp_path / "i.gz", IMAGES)
    write_idx(tmp_path / "l2.gz", LABELS[:2])
    with pytest.raises(DataError, match="holds 3 images but .* holds 2 labels"):
        read_split(tmp_path / "i.gz", tmp_path / "l2.gz")
    write_idx(tmp_path / "bad.gz", np.array([0, 10, 3]))
    with pytest.raises(DataError, match="label 10 at index 1 is outside 0-9"):
        read_split(tmp_path / "i.gz", tmp_path / "bad.gz")


def test_search_order_named_dir_then_keras_cache_then_debian(small_dataset, tmp_path, monkeypatch):
    keras_dir = data.keras_cache_dir()
    debian = tmp_path / "debian"
    monkeypatch.setattr(data, "DEBIAN_DIR", debian)
    with pytest.raises(DataError) as e:
        data.find_data_dir(download=False)
    assert str(keras_dir) in str(e.value) and str(debian) in str(e.value)
    assert "make data" in str(e.value) and "dataset-fashion-mnist" in str(e.value)

    debian.symlink_to(small_dataset)
    assert data.find_data_dir(download=False) == (debian, "Debian package")
    keras_dir.parent.mkdir(parents=True)
    keras_dir.symlink_to(small_dataset)
    assert data.find_data_dir(download=False) == (keras_dir, "Keras cache")
    monkeypatch.setenv("FASHION_KERAS_DATA", str(small_dataset))
    assert data.find_data_dir() == (small_dataset, "FASHION_KERAS_DATA")
    assert data.find_data_dir(small_dataset) == (small_dataset, "--data-dir")


def test_named_directory_is_authoritative(small_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_DIR", small_dataset)  # a good copy exists elsewhere
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz"):
        data.find_data_dir(empty)
    with pytest.raises(DataError, match="not a directory"):
        data.find_data_dir(tmp_path / "nowhere")
    (small_dataset / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: not a gzip file"):
        data.read_files(small_dataset, cache=False)


@pytest.fixture
def mirror(small_dataset):
    """A local HTTP server serving the small files, standing in for the Keras mirror."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(small_dataset))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_fetches_verifies_and_caches(mirror, monkeypatch):
    monkeypatch.setenv("FASHION_KERAS_MIRROR", mirror)
    directory, source = data.find_data_dir()
    assert (directory, source) == (data.keras_cache_dir(), "download")
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        s.filename for s in data.FILES.values()
    )
    assert data.find_data_dir(download=False)[1] == "Keras cache"


def test_download_rejects_a_corrupt_file_and_leaves_nothing(mirror, small_dataset, monkeypatch):
    monkeypatch.setenv("FASHION_KERAS_MIRROR", mirror)
    (small_dataset / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x01junk"))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        data.find_data_dir()
    leftovers = [p.name for p in data.keras_cache_dir().iterdir()]
    assert "train-labels-idx1-ubyte.gz" not in leftovers
    assert not [name for name in leftovers if name.endswith(".part")]


def test_offline_error_lists_every_place_and_the_fix(small_dataset, monkeypatch):
    monkeypatch.setenv("FASHION_KERAS_MIRROR", "http://127.0.0.1:9/")  # discard port: refused
    with pytest.raises(DataError) as e:
        data.find_data_dir()
    message = str(e.value)
    for expected in (
        str(data.keras_cache_dir()),
        str(data.DEBIAN_DIR),
        "download failed",
        "make data",
    ):
        assert expected in message


def test_load_data_small_files_split_and_limits(small_dataset):
    (x, y), (xv, yv), (xt, yt) = data.load_data(small_dataset, validation_size=10)
    assert (
        x.shape == (50, 28, 28, 1) and xv.shape == (10, 28, 28, 1) and xt.shape == (20, 28, 28, 1)
    )
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    (x, y), _, (xt, yt) = data.load_data(
        small_dataset, validation_size=10, train_limit=20, eval_limit=10
    )
    assert np.bincount(y).tolist() == [2] * 10 and len(yt) == 10
    # numpy's integers count, even small ones (60000 - np.int16(10) overflows)
    (x, _), (xv, _), _ = data.load_data(
        small_dataset, validation_size=np.int16(10), train_limit=np.int32(30)
    )
    assert len(x) == 30 and len(xv) == 10
    _, _, (_, yt) = data.load_data(small_dataset, validation_size=10, one_hot=True)
    assert yt.shape == (20, 10) and yt.sum() == 20
    with pytest.raises(ValueError, match="train_limit=51 is larger than the 50 examples"):
        data.load_data(small_dataset, validation_size=10, train_limit=51)


def test_validation_start_moves_the_validation_images_along_the_training_file(small_dataset):
    (x, _), (xv, _), _ = data.load_data(small_dataset, validation_size=10)
    file = np.concatenate([xv, x])  # the default split: validation first, then training
    (x, y), (xv, _), _ = data.load_data(small_dataset, validation_size=10, validation_start=20)
    np.testing.assert_array_equal(xv, file[20:30])
    np.testing.assert_array_equal(x, np.concatenate([file[:20], file[30:]]))
    assert y.tolist() == [i % 10 for i in [*range(20), *range(30, 60)]]
    (x, _), (xv, _), _ = data.load_data(small_dataset, validation_size=10, validation_start=50)
    np.testing.assert_array_equal(xv, file[50:])
    for bad in (51, -1, 2.0, True):
        with pytest.raises(UserError, match="validation_start must be"):
            data.load_data(small_dataset, validation_size=10, validation_start=bad)


def test_decoded_cache_is_used_and_invalidated(small_dataset, monkeypatch):
    first = data.read_files(small_dataset)
    cached = list((data.keras_cache_dir() / "decoded").glob("*.npz"))
    assert len(cached) == 1
    with monkeypatch.context() as patch:  # a second read must not decode the files again
        patch.setattr(data, "read_split", lambda *args: pytest.fail("decoded again"))
        again = data.read_files(small_dataset)
    np.testing.assert_array_equal(first["train_images"], again["train_images"])
    # Replacing a file changes its stats, so the cache is not trusted for it.
    (small_dataset / "t10k-images-idx3-ubyte.gz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a gzip file"):
        data.read_files(small_dataset)


def test_real_data_split_sizes_and_class_names():
    (x, y), (xv, yv), (xt, yt) = data.load_data(download=False)
    assert (len(x), len(xv), len(xt)) == (55000, 5000, 10000)
    assert x.shape[1:] == (28, 28, 1) and x.dtype == np.float32
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert np.bincount(np.concatenate([y, yv])).tolist() == [6000] * 10
    assert np.bincount(yt).tolist() == [1000] * 10
    assert data.CLASS_NAMES[0] == "T-shirt/top" and data.CLASS_NAMES[9] == "Ankle boot"


def test_unreadable_named_directory(small_dataset, monkeypatch):
    # As root every directory is readable, so simulate the permission check failing.
    monkeypatch.setattr(data.os, "access", lambda path, mode: False)
    with pytest.raises(DataError, match="directory is not readable"):
        data.find_data_dir(small_dataset)


@pytest.mark.long  # for its time: make test-long runs it, make test does not
@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: b"", "empty or too short"),
        (lambda raw: raw[: len(raw) // 2], "truncated or corrupt gzip"),
        (lambda raw: gzip.compress(gzip.decompress(raw)[:-1] + b"\x03"), "checksum mismatch"),
    ],
)
def test_cli_training_on_a_damaged_copy_fails_cleanly(tmp_path, damage, message):
    from conftest import CONFIGS, run_cli

    real, _ = data.find_data_dir(download=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    for spec in data.FILES.values():
        (copy / spec.filename).symlink_to(real / spec.filename)
    broken = copy / "t10k-labels-idx1-ubyte.gz"
    raw = broken.read_bytes()
    broken.unlink()
    broken.write_bytes(damage(raw))
    keras_home = tmp_path / "keras_home"
    result = run_cli(
        "train",
        "--config",
        CONFIGS / "baseline.yaml",
        "--data-dir",
        copy,
        "--set",
        "training.epochs=1",
        "--output",
        tmp_path / "run",
        env={"KERAS_HOME": str(keras_home)},
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "fashion-keras: error:" in line]
    assert len(errors) == 1 and str(broken) in errors[0] and message in errors[0]
    assert not list(keras_home.rglob("*.npz")) and not list(keras_home.rglob("*.part"))
    assert not (tmp_path / "run" / "history.csv").exists()


def test_limits_give_exactly_that_many_examples():
    (x, y), (xv, yv), (xt, yt) = data.load_data(download=False, train_limit=55000, eval_limit=5000)
    assert (len(x), len(xv), len(xt)) == (55000, 5000, 5000)
    (x, y), _, _ = data.load_data(download=False, train_limit=54529)
    assert len(x) == 54529 and len(np.unique(x.reshape(len(x), -1), axis=0)) > 54000


@pytest.mark.parametrize("limit", [10, 25, 30, 61, 75])
def test_balanced_subset_is_as_even_as_the_classes_allow(limit):
    counts = np.array([1, 3, 10, 10, 10, 10, 10, 10, 10, 1])  # 75 examples
    labels = np.repeat(np.arange(10), counts)[::-1].copy()
    picked = data.balanced_subset(labels, limit)
    assert len(picked) == limit == len(set(picked.tolist()))
    take = np.bincount(labels[picked], minlength=10)
    short = take < counts  # classes that could have given more
    if short.any():
        assert take[short].max() - take[short].min() <= 1
        assert (take[~short] <= take[short].max()).all()  # only small classes gave less
    else:
        assert limit == 75
    with pytest.raises(ValueError, match="larger than the 75 examples"):
        data.balanced_subset(labels, 76)


def test_files_get_the_users_usual_permissions(mirror, monkeypatch, tmp_path):
    from fashion_keras import files

    monkeypatch.setenv("FASHION_KERAS_MIRROR", mirror)
    old = os.umask(0o022)
    try:
        directory, _ = data.find_data_dir()  # downloads
        data.read_files(directory)  # writes the decoded cache
        files.write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    written = [*directory.glob("*.gz"), *(data.keras_cache_dir() / "decoded").iterdir()]
    assert len(written) == 5
    for path in [*written, tmp_path / "x.txt"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_importing_the_package_leaves_the_umask_alone():
    code = (
        "import os; os.umask(0o027); import fashion_keras, fashion_keras.files; "
        "print(oct(os.umask(0)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "0o27", result.stderr
