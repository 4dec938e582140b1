"""Failpoints: the moments a run makes a durable change, where a test can stop it.

Every such moment calls `reached(name)`: after a temporary file is written and before it is
renamed into place, after the rename, after the test evaluation, after the backup is
deleted. Unarmed, that is one comparison. The crash tests arm it through the environment:

- `FASHION_KERAS_FAILPOINT_LOG=FILE` appends each moment's name to FILE, one a line, so a
  test can enumerate the moments of a run;
- `FASHION_KERAS_FAILPOINT=N` kills the process with SIGKILL at the N-th moment (1-based),
  as a power cut or the kernel's OOM killer would;
- `FASHION_KERAS_FAILPOINT=N:full` makes the N-th moment fail as a full disk does (an
  `OSError` with ENOSPC), to test that a failed write leaves the previous state intact.
"""

import errno
import os
import signal

_LOG = os.environ.get("FASHION_KERAS_FAILPOINT_LOG")
_ARMED = os.environ.get("FASHION_KERAS_FAILPOINT")
_seen = 0


def reached(name):
    """Marks a durable moment; stops the process here if a test armed this one."""
    if _LOG is None and _ARMED is None:
        return
    global _seen
    _seen += 1
    if _LOG is not None:
        with open(_LOG, "a") as f:
            f.write(f"{name}\n")
    if _ARMED is None:
        return
    nth, _, how = _ARMED.partition(":")
    if int(nth) != _seen:
        return
    if how == "full":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
