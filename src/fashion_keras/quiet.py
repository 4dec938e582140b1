"""Quiets TensorFlow's start-up notices on stderr, for the command line.

TensorFlow's C++ side (absl logging) writes notices straight to file descriptor 2 while it
loads, before `TF_CPP_MIN_LOG_LEVEL` applies: "Could not find cuda drivers", "failed call
to cuInit" and others that read as errors but are not. `install()` points fd 2 at a pipe and
a daemon thread copies each line to the real stderr unless it matches one of `NOISE`; every
other line (real warnings, errors, Python tracebacks) passes unchanged and in order.
`uninstall()` puts fd 2 back and waits for the thread to copy what is left; `install()` also
registers it with `atexit`. Only the command line calls these (`fashion-keras --verbose`
or `FASHION_KERAS_VERBOSE=1` leaves stderr alone); importing `fashion_keras` touches no file
descriptor.

Example:

    from fashion_keras import quiet

    quiet.install()
    try:
        import tensorflow  # its start-up notices are dropped
    finally:
        quiet.uninstall()
"""

import atexit
import os
import re
import select
import sys
import threading

# absl's log prefix: "I0000 00:00:1700000000.123456    7710 cudart_stub.cc:31] " (TF 2.17+),
# "2024-01-26 10:00:00.123456: I tensorflow/core/util/port.cc:113] " or
# "E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:9261] " (older).
_ABSL = r"^(?:\S+ \S+: )?[IWEF][^\]]*\.cc:\d+\] "

# Known start-up noise, one pattern a message; a line that matches none is kept.
NOISE = [
    # absl, once per process: TF and XLA log before anyone calls absl::InitializeLog().
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called"),
    # tsl/cuda/cudart_stub.cc on a machine without CUDA: TF uses the CPU, as intended.
    re.compile(_ABSL + r"Could not find cuda drivers on your machine, GPU will not be used"),
    # xla cuda_platform.cc (cuda_driver.cc before TF 2.18): the same, from the CUDA driver.
    re.compile(_ABSL + r"failed call to cuInit: "),
    # tensorflow/core/platform/cpu_feature_guard.cc: a generic binary; two lines.
    re.compile(_ABSL + r"This TensorFlow binary is optimized to use available CPU instructions"),
    re.compile(r"^To enable the following instructions: .*, in other operations, rebuild "),
    # tensorflow/core/util/port.cc: oneDNN is on by default on x86 CPUs.
    re.compile(_ABSL + r"oneDNN custom operations are on\. "),
    # xla cuda_dnn.cc, cuda_fft.cc, cuda_blas.cc: TF and XLA each register the CUDA plugins.
    re.compile(_ABSL + r"Unable to register cu(?:DNN|FFT|BLAS) factory: "),
    # tensorflow/compiler/tf2tensorrt/utils/py_utils.cc: TensorRT is optional.
    re.compile(_ABSL + r"TF-TRT Warning: Could not find TensorRT"),
    # xla computation_placer.cc: registered by both TensorFlow and XLA's own library.
    re.compile(_ABSL + r"computation placer already registered\. "),
]

# How long an unfinished line (a prompt, a progress bar) waits for its end before it is shown.
PARTIAL_LINE_WAIT_S = 0.1
# How long `uninstall()` waits for the relay; longer only when a child process still holds
# the pipe, and the relay then goes on copying until this process ends.
DRAIN_TIMEOUT_S = 5.0

_active = None  # (saved stderr fd, pipe read fd, relay thread) while installed
_lock = threading.Lock()


def is_noise(line):
    """Whether a stderr line (str, without its newline) is known start-up noise.

    Args:
        line: one line as written to stderr.

    Returns:
        True when `line` matches a pattern of `NOISE`.

    Example:

        >>> is_noise("WARNING: All log messages before absl::InitializeLog() is called "
        ...          "are written to STDERR")
        True
        >>> is_noise("UserWarning: the learning rate is very high")
        False
    """
    return any(pattern.search(line) for pattern in NOISE)


def install():
    """Filters fd 2 through `is_noise` until `uninstall()` (or the end of the process).

    Does nothing where fd 2 is not open for writing, on non-POSIX systems, or when already
    installed.

    Returns:
        True when the filter was installed by this call.
    """
    global _active
    with _lock:
        if _active is not None or os.name != "posix" or not _writable(2):
            return False
        _flush_python_stderr()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        relay = threading.Thread(
            target=_relay, args=(read_fd, saved), name="fashion-keras-stderr", daemon=True
        )
        relay.start()
        os.dup2(write_fd, 2)  # child processes inherit the filtered stderr too
        os.close(write_fd)
        _active = (saved, read_fd, relay)
    atexit.register(uninstall)
    return True


def uninstall(timeout=DRAIN_TIMEOUT_S):
    """Puts the original fd 2 back and waits (up to `timeout` seconds) until every line
    written before has been copied. Safe to call more than once.

    Args:
        timeout: seconds to wait for the relay thread.
    """
    global _active
    with _lock:
        if _active is None:
            return
        saved, read_fd, relay = _active
        _active = None
        _flush_python_stderr()
        os.dup2(saved, 2)  # closes the pipe's last write end here, so the relay reads its end
    relay.join(timeout)
    if not relay.is_alive():
        os.close(read_fd)
        os.close(saved)


def _relay(read_fd, out_fd):
    """Copies the pipe to `out_fd` line by line, leaving out noise, until end of file.
    Keeps reading even when `out_fd` fails, so that writers never block on a full pipe."""
    pending = b""
    while True:
        ready, _, _ = select.select([read_fd], [], [], PARTIAL_LINE_WAIT_S if pending else None)
        if not ready:  # an unfinished line, and nothing more for a while: show it as it is
            out_fd = _write(out_fd, pending)
            pending = b""
            continue
        chunk = os.read(read_fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        out_fd = _write(out_fd, b"".join(line + b"\n" for line in lines if not _is_noise(line)))
    if pending and not _is_noise(pending):
        _write(out_fd, pending)


def _is_noise(raw):
    return is_noise(raw.decode("utf-8", "replace").rstrip("\r"))


def _write(fd, data):
    """Writes all of `data` to `fd`; returns `fd`, or None once writing has failed."""
    while fd is not None and data:
        try:
            data = data[os.write(fd, data) :]
        except OSError:  # the reader went away (EPIPE) or the fd closed: drop, keep draining
            return None
    return fd


def _writable(fd):
    import fcntl

    try:
        return (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
    except OSError:  # fd 2 is closed
        return False


def _flush_python_stderr():
    try:
        if sys.stderr is not None:
            sys.stderr.flush()
    except (OSError, ValueError):  # closed, or a broken pipe
        pass
