"""A non-chief worker's stand-in folder: stable across restarts, and private to its user."""

import json
import os
import stat
import tempfile

import pytest

from fashion_keras import distribute
from fashion_keras.errors import UserError

WORKER1 = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}


@pytest.fixture
def temp_root(tmp_path, monkeypatch):
    """A fresh temporary directory standing in for /tmp, without $XDG_RUNTIME_DIR."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TF_CONFIG", json.dumps(WORKER1))
    return tmp_path


def test_the_folder_is_ours_with_mode_700_and_the_same_after_a_restart(temp_root):
    folder = distribute.worker_dir("runs/job")
    base = temp_root / f"fashion-keras-{os.getuid()}"
    assert folder.parent == base and folder.name.endswith("-worker1")
    info = os.lstat(base)
    assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
    assert distribute.worker_dir("runs/job") == folder  # a restarted worker finds it again
    assert distribute.worker_dir("runs/other") != folder


def test_xdg_runtime_dir_is_not_used(temp_root, monkeypatch):
    # systemd empties it when the user's last session ends: a restarted worker would lose
    # its backup, and the whole job would start again.
    runtime = temp_root / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert distribute.worker_dir("runs/job").parent == temp_root / f"fashion-keras-{os.getuid()}"


def _planted_open_dir(path):
    path.mkdir()
    path.chmod(0o777)


def _planted_symlink(path):
    (path.parent / "elsewhere").mkdir(mode=0o700)
    path.symlink_to(path.parent / "elsewhere")


def _planted_by_another_user(path):
    if os.getuid() != 0:
        pytest.skip("only root can make a folder that belongs to someone else")
    path.mkdir(mode=0o700)
    os.chown(path, 12345, 12345)


@pytest.mark.parametrize(
    "plant, message",
    [
        (_planted_open_dir, "has mode 777, open to other users"),
        (_planted_symlink, "is a symbolic link"),
        (_planted_by_another_user, "belongs to user 12345"),
    ],
    ids=["mode_777", "symlink", "other_owner"],
)
def test_a_folder_planted_first_is_refused(temp_root, plant, message):
    plant(temp_root / f"fashion-keras-{os.getuid()}")
    with pytest.raises(distribute.DistributeError, match=message) as e:
        distribute.worker_dir("runs/job")
    assert isinstance(e.value, UserError) and "Remove it" in str(e.value)
