"""Writing files so that a killed process never leaves a truncated one in place.

Every file is written under a temporary name beside it and renamed into place. The
temporary names have one exact shape, `.STEM.XXXXXXXX.partSUFFIX` (eight hex digits) for
`STEMSUFFIX`, so `remove_temporaries` can clear what a killed process left and nothing else.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from fashion_keras import failpoints
from fashion_keras.errors import UserError

_TEMPORARY = re.compile(r"\.(?P<stem>[^/]+?)\.[0-9a-f]{8}\.part(?P<suffix>.*)")


class WriteError(UserError):
    """A file could not be written (a full disk, a read-only directory)."""


def temporary_name(path):
    """The name `atomic_path` writes `path` under first: `.NAME.XXXXXXXX.partSUFFIX`."""
    path = Path(path)
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)]
    return f".{stem}.{secrets.token_hex(4)}.part{suffix}"


def target_of(name):
    """The file a temporary name stands for (`.a.0123abcd.part.json` -> `a.json`), or None
    when `name` is not of `temporary_name`'s shape."""
    match = _TEMPORARY.fullmatch(name)
    return match["stem"] + match["suffix"] if match else None


def is_temporary(name, targets):
    """Whether `name` is our temporary of a file whose name fully matches the regular
    expression `targets`."""
    target = target_of(name)
    return target is not None and re.fullmatch(targets, target) is not None


def remove_temporaries(directory, targets):
    """Deletes the temporaries a killed process left directly in `directory` (not below)
    for the files whose names fully match the regular expression `targets`."""
    directory = Path(directory)
    if directory.is_dir():
        for entry in directory.iterdir():
            if is_temporary(entry.name, targets) and entry.is_file():
                entry.unlink()


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; renames it to `path` if the block succeeds.

    The temporary name keeps `path`'s suffix (Keras insists on `.keras`/`.weights.h5`) and
    is created by whoever writes it, so the file gets the user's usual permissions. On any
    error, or if the process dies, `path` keeps its previous content.

    Raises:
        WriteError: the file could not be written; the message names it.
    """
    path = Path(path)
    tmp = path.parent / temporary_name(path)
    moment = f"{path.parent.name}/{path.name}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield str(tmp)
        _sync_file(tmp)  # durable before its name is: a power cut never renames an empty file
        failpoints.reached(f"written {moment}")
        os.replace(tmp, path)
        _sync_directory(path.parent)
    except OSError as e:
        raise WriteError(f"{e.strerror or e} while writing {path}") from e
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    failpoints.reached(f"renamed {moment}")


def _sync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(directory):
    """Makes a rename in `directory` durable (POSIX; a no-op where directories cannot be
    opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(model, path):
    """`model.save(path)`, atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def copy_file(source, path):
    """Copies `source` to `path` atomically.

    A `source` that cannot be opened raises its own `OSError`, naming it: not a `WriteError`,
    which would blame `path`.
    """
    with open(source, "rb") as read, atomic_path(path) as tmp, open(tmp, "wb") as write:
        shutil.copyfileobj(read, write)


def remove(path):
    """Deletes a file or a directory tree, if present (a durable moment of its own)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    else:
        return
    failpoints.reached(f"removed {path.parent.name}/{path.name}")
