"""Writing files so that a killed process never leaves a truncated one in place."""

import contextlib
import json
import os
import secrets
from pathlib import Path

from fashion_keras.errors import UserError


class WriteError(UserError):
    """A file could not be written (a full disk, a read-only directory)."""


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
    suffix = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffix)]
    tmp = path.parent / f".{stem}.{secrets.token_hex(4)}.part{suffix}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield str(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(f"{e.strerror or e} while writing {path}") from e
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()


def write_text(path, text):
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path, data):
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_model(model, path):
    """`model.save(path)`, atomically."""
    with atomic_path(path) as tmp:
        model.save(tmp)


def check_writable(directory):
    """Creates `directory` and proves a file can be written there.

    Raises:
        WriteError: naming the directory and the reason.
    """
    write_text(Path(directory) / ".write-test", "x" * 4096)
    (Path(directory) / ".write-test").unlink()
